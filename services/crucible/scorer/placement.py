"""CPU placement of the target scorer: the cores the process may run on and torch's thread pools, set once at start.

Plain OS and torch calls with no gRPC, so the service, tests and the benchmark share one implementation.
"""

from __future__ import annotations

import dataclasses
import logging
import os

log = logging.getLogger(__name__)


def parse_cores(spec: str) -> tuple[int, ...]:
    """Parse a core list such as "0-3,8" into sorted unique core numbers; "" -> (). Raises ValueError."""
    cores: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a core number or a range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a valid core range")
        cores.update(range(first, last + 1))
    return tuple(sorted(cores))


def allowed_cores() -> tuple[int, ...]:
    """The cores this process may run on now (os.sched_getaffinity), ascending."""
    return tuple(sorted(os.sched_getaffinity(0)))


def set_process_affinity(cores: tuple[int, ...]) -> None:
    """Pin every thread of this process to `cores` (threads started later inherit it from their creator).

    os.sched_setaffinity(0, ...) moves only the calling thread on Linux; torch's and gRPC's threads already exist,
    so each thread in /proc/self/task is pinned.
    """
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread is all we can reach
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cores)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


@dataclasses.dataclass(frozen=True)
class CpuPlacement:
    """Where the scorer computes: its cores, whether they were pinned from a core list, and torch's threads."""

    cores: tuple[int, ...]
    pinned: bool
    intra_op_threads: int
    inter_op_threads: int
    #: What the process had before, restored by `restore_cpu_placement`.
    inherited_cores: tuple[int, ...]
    inherited_threads: int


def apply_cpu_placement(cores: tuple[int, ...], threads: int, interop_threads: int) -> CpuPlacement:
    """Pin the process to `cores` (empty: keep the inherited affinity) and set torch's intra-/inter-op threads.

    `threads` 0 means one intra-op thread per usable core. Torch allows the inter-op pool size to be set only
    once per process, before any parallel work: when it was already set (a second server in one process) the
    existing size is kept and reported, with a warning if it differs.
    """
    import torch  # torch stays out of the CLI's config import (config uses parse_cores)

    inherited = allowed_cores()
    inherited_threads = torch.get_num_threads()
    if cores:
        missing = sorted(set(cores) - set(inherited))
        if missing:
            raise ValueError(f"cores {missing} are not available to this process (allowed: {list(inherited)})")
        set_process_affinity(cores)
    usable = allowed_cores()
    torch.set_num_threads(threads or len(usable))
    if torch.get_num_interop_threads() != interop_threads:
        try:
            torch.set_num_interop_threads(interop_threads)
        except RuntimeError:
            log.warning(
                "torch inter-op threads were already fixed at %d in this process; keeping them (wanted %d)",
                torch.get_num_interop_threads(),
                interop_threads,
            )
    placement = CpuPlacement(
        cores=usable,
        pinned=bool(cores),
        intra_op_threads=torch.get_num_threads(),
        inter_op_threads=torch.get_num_interop_threads(),
        inherited_cores=inherited,
        inherited_threads=inherited_threads,
    )
    log.info(
        "CPU placement: cores %s (%s), %d intra-op and %d inter-op threads",
        list(placement.cores),
        "pinned" if placement.pinned else "inherited",
        placement.intra_op_threads,
        placement.inter_op_threads,
    )
    return placement


def restore_cpu_placement(placement: CpuPlacement) -> None:
    """Give the process back the affinity and intra-op thread count it had before `apply_cpu_placement`."""
    import torch

    if placement.pinned:
        set_process_affinity(placement.inherited_cores)
    torch.set_num_threads(placement.inherited_threads)
