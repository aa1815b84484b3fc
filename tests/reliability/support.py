"""Shared pieces of the reliability suite: tiny model folders, the five servers on a background event loop, generic
blocking calls by method descriptor, and service subprocesses (`crucible serve ...`) with their logs and memory.

The in-process servers run on their own loop thread so hypothesis drives them from plain synchronous tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crucible.api.cost.v1 import cost_service_pb2
from crucible.api.detector.v1 import detector_service_pb2
from crucible.api.proposer.v1 import proposer_service_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2
from crucible.api.scorer.v1 import scorer_service_pb2
from crucible.runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
DESCRIPTORS: dict[str, ServiceDescriptor] = {
    "detector": detector_service_pb2.DESCRIPTOR.services_by_name["DetectorService"],
    "proposer": proposer_service_pb2.DESCRIPTOR.services_by_name["ProposerService"],
    "scorer": scorer_service_pb2.DESCRIPTOR.services_by_name["ScorerService"],
    "scheduler": scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
    "cost": cost_service_pb2.DESCRIPTOR.services_by_name["CostService"],
}
# Statuses that mean the server failed, not the request: a bug, a crash, or a method that was never built.
SERVER_FAULTS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}


def all_methods() -> list[tuple[str, MethodDescriptor]]:
    """(service short name, method) for every RPC of the five contracts."""
    return [(name, m) for name, svc in DESCRIPTORS.items() for m in svc.methods]


# ---------------------------------------------------------------------------------------------------------- models


def tiny_model_folders(root: Path) -> dict[str, Path]:
    """A tiny random Llama (byte-level BPE tokenizer) for detector, proposer and scorer, plus a tiny BERT encoder and a
    tiny BERT NLI classifier ('entailment' label) sharing its tokenizer: nothing downloaded, nothing packaged needed."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from tests.unit.test_detector_engine import tiny_lm_folder

    lm = tiny_lm_folder(root / "tiny-lm")
    tokenizer = AutoTokenizer.from_pretrained(lm)
    bert = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    BertModel(BertConfig(**bert)).save_pretrained(root / "tiny-embedder")
    tokenizer.save_pretrained(root / "tiny-embedder")
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    BertForSequenceClassification(
        BertConfig(**bert, id2label=labels, label2id={v: k for k, v in labels.items()})
    ).save_pretrained(root / "tiny-nli")
    tokenizer.save_pretrained(root / "tiny-nli")
    return {"lm": lm, "embedder": root / "tiny-embedder", "nli": root / "tiny-nli"}


def wide_lm_folder(root: Path, tokenizer_folder: Path, hidden: int = 512, layers: int = 4) -> Path:
    """A random Llama wide enough that a batch of long texts takes a measurable time on a CPU (~0.1 s for 2 x 300
    tokens on 2 cores), with the tokenizer of `tokenizer_folder`: for overload and deadline tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(2)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    ).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def service_settings(name: str, folders: dict[str, Path], state: Path) -> dict[str, Any]:
    """Small, fast settings for each service (tiny models, low limits so no request can ask for much work)."""
    common: dict[str, Any] = {"port": 0, "metrics_enabled": False, "log_format": "json"}
    models = {"model": str(folders["lm"]), "device": "cpu", "dtype": "float32"}
    if name == "detector":
        return {**common, **models, "max_tokens": 64, "max_texts_per_call": 8, "max_text_bytes": 4000}
    if name == "proposer":
        return {
            **common,
            **models,
            "embedding_model": str(folders["embedder"]),
            "nli_model": str(folders["nli"]),
            "default_max_new_tokens": 6,
            "max_new_tokens_limit": 8,
            "max_candidates": 4,
            "max_text_chars": 400,
            "max_pairs_per_call": 8,
            "max_texts_per_call": 8,
            "max_wait_ms": 2.0,
        }
    if name == "scorer":
        return {**common, **models, "max_items_per_call": 6, "max_choices_per_item": 6, "max_tokens": 1024}
    if name == "scheduler":
        settings_file = state / "providers.json"
        settings_file.write_text(json.dumps({"dryrun": {"duration_s": "0.2"}}))
        return {
            **common,
            "state_dir": str(state / "scheduler"),
            "providers": ("dryrun",),
            "poll_interval_s": 0.1,
            "provider_settings_file": str(settings_file),
            "sqlite_synchronous": "NORMAL",
        }
    if name == "cost":
        return {
            **common,
            "state_dir": str(state / "cost"),
            "lambda_api_url": "http://127.0.0.1:9/api/v1",
            "runpod_api_url": "http://127.0.0.1:9/graphql",
            "refresh_timeout_s": 1.0,
        }
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------------------- servers


class LoopThread:
    """An asyncio loop running forever in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reliability-servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coro` on the loop thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@dataclass
class Running:
    """One in-process server: its runtime object, address and proto service name."""

    name: str
    server: Any
    address: str
    service: str

    def handled(self, code: str) -> float:
        """Calls this server answered with `code` so far, over all methods (from its Prometheus registry)."""
        total = 0.0
        for metric in self.server.registry.collect():
            if metric.name == "grpc_server_handled":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total") and s.labels.get("grpc_code") == code)
        return total


async def start_service(name: str, settings: dict[str, Any]) -> Running:
    """Create, start and wait for one service built from `settings` (the same wiring `crucible serve` uses)."""
    from crucible.mesh import SERVICES

    config_cls, factory = SERVICES[name].load()
    config = load_config(config_cls, name, env={}, **settings)
    server, _port = factory(config)
    await server.start()
    await server.wait_ready(180)
    return Running(name, server, server.address, SERVICES[name].proto_service)


# ---------------------------------------------------------------------------------------------------------- calls


def request_class(method: MethodDescriptor) -> type:
    """The generated message class of a method's request."""
    return message_factory.GetMessageClass(method.input_type)


def call(
    channel: grpc.Channel,
    method: MethodDescriptor,
    requests: Sequence[Any],
    *,
    timeout: float,
    metadata: Iterable[tuple[str, str]] = (),
    max_responses: int = 3,
) -> grpc.StatusCode:
    """Send `requests` (one, or several for a client-streaming method) and read up to `max_responses` answers;
    returns the status (OK, or the error's code; CANCELLED when we stopped reading an open stream ourselves)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    kwargs = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString)
    metadata = tuple(metadata)
    try:
        if not method.server_streaming:
            if method.client_streaming:
                channel.stream_unary(path, **kwargs)(iter(requests), timeout=timeout, metadata=metadata)
            else:
                channel.unary_unary(path, **kwargs)(requests[0], timeout=timeout, metadata=metadata)
            return grpc.StatusCode.OK
        if method.client_streaming:
            stream = channel.stream_stream(path, **kwargs)(iter(requests), timeout=timeout, metadata=metadata)
        else:
            stream = channel.unary_stream(path, **kwargs)(requests[0], timeout=timeout, metadata=metadata)
        for n, _ in enumerate(stream, 1):
            if n >= max_responses:
                stream.cancel()
                return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def health(channel: grpc.Channel, service: str = "") -> int:
    """The health status of `service` ('' = the whole server)."""
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return reply.status


SERVING = health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------------------- processes


def serve_command(service: str, port: int, *args: str) -> list[str]:
    """argv of `crucible serve SERVICE --port PORT ...` with the venv's interpreter."""
    return [sys.executable, "-m", "crucible", "serve", service, "--port", str(port), *args]


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment for a service child process, without inherited CRUCIBLE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


class ServiceProcess:
    """A `crucible serve` child in its own session with stdout/stderr in one log file; `kill9` and `stop` end it."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log, env=env, cwd=str(REPO), start_new_session=True)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in `timeout` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric_value(metrics_port: int, name: str, **labels: str) -> float | None:
    """One sample from a server's /metrics page (None when absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(value)
    return None


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    """Poll `predicate` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


TOKEN = "reliability-suite-token-7f3c9a"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
