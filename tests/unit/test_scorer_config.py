"""Scorer settings and CPU placement: CUDA refused, core lists parsed and pinned, torch threads set and restored.

Pinning is applied to this test process and undone before each test ends.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch

from crucible.runtime.config import load_config
from crucible.runtime.errors import ConfigError
from crucible.scorer.config import ScorerConfig
from crucible.scorer.placement import (
    allowed_cores,
    apply_cpu_placement,
    parse_cores,
    restore_cpu_placement,
)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_non_cpu_devices_are_refused(device: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ScorerConfig, "scorer", env={}, device=device)
    assert caught.value.field == "device" and "CPU only" in str(caught.value)


def test_device_from_environment_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="device"):
        load_config(ScorerConfig, "scorer", env={"CRUCIBLE_SCORER_DEVICE": "cuda"})


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"dtype": "float16"}, "dtype"),
        ({"cores": "0-x"}, "cores"),
        ({"cores": "3-1"}, "cores"),
        ({"threads": -1}, "threads"),
        ({"interop_threads": 0}, "interop_threads"),
        ({"max_items_per_call": 0}, "max_items_per_call"),
        ({"max_tokens": 4096, "max_batch_tokens": 1024}, "max_batch_tokens"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
    ],
)
def test_bad_settings_name_the_field(settings: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ScorerConfig, "scorer", env={}, **settings)
    assert caught.value.field == field


def test_defaults_and_derived_settings() -> None:
    config = load_config(ScorerConfig, "scorer", env={"CRUCIBLE_SCORER_CORES": "0", "CRUCIBLE_SCORER_MAX_WAIT_MS": "2.5"})
    assert (config.device, config.port, config.core_list) == ("cpu", 50053, (0,))
    assert config.batch_settings().max_wait_s == pytest.approx(0.0025)
    assert config.limits().max_tokens == 2048


def test_parse_cores() -> None:
    assert parse_cores("") == ()
    assert parse_cores("0-2, 5,1") == (0, 1, 2, 5)
    with pytest.raises(ValueError):
        parse_cores("-1")


def _thread_affinity() -> set[int]:
    seen: list[set[int]] = []
    worker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    worker.start()
    worker.join()
    return seen[0]


def test_inherited_placement_uses_every_allowed_core() -> None:
    before = torch.get_num_threads()
    placement = apply_cpu_placement((), 0, torch.get_num_interop_threads())
    try:
        assert placement.cores == allowed_cores() and not placement.pinned
        assert placement.intra_op_threads == len(os.sched_getaffinity(0)) == torch.get_num_threads()
    finally:
        restore_cpu_placement(placement)
    assert torch.get_num_threads() == before


def test_core_list_pins_every_thread_and_is_restored() -> None:
    inherited = allowed_cores()
    early = threading.Event()
    done = threading.Event()
    seen: list[set[int]] = []

    def existing_thread() -> None:  # started before pinning: must be pinned as well
        early.wait()
        seen.append(os.sched_getaffinity(0))
        done.set()

    thread = threading.Thread(target=existing_thread)
    thread.start()
    placement = apply_cpu_placement((inherited[0],), 0, torch.get_num_interop_threads())
    try:
        assert placement.pinned and placement.cores == (inherited[0],)
        assert placement.intra_op_threads == 1
        assert os.sched_getaffinity(0) == {inherited[0]} and _thread_affinity() == {inherited[0]}
        early.set()
        done.wait(5)
        assert seen == [{inherited[0]}]
    finally:
        restore_cpu_placement(placement)
        thread.join()
    assert allowed_cores() == inherited


def test_unavailable_cores_are_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        apply_cpu_placement((max(allowed_cores()) + 1000,), 0, 1)
