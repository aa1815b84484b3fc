"""Where a service's start-up seconds go: wall and CPU seconds of each phase (imports, weights, warm-up, compile).

Phases are recorded by the code that runs them (`startup_phase("name")`); the runtime logs them in its "ready" line.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

_MODULE_LOADED = time.monotonic()


def process_age() -> float:
    """Seconds since this process was created (fork or exec), from /proc on Linux; elsewhere since this module loaded."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        # fields[0] is the state (field 3 of stat); starttime is field 22, in clock ticks since boot
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _MODULE_LOADED


class StartupPhases:
    """Wall and process-CPU seconds of named start-up phases, in the order they started; thread-safe.

    A phase that runs twice (two models loaded) adds up. CPU seconds are the whole process's (every thread), so two
    phases running at once share theirs; a phase whose CPU is far below its wall time waited for the cores.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, list[float]] = {}

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self._lock:
            entry = self._phases.setdefault(name, [0.0, 0.0])
            entry[0] += wall
            entry[1] += cpu

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase `name` (recorded even when it raises)."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def summary(self) -> dict[str, Any]:
        """{"process_s": seconds since the process started, "cpu_s": its CPU seconds, "phases": {name: {wall_s, cpu_s}}}."""
        with self._lock:
            phases = {n: {"wall_s": round(w, 2), "cpu_s": round(c, 2)} for n, (w, c) in self._phases.items()}
        return {"process_s": round(process_age(), 2), "cpu_s": round(time.process_time(), 2), "phases": phases}

    def clear(self) -> None:
        with self._lock:
            self._phases.clear()


#: The phases of this process's start-up (one service per process; a test running several in one process sees the
#: sum, which only its "ready" log lines show).
STARTUP = StartupPhases()


def startup_phase(name: str) -> contextlib.AbstractContextManager[None]:
    """Record the body as start-up phase `name` of this process: `with startup_phase("weights"): ...`."""
    return STARTUP.phase(name)
