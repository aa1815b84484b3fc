"""Shared HTTP/GraphQL client of the remote adapters: auth header, timeouts, retries with backoff honouring Retry-After.

Every failure leaves here as a ProviderError with a precise ProviderErrorKind and a message scrubbed of credentials.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from crucible.scheduler.providers.base import LaunchSpec, Provider, ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import Secret, SecretStore, summary

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Characters of an error answer's body read at all (the adapters' mappers see no more than this).
MAX_ERROR_BODY_CHARS = 65536
#: Most characters of a provider error's message (method, path, status and the body's scrubbed summary).
MAX_ERROR_CHARS = 600


class Settings:
    """Typed reads of an adapter's string settings; a bad value raises ValueError naming `provider.field`."""

    def __init__(self, provider: str, values: Mapping[str, str]) -> None:
        self.provider = provider
        self.values = dict(values)

    def str(self, name: str, default: str = "") -> str:
        """A string setting."""
        return str(self.values.get(name, default)).strip()

    def float(self, name: builtins.str, default: float, minimum: float = 0.0) -> float:
        """A float setting >= minimum."""
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{self.provider}.{name}: must be a number, got {raw!r}") from None
        if not value >= minimum:
            raise ValueError(f"{self.provider}.{name}: must be >= {minimum}, got {raw!r}")
        return value

    def int(self, name: builtins.str, default: int, minimum: int = 0) -> int:
        """An integer setting >= minimum."""
        raw = self.values.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{self.provider}.{name}: must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"{self.provider}.{name}: must be >= {minimum}, got {raw!r}")
        return value

    def bool(self, name: builtins.str, default: bool = False) -> bool:
        """A boolean setting (true/false/1/0/yes/no)."""
        raw = str(self.values.get(name, "")).strip().lower()
        if raw == "":
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{self.provider}.{name}: must be true or false, got {raw!r}")

    def retry(self) -> RetryPolicy:
        """The retry policy from max_retries / retry_base_s / retry_max_s / max_retry_after_s."""
        return RetryPolicy(
            max_retries=self.int("max_retries", 4),
            base_s=self.float("retry_base_s", 0.5),
            max_s=self.float("retry_max_s", 20.0),
            max_retry_after_s=self.float("max_retry_after_s", 60.0),
        )


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is not longer than max_retry_after_s."""

    max_retries: int = 4
    base_s: float = 0.5
    max_s: float = 20.0
    max_retry_after_s: float = 60.0

    def delay(self, retry: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait before retry number `retry` (0-based), or None to stop retrying."""
        if retry >= self.max_retries:
            return None
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.max_retry_after_s else None
        return random.uniform(0, min(self.max_s, self.base_s * (2**retry)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def kind_for_status(status: int) -> K:
    """The default ProviderErrorKind of an HTTP status (adapters refine it from the error body)."""
    if status in (401, 403):
        return K.AUTH
    if status == 404:
        return K.NOT_FOUND
    if status == 402:
        return K.QUOTA
    if status == 429 or status >= 500 or status == 408:
        return K.TRANSIENT
    return K.INVALID


# (status, parsed JSON body or None, raw text) -> (kind, message); adapters pass their own to read error bodies.
ErrorMapper = Callable[[int, Any, str], tuple[K, str]]


def default_error_mapper(status: int, body: Any, text: str) -> tuple[K, str]:
    """Status-based mapping with the body's message (error.message / message / detail) when it has one."""
    return kind_for_status(status), body_message(body) or text[:300]


def body_message(body: Any) -> str:
    """The human message of a JSON error body in the common shapes, or ''."""
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail", "title"):
            value = body.get(key)
            if isinstance(value, Mapping):
                inner = body_message(value)
                if inner:
                    return inner
            elif isinstance(value, str) and value:
                return value
    return ""


class ProviderHTTP:
    """An httpx.AsyncClient bound to one provider: base URL, bearer auth, timeouts, retries and error mapping.

    Idempotent calls are retried on 429, 5xx, timeouts and connection errors. Non-idempotent calls (launches) are
    retried only where the request cannot have been acted on (429, connect errors); other failures raise TRANSIENT so
    the adapter can look for what the first try may have created.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        secret: Secret | None,
        secrets: SecretStore,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        error_mapper: ErrorMapper = default_error_mapper,
        auth_scheme: str = "Bearer",
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self._secrets = secrets
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._retry = retry
        self._error_mapper = error_mapper
        self._auth_scheme = auth_scheme
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self.retries = 0  # total retries made, for metrics and tests

    def __repr__(self) -> str:
        return f"ProviderHTTP({self.provider!r}, {self.base_url!r}, credentials={'set' if self._secret else 'missing'})"

    def error(self, kind: K, message: str, *, status: int | None = None, retry_after_s: float | None = None) -> ProviderError:
        """A ProviderError of this provider whose message is scrubbed of every known credential (in any case, URL-,
        hex- or base64-encoded) and of anything key-shaped, and bounded: it goes to the job record and the log."""
        secrets = [*self._secrets.known_values(), *([self._secret.reveal()] if self._secret else [])]
        return ProviderError(
            self.provider, kind, summary(message, secrets, MAX_ERROR_CHARS), status=status, retry_after_s=retry_after_s
        )

    def _client_now(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self._timeout,
                transport=self._transport,
                headers={"Accept": "application/json", "User-Agent": "crucible-scheduler"},
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None, idempotent: bool = True
    ) -> Any:
        """Send one call with retries; the parsed JSON body (None for an empty body), or ProviderError."""
        if self._secret is None:
            raise self.error(K.AUTH, "no credentials configured")
        headers = {"Authorization": f"{self._auth_scheme} {self._secret.reveal()}"}
        retry = 0
        while True:
            failure: ProviderError
            retry_after: float | None = None
            try:
                response = await self._client_now().request(method, path, json=json_body, params=params, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                failure = self.error(K.TRANSIENT, f"{method} {path}: cannot connect ({type(exc).__name__}: {exc})")
                sent = False
            except httpx.TimeoutException as exc:
                failure = self.error(K.TRANSIENT, f"{method} {path}: timed out ({type(exc).__name__})")
                sent = True
            except httpx.TransportError as exc:
                failure = self.error(K.TRANSIENT, f"{method} {path}: connection failed ({type(exc).__name__}: {exc})")
                sent = True
            else:
                if response.status_code < 400:
                    return self._parse(method, path, response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                failure = self._status_error(method, path, response, retry_after)
                sent = response.status_code != 429  # a 429 was refused before acting on it
                if response.status_code not in RETRYABLE_STATUS:
                    raise failure
            if sent and not idempotent:
                raise failure
            delay = self._retry.delay(retry, retry_after)
            if delay is None:
                raise failure
            retry += 1
            self.retries += 1
            log.info("%s: retry %d of %s %s in %.2fs after %s", self.provider, retry, method, path, delay, failure)
            await self._sleep(delay)

    def _status_error(self, method: str, path: str, response: httpx.Response, retry_after: float | None) -> ProviderError:
        """The error of an HTTP error answer: its status, and a scrubbed summary of at most MAX_SUMMARY_CHARS of the
        adapter's reading of the body (bodies can echo the request's credentials; they are never kept whole)."""
        text = response.text[:MAX_ERROR_BODY_CHARS]
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        kind, message = self._error_mapper(response.status_code, body, text)
        secrets = [*self._secrets.known_values(), *([self._secret.reveal()] if self._secret else [])]
        return self.error(
            kind,
            f"{method} {path}: HTTP {response.status_code}: {summary(message, secrets)}",
            status=response.status_code,
            retry_after_s=retry_after,
        )

    def _parse(self, method: str, path: str, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            snippet = summary(response.text[:MAX_ERROR_BODY_CHARS], self._secrets.known_values(), 120)
            raise self.error(
                K.MALFORMED_RESPONSE,
                f"{method} {path}: HTTP {response.status_code} body is not JSON: {snippet!r}",
                status=response.status_code,
            ) from None

    async def graphql(
        self,
        path: str,
        query: str,
        variables: Mapping[str, Any],
        *,
        idempotent: bool,
        error_kind: Callable[[list[Mapping[str, Any]]], K],
    ) -> Mapping[str, Any]:
        """POST a GraphQL operation; an `errors` array (even in HTTP 200) becomes ProviderError of error_kind(errors).

        Transient GraphQL errors (as classified) of idempotent operations are retried like HTTP 5xx.
        """
        retry = 0
        while True:
            body = await self.request(
                "POST", path, json_body={"query": query, "variables": dict(variables)}, idempotent=idempotent
            )
            if not isinstance(body, Mapping):
                raise self.error(K.MALFORMED_RESPONSE, f"GraphQL answer is not an object: {type(body).__name__}")
            errors = body.get("errors")
            if errors:
                if not isinstance(errors, list) or not all(isinstance(e, Mapping) for e in errors):
                    raise self.error(K.MALFORMED_RESPONSE, "GraphQL `errors` is not a list of objects")
                kind = error_kind(errors)
                message = "; ".join(str(e.get("message", "")) for e in errors)[:500]
                failure = self.error(kind, f"GraphQL error: {message}", status=200)
                delay = self._retry.delay(retry, None) if kind is K.TRANSIENT and idempotent else None
                if delay is None:
                    raise failure
                retry += 1
                self.retries += 1
                await self._sleep(delay)
                continue
            data = body.get("data")
            if not isinstance(data, Mapping):
                raise self.error(K.MALFORMED_RESPONSE, "GraphQL answer has no `data` object")
            return data


def need(provider: ProviderHTTP, body: Any, *path: str | int) -> Any:
    """body[path[0]][path[1]]...; a missing or mistyped step raises MALFORMED_RESPONSE naming the path."""
    current = body
    for i, step in enumerate(path):
        ok = (isinstance(step, int) and isinstance(current, list) and -len(current) <= step < len(current)) or (
            isinstance(step, str) and isinstance(current, Mapping) and step in current
        )
        if not ok:
            where = ".".join(str(s) for s in path[: i + 1])
            raise provider.error(K.MALFORMED_RESPONSE, f"answer lacks `{where}`")
        current = current[step]
    return current


@dataclasses.dataclass(frozen=True)
class LaunchPreview:
    """The provider API calls submit() would make for one spec, without making them (`crucible jobs submit --dry-run`).

    `requests` are {"method", "url", "headers", "json"} with the credential shown as `***` (or where it would come from,
    when it is missing); `problems` are the reasons submit() would refuse the spec before calling anything.
    """

    provider: str
    requests: tuple[Mapping[str, Any], ...]
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"provider": self.provider, "requests": [dict(r) for r in self.requests], "problems": list(self.problems)}


def dumps(value: Any) -> str:
    """Compact JSON for logs and handles."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class HTTPProvider(Provider):
    """Common wiring of the REST/GraphQL adapters: settings, the credential, one ProviderHTTP, repr without secrets.

    Subclasses set name, secret_key, default_base_url and error_mapper, and implement submit/status/cancel.
    """

    secret_key = "api_key"
    default_base_url = ""

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        secrets: SecretStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = Settings(self.name, settings or {})
        self.secrets = secrets if secrets is not None else SecretStore(path=self.settings.str("secrets_file") or None)
        self._secret = self.secrets.get(self.name, self.secret_key)
        self.http = ProviderHTTP(
            self.name,
            self.settings.str("base_url", self.default_base_url),
            self._secret,
            self.secrets,
            timeout_s=self.settings.float("timeout_s", 30.0, minimum=0.001),
            retry=self.settings.retry(),
            error_mapper=type(self).map_error,
            transport=transport,
        )
        self._cancelled: set[str] = set()  # refs cancelled by this process: a vanished run is then CANCELLED, not lost

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], *, secrets: SecretStore | None = None) -> Provider:
        """Build the adapter from its string settings (base_url, timeout_s, max_retries, ...); credentials via SecretStore."""
        return cls(settings, secrets=secrets)

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[K, str]:
        """(kind, message) of an HTTP error answer; adapters override it to read their error bodies."""
        return default_error_mapper(status, body, text)

    def credentials_present(self) -> bool:
        """Whether the provider's credential is configured."""
        return self._secret is not None

    def credentials_hint(self) -> str:
        """Where the credential is looked for."""
        return self.secrets.hint(self.name, self.secret_key)

    def error(self, kind: K, message: str) -> ProviderError:
        """A scrubbed ProviderError of this provider."""
        return self.http.error(kind, message)

    def preview_request(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """One request as the adapter would send it (same base URL, path and JSON body), the credential redacted."""
        auth = (
            f"{self.http._auth_scheme} ***"
            if self._secret is not None
            else f"{self.http._auth_scheme} <missing: {self.credentials_hint()}>"
        )
        return {
            "method": method,
            "url": f"{self.http.base_url}{path}",
            "headers": {"Authorization": auth, "Content-Type": "application/json"},
            "json": body,
        }

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """The launch request(s) submit(spec) would send; adapters without a preview say so in `problems`."""
        return LaunchPreview(self.name, (), (f"{self.name} does not preview its launch request",))

    def refuse(self, problems: Sequence[str]) -> None:
        """Raise INVALID naming every problem of a launch plan (submit refuses what describe_launch reports)."""
        if problems:
            raise self.error(K.INVALID, "; ".join(problems))

    async def aclose(self) -> None:
        """Close the HTTP connection pool (the registry calls it at shutdown)."""
        await self.http.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.http.base_url!r}, credentials={'set' if self._secret else 'missing'})"
