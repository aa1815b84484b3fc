"""Config loading: flag > service env > global env > default, typed parsing, validation and secret masking.

Pure functions of their inputs; no servers.
"""

from __future__ import annotations

import argparse

import pytest

from crucible.cost.config import CostConfig
from crucible.detector.config import DetectorConfig
from crucible.runtime.config import add_arguments, describe, load_config
from crucible.runtime.errors import ConfigError
from crucible.scorer.config import ScorerConfig


def test_defaults_are_the_documented_ports_and_model():
    cfg = load_config(DetectorConfig, "detector", env={})
    assert cfg.port == 50051 and cfg.model == "gemma-3-270m" and cfg.likelihood_model == "auto" and cfg.host == "127.0.0.1"
    assert load_config(ScorerConfig, "scorer", env={}).model == "smollm2-135m-instruct"
    assert load_config(CostConfig, "cost", env={}).port == 50055
    assert cfg.resolved_metrics_port(50051) == 51051


def test_precedence_flag_over_service_env_over_global_env():
    env = {"CRUCIBLE_PORT": "1111", "CRUCIBLE_DETECTOR_PORT": "2222", "CRUCIBLE_GRACE_PERIOD_S": "2.5"}
    assert load_config(DetectorConfig, "detector", env=env).port == 2222
    assert load_config(DetectorConfig, "detector", env={"CRUCIBLE_PORT": "1111"}).port == 1111
    parser = argparse.ArgumentParser()
    add_arguments(parser, DetectorConfig)
    args = parser.parse_args(["--port", "3333", "--metrics-enabled", "false"])
    cfg = load_config(DetectorConfig, "detector", args=args, env=env)
    assert cfg.port == 3333 and cfg.metrics_enabled is False and cfg.grace_period_s == 2.5


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CRUCIBLE_PORT": "eighty"}, "port"),
        ({"CRUCIBLE_PORT": "70000"}, "port"),
        ({"CRUCIBLE_METRICS_ENABLED": "maybe"}, "metrics_enabled"),
        ({"CRUCIBLE_LOG_FORMAT": "xml"}, "log_format"),
        ({"CRUCIBLE_TLS_CERT_FILE": "/nonexistent.pem"}, "tls_cert_file"),
        ({"CRUCIBLE_DETECTOR_DEVICE": "tpu"}, "device"),
    ],
)
def test_invalid_settings_name_the_field(env, field):
    with pytest.raises(ConfigError) as err:
        load_config(DetectorConfig, "detector", env=env)
    assert err.value.field == field


def test_scorer_refuses_cuda():
    with pytest.raises(ConfigError, match="CPU only"):
        load_config(ScorerConfig, "scorer", env={"CRUCIBLE_SCORER_DEVICE": "cuda"})


def test_config_is_frozen_and_secrets_are_masked():
    cfg = load_config(DetectorConfig, "detector", env={"CRUCIBLE_AUTH_TOKEN": "hunter2"})
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    assert cfg.bearer_token() == "hunter2"
    assert cfg.public_dict()["auth_token"] == "***"
    assert "hunter2" not in repr(cfg.public_dict())


def test_token_file_is_read_when_no_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\nignored\n")
    cfg = load_config(DetectorConfig, "detector", env={"CRUCIBLE_AUTH_TOKEN_FILE": str(path)})
    assert cfg.bearer_token() == "from-file"


def test_every_setting_is_documented():
    for cls, name in [(DetectorConfig, "detector"), (CostConfig, "cost"), (ScorerConfig, "scorer")]:
        for flag, env, _default, help_text in describe(cls, name):
            assert help_text, f"{flag} has no help"
            assert env.startswith(f"CRUCIBLE_{name.upper()}_")


def test_help_text_with_percent_signs_renders():
    import dataclasses

    from crucible.runtime.config import ServerConfig, setting

    @dataclasses.dataclass(frozen=True)
    class WithPercent(ServerConfig):
        headroom: float = setting(0.2, "Keep 20% of memory free.")

    parser = argparse.ArgumentParser()
    add_arguments(parser, WithPercent)
    assert "20% of memory" in parser.format_help()
