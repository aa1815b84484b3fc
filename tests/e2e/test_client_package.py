"""The client distribution alone (issue 28): crucible-client built from clients/ into a fresh venv, without the servers.

Imports, no torch/transformers/kubernetes there, and the README's SDK example run by that venv against a running mesh.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from crucible.mesh import SERVICES, default_ports
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients"
#: Distributions that must never come with the client: the servers, their model stack, their provider SDKs.
SERVER_ONLY = ("crucible", "torch", "transformers", "accelerate", "kubernetes", "s3fs", "modal", "scikit-learn")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 600)
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the fresh venv see this checkout or the main venv."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv holding only crucible-client and its dependencies. The venv with the dependencies is cached in the temp
    folder (keyed by clients/pyproject.toml); the client wheel is rebuilt from this checkout and reinstalled each run."""
    if not (CLIENT / "crucible" / "api" / "__init__.py").is_file():
        pytest.fail("clients/crucible/api is missing: run `make proto` first")
    key = hashlib.sha256((CLIENT / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"crucible-client-venv-{key}"
    python = venv / "bin" / "python"
    wheels = tmp_path_factory.mktemp("client-wheel")
    # Built from a copy (a stale clients/build/ of an earlier build would otherwise leak deleted modules into the wheel)
    # by this (main) environment's setuptools: no network, no build isolation.
    source = tmp_path_factory.mktemp("client-source") / "clients"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("crucible_client-*.whl")
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        made = _run([sys.executable, "-m", "venv", str(venv)], env=_clean_env())
        assert made.returncode == 0, made.stderr
        # Dependencies from the package index (pip's cache makes later builds offline-friendly).
        deps = _run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=_clean_env(), timeout=900)
        if deps.returncode != 0:
            pytest.skip(f"cannot install crucible-client's dependencies into a fresh venv (package index?): {deps.stderr[-500:]}")
        (venv / ".ready").write_text("")
    again = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], env=_clean_env())
    assert again.returncode == 0, again.stderr
    return venv


def test_the_client_installs_alone_and_imports(client_venv: Path, tmp_path: Path) -> None:
    python = str(client_venv / "bin" / "python")
    # -I: no user site, no PYTHONPATH, not the current folder; run from elsewhere so nothing of the checkout is seen.
    probe = _run(
        [
            python,
            "-I",
            "-c",
            "import crucible.clients, crucible.api, crucible.clients.mesh, crucible.clients.reward, crucible.clients.status;"
            "from crucible.api.scheduler.v1 import job_pb2; from crucible.clients import Mesh, SyncMesh;"
            "print(sorted(crucible.__path__))",
        ],
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert probe.returncode == 0, probe.stderr
    assert str(client_venv) in probe.stdout and str(REPO) not in probe.stdout, probe.stdout
    # The servers are not there: their packages do not import.
    servers = _run([python, "-I", "-c", "import crucible.runtime"], cwd=tmp_path, env=_clean_env())
    assert servers.returncode != 0 and "No module named 'crucible.runtime'" in servers.stderr, servers.stderr
    for name in SERVER_ONLY:
        shown = _run([python, "-m", "pip", "show", "-q", name], cwd=tmp_path, env=_clean_env())
        assert shown.returncode != 0, f"{name} is installed with the client alone:\n{shown.stdout}"
    assert _run([python, "-m", "pip", "show", "-q", "crucible-client"], env=_clean_env()).returncode == 0


def test_regular_wheels_of_both_distributions_share_the_crucible_namespace(client_venv: Path, tmp_path: Path) -> None:
    """Non-editable installs: neither wheel has crucible/__init__.py, and both install into one `crucible` package."""
    source = tmp_path / "repo"
    for part in ("services", "clients"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    built = _run([*pip_wheel, str(source), str(source / "clients"), "-w", str(wheels)])
    assert built.returncode == 0, built.stderr
    names = {w.name.split("-")[0]: zipfile.ZipFile(w).namelist() for w in wheels.glob("*.whl")}
    assert set(names) == {"crucible", "crucible_client"}
    for files in names.values():
        assert "crucible/__init__.py" not in files
    assert not [f for f in names["crucible"] if f.startswith(("crucible/api/", "crucible/clients/"))]
    assert {f.split("/")[1] for f in names["crucible_client"] if f.startswith("crucible/")} == {"api", "clients"}
    site = tmp_path / "site"
    target = _run(
        [str(client_venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        + [str(w) for w in wheels.glob("*.whl")],
        env=_clean_env(),
    )
    assert target.returncode == 0, target.stderr
    probe = _run(
        [
            str(client_venv / "bin" / "python"),
            "-c",
            "import crucible, crucible.version, crucible.runtime.sqlite, crucible.clients.mesh;"
            "import crucible.api.cost.v1.cost_service_pb2, crucible.runtime.errors as e, crucible.clients.status as s;"
            "assert e.parse_status_details is s.parse_status_details;"
            "print(crucible.version.__version__)",
        ],
        cwd=tmp_path,
        env={**_clean_env(), "PYTHONPATH": str(site)},
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "0.1.0", probe.stderr


def _readme_sdk_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The SDK, the reward loop and the attack loop") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's SDK section has no python example"
    return match.group(1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """The whole mesh (`crucible up`) started by the main environment, on a free block of loopback ports."""
    base = free_port_block(len(SERVICES))
    log_dir = tmp_path_factory.mktemp("client-mesh")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crucible", "up", "--base-port", str(base), "--log-dir", str(log_dir), "--startup-timeout", "480"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CRUCIBLE_STATE_DIR": str(log_dir / "state")},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 540
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving;"):
            break
    if not lines or not lines[-1].startswith("serving;"):
        proc.kill()
        pytest.fail("mesh did not come up:\n" + "".join(lines))
    yield default_ports(base)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_readme_sdk_example_runs_from_the_client_venv(client_venv: Path, mesh, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_readme_sdk_example())
    env = _clean_env()
    env.update({f"CRUCIBLE_{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in mesh.items()})
    for variable in ("CRUCIBLE_CLIENT_TOKEN", "CRUCIBLE_AUTH_TOKEN", "CRUCIBLE_CLIENT_TOKEN_FILE", "CRUCIBLE_CLIENT_CONFIG"):
        env.pop(variable, None)
    result = _run([str(client_venv / "bin" / "python"), "-I", str(script)], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = result.stdout.strip().splitlines()
    criterion, probability = first.split()
    float(criterion)  # the detector's criterion of the text
    assert probability == "None" or 0.0 <= float(probability) <= 1.0
    totals, advantages = re.fullmatch(r"(\[.*?\]) (\[.*?\])", second).groups()  # type: ignore[union-attr]
    assert len(totals.split(",")) == 2 and len(advantages.split(",")) == 2, second
