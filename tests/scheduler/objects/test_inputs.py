"""Job inputs (issue 19, item 4): built-ins, allowed local folders and s3 prefixes staged through the job's store.

Refusals name the field: paths outside the allowed roots, links, special files, oversize inputs, unknown schemes.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from crucible.runtime.errors import InvalidArgument
from crucible.scheduler.domain.spec import JobInput as Input
from crucible.scheduler.objects.inputs import InputLimits, resolve_inputs, stage_to_store, validate_inputs
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreSettings


def _store(tmp_path: Path) -> JobObjectStore:
    return JobObjectStore(StoreSettings(url=f"file://{tmp_path / 'store'}"))


def test_builtin_and_local_folder_are_staged(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha")
    (data / "sub" / "b.txt").write_text("beta")
    single = tmp_path / "data" / "a.txt"
    inputs = [
        Input(uri="builtin:tinyshakespeare", path=""),
        Input(uri=f"file://{data}", path="corpus"),
        Input(uri=f"file://{single}", path="one/file.txt"),
    ]
    validate_inputs(inputs)
    store = _store(tmp_path)
    sources = resolve_inputs(inputs, InputLimits(roots=(f"file://{tmp_path}/data",)), store)
    staged = stage_to_store(sources, store, "job-1")
    work = tmp_path / "work"
    store.download_tree("job-1", "inputs", work, max_bytes=10 << 20)
    shakespeare = (work / "data" / "tinyshakespeare" / "input.txt").read_text()
    assert shakespeare.startswith("First Citizen:") and len(shakespeare) > 1_000_000
    assert (work / "corpus" / "a.txt").read_text() == "alpha" and (work / "corpus" / "sub" / "b.txt").read_text() == "beta"
    assert (work / "one" / "file.txt").read_text() == "alpha"
    assert staged == len(shakespeare.encode()) + 5 + 4 + 5


@pytest.mark.parametrize(
    "uri,reason",
    [
        ("ftp://x/y", "BAD_INPUT"),
        ("builtin:nope", "BAD_INPUT"),
        ("", "BAD_INPUT"),
        ("x" * 3000, "BAD_INPUT"),
    ],
)
def test_cheap_checks(uri, reason):
    with pytest.raises(InvalidArgument) as err:
        validate_inputs([Input(uri=uri, path="")])
    assert err.value.reason == reason and "spec.inputs[0]" in str(err.value.field_violations)


@pytest.mark.parametrize("path", ["../x", "/abs", ".crucible/x"])
def test_destination_must_stay_inside(path):
    with pytest.raises(InvalidArgument):
        validate_inputs([Input(uri="builtin:tinyshakespeare", path=path)])


def test_paths_outside_roots_links_and_special_files_are_refused(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (allowed / "escape").symlink_to(secret)
    limits = InputLimits(roots=(f"file://{allowed}",))
    store = _store(tmp_path)
    for uri in (f"file://{secret}", f"file://{allowed}/escape", "file:///proc/self/environ", "file:///etc"):
        with pytest.raises(InvalidArgument) as err:
            resolve_inputs([Input(uri=uri, path="x")], limits, store)
        assert err.value.reason in ("INPUT_NOT_ALLOWED", "INPUT_NOT_FOUND"), uri
    (allowed / "folder").mkdir()
    (allowed / "folder" / "link").symlink_to(secret)
    with pytest.raises(InvalidArgument) as err:
        resolve_inputs([Input(uri=f"file://{allowed}/folder", path="x")], limits, store)
    assert err.value.reason == "INPUT_LINK"
    os.mkfifo(allowed / "fifo")
    with pytest.raises(InvalidArgument) as err:
        resolve_inputs([Input(uri=f"file://{allowed}/fifo", path="x")], limits, store)
    assert err.value.reason == "INPUT_SPECIAL_FILE"
    with pytest.raises(InvalidArgument):  # no roots configured: nothing on the host is readable
        resolve_inputs([Input(uri=f"file://{allowed}", path="x")], InputLimits(), store)


def test_size_limit_before_copy(tmp_path):
    allowed = tmp_path / "big"
    allowed.mkdir()
    (allowed / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(InvalidArgument) as err:
        resolve_inputs(
            [Input(uri=f"file://{allowed}", path="x")], InputLimits(roots=(f"file://{allowed}",), max_bytes=999), _store(tmp_path)
        )
    assert err.value.reason == "INPUT_TOO_LARGE"
    assert not (tmp_path / "store" / "jobs").exists()


def test_s3_prefix_input_is_copied_server_side(s3_server, s3_bucket, tmp_path):
    store = JobObjectStore(
        StoreSettings(
            url=f"s3://{s3_bucket}/crucible",
            endpoint_url=s3_server,
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )
    )
    store.fs.pipe_file(f"{s3_bucket}/datasets/wiki/part-0.txt", b"zero")
    store.fs.pipe_file(f"{s3_bucket}/datasets/wiki/part-1.txt", b"one")
    store.fs.pipe_file(f"{s3_bucket}/private/keys.txt", b"secret")
    limits = InputLimits(roots=(f"s3://{s3_bucket}/datasets/",))
    sources = resolve_inputs([Input(uri=f"s3://{s3_bucket}/datasets/wiki", path="")], limits, store)
    assert stage_to_store(sources, store, "job-9") == 7
    assert [o.path for o in store.list("job-9", "inputs")] == ["data/wiki/part-0.txt", "data/wiki/part-1.txt"]
    with pytest.raises(InvalidArgument):
        resolve_inputs([Input(uri=f"s3://{s3_bucket}/private/keys.txt", path="")], limits, store)
    with pytest.raises(InvalidArgument):  # a prefix that only looks like an allowed one
        resolve_inputs([Input(uri=f"s3://{s3_bucket}/datasets-evil/x", path="")], limits, store)


def test_builtin_ships_in_the_package():
    from crucible.scheduler.objects.inputs import BUILTINS, DATASETS

    for packaged, _name in BUILTINS.values():
        assert gzip.decompress((DATASETS / packaged).read_bytes())
