"""Provider credentials from environment variables and an optional secrets file, kept out of logs, errors and reprs.

A `Secret` never prints its value; `SecretStore.scrub` removes every known secret from a text before it is logged or raised.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SECRETS_FILE_ENV = "CRUCIBLE_SECRETS_FILE"
REDACTED = "***"

# provider -> key -> env variables tried in order. The secrets file uses the same names: {"lambda": {"api_key": "..."}}.
PROVIDER_SECRETS: dict[str, dict[str, tuple[str, ...]]] = {
    "lambda": {"api_key": ("LAMBDA_API_KEY",)},
    "runpod": {"api_key": ("RUNPOD_API_KEY",)},
    "paperspace": {"api_key": ("PAPERSPACE_API_KEY",)},
    "replicate": {"api_token": ("REPLICATE_API_TOKEN",)},
    "modal": {"token_id": ("MODAL_TOKEN_ID",), "token_secret": ("MODAL_TOKEN_SECRET",)},
    "kubernetes": {"token": ("CRUCIBLE_KUBERNETES_TOKEN",)},
}

# Credentials that appear in texts produced by other code (headers, URLs) even when we do not know the value.
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"),
)


PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def protect_process() -> list[str]:
    """Keep provider keys away from other processes of this user: returns the variables moved out of os.environ.

    Makes the process non-dumpable (prctl PR_SET_DUMPABLE 0): /proc/<pid>/environ, /proc/<pid>/mem and ptrace then
    need root (CAP_SYS_PTRACE), so a job running as the scheduler's own non-root user cannot read the keys the
    scheduler was started with. /proc/<pid>/environ shows the environment as it was at exec, which is why this,
    not removing variables, is what hides it; the variables are removed from os.environ as well so that no child
    process inherits them. Call it after the adapters have read their keys (their SecretStores keep a copy).
    Children are dumpable again after exec, so jobs are unaffected. A no-op for the bit where prctl is missing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %s)", ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("prctl is not available: other processes of this user can read this process's environment")
    names = [n for keys in PROVIDER_SECRETS.values() for ns in keys.values() for n in ns]
    return [n for n in names if os.environ.pop(n, None) is not None]


class SecretsFileError(ValueError):
    """The secrets file exists but cannot be read or parsed (the message names the file, never its content)."""


class Secret:
    """A credential value that never shows itself in str(), repr() or f-strings; call reveal() at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The raw value, for an Authorization header or an SDK call; never log the result."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # refuse pickling: a pickled Secret would carry the value to wherever it goes
        raise TypeError("Secret values are not picklable")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret value and every bearer/api-key looking token replaced by ***."""
    for value in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class SecretStore:
    """Credentials per provider: environment variables first, then the secrets file (JSON, or TOML when named *.toml).

    The file path comes from `path` or env CRUCIBLE_SECRETS_FILE; a file readable by group or others is used but warned
    about. Values are returned as `Secret`s; `scrub()` knows every value this store has handed out or can hand out.
    """

    def __init__(self, env: Mapping[str, str] | None = None, path: str | Path | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        file_path = path if path is not None else self._env.get(SECRETS_FILE_ENV, "")
        self._path = Path(file_path).expanduser() if file_path else None
        self._file: dict[str, dict[str, str]] = self._load_file(self._path) if self._path else {}

    @staticmethod
    def _load_file(path: Path) -> dict[str, dict[str, str]]:
        if not path.exists():
            raise SecretsFileError(f"secrets file {path} (from {SECRETS_FILE_ENV}) does not exist")
        try:
            mode = path.stat().st_mode
            raw = path.read_bytes()
        except OSError as exc:
            raise SecretsFileError(f"secrets file {path} cannot be read: {exc.strerror}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("secrets file %s is readable by group/others; chmod 600 it", path)
        try:
            data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            # The parser's message can quote the file's content: keep only its position information.
            where = f" at line {exc.lineno}" if hasattr(exc, "lineno") else ""
            raise SecretsFileError(
                f"secrets file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}{where}"
            ) from None
        if not isinstance(data, dict):
            raise SecretsFileError(f"secrets file {path}: top level must be a table of providers")
        out: dict[str, dict[str, str]] = {}
        for provider, table in data.items():
            if not isinstance(table, dict):
                raise SecretsFileError(f"secrets file {path}: [{provider}] must be a table of key = value")
            for key, value in table.items():
                if not isinstance(value, str):
                    raise SecretsFileError(f"secrets file {path}: {provider}.{key} must be a string")
            out[str(provider)] = {str(k): v for k, v in table.items()}
        return out

    def get(self, provider: str, key: str) -> Secret | None:
        """The credential `provider.key` from env (names in PROVIDER_SECRETS) or the file; None when absent or empty."""
        for name in PROVIDER_SECRETS.get(provider, {}).get(key, ()):
            value = self._env.get(name, "")
            if value:
                return Secret(value)
        value = self._file.get(provider, {}).get(key, "")
        return Secret(value) if value else None

    def hint(self, provider: str, key: str) -> str:
        """Where `provider.key` is looked for, for error messages and ListProviders (never the value)."""
        names = PROVIDER_SECRETS.get(provider, {}).get(key, ())
        where = [f"env {n}" for n in names] + [f"secrets file ({SECRETS_FILE_ENV}) key {provider}.{key}"]
        return " or ".join(where)

    def _values(self) -> list[str]:
        values = [v for table in self._file.values() for v in table.values()]
        for keys in PROVIDER_SECRETS.values():
            for names in keys.values():
                values.extend(self._env.get(n, "") for n in names)
        return [v for v in values if v]

    def scrub(self, text: str) -> str:
        """`text` with every secret this store knows (and bearer/api-key looking tokens) replaced by ***."""
        return scrub(text, self._values())

    def __repr__(self) -> str:
        providers = sorted({p for p, keys in PROVIDER_SECRETS.items() for k in keys if self.get(p, k)})
        return f"SecretStore(file={str(self._path) if self._path else None!r}, configured={providers})"
