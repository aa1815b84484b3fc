"""Structured logging: one JSON object per line, stamped with the service name and the current request id.

`configure_logging` is called once at the entry point; code logs with logging.getLogger(__name__) and %s arguments.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import io
import json
import logging
import sys
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("crucible_request_id", default="")

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a JSON field.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id", "service"}


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line: ts, level, service, logger, request_id, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "request_id": getattr(record, "request_id", ""),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still carry the request id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(service)s %(name)s [%(request_id)s] %(message)s")


#: Settings that keep third-party progress bars and notices out of a service's log (set unless already set).
QUIET_ENV = {
    "TQDM_DISABLE": "1",  # tqdm bars (model conversion, datasets)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # the tokenizers fork warning
    "GRPC_ENABLE_FORK_SUPPORT": "false",  # gRPC's "Other threads are currently calling into gRPC, skipping fork()"
    "GRPC_VERBOSITY": "ERROR",
}


class JsonLinesStream(io.TextIOBase):
    """A text stream for a service's stderr: JSON lines pass through, anything else (a library's print, a stray progress
    bar) becomes one JSON log record per line, so every line of the log parses as JSON."""

    def __init__(self, target: Any, service: str) -> None:
        self._target = target
        self._service = service
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        text = line.split("\r")[-1].strip()  # a bar redrawn with \r: keep its last state
        if not text:
            return
        if not (text.startswith("{") and text.endswith("}")):
            payload = {
                "ts": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
                "level": "WARNING",
                "service": self._service,
                "logger": "stderr",
                "request_id": "",
                "msg": text,
            }
            text = json.dumps(payload, ensure_ascii=False)
        self._target.write(text + "\n")

    def flush(self) -> None:
        self._target.flush()

    def fileno(self) -> int:
        return int(self._target.fileno())


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Install one handler on the root logger (replacing earlier ones) with the chosen formatter; Python warnings
    (`warnings.warn` of any library) go through it too, as records of the `py.warnings` logger."""
    logging.captureWarnings(True)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # transformers gives its library logger a handler of its own on the sys.stderr of the moment it is first used, and
    # stops propagation. Imported earlier than this call (a service forked from the preloading process imports it
    # before its log is set up), that handler writes plain lines past this one: route its records through the root.
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
