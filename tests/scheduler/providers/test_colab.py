"""The Colab adapter (manual): the generated notebook really runs (its code cells executed with python here), the
status file it writes is what status() reads, and hand-reported states, cancel and logs work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.colab import ColabProvider


def spec(tmp_path: Path, command: tuple[str, ...]) -> LaunchSpec:
    return LaunchSpec(
        "job-c",
        2,
        command,
        {"GREETING": "hello"},
        OfferRef("colab", "T4", gpu_name="T4", gpu_count=1),
        tmp_path / "work",
        checkpoint_dir=str(tmp_path / "ckpt"),
    )


def run_notebook(notebook: Path, cwd: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    subprocess.run([sys.executable, "-c", source], cwd=cwd, check=True, timeout=60, capture_output=True)


async def test_notebook_runs_and_its_status_file_is_read(tmp_path):
    p = ColabProvider.from_settings({})
    handle = await p.submit(
        spec(
            tmp_path,
            (
                sys.executable,
                "-c",
                "import os; print(os.environ['GREETING']); import sys; print('warn', file=sys.stderr); sys.exit(3)",
            ),
        )
    )
    notebook = Path(handle.data["notebook"])
    assert notebook.parent == tmp_path / "work" / "colab"
    document = json.loads(notebook.read_text())
    assert document["nbformat"] == 4 and document["metadata"]["colab"]["gpuType"] == "T4"
    status = await p.status(handle)
    assert status.state is RunState.UNKNOWN and "waiting for the user" in status.message
    colab_vm = tmp_path / "content"  # where Colab would run it
    colab_vm.mkdir()
    run_notebook(notebook, colab_vm)
    for name in (Path(handle.data["status_file"]).name, f"{handle.ref}.stdout.log", f"{handle.ref}.stderr.log"):
        (colab_vm / name).rename(Path(handle.data["folder"]) / name)  # the user moves the downloads over
    status = await p.status(handle)
    assert status.state is RunState.FAILED and status.exit_code == 3
    assert (await p.read_logs(handle, "stdout", 0)).data == b"hello\n"
    assert (await p.read_logs(handle, "stderr", 2)).data == b"rn\n"
    assert (tmp_path / "ckpt").is_dir()


async def test_reported_by_hand_cancel_and_bad_status_file(tmp_path):
    p = ColabProvider.from_settings({"notebook_dir": str(tmp_path / "nb")})
    assert await p.find(spec(tmp_path, ("python", "train.py"))) is None
    handle = await p.submit(spec(tmp_path, ("python", "train.py")))
    assert await p.find(spec(tmp_path, ("python", "train.py"))) == handle
    p.report(handle, RunState.RUNNING, message="started on a T4")
    assert (await p.status(handle)).state is RunState.RUNNING
    await p.cancel(handle)
    status = await p.status(handle)
    assert status.state is RunState.CANCELLED and "stop the Colab runtime" in status.message
    p.report(handle, RunState.SUCCEEDED, exit_code=0)
    await p.cancel(handle)  # a terminal report is kept
    assert (await p.status(handle)).state is RunState.SUCCEEDED
    with pytest.raises(ValueError):
        p.report(handle, RunState.UNKNOWN)
    Path(handle.data["status_file"]).write_text('{"state": "exploded"}')
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE
    assert p.capabilities.manual and p.credentials_present()
