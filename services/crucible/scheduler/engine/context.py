"""What every part of the engine shares, built once by the Engine: settings, the job database, the providers, the
object store, the job folders and the clock.

The parts take this one object instead of the same five arguments each; their own collaborators come on top.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from crucible.scheduler.engine.settings import EngineSettings
from crucible.scheduler.objects.objectstore import JobObjectStore
from crucible.scheduler.persistence.folders import JobFolders
from crucible.scheduler.persistence.jobdb import AsyncJobStore
from crucible.scheduler.providers.registry import ProviderRegistry


@dataclasses.dataclass(frozen=True)
class SchedulerContext:
    """The shared parts of one scheduler."""

    settings: EngineSettings
    store: AsyncJobStore  # the job database
    registry: ProviderRegistry
    objects: JobObjectStore  # the object store
    folders: JobFolders  # <state>/jobs/<id>/ on this host
    clock: Callable[[], float]  # unix seconds; the Engine's (tests move it)
