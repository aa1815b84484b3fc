"""Provider credentials from environment variables and an optional secrets file, kept out of logs, errors and reprs.

A `Secret` never prints its value; `SecretStore.scrub` removes every known secret from a text before it is logged or raised.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import tomllib
import urllib.parse
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

# Credentials that appear in texts produced by other code (headers, URLs, error bodies) even when we do not know the
# value: group 1 (kept) is the label, the rest is replaced.
_PATTERNS = (
    re.compile(r"(?i)((?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|api[_-]?token|access[_-]?token|refresh[_-]?token|auth[_-]?token|token|secret|password|passwd"
        r"|authorization|credentials?|private[_-]?key|access[_-]?key(?:[_-]?id)?|client[_-]?secret|x-api-key)"
        r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"
    ),
    # Well-known key shapes: OpenAI-style sk-, Replicate r8_, RunPod rpa_, GitHub gh*_, Hugging Face hf_, Lambda
    # secret_, AWS access key ids, Slack xox*-, and JSON Web Tokens.
    re.compile(
        r"()\b(?:sk-[A-Za-z0-9_-]{16,}|r8_[A-Za-z0-9]{16,}|rpa_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{20,}"
        r"|secret_[A-Za-z0-9_.-]{12,}|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abposr]-[A-Za-z0-9-]{10,}"
        r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"
    ),
)
#: A long run of base64/URL-safe characters mixing upper case, lower case and digits looks like a key or an encoded
#: one (a hex id or a path does not: they lack one of the three, or are mostly '/'), and is replaced as well.
_KEYLIKE = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
#: Texts are cut to this many characters before scrubbing (bounded work on a megabyte error body).
MAX_SCRUB_INPUT = 65536
#: Most characters of a provider error summary kept in a job record or a log line.
MAX_SUMMARY_CHARS = 300


def _keylike(token: str) -> bool:
    return (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
        and token.count("/") * 16 <= len(token)
    )


def _b64_cores(data: bytes) -> set[str]:
    """The base64 characters that encode `data` whatever comes before it in a longer encoded text (one run per
    alignment of its first byte), in standard and URL-safe alphabets."""
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode("ascii")
        core = encoded[-(-8 * shift // 6) : (8 * (shift + len(data))) // 6]
        if len(core) >= 8:
            cores.add(core)
            cores.add(core.translate(str.maketrans("+/", "-_")))
    return cores


def secret_forms(value: str) -> set[str]:
    """The texts that reveal `value`: itself, URL-encoded (quote and quote_plus), hex, and base64 (alone, or inside a
    longer base64 text such as a Basic header, at each alignment; standard and URL-safe). Matching is case-blind, so
    a lower- or upper-cased echo of any of these is found too."""
    raw = value.encode("utf-8")
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), raw.hex()}
    forms |= _b64_cores(raw)
    full = base64.b64encode(raw).decode("ascii")
    forms |= {full, full.rstrip("="), base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")}
    return {f for f in forms if len(f) >= 4}


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
    """`text` (cut to MAX_SCRUB_INPUT characters) with every given secret value, in any case and in its URL-encoded,
    hex and base64 forms, and every bearer/api-key/key-shaped token, replaced by ***."""
    if len(text) > MAX_SCRUB_INPUT:
        text = text[:MAX_SCRUB_INPUT] + "..."
    forms = {f for value in secrets if value and len(value) >= 4 for f in secret_forms(value)}
    if forms:
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        text = re.sub(alternatives, REDACTED, text, flags=re.IGNORECASE)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEYLIKE.sub(lambda m: REDACTED if _keylike(m.group(0)) else m.group(0), text)


def summary(text: str, secrets: Iterable[str] = (), limit: int = MAX_SUMMARY_CHARS) -> str:
    """A provider's answer as it may be stored and logged: scrubbed (see scrub), control characters made spaces, and
    at most `limit` characters (the cut marked)."""
    clean = " ".join(scrub(text, secrets).split())
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


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

    def known_values(self) -> list[str]:
        """Every credential value this store holds (for scrubbing; never log them)."""
        return self._values()

    def scrub(self, text: str) -> str:
        """`text` with every secret this store knows (and bearer/api-key looking tokens) replaced by ***."""
        return scrub(text, self._values())

    def __repr__(self) -> str:
        providers = sorted({p for p, keys in PROVIDER_SECRETS.items() for k in keys if self.get(p, k)})
        return f"SecretStore(file={str(self._path) if self._path else None!r}, configured={providers})"
