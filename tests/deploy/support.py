"""Helpers of the deployment tests: where deploy/ and the tools are, running them, rendering overlays, env checks.

The tools (kubectl with kustomize, kubernetes-validate, docker-compose, promtool, prometheus) are installed by `make test`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
PROMETHEUS_DIR = DEPLOY / "prometheus"
OVERLAYS = sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def tool(name: str) -> str:
    """Path of a command-line tool: beside this interpreter (pip-installed) or on PATH; fails naming the installer."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; `make test` installs it (see the Makefile's `tools` step)")
    return found


def run(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=timeout)


def kustomize(directory: Path) -> str:
    """`kubectl kustomize DIR`; fails the test with kustomize's message on error."""
    result = run(tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return result.stdout


def load_documents(text: str) -> list[dict]:
    """Every non-empty YAML document of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


# Environment variables the manifests may set that are not server settings: the client SDK's (crucible.clients),
# the container probe's (deploy/docker/healthcheck.py), the model cache, and third-party ones.
NON_SERVER_ENV = ("CRUCIBLE_CLIENT_", "CRUCIBLE_PROBE_", "CRUCIBLE_CACHE_DIR")


def check_service_env(service: str, env: dict[str, str]) -> None:
    """Every CRUCIBLE_* variable names a real setting of `service` (service or global form) and its value loads.

    File settings (*_FILE) are only checked by name: the files exist in the pod, not here.
    """
    import dataclasses

    from crucible.mesh import SERVICES
    from crucible.runtime.config import load_config

    config_cls, _ = SERVICES[service].load_config_only()
    fields = {f.name for f in dataclasses.fields(config_cls)}
    prefix = f"CRUCIBLE_{service.upper()}_"
    loadable: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith("CRUCIBLE_") or name.startswith(NON_SERVER_ENV):
            continue
        field = name[len(prefix) :] if name.startswith(prefix) else name[len("CRUCIBLE_") :]
        assert field.lower() in fields, f"{service}: {name} is not a setting of {config_cls.__name__}"
        if not field.endswith("_FILE"):
            loadable[name] = value
    load_config(config_cls, service, env=loadable)
