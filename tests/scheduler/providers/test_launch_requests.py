"""Launch requests of lambda, runpod and paperspace: the dry-run preview is what submit sends, every field is one the
provider documents, and the fakes refuse what the real APIs refuse (missing region, unknown type, bad key).

Field lists and sources are in tests/fakes/api_fields.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.lambda_cloud import LambdaProvider
from crucible.scheduler.providers.paperspace import PaperspaceProvider
from crucible.scheduler.providers.runpod import RunPodProvider
from tests.fakes.api_fields import (
    LAMBDA_LAUNCH,
    PAPERSPACE_MACHINE,
    PAPERSPACE_STARTUP_SCRIPT,
    RUNPOD_ON_DEMAND,
    RUNPOD_SPOT,
    violations,
)
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.paperspace_api import FakePaperspace
from tests.fakes.runpod_api import FakeRunPod

KEYS = {
    "lambda": "secret_lambda_0123456789abcdef",
    "runpod": "rpa_SECRET0123456789ABCDEF",
    "paperspace": "ps-SECRET-0123456789abcdef",
}
FAST = {"timeout_s": "2", "retry_base_s": "0.01", "retry_max_s": "0.02", "max_retries": "1"}


def spec(tmp_path: Path, offer: OfferRef) -> LaunchSpec:
    return LaunchSpec(
        "job-42",
        1,
        ("python", "train.py", "--steps", "100"),
        {"SEED": "1"},
        offer,
        tmp_path,
        checkpoint_dir="checkpoints",
        max_duration_s=3600,
    )


def make(kind: str, url: str, key: str | None = None, **settings: str):
    key = KEYS[kind] if key is None else key
    store = SecretStore(env={f"{kind.upper()}_API_KEY": key})
    if kind == "lambda":
        return LambdaProvider.from_settings({"base_url": url, "ssh_key_names": "laptop", **FAST, **settings}, secrets=store)
    if kind == "runpod":
        return RunPodProvider.from_settings({"base_url": url, **FAST, **settings}, secrets=store)
    return PaperspaceProvider.from_settings({"base_url": url, "template_id": "t0abc123", **FAST, **settings}, secrets=store)


def assert_redacted(preview, kind: str) -> None:
    text = json.dumps(preview.as_dict())
    assert KEYS[kind] not in text
    assert all(r["headers"]["Authorization"] == "Bearer ***" for r in preview.requests)


async def test_lambda_preview_is_the_documented_request_submit_sends(tmp_path):
    fake = await FakeLambda(KEYS["lambda"]).start()
    fake.capacity.add(("us-west-1", "gpu_1x_a100_sxm4"))
    try:
        p = make("lambda", fake.base_url)
        s = spec(tmp_path, OfferRef("lambda", "gpu_1x_a100_sxm4", "us-west-1", "A100-40GB", 1))
        preview = p.describe_launch(s)
        assert preview.problems == () and len(preview.requests) == 1
        request = preview.requests[0]
        assert request["method"] == "POST" and request["url"] == fake.base_url + "/instance-operations/launch"
        assert violations(request["json"], LAMBDA_LAUNCH) == []
        assert request["json"]["region_name"] == "us-west-1" and request["json"]["ssh_key_names"] == ["laptop"]
        assert_redacted(preview, "lambda")
        await p.submit(s)
        assert fake.launch_bodies[-1] == request["json"]  # byte for byte what the preview showed
        await p.aclose()
    finally:
        await fake.close()


@pytest.mark.parametrize("spot", [False, True])
async def test_runpod_preview_is_the_documented_mutation_submit_sends(tmp_path, spot):
    fake = await FakeRunPod(KEYS["runpod"]).start()
    fake.available.add("NVIDIA A100 80GB PCIe")
    try:
        p = make("runpod", fake.url)
        # the cost catalog's form: "<count>x <gpuTypeId>" and a data center as region
        s = spec(tmp_path, OfferRef("runpod", "2x NVIDIA A100 80GB PCIe", "US-TX-3", "A100-80GB", 2, spot, 3.28))
        preview = p.describe_launch(s)
        assert preview.problems == ()
        request = preview.requests[0]
        assert request["url"] == fake.url + "/graphql"
        inp = request["json"]["variables"]["input"]
        field = "podRentInterruptable" if spot else "podFindAndDeployOnDemand"
        assert field in request["json"]["query"]
        assert violations(inp, RUNPOD_SPOT if spot else RUNPOD_ON_DEMAND) == []
        assert inp["gpuTypeId"] == "NVIDIA A100 80GB PCIe" and inp["gpuCount"] == 2 and inp["dataCenterId"] == "US-TX-3"
        assert ("bidPerGpu" in inp) is spot
        assert_redacted(preview, "runpod")
        await p.submit(s)
        assert fake.inputs[-1] == inp
        await p.aclose()
    finally:
        await fake.close()


async def test_paperspace_preview_is_the_documented_pair_of_requests_submit_sends(tmp_path):
    fake = await FakePaperspace(KEYS["paperspace"]).start()
    try:
        p = make("paperspace", fake.base_url)
        s = spec(tmp_path, OfferRef("paperspace", "A100-80G", "ny2", "A100-80GB", 1))
        preview = p.describe_launch(s)
        assert preview.problems == ()
        script, machine = preview.requests
        assert script["url"] == fake.base_url + "/startup-scripts" and machine["url"] == fake.base_url + "/machines"
        assert violations(script["json"], PAPERSPACE_STARTUP_SCRIPT) == []
        assert violations(machine["json"], PAPERSPACE_MACHINE) == []
        assert machine["json"]["region"] == "ny2" and machine["json"]["machineType"] == "A100-80G"
        assert_redacted(preview, "paperspace")
        handle = await p.submit(s)
        sent = fake.machines[handle.ref]
        stored_script = fake.scripts[handle.data["startup_script_id"]]
        assert stored_script["script"] == script["json"]["script"]
        assert sent["machineType"] == "A100-80G" and sent["region"] == "ny2"
        await p.aclose()
    finally:
        await fake.close()


@pytest.mark.parametrize("kind", ["lambda", "paperspace"])
async def test_an_offer_without_region_is_refused_before_any_call(tmp_path, kind):
    fake = await (FakeLambda if kind == "lambda" else FakePaperspace)(KEYS[kind]).start()
    try:
        url = fake.base_url
        p = make(kind, url)
        s = spec(tmp_path, OfferRef(kind, "gpu_1x_a10" if kind == "lambda" else "A100-80G", "", "A10", 1))
        assert any("region" in problem for problem in p.describe_launch(s).problems)
        with pytest.raises(ProviderError) as info:
            await p.submit(s)
        assert info.value.kind is K.INVALID and "region" in str(info.value)
        assert fake.requests == [] or all(r.method == "GET" for r in fake.requests)
        await p.aclose()
    finally:
        await fake.close()


async def test_fakes_refuse_what_the_real_apis_refuse(tmp_path):
    """Raw requests, as another client would send them, get the providers' own error shapes."""
    lam, rp, ps = (
        await FakeLambda(KEYS["lambda"]).start(),
        await FakeRunPod(KEYS["runpod"]).start(),
        await FakePaperspace(KEYS["paperspace"]).start(),
    )
    try:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEYS['lambda']}"}) as c:
            base = {"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"]}
            for body in (
                {k: v for k, v in base.items() if k != "region_name"},
                {**base, "instance_type_name": "gpu_1x_nope"},
                {**base, "regoin_name": "x"},
            ):
                r = await c.post(lam.base_url + "/instance-operations/launch", json=body)
                assert r.status_code == 400 and r.json()["error"]["code"] == "global/invalid-parameters", body
            r = await c.post(lam.base_url + "/instance-operations/launch", json=base, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "global/invalid-api-key"
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEYS['runpod']}"}) as c:
            query = "mutation D($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }"
            good = {"imageName": "img", "gpuTypeId": "NVIDIA A40", "gpuCount": 1, "cloudType": "ALL"}
            r = await c.post(rp.url + "/graphql", json={"query": query, "variables": {"input": {**good, "gpuTpyeId": "x"}}})
            assert r.status_code == 200 and "is not defined by type" in r.json()["errors"][0]["message"]
            r = await c.post(
                rp.url + "/graphql", json={"query": query, "variables": {"input": {**good, "gpuTypeId": "NVIDIA Nope"}}}
            )
            assert "no longer any instances available" in r.json()["errors"][0]["message"]  # RunPod's answer to it
            r = await c.post(
                rp.url + "/graphql",
                json={"query": query, "variables": {"input": good}},
                headers={"Authorization": "Bearer wrong"},
            )
            assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEYS['paperspace']}"}) as c:
            base = {"name": "m", "machineType": "A100-80G", "templateId": "t", "region": "ny2", "diskSize": 100}
            for body in (
                {k: v for k, v in base.items() if k != "region"},
                {**base, "machineType": "Z9000"},
                {**base, "regoin": "ny2"},
            ):
                r = await c.post(ps.base_url + "/machines", json=body)
                assert r.status_code == 400 and set(r.json()) >= {"code", "message"}, body
            r = await c.post(ps.base_url + "/machines", json=base, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
    finally:
        for fake in (lam, rp, ps):
            await fake.close()


async def test_adapters_map_the_refusals(tmp_path):
    lam, rp, ps = (
        await FakeLambda(KEYS["lambda"]).start(),
        await FakeRunPod(KEYS["runpod"]).start(),
        await FakePaperspace(KEYS["paperspace"]).start(),
    )
    try:
        cases = [
            (make("lambda", lam.base_url), OfferRef("lambda", "gpu_1x_nope", "us-east-1"), K.INVALID),
            (make("lambda", lam.base_url, key="wrong-key-000000"), OfferRef("lambda", "gpu_1x_a10", "us-east-1"), K.AUTH),
            (make("runpod", rp.url), OfferRef("runpod", "Z9000", "US-TX-1", "Z9000", 1), K.INVALID),  # refused here
            (make("runpod", rp.url), OfferRef("runpod", "NVIDIA A40", "Mars-1", "A40", 1), K.INVALID),
            (make("runpod", rp.url, key="wrong-key-000000"), OfferRef("runpod", "NVIDIA A40", "US-TX-1", "A40", 1), K.AUTH),
            (make("paperspace", ps.base_url), OfferRef("paperspace", "Z9000", "ny2"), K.INVALID),
            (make("paperspace", ps.base_url, key="wrong-key-000000"), OfferRef("paperspace", "A100-80G", "ny2"), K.AUTH),
        ]
        for p, offer, kind in cases:
            with pytest.raises(ProviderError) as info:
                await p.submit(spec(tmp_path, offer))
            assert info.value.kind is kind, (offer, info.value)
            await p.aclose()
        assert rp.inputs == [] or all(i["gpuTypeId"] != "Z9000" for i in rp.inputs)  # never sent
    finally:
        for fake in (lam, rp, ps):
            await fake.close()


async def test_replicate_kubernetes_and_modal_preview_what_they_send(tmp_path):
    from tests.fakes.kubernetes_api import FakeKubernetes
    from tests.fakes.modal_sdk import FakeModal
    from tests.fakes.replicate_api import FakeReplicate
    from tests.scheduler.providers import test_kubernetes as kube
    from tests.scheduler.providers import test_modal as mod
    from tests.scheduler.providers import test_replicate as rep

    fake = await FakeReplicate(rep.TOKEN).start()
    try:
        p = rep.provider(fake)
        s = rep.spec(tmp_path)
        preview = p.describe_launch(s)
        assert preview.problems == () and rep.TOKEN not in json.dumps(preview.as_dict())
        training = fake.trainings[(await p.submit(s)).ref]
        request = preview.requests[0]
        assert request["json"]["input"] == training["input"] and request["json"]["destination"] == training["destination"]
        assert request["url"].endswith(f"/v1/models/{training['model']}/versions/{training['version']}/trainings")
        await p.aclose()
    finally:
        await fake.close()

    fake = await FakeKubernetes(kube.TOKEN).start()
    try:
        p = kube.provider(fake)
        s = kube.spec(tmp_path)
        preview = p.describe_launch(s)
        assert preview.problems == () and kube.TOKEN not in json.dumps(preview.as_dict())
        handle = await p.submit(s)
        job = fake.jobs[(kube.NS, handle.ref)]
        manifest = preview.requests[0]["json"]
        assert preview.requests[0]["url"] == f"{fake.url}/apis/batch/v1/namespaces/{kube.NS}/jobs"
        assert manifest["metadata"]["name"] == handle.ref
        assert manifest["spec"]["template"]["spec"] == job["spec"]["template"]["spec"]
    finally:
        await fake.close()

    sdk = FakeModal(mod.TOKEN_ID, mod.TOKEN_SECRET)
    p = mod.provider(sdk)
    s = mod.spec(tmp_path, ("echo", "hi"), max_duration_s=120)
    preview = p.describe_launch(s)
    assert preview.problems == () and mod.TOKEN_SECRET not in json.dumps(preview.as_dict())
    call = preview.requests[0]["json"]
    run = sdk.runs[(await p.submit(s)).ref]
    assert (call["name"], call["timeout"], call["gpu"], call["env"]) == (
        run.name,
        run.options["timeout"],
        run.options["gpu"],
        run.options["env"],
    )
    sdk.shutdown()
