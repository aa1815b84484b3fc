"""Every command line reaches services that require TLS and a bearer token, through the SDK's channel config.

Real scheduler and cost servers, and a scripted detector on the real runtime, all with TLS + token, run in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2 as dpb
from crucible.api.detector.v1 import detector_service_pb2_grpc as dpb_grpc
from crucible.api.proposer.v1 import proposer_service_pb2 as ppb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as ppb_grpc
from crucible.api.scorer.v1 import scorer_service_pb2 as spb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as spb_grpc
from crucible.cli import EXIT_BROKEN_PIPE, main
from crucible.clients.channel import cli_channel_config
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server as create_cost
from crucible.detector.config import DetectorConfig
from crucible.proposer.config import ProposerConfig
from crucible.runtime.config import load_config
from crucible.runtime.server import create_server as create_runtime
from crucible.runtime.service import BaseService
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.server import create_server as create_scheduler
from crucible.scorer.config import ScorerConfig

TOKEN = "cli-transport-token"
REPO = Path(__file__).resolve().parents[2]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


class ScriptedDetector(dpb_grpc.DetectorServiceServicer):
    """GetInfo and Detect on the real contract (no models): criterion = text length."""

    async def GetInfo(self, request, context):
        return dpb.GetInfoResponse(limits=dpb.Limits(max_texts_per_call=8))

    async def Detect(self, request, context):
        return dpb.DetectResponse(
            detections=[dpb.Detection(index=i, criterion=float(len(t)), token_count=len(t)) for i, t in enumerate(request.texts)]
        )


class ScriptedProposer(ppb_grpc.ProposerServiceServicer):
    """Embed on the real contract: a unit vector from the text length (no models)."""

    async def Embed(self, request, context):
        vectors = [[1.0, 0.0] if len(t) % 2 == 0 else [0.6, 0.8] for t in request.texts]
        return ppb.EmbedResponse(
            embeddings=[ppb.Embedding(values=v, token_count=len(t)) for v, t in zip(vectors, request.texts, strict=True)],
            dimension=2,
        )


class ScriptedScorer(spb_grpc.ScorerServiceServicer):
    """ScoreChoices on the real contract: always prefers option D (no models)."""

    async def ScoreChoices(self, request, context):
        probs = [0.1, 0.1, 0.1, 0.7]
        return spb.ScoreChoicesResponse(
            results=[
                spb.ChoiceResult(
                    prompt="p",
                    top_index=3,
                    choices=[
                        spb.ChoiceScore(text=f" {c}", logprob=-1.0 - i, probability=probs[i], token_count=1)
                        for i, c in enumerate("ABCD")
                    ],
                )
                for _ in request.items
            ]
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """Scheduler, cost and detector servers with TLS + token, served from a background event loop."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder)
    (folder / "token").write_text(TOKEN + "\n")
    common = dict(env={}, port=0, metrics_enabled=False, auth_token=TOKEN, tls_cert_file=str(cert), tls_key_file=str(key))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        sched, sched_port = create_scheduler(
            load_config(SchedulerConfig, "scheduler", state_dir=str(folder / "state"), providers=("dryrun", "local"), **common)
        )
        cost, cost_port = create_cost(load_config(CostConfig, "cost", **common))
        service = BaseService(
            "detector",
            ["crucible.detector.v1.DetectorService"],
            ScriptedDetector(),
            dpb_grpc.add_DetectorServiceServicer_to_server,
        )
        det, det_port = create_runtime(load_config(DetectorConfig, "detector", **common), service, CollectorRegistry())
        service = BaseService(
            "proposer",
            ["crucible.proposer.v1.ProposerService"],
            ScriptedProposer(),
            ppb_grpc.add_ProposerServiceServicer_to_server,
        )
        prop, prop_port = create_runtime(load_config(ProposerConfig, "proposer", **common), service, CollectorRegistry())
        service = BaseService(
            "scorer", ["crucible.scorer.v1.ScorerService"], ScriptedScorer(), spb_grpc.add_ScorerServiceServicer_to_server
        )
        scorer, scorer_port = create_runtime(load_config(ScorerConfig, "scorer", **common), service, CollectorRegistry())
        servers = [sched, cost, det, prop, scorer]
        for s in servers:
            await s.start()
            await s.wait_ready(30)
        return servers, {
            "scheduler": sched_port,
            "cost": cost_port,
            "detector": det_port,
            "proposer": prop_port,
            "scorer": scorer_port,
        }

    servers, ports = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    yield {"ca": cert, "token_file": folder / "token", "ports": ports, "folder": folder}
    for s in servers:
        asyncio.run_coroutine_threadsafe(s.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def client_env(secured, monkeypatch):
    """The client side configured only through the SDK's variables: addresses, token file, CA (which turns TLS on)."""
    for name in list(os.environ):
        if name.startswith("CRUCIBLE_") and ("CLIENT" in name or name.endswith("_ADDRESS") or "AUTH_TOKEN" in name):
            monkeypatch.delenv(name)
    for name, port in secured["ports"].items():
        monkeypatch.setenv(f"CRUCIBLE_{name.upper()}_ADDRESS", f"localhost:{port}")
    monkeypatch.setenv("CRUCIBLE_CLIENT_TOKEN_FILE", str(secured["token_file"]))
    monkeypatch.setenv("CRUCIBLE_CLIENT_CA_FILE", str(secured["ca"]))
    return secured


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_commands_use_tls_and_token(client_env, capsys):
    code, out, err = _run(capsys, "jobs", "submit", "--provider", "dryrun", "--name", "transport", "--", "echo", "hi")
    assert code == 0, err
    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    code, out, err = _run(capsys, "jobs", "list", "--json")
    assert code == 0, err
    jobs = [json.loads(line) for line in out.splitlines()]
    assert job_id in [j["job_id"] for j in jobs]
    code, out, err = _run(capsys, "jobs", "get", job_id, "--json")
    assert code == 0 and json.loads(out)["job_id"] == job_id, err
    code, out, err = _run(capsys, "jobs", "providers", "--json")
    assert code == 0 and "dryrun" in [json.loads(line)["name"] for line in out.splitlines()], err
    code, out, err = _run(capsys, "jobs", "artifacts", job_id, "--json")
    assert code == 0, err
    code, out, err = _run(capsys, "jobs", "submit", "--provider", "dryrun", "--dry-run", "--", "echo", "hi")
    assert code == 0 and "launch request: none (dryrun runs on the scheduler's machine)" in out, err


def test_jobs_fail_clearly_without_the_token_or_without_tls(client_env, capsys, monkeypatch):
    monkeypatch.delenv("CRUCIBLE_CLIENT_TOKEN_FILE")
    code, _, err = _run(capsys, "jobs", "list")
    assert code == 1 and "UNAUTHENTICATED" in err
    code, _, err = _run(capsys, "jobs", "list", "--token-file", str(client_env["token_file"]), "--no-tls")
    assert code == 1 and "UNAVAILABLE" in err
    code, _, err = _run(capsys, "jobs", "list", "--token-file", str(client_env["folder"] / "missing"))
    assert code == 2 and "--token-file" in err


def test_cost_commands_use_tls_and_token(client_env, capsys):
    code, out, err = _run(capsys, "cost", "offers", "--limit", "3")
    assert code == 0, err
    assert out.strip()


def test_detect_against_a_service_uses_tls_and_token(client_env, capsys, tmp_path):
    data = tmp_path / "texts.json"
    data.write_text(json.dumps(["one", "three"]))
    port = client_env["ports"]["detector"]
    code, out, err = _run(capsys, "detect", str(data), "--address", f"localhost:{port}")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["token_count"] for r in rows] == [3, 5]


def test_health_uses_tls_and_reports_json(client_env, capsys):
    code, out, err = _run(capsys, "health", "--services", "scheduler,cost,detector", "--json")
    assert code == 0, (out, err)
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["service"]: r["status"] for r in rows} == {"scheduler": "SERVING", "cost": "SERVING", "detector": "SERVING"}


def test_reward_runs_over_tls_and_token(client_env, capsys, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"original": "the cat sat", "completions": ["a cat sat down", "the cat was sitting"]}) + "\n")
    code, out, err = _run(capsys, "reward", "--data", str(data), "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all(0.0 <= r["similarity"] <= 1.0 for r in rows)


def test_attack_runs_over_tls_and_token(client_env, capsys, tmp_path):
    data = tmp_path / "mmlu"
    data.mkdir()
    (data / "algebra_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nWhat is 1+1?,2,3,4,5,0\n")
    code, out, err = _run(
        capsys, "attack", "--data", str(data), "--iterations", "1", "--trace", str(tmp_path / "trace.jsonl"), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["errors"] == 0 and summary["trace"].endswith("trace.jsonl")  # the scorer was reached: skipped_wrong
    assert "skipped_wrong" in (tmp_path / "trace.jsonl").read_text()


def test_reward_and_attack_build_their_mesh_from_the_same_config(client_env):
    from crucible.clients.cli import _mesh

    args = argparse.Namespace(
        base_port=None, token=None, token_file=None, tls=None, ca_file=None, tls_server_name=None, timeout=None
    )
    mesh = _mesh(args)
    for name in ("detector", "scheduler", "cost"):
        config = mesh.config.services[name]
        assert config.tls and config.token == TOKEN and config.root_certificates
        assert config.addresses == (f"localhost:{client_env['ports'][name]}",)
    local = _mesh(argparse.Namespace(**{**vars(args), "base_port": 7000}))
    assert local.config.services["cost"].addresses == ("127.0.0.1:7004",) and local.config.services["cost"].tls


def test_flags_override_the_environment(client_env):
    args = argparse.Namespace(address="127.0.0.1:1", token="flag", tls=False, ca_file=None, timeout=3.0)
    config = cli_channel_config("scheduler", args)
    assert config.addresses == ("127.0.0.1:1",) and config.token == "flag" and config.timeout_s == 3.0
    assert not config.tls


def test_closed_pipe_ends_quietly_with_141(client_env):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["completion", "bash"], ["jobs", "list"], ["jobs", "submit", "--help"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO
        )
        proc.stdout.close()  # the reader is gone before the first byte (as `| head -0`)
        err = proc.stderr.read()
        # argparse swallows the failed write of --help itself and exits 0; every other output ends with 141
        assert proc.wait(60) == (0 if "--help" in argv else EXIT_BROKEN_PIPE), err
        assert err == b"", err


def test_completion_scripts_are_generated_offline(capsys):
    code, out, _ = _run(capsys, "completion", "bash")
    assert code == 0 and "jobs" in out and "--token-file" in out
    code, out, _ = _run(capsys, "completion", "zsh")
    assert code == 0 and out.startswith("#compdef crucible")
