"""The scheduler's config (config.py): its cost-service channel and token file."""

from __future__ import annotations

import pytest

# --- config ---------------------------------------------------------------------------------------------------------


def test_cost_channel_comes_from_the_schedulers_own_settings(tmp_path) -> None:
    """The cost address, token and TLS come from CRUCIBLE_SCHEDULER_* / flags, never from the SDK's CRUCIBLE_CLIENT_*."""
    from crucible.runtime.config import load_config
    from crucible.scheduler.config import SchedulerConfig

    client_env = {"CRUCIBLE_CLIENT_TOKEN": "sdk-token", "CRUCIBLE_CLIENT_TLS": "1"}
    shared = load_config(
        SchedulerConfig,
        "scheduler",
        env={**client_env, "CRUCIBLE_AUTH_TOKEN": "mesh-token", "CRUCIBLE_SCHEDULER_COST_ADDRESS": "127.0.0.1:1"},
    )
    channel = shared.cost_channel_config()
    assert channel.addresses == ("127.0.0.1:1",) and channel.token == "mesh-token" and not channel.tls
    assert channel.timeout_s == shared.cost_timeout_s
    token_file, ca_file = tmp_path / "token", tmp_path / "ca.pem"
    token_file.write_text("cost-token\n")
    ca_file.write_bytes(_self_signed_pem())
    own = load_config(
        SchedulerConfig,
        "scheduler",
        env={
            **client_env,
            "CRUCIBLE_SCHEDULER_COST_ADDRESS": "cost:50055",
            "CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(token_file),
            "CRUCIBLE_SCHEDULER_COST_CA_FILE": str(ca_file),
            "CRUCIBLE_SCHEDULER_COST_TLS_SERVER_NAME": "cost.internal",
        },
    )
    channel = own.cost_channel_config()
    assert (channel.token, channel.tls, channel.root_certificates, channel.tls_server_name) == (
        "cost-token",
        True,
        ca_file.read_bytes(),
        "cost.internal",
    )
    assert load_config(SchedulerConfig, "scheduler", env={}).cost_channel_config().token == ""


def test_cost_token_file_is_read_like_the_auth_token_file(tmp_path) -> None:
    """An empty cost token file refuses the start naming it (it raised IndexError, then meant no token: issue 22);
    only the first line of a file is the token, and a CA file that is not PEM certificates is refused too."""
    from crucible.runtime.config import load_config
    from crucible.runtime.errors import ConfigError
    from crucible.scheduler.config import SchedulerConfig

    empty, multi, garbage = tmp_path / "empty", tmp_path / "multi", tmp_path / "ca.pem"
    empty.write_text("")
    multi.write_text("  first-line-token  \nsecond line\n")
    garbage.write_bytes(b"PEM")
    config = load_config(SchedulerConfig, "scheduler", env={"CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(multi)})
    assert config.cost_channel_config().token == "first-line-token"
    for env, field in (
        ({"CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(empty)}, "cost_token_file"),
        ({"CRUCIBLE_SCHEDULER_COST_CA_FILE": str(garbage)}, "cost_ca_file"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(SchedulerConfig, "scheduler", env=env)
        assert err.value.field == field


def _self_signed_pem() -> bytes:
    """A self-signed certificate in PEM (a CA bundle the scheduler's cost_ca_file check accepts)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cost.internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
