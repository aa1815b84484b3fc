"""The job's code reaches every provider that runs commands (issue 19, item 0): a presigned store URL in the exact
launch request and boot script of lambda, paperspace and runpod, an init step in the Kubernetes Job, a clear refusal
with a file:// store and on replicate. The boot script is then run here with bash, like a machine would at boot: it
downloads the nanoGPT example from the loopback S3 server, checks its SHA-256, unpacks it and trains.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from crucible.scheduler.objects import transfer
from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.kubernetes import WORK_MOUNT, KubernetesProvider
from crucible.scheduler.providers.lambda_cloud import LambdaProvider
from crucible.scheduler.providers.paperspace import PaperspaceProvider
from crucible.scheduler.providers.replicate import ReplicateProvider
from crucible.scheduler.providers.runpod import RunPodProvider
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.paperspace_api import FakePaperspace
from tests.fakes.runpod_api import FakeRunPod
from tests.fakes.ssh import make_fake_ssh

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "nanogpt"
FAST = {"timeout_s": "0.5", "retry_base_s": "0.01", "retry_max_s": "0.02", "max_retries": "2"}
URL = "https://store.example/bucket/jobs/job-5/code/code.tar.gz?X-Amz-Signature=abc&X-Amz-Expires=3600"
SHA = "ab" * 32
INPUT = ("data/input.txt", "https://store.example/bucket/jobs/job-5/inputs/data/input.txt?X-Amz-Signature=def")
TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-iters",
    "1",
    "--eval-interval",
    "50",
    "--log-interval",
    "5",
    "--checkpoint-interval",
    "10",
    "--threads",
    "1",
    "--sample-chars",
    "0",
]


def code_spec(
    tmp_path: Path, provider: str, *, url: str = URL, sha: str = SHA, command=("python", "train.py"), inputs=(INPUT,), **kw
) -> LaunchSpec:
    offer = {
        "lambda": OfferRef("lambda", "gpu_1x_a10", "us-east-1"),
        "paperspace": OfferRef("paperspace", "A100-80G", "ny2", "A100", 1),
        "runpod": OfferRef("runpod", "NVIDIA A40", gpu_name="A40", gpu_count=1, price_usd_per_hour=0.8),
        "kubernetes": OfferRef("kubernetes", "node", gpu_count=1),
        "replicate": OfferRef("replicate", "gpu-a40-large"),
    }[provider]
    return LaunchSpec(
        "job-5",
        1,
        tuple(command),
        {"SEED": "1"},
        offer,
        tmp_path,
        code_dir=tmp_path / "work",
        code_url=url,
        code_sha256=sha,
        input_urls=tuple(inputs),
        checkpoint_dir="checkpoints",
        **kw,
    )


def fetch_of(wrapper: str) -> str:
    """The fetch step the wrapper runs (base64 inside it)."""
    return base64.b64decode(re.search(r"if ! echo (\S+) \| base64 -d \| bash", wrapper).group(1)).decode()


def assert_fetches(script: str, url: str = URL, sha: str = SHA) -> None:
    assert f'crucible_fetch {shlex.quote(url)} "$CODE_TGZ"' in script
    assert f'echo "{sha}  $CODE_TGZ" | sha256sum -c --status -' in script
    assert 'tar -xzf "$CODE_TGZ" --no-same-owner --no-overwrite-dir -C .' in script
    assert f"crucible_fetch {shlex.quote(INPUT[1])} data/input.txt" in script


async def test_lambda_and_paperspace_boot_scripts_fetch_code(tmp_path):
    fake = await FakeLambda("lambda-key-0123456789").start()
    try:
        p = LambdaProvider.from_settings(
            {"base_url": fake.base_url, "ssh_key_names": "laptop", **FAST},
            secrets=SecretStore(env={"LAMBDA_API_KEY": "lambda-key-0123456789"}),
        )
        await p.submit(code_spec(tmp_path, "lambda"))
        body = fake.launch_bodies[-1]
        wrapper = base64.b64decode(re.search(r"echo (\S+) \| base64 -d >", body["user_data"]).group(1)).decode()
        folder = "/var/tmp/crucible/crucible-job-5-1"
        assert f"cd {folder}/work" in wrapper and "python train.py" in wrapper
        assert_fetches(fetch_of(wrapper))
        await p.aclose()
    finally:
        await fake.close()
    fake = await FakePaperspace("ps-key-0123456789").start()
    try:
        p = PaperspaceProvider.from_settings(
            {"base_url": fake.base_url, "template_id": "t0", **FAST},
            secrets=SecretStore(env={"PAPERSPACE_API_KEY": "ps-key-0123456789"}),
        )
        handle = await p.submit(code_spec(tmp_path, "paperspace"))
        script = fake.scripts[fake.machines[handle.ref]["startupScriptId"]]["script"]
        wrapper = base64.b64decode(re.search(r"echo (\S+) \| base64 -d >", script).group(1)).decode()
        assert_fetches(fetch_of(wrapper))
        await p.aclose()
    finally:
        await fake.close()


async def test_runpod_docker_args_and_kubernetes_init_step_fetch_code(tmp_path):
    fake = await FakeRunPod("rpa_KEY0123456789ABCDEF").start()
    try:
        p = RunPodProvider.from_settings(
            {"base_url": fake.url, **FAST}, secrets=SecretStore(env={"RUNPOD_API_KEY": "rpa_KEY0123456789ABCDEF"})
        )
        await p.submit(code_spec(tmp_path, "runpod"))
        argv = shlex.split(fake.inputs[-1]["dockerArgs"])
        _sshd, wrapper = (base64.b64decode(b).decode() for b in re.findall(r"echo ([A-Za-z0-9+/=]{16,}) \| base64 -d", argv[2]))
        assert "python train.py" in wrapper
        assert_fetches(fetch_of(wrapper))
        await p.aclose()
    finally:
        await fake.close()
    fake = await FakeKubernetes("k8s-token-0123456789").start()
    try:
        p = KubernetesProvider.from_settings(
            {"base_url": fake.url, "namespace": "ml", **FAST},
            secrets=SecretStore(env={"CRUCIBLE_KUBERNETES_TOKEN": "k8s-token-0123456789"}),
        )
        handle = await p.submit(code_spec(tmp_path, "kubernetes", container_image="ghcr.io/acme/trainer:1"))
        pod = fake.jobs[("ml", handle.ref)]["spec"]["template"]["spec"]
        init, main = pod["initContainers"][0], pod["containers"][0]
        assert init["image"] == "ghcr.io/acme/trainer:1" and init["command"][:2] == ["bash", "-c"]
        assert_fetches(init["command"][2])
        assert {"name": "work", "emptyDir": {}} in pod["volumes"]
        assert main["workingDir"] == WORK_MOUNT and {"name": "work", "mountPath": WORK_MOUNT} in main["volumeMounts"]
        assert main["command"] == ["python", "train.py"]
        await p.aclose()
    finally:
        await fake.close()


async def test_file_store_and_replicate_refuse_code_clearly(tmp_path):
    fake = await FakeLambda("lambda-key-0123456789").start()
    try:
        p = LambdaProvider.from_settings(
            {"base_url": fake.base_url, "ssh_key_names": "laptop", **FAST},
            secrets=SecretStore(env={"LAMBDA_API_KEY": "lambda-key-0123456789"}),
        )
        with pytest.raises(ProviderError) as info:
            await p.submit(code_spec(tmp_path, "lambda", url="", sha="", inputs=()))
        assert info.value.kind is K.INVALID and "--artifact-store" in str(info.value) and not fake.launch_bodies
        await p.aclose()
    finally:
        await fake.close()
    with pytest.raises(ValueError, match="--artifact-store"):
        remote.wrapper_script(code_spec(tmp_path, "runpod", url="", sha=""), "/tmp/x")
    replicate = ReplicateProvider.from_settings(
        {"trainer": "acme/trainer:0123456789abcdef", "destination": "acme/out"},
        secrets=SecretStore(env={"REPLICATE_API_TOKEN": "r8_token"}),
    )
    problems = replicate.describe_launch(code_spec(tmp_path, "replicate")).problems
    assert any("cannot run there" in p for p in problems)


def _serve_code(s3_server: str, bucket: str, archive: bytes, data: bytes) -> tuple[str, str]:
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="jobs/job-5/code/code.tar.gz", Body=archive)
    s3.put_object(Bucket=bucket, Key="jobs/job-5/inputs/data/input.txt", Body=data)
    sign = lambda key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)  # noqa: E731
    return sign("jobs/job-5/code/code.tar.gz"), sign("jobs/job-5/inputs/data/input.txt")


async def _run_boot(tmp_path: Path, spec: LaunchSpec):
    """Launch on the Lambda fake, run its user data with bash as cloud-init would, poll over the stand-in ssh."""
    fake = await FakeLambda("lambda-key-0123456789").start()
    ssh, _, _ = make_fake_ssh(tmp_path / "ssh")
    (tmp_path / "key").write_text("k")
    p = LambdaProvider.from_settings(
        {
            "base_url": fake.base_url,
            "ssh_key_names": "laptop",
            **FAST,
            "ssh_key_path": str(tmp_path / "key"),
            "ssh_command": str(ssh),
            "remote_root": str(tmp_path / "remote"),
        },
        secrets=SecretStore(env={"LAMBDA_API_KEY": "lambda-key-0123456789"}),
    )
    try:
        handle = await p.submit(spec)
        fake.set_status(handle.ref, "active", ip="127.0.0.1")
        subprocess.run(["bash", "-c", fake.launch_bodies[-1]["user_data"]], check=True, timeout=30)
        for _ in range(1200):
            status = await p.status(handle)
            if status.state.terminal:
                break
            await asyncio.sleep(0.1)
        out = (await p.read_logs(handle, "stdout", 0)).data.decode()
        err = (await p.read_logs(handle, "stderr", 0)).data.decode()
        return status, out, err
    finally:
        await p.aclose()
        await fake.close()


@pytest.mark.slow
async def test_boot_script_downloads_verifies_unpacks_and_runs_nanogpt(tmp_path, s3_server, s3_bucket):
    manifest = {p.relative_to(EXAMPLE).as_posix(): [] for p in EXAMPLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    archive = transfer.pack_code(EXAMPLE, manifest)
    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 400
    code_url, input_url = _serve_code(s3_server, s3_bucket, archive, text)
    command = (sys.executable, "train.py", "--data", "data/input.txt", "--max-iters", "20", *TINY)
    spec = code_spec(
        tmp_path,
        "lambda",
        url=code_url,
        sha=hashlib.sha256(archive).hexdigest(),
        command=command,
        inputs=(("data/input.txt", input_url),),
    )
    status, out, err = await _run_boot(tmp_path / "ok", spec)
    assert status.state is RunState.SUCCEEDED, err[-2000:]
    assert "saved checkpoint checkpoints/ckpt.pt at iter 19" in out and f"{len(text):,} chars" in out
    work = tmp_path / "ok" / "remote" / "crucible-job-5-1" / "work"
    assert (work / "train.py").read_bytes() == (EXAMPLE / "train.py").read_bytes()

    # A tampered archive (the URL serves other bytes than the SHA-256 the scheduler recorded) never runs.
    bad = code_spec(tmp_path, "lambda", url=code_url, sha="0" * 64, command=command, inputs=())
    status, out, err = await _run_boot(tmp_path / "bad", bad)
    assert status.state is RunState.FAILED and status.exit_code == remote.FETCH_FAILED
    assert "does not match its SHA-256" in err and out == ""
    assert not (tmp_path / "bad" / "remote" / "crucible-job-5-1" / "work" / "train.py").exists()


async def test_fetch_refuses_an_archive_with_a_dotdot_member(tmp_path, s3_server, s3_bucket):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    archive = buf.getvalue()
    code_url, _ = _serve_code(s3_server, s3_bucket, archive, b"")
    spec = code_spec(tmp_path, "lambda", url=code_url, sha=hashlib.sha256(archive).hexdigest(), inputs=())
    result = subprocess.run(
        ["bash", "-c", remote.fetch_script(spec, str(tmp_path / "w" / "work"))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "absolute or .. member" in result.stderr
    assert not (tmp_path / "w" / "escaped.txt").exists()


def test_dry_run_preview_shows_the_code_fetch_with_placeholders():
    from crucible.api.scheduler.v1 import job_pb2
    from crucible.scheduler.providers import preview

    job = job_pb2.Job(
        spec=job_pb2.JobSpec(
            command=["python", "train.py"], code_archive=b"x", inputs=[job_pb2.JobInput(uri="builtin:tinyshakespeare")]
        ),
        offer={"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1"},
    )
    shown = preview.describe(job, {"lambda": {"ssh_key_names": "laptop"}})
    assert shown.problems == () and shown.requests
    user_data = shown.requests[0]["json"]["user_data"]
    wrapper = base64.b64decode(re.search(r"echo (\S+) \| base64 -d >", user_data).group(1)).decode()
    script = fetch_of(wrapper)
    assert shlex.quote(preview.CODE_URL_PLACEHOLDER) in script and "data/tinyshakespeare" in script
