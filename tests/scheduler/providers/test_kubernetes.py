"""The Kubernetes adapter (official client, sync calls in threads) against a loopback fake of the API server.

Covers the Job manifest (GPU limits, env, deadline, no retries), status from Job conditions and pods, preemption,
pod logs by offset, delete with propagation, 409 adoption, quota/auth/invalid errors and transient faults.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.kubernetes import KubernetesProvider
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.server import Fault

TOKEN = "eyJhbGciOiJSUzI1NiJ9.k8s-secret-token.sig"
NS = "ml"


@pytest.fixture
async def fake():
    server = await FakeKubernetes(TOKEN).start()
    yield server
    await server.close()


def provider(fake: FakeKubernetes, token: str = TOKEN, **settings: str) -> KubernetesProvider:
    values = {
        "base_url": fake.url,
        "namespace": NS,
        "timeout_s": "0.5",
        "retry_base_s": "0.01",
        "retry_max_s": "0.02",
        "max_retries": "2",
        **settings,
    }
    return KubernetesProvider.from_settings(values, secrets=SecretStore(env={"CRUCIBLE_KUBERNETES_TOKEN": token}))


def spec(tmp_path: Path, gpus: int = 2, **kw) -> LaunchSpec:
    return LaunchSpec(
        kw.pop("job_id", "job-1"),
        1,
        ("python", "train.py"),
        {"SEED": "1"},
        OfferRef("kubernetes", "a100-node", gpu_name="NVIDIA-A100-SXM4-80GB", gpu_count=gpus),
        tmp_path,
        container_image="ghcr.io/acme/trainer:1",
        checkpoint_dir="/ckpt",
        max_duration_s=3600,
        **kw,
    )


async def test_job_manifest_status_logs_and_cancel(fake, tmp_path):
    p = provider(fake, gpu_node_label="nvidia.com/gpu.product", checkpoint_pvc="ckpt-pvc")
    assert p.credentials_present() and TOKEN not in repr(p)
    handle = await p.submit(spec(tmp_path))
    job = fake.jobs[(NS, handle.ref)]
    pod_spec = job["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 3600
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["command"] == ["python", "train.py"] and container["image"] == "ghcr.io/acme/trainer:1"
    assert {"name": "SEED", "value": "1"} in container["env"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod_spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ckpt-pvc"
    assert pod_spec["restartPolicy"] == "Never"
    assert (await p.status(handle)).state is RunState.PENDING
    fake.start_pod(
        NS,
        handle.ref,
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    status = await p.status(handle)
    assert status.state is RunState.PROVISIONING and "Insufficient nvidia.com/gpu" in status.message
    assert (await p.read_logs(handle, "stdout", 0)).data == b""  # container waiting to start
    pod = fake.start_pod(NS, handle.ref, "Running")
    assert (await p.status(handle)).state is RunState.RUNNING
    fake.logs[(NS, pod)] = b"iter 0: loss 4.2\niter 10: loss 3.1\n"
    chunk = await p.read_logs(handle, "stdout", 0)
    assert chunk.data == b"iter 0: loss 4.2\niter 10: loss 3.1\n" and chunk.next_offset == 35
    fake.logs[(NS, pod)] += b"iter 20: loss 2.5\n"
    assert (await p.read_logs(handle, "stdout", chunk.next_offset)).data == b"iter 20: loss 2.5\n"
    assert (await p.read_logs(handle, "stderr", 0)).data == b""
    await p.cancel(handle)
    assert fake.deletes == [{"name": handle.ref, "propagationPolicy": "Foreground"}]
    assert (NS, handle.ref) not in fake.jobs and not fake.pods
    assert (await p.status(handle)).state is RunState.CANCELLED
    await p.cancel(handle)  # idempotent
    await p.aclose()


async def test_succeeded_failed_and_preempted(fake, tmp_path):
    p = provider(fake)
    ok = await p.submit(spec(tmp_path, gpus=1, job_id="ok"))
    fake.finish(NS, ok.ref, 0)
    status = await p.status(ok)
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0
    bad = await p.submit(spec(tmp_path, gpus=1, job_id="bad"))
    fake.finish(NS, bad.ref, 3)
    status = await p.status(bad)
    assert status.state is RunState.FAILED and status.exit_code == 3 and "BackoffLimitExceeded" in status.message
    evicted = await p.submit(spec(tmp_path, gpus=1, job_id="evicted"))
    fake.finish(NS, evicted.ref, 137, disrupted=True)
    status = await p.status(evicted)
    assert status.state is RunState.PREEMPTED and "Preempt" in status.message
    await p.aclose()


async def test_resubmit_adopts_the_existing_job(fake, tmp_path):
    p = provider(fake)
    first = await p.submit(spec(tmp_path))
    second = await p.submit(spec(tmp_path))
    assert first.ref == second.ref and len(fake.jobs) == 1
    await p.aclose()


async def test_quota_auth_invalid_and_not_found(fake, tmp_path):
    p = provider(fake)
    fake.gpu_quota = 1
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, gpus=2))
    assert info.value.kind is K.QUOTA and "exceeded quota" in str(info.value)
    with pytest.raises(ProviderError) as info:
        await p.submit(LaunchSpec("j", 1, ("true",), {}, OfferRef("kubernetes", "x"), tmp_path))
    assert info.value.kind is K.INVALID and "container_image" in str(info.value)
    with pytest.raises(ProviderError) as info:
        await p.status(type("H", (), {"ref": "nope", "data": {}})())
    assert info.value.kind is K.NOT_FOUND
    wrong = "eyJwrong.token.value99999"
    bad = provider(fake, token=wrong)
    with pytest.raises(ProviderError) as info:
        await bad.submit(spec(tmp_path))
    assert info.value.kind is K.AUTH and wrong not in str(info.value) and TOKEN not in str(info.value)
    await p.aclose()
    await bad.aclose()


async def test_transient_faults_and_malformed_answers(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.fault(Fault.rate_limited("0", b'{"kind":"Status","code":429,"reason":"TooManyRequests"}'), path="/jobs/")
    fake.fault(Fault.server_error(503, b'{"kind":"Status","code":503,"reason":"ServiceUnavailable"}'), path="/jobs/")
    assert (await p.status(handle)).state is RunState.PENDING
    fake.fault(Fault.malformed(), path="/jobs/")
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE
    fake.fault(Fault.hang(5), path="/jobs/", times=5)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT
    fake.fault(Fault.server_error(500, b"oops"), path="/jobs/", times=5)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT and info.value.status == 500
    await p.aclose()


async def test_find_reattaches_by_name(fake, tmp_path):
    p = provider(fake)
    assert await p.find(spec(tmp_path)) is None
    handle = await p.submit(spec(tmp_path))
    found = await p.find(spec(tmp_path))
    assert found == handle
    await p.aclose()
