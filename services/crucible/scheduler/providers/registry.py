"""Provider names mapped to adapter classes by import path, loaded lazily so a missing adapter never stops the service.

`ProviderRegistry.load(name)` returns the adapter or the reason it cannot be used; ListProviders reports both.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Mapping

from crucible.scheduler.providers.base import Provider, ProviderCapabilities

log = logging.getLogger(__name__)

_PKG = "crucible.scheduler.providers"
ADAPTERS: dict[str, str] = {
    "local": f"{_PKG}.local:LocalProvider",
    "dryrun": f"{_PKG}.dryrun:DryRunProvider",
    "kubernetes": f"{_PKG}.kubernetes:KubernetesProvider",
    "lambda": f"{_PKG}.lambda_cloud:LambdaProvider",
    "runpod": f"{_PKG}.runpod:RunPodProvider",
    "paperspace": f"{_PKG}.paperspace:PaperspaceProvider",
    "replicate": f"{_PKG}.replicate:ReplicateProvider",
    "modal": f"{_PKG}.modal_provider:ModalProvider",
    "colab": f"{_PKG}.colab:ColabProvider",
}
# Providers that need no credentials and no cost catalog: usable with cost reported as unknown.
OFFLINE_PROVIDERS = ("local", "dryrun")


class ProviderUnavailable(Exception):
    """Raised by an adapter's from_settings when it cannot be used on this host; the message is shown as the reason."""


@dataclasses.dataclass(frozen=True)
class ProviderStatus:
    """What ListProviders says about one provider."""

    name: str
    enabled: bool
    credentials_present: bool
    credentials_hint: str
    capabilities: ProviderCapabilities
    unavailable_reason: str = ""

    @property
    def usable(self) -> bool:
        """Enabled, loaded, with credentials."""
        return self.enabled and self.credentials_present and not self.unavailable_reason


class ProviderRegistry:
    """Builds each enabled adapter once from its settings; explicit instances (tests, embedders) take precedence."""

    def __init__(
        self,
        enabled: tuple[str, ...],
        settings: Mapping[str, Mapping[str, str]] | None = None,
        *,
        adapters: Mapping[str, str] | None = None,
        instances: Mapping[str, Provider] | None = None,
    ) -> None:
        self.adapters = {**ADAPTERS, **(adapters or {})}
        self.enabled = tuple(enabled)
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        self._instances: dict[str, Provider] = dict(instances or {})
        self._errors: dict[str, str] = {}
        for name in self._instances:
            if name not in self.adapters:
                self.adapters[name] = f"<instance>:{type(self._instances[name]).__name__}"

    def known(self) -> list[str]:
        """Every provider name, enabled or not, sorted."""
        return sorted(self.adapters)

    def load(self, name: str) -> Provider | None:
        """The adapter for `name`, built on first use; None when disabled or not loadable (see `error`)."""
        if name in self._instances:
            return self._instances[name]
        if name not in self.adapters or name not in self.enabled or name in self._errors:
            return None
        module_name, _, class_name = self.adapters[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            provider = cls.from_settings(self.settings.get(name, {}))
        except ProviderUnavailable as exc:
            self._errors[name] = str(exc)
            log.warning("provider %s unavailable: %s", name, self._errors[name])
            return None
        except ModuleNotFoundError as exc:
            self._errors[name] = f"adapter module not installed ({exc.name})"
            log.warning("provider %s unavailable: %s", name, self._errors[name])
            return None
        except Exception as exc:  # a broken adapter or bad settings must not stop the scheduler
            self._errors[name] = f"adapter failed to load: {type(exc).__name__}: {exc}"
            log.warning("provider %s unavailable: %s", name, self._errors[name])
            return None
        self._instances[name] = provider
        return provider

    def error(self, name: str) -> str:
        """Why `name` cannot be used ('' when it can or was never tried)."""
        if name not in self.adapters:
            return "unknown provider"
        if name not in self.enabled and name not in self._instances:
            return "disabled in the scheduler configuration"
        return self._errors.get(name, "")

    def status(self, name: str) -> ProviderStatus:
        """Load (if enabled) and describe one provider; never raises."""
        provider = self.load(name)
        enabled = name in self.enabled or name in self._instances
        if provider is None:
            return ProviderStatus(name, enabled, False, "", ProviderCapabilities(), self.error(name) or "not loaded")
        try:
            present = bool(provider.credentials_present())
            hint = provider.credentials_hint()
        except Exception as exc:  # a secrets file that cannot be read, for instance
            return ProviderStatus(name, enabled, False, "", provider.capabilities, f"credentials check failed: {exc}")
        reason = "" if present else "credentials missing"
        return ProviderStatus(name, enabled, present, hint, provider.capabilities, reason)

    def statuses(self) -> list[ProviderStatus]:
        """status() of every known provider, sorted by name."""
        return [self.status(n) for n in self.known()]
