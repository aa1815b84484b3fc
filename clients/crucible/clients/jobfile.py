"""Job files: `crucible jobs submit job.yaml`, with the keys SkyPilot users already write (name, resources, workdir,
setup, run, envs) plus Crucible's (inputs, providers, provider_policy, limits), checked with field-level messages.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.clients.cli_common import parse_duration, parse_gpus

#: A job file is a few lines of YAML; anything larger is not one.
MAX_JOB_FILE_BYTES = 256 * 1024

POLICIES = ("explicit", "cheapest", "fastest", "ordered")
_TOP = {
    "name": "display name of the job",
    "resources": "what one instance needs: gpus (e.g. A100:1), gpu_memory_gib, spot, max_price_per_hour",
    "workdir": "folder sent as the job's code (relative to this file)",
    "setup": "shell commands run before `run` (e.g. pip install -r requirements.txt)",
    "run": "shell commands of the job itself (required)",
    "envs": "environment variables, NAME: value",
    "inputs": "data sets staged before the job runs: builtin:NAME, file:///..., s3://..., or {path, uri}",
    "provider": "one provider or a list (e.g. local, or [runpod, lambda])",
    "provider_policy": "explicit, cheapest, fastest or ordered (default: explicit with one provider, else cheapest)",
    "max_duration": "stop the job after this long, e.g. 2h",
    "expected_duration": "how long it should take, for the cost estimate, e.g. 30m",
    "max_cost": "USD cap for the whole job",
    "max_restarts": "restarts after the command fails (default 0)",
    "checkpoint_dir": "relative checkpoint folder (default checkpoints)",
    "budget_scope": "budget scope, e.g. project:nanogpt",
}
_RESOURCES = {
    "gpus": "GPU model and count, e.g. A100:1, H100:8, A100-80GB, or a count",
    "accelerators": "the same as gpus (SkyPilot's name)",
    "gpu_memory_gib": "minimum memory per GPU in GiB",
    "spot": "allow spot (preemptible) offers",
    "use_spot": "the same as spot (SkyPilot's name)",
    "max_price_per_hour": "USD per instance-hour cap",
}


class JobFileError(ValueError):
    """A job file that cannot be used; the message names the file and the field."""


@dataclasses.dataclass
class JobFile:
    """A job file's values under the names of `crucible jobs submit`'s options (None: not given in the file)."""

    name: str | None = None
    gpu: list[str] | None = None
    gpus: tuple[list[str], int] | None = None
    gpu_memory_gib: float | None = None
    spot: bool | None = None
    max_price: float | None = None
    code_dir: str | None = None
    env: list[str] | None = None
    input: list[str] | None = None
    provider: list[str] | None = None
    policy: str | None = None
    max_duration: float | None = None
    expected_duration: float | None = None
    max_cost: float | None = None
    max_restarts: int | None = None
    checkpoint_dir: str | None = None
    scope: str | None = None
    command: list[str] = dataclasses.field(default_factory=list)


def _fail(path: Path, field: str, message: str) -> JobFileError:
    return JobFileError(f"{path}: {field}: {message}")


def _text(path: Path, field: str, value: Any, *, max_chars: int = 100_000) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(path, field, f"expected text, got {type(value).__name__}")
    text = str(value)
    if len(text) > max_chars:
        raise _fail(path, field, f"longer than {max_chars} characters")
    return text


def _number(path: Path, field: str, value: Any, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(path, field, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
    if value < 0:
        raise _fail(path, field, f"must not be negative, got {value!r}")
    return float(value)


def _flag(path: Path, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, field, f"expected true or false, got {value!r}")
    return value


def _duration(path: Path, field: str, value: Any) -> float:
    try:
        return parse_duration(_text(path, field, value, max_chars=64))
    except argparse.ArgumentTypeError as err:
        raise _fail(path, field, str(err)) from None


def _unknown(path: Path, where: str, data: Mapping[str, Any], known: Mapping[str, str]) -> None:
    for key in data:
        if key not in known:
            allowed = ", ".join(known)
            raise _fail(path, f"{where}{key}", f"unknown key (allowed: {allowed})")


def load_job_file(path: str | Path) -> JobFile:
    """Read and check a job file; JobFileError (with the file and field) for anything that cannot be used."""
    import yaml

    file = Path(path)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as err:
        raise JobFileError(f"{file}: cannot read the job file ({err.strerror or err})") from None
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobFileError(f"{file}: larger than {MAX_JOB_FILE_BYTES // 1024} KiB; a job file holds settings, not data")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise JobFileError(f"{file}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise JobFileError(f"{file}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"{file}: expected a mapping of keys such as name, resources, run; got {type(data).__name__}")
    _unknown(file, "", data, _TOP)
    out = JobFile()
    try:
        _fill(file, data, out)
    except argparse.ArgumentTypeError as err:  # from the shared duration and GPU parsers
        raise JobFileError(f"{file}: {err}") from None
    return out


def _fill(file: Path, data: Mapping[str, Any], out: JobFile) -> None:
    if "name" in data:
        out.name = _text(file, "name", data["name"], max_chars=256)
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise _fail(file, "resources", f"expected a mapping such as {{gpus: A100:1}}, got {resources!r}")
    _unknown(file, "resources.", resources, _RESOURCES)
    if "gpus" in resources and "accelerators" in resources:
        raise _fail(file, "resources.accelerators", "give gpus or accelerators, not both")
    for key in ("gpus", "accelerators"):
        if key in resources:
            try:
                out.gpus = parse_gpus(_text(file, f"resources.{key}", resources[key], max_chars=128))
            except argparse.ArgumentTypeError as err:
                raise _fail(file, f"resources.{key}", str(err)) from None
    if "gpu_memory_gib" in resources:
        out.gpu_memory_gib = _number(file, "resources.gpu_memory_gib", resources["gpu_memory_gib"])
    for key in ("spot", "use_spot"):
        if key in resources:
            out.spot = _flag(file, f"resources.{key}", resources[key])
    if "max_price_per_hour" in resources:
        out.max_price = _number(file, "resources.max_price_per_hour", resources["max_price_per_hour"])
    if "workdir" in data:
        workdir = Path(_text(file, "workdir", data["workdir"], max_chars=4096)).expanduser()
        out.code_dir = str(workdir if workdir.is_absolute() else (file.parent / workdir))
        if not Path(out.code_dir).is_dir():
            raise _fail(file, "workdir", f"{out.code_dir} is not a folder")
    if "run" not in data or not str(data["run"] or "").strip():
        raise _fail(file, "run", "required: the shell commands of the job, e.g. run: python train.py")
    run = _text(file, "run", data["run"]).strip()
    setup = _text(file, "setup", data["setup"]).strip() if data.get("setup") is not None else ""
    out.command = ["sh", "-c", f"set -e\n{setup}\n{run}" if setup else run]
    envs = data.get("envs") or {}
    if not isinstance(envs, dict):
        raise _fail(file, "envs", f"expected a mapping NAME: value, got {envs!r}")
    out.env = []
    for key, value in envs.items():
        if not isinstance(key, str) or not key.replace("_", "a").isalnum() or key[:1].isdigit():
            raise _fail(file, f"envs.{key}", "a variable name is letters, digits and _, not starting with a digit")
        text = ("true" if value else "false") if isinstance(value, bool) else _text(file, f"envs.{key}", value)
        out.env.append(f"{key}={text}")
    inputs = data.get("inputs") or []
    if not isinstance(inputs, list):
        inputs = [inputs]
    out.input = []
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            _unknown(file, f"inputs[{i}].", item, {"path": "destination", "uri": "source"})
            if "uri" not in item:
                raise _fail(file, f"inputs[{i}].uri", "required, e.g. builtin:tinyshakespeare")
            uri = _text(file, f"inputs[{i}].uri", item["uri"], max_chars=4096)
            dest = _text(file, f"inputs[{i}].path", item["path"], max_chars=4096) if item.get("path") else ""
            out.input.append(f"{dest}={uri}" if dest else uri)
        else:
            out.input.append(_text(file, f"inputs[{i}]", item, max_chars=4096))
    if "provider" in data:
        providers = data["provider"] if isinstance(data["provider"], list) else [data["provider"]]
        out.provider = [_text(file, f"provider[{i}]", p, max_chars=64) for i, p in enumerate(providers)]
    if "provider_policy" in data:
        policy = _text(file, "provider_policy", data["provider_policy"], max_chars=32).lower()
        if policy not in POLICIES:
            raise _fail(file, "provider_policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
        out.policy = policy
    for key in ("max_duration", "expected_duration"):
        if key in data:
            setattr(out, key, _duration(file, key, data[key]))
    if "max_cost" in data:
        out.max_cost = _number(file, "max_cost", data["max_cost"])
    if "max_restarts" in data:
        out.max_restarts = int(_number(file, "max_restarts", data["max_restarts"], integer=True))
    if "checkpoint_dir" in data:
        out.checkpoint_dir = _text(file, "checkpoint_dir", data["checkpoint_dir"], max_chars=1024)
    if "budget_scope" in data:
        out.scope = _text(file, "budget_scope", data["budget_scope"], max_chars=256)
