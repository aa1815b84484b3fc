"""The model services' shared config: one batching block (fields, help, validation, BatchSettings), per-service defaults.

The detector, proposer and scorer declare none of the four batching fields themselves; they only change defaults.
"""

from __future__ import annotations

import dataclasses

import pytest

from crucible.detector.config import DetectorConfig
from crucible.proposer.config import ProposerConfig
from crucible.runtime.config import ModelServerConfig, load_config
from crucible.runtime.errors import ConfigError
from crucible.scorer.config import ScorerConfig

BATCHING = ("max_batch_size", "max_batch_tokens", "max_wait_ms", "max_queue_size")


@pytest.mark.parametrize(
    ("cls", "service", "defaults"),
    [
        (DetectorConfig, "detector", (32, 16384, 5.0, 2048)),
        (ProposerConfig, "proposer", (32, 16384, 25.0, 256)),
        (ScorerConfig, "scorer", (32, 16384, 5.0, 1024)),
    ],
)
def test_each_service_keeps_its_defaults_and_shares_the_help(cls, service, defaults) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    base = {f.name: f for f in dataclasses.fields(ModelServerConfig)}
    assert tuple(fields[name].default for name in BATCHING) == defaults
    for name in BATCHING:
        assert fields[name].metadata["help"] == base[name].metadata["help"]
    config = load_config(cls, service, env={f"CRUCIBLE_{service.upper()}_MAX_WAIT_MS": "2.5"})
    settings = config.batch_settings()
    assert (settings.max_batch_size, settings.max_batch_tokens, settings.max_queue_size) == (
        defaults[0],
        defaults[1],
        defaults[3],
    )
    assert settings.max_wait_s == pytest.approx(0.0025)


@pytest.mark.parametrize("cls", [DetectorConfig, ProposerConfig, ScorerConfig])
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_batch_tokens": -1}, "max_batch_tokens"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
    ],
)
def test_the_batching_block_is_validated_once_for_every_service(cls, overrides, field) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(cls, "any", env={}, **overrides)
    assert caught.value.field == field
