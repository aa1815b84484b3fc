"""The job object store and the SDK checkpoint helper against a real S3 HTTP server on loopback and a local folder.

Covers atomic writes, ranged reads, listings, deletion, presigned reads, scoped job keys, and truncated checkpoints.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from crucible.clients import checkpoint
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreError, StoreSettings, check_relative


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return JobObjectStore(StoreSettings(url=f"file://{tmp_path / 'store'}"))
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return JobObjectStore(
        StoreSettings(
            url=f"s3://{bucket}/crucible", endpoint_url=endpoint, access_key="testing", secret_key="testing", region="us-east-1"
        )
    )


def test_put_list_read_delete(store, tmp_path):
    store.put_bytes("job-1", "artifacts", "out/metrics.json", b'{"loss": 1.5}')
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * 4096)
    store.put_file("job-1", "artifacts", "big.bin", local)
    store.put_bytes("job-2", "artifacts", "other.txt", b"x")
    listed = store.list("job-1", "artifacts")
    assert [(o.path, o.size) for o in listed] == [("big.bin", 1 << 20), ("out/metrics.json", 13)]
    assert store.list("job-1", "artifacts", prefix="out/")[0].path == "out/metrics.json"
    assert store.read_range("job-1", "artifacts", "big.bin", 1000, 10) == (bytes(range(256)) * 4096)[1000:1010]
    chunks = list(store.iter_chunks("job-1", "artifacts", "big.bin", offset=(1 << 20) - 300, chunk=128))
    assert b"".join(chunks) == local.read_bytes()[-300:] and len(chunks) == 3
    assert store.stat("job-1", "artifacts", "nope") is None
    assert store.delete_job("job-1") == 2
    assert store.list("job-1", "artifacts") == []
    assert [o.path for o in store.list("job-2", "artifacts")] == ["other.txt"]


def test_download_tree_is_bounded(store, tmp_path):
    store.put_bytes("job-3", "inputs", "a/b.txt", b"hello")
    assert store.download_tree("job-3", "inputs", tmp_path / "dest", max_bytes=100) == 5
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == b"hello"
    with pytest.raises(StoreError, match="over the limit"):
        store.download_tree("job-3", "inputs", tmp_path / "dest2", max_bytes=4)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "", "a\x00b", "x" * 2000, "a\\b"])
def test_paths_stay_inside(bad):
    with pytest.raises(ValueError):
        check_relative(bad)


def test_job_ids_are_checked(tmp_path):
    store = JobObjectStore(StoreSettings(url=f"file://{tmp_path}"))
    for bad in ("../x", "a/b", "", "x" * 200):
        with pytest.raises(ValueError):
            store.url(bad, "checkpoints")


def test_presigned_read_needs_no_keys(s3_server, s3_bucket):
    store = JobObjectStore(
        StoreSettings(
            url=f"s3://{s3_bucket}/p", endpoint_url=s3_server, access_key="testing", secret_key="testing", region="us-east-1"
        )
    )
    store.put_bytes("job-4", "code", "code.tar.gz", b"archive-bytes")
    url = store.read_url("job-4", "code", "code.tar.gz", expires_s=600)
    assert "Signature" in url or "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as resp:  # a plain GET, as a boot script's curl does
        assert resp.read() == b"archive-bytes"


def test_job_env_scopes_keys(s3_server, s3_bucket):
    base = dict(url=f"s3://{s3_bucket}/p", endpoint_url=s3_server, access_key="testing", secret_key="testing", region="us-east-1")
    plain = JobObjectStore(StoreSettings(**base)).job_env("job-5", 3600)
    assert plain["CRUCIBLE_CHECKPOINT_URL"] == f"s3://{s3_bucket}/p/jobs/job-5/checkpoints"
    assert "AWS_SECRET_ACCESS_KEY" not in plain  # no role, no opt-in: the scheduler's keys never reach the job
    scoped = JobObjectStore(StoreSettings(**base, role_arn="arn:aws:iam::123456789012:role/crucible-jobs")).job_env("job-5", 3600)
    assert scoped["AWS_SESSION_TOKEN"] and scoped["AWS_ACCESS_KEY_ID"] != "testing"
    shared = JobObjectStore(StoreSettings(**base, share_credentials=True)).job_env("job-5", 3600)
    assert shared["AWS_ACCESS_KEY_ID"] == "testing"
    assert "testing" not in repr(StoreSettings(**base))


def test_bad_urls_refused(tmp_path):
    for url in ("ftp://x/y", "file://relative/path", "s3://"):
        with pytest.raises(ValueError):
            JobObjectStore(StoreSettings(url=url))


# ---- the SDK checkpoint helper ---------------------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def ckpt_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path / 'ckpts'}"
    request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/jobs/j/checkpoints"


def test_checkpoint_round_trip_and_retention(ckpt_url, monkeypatch, request):
    if ckpt_url.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("s3_server"))
    import torch

    assert checkpoint.load_latest(url=ckpt_url) is None
    for step in (10, 20, 30, 40):
        checkpoint.save_checkpoint(
            {"w": torch.full((3,), float(step)), "step": step}, step, {"loss": 1.0 / step}, url=ckpt_url, keep=2
        )
    assert [c.step for c in checkpoint.list_checkpoints(url=ckpt_url)] == [30, 40]
    state, info = checkpoint.load_latest(url=ckpt_url)
    assert info.step == 40 and state["step"] == 40 and torch.equal(state["w"], torch.full((3,), 40.0))
    assert info.metrics == {"loss": 0.025}


def test_truncated_or_unfinished_checkpoint_is_never_loaded(ckpt_url, monkeypatch, request):
    if ckpt_url.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("s3_server"))
    import fsspec

    checkpoint.save_checkpoint(b"good-step-5", 5, url=ckpt_url, keep=0)
    checkpoint.save_checkpoint(b"good-step-6-longer", 6, url=ckpt_url, keep=0)
    fs, root = fsspec.core.url_to_fs(ckpt_url)
    # step 6's payload cut short after the manifest was written (a truncated upload): size check drops it
    fs.pipe_file(f"{root}/step-000000000006/state.pt", b"good-step")
    # step 7: a payload whose manifest never came (the writer died in between)
    fs.makedirs(f"{root}/step-000000000007", exist_ok=True)
    fs.pipe_file(f"{root}/step-000000000007/state.pt", b"half")
    # step 8: same size, other bytes (a rewritten payload): the hash check drops it
    checkpoint.save_checkpoint(b"AAAA", 8, url=ckpt_url, keep=0)
    fs.pipe_file(f"{root}/step-000000000008/state.pt", b"BBBB")
    data, info = checkpoint.load_latest(url=ckpt_url, raw=True)
    assert (data, info.step) == (b"good-step-5", 5)
    manifest = json.loads(fs.cat_file(f"{root}/step-000000000005/manifest.json"))
    assert manifest["size"] == len(b"good-step-5")


def test_checkpoint_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.ENV_URL, f"file://{tmp_path / 'env-ckpts'}")
    checkpoint.save_checkpoint(b"x", 1)
    assert (Path(tmp_path) / "env-ckpts" / "step-000000000001" / "manifest.json").is_file()
