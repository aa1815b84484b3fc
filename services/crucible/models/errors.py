"""Exceptions raised by the model registry, all subclasses of one `ModelError`.

The server runtime maps them to gRPC status codes in one place; messages are written for the person running the service.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error the model registry raises."""


class InvalidModelSettingError(ModelError, ValueError):
    """A device, dtype, quantisation or model setting has a value the registry does not understand."""


class ModelNotFoundError(ModelError):
    """The setting is neither a packaged alias, nor a local model folder, nor in the local Hugging Face cache."""


class ModelPackageMissingError(ModelNotFoundError):
    """A packaged model's pip package is not installed; `packages` holds the pip requirement strings."""

    def __init__(self, message: str, packages: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.packages = packages


class ModelNotPreparedError(ModelError):
    """A packaged model needs a one-time conversion (`crucible models prepare`) that has not run yet."""


class IncompatibleModelError(ModelError):
    """The model folder holds a different kind of model than the loader needs (e.g. an encoder given as a causal LM)."""


class DeviceUnavailableError(ModelError):
    """The requested device (or a dtype on it) is not usable on this machine."""


class PlacementError(ModelError):
    """The model, at the chosen dtype and quantisation, would not fit in the device's memory."""

    def __init__(self, message: str, required_bytes: int, available_bytes: int) -> None:
        super().__init__(message)
        self.required_bytes = required_bytes
        self.available_bytes = available_bytes


class QuantizationUnavailableError(ModelError):
    """Quantisation was requested but bitsandbytes (or accelerate) is not installed."""
