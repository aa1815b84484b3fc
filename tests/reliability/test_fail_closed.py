"""Fail-closed start-up: a token file without a token, or TLS files that do not parse or match, refuse the start.

Through the real command lines (`crucible serve <svc>`, `crucible console`, `crucible jobs`): one line naming the
setting, a non-zero exit and no traceback (issue 22, probe 9); and the SDK's own token reader (issue 28).
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest

from crucible.clients.credfiles import CredentialFileError
from crucible.clients.mesh import MeshConfig
from crucible.cost.config import CostConfig
from crucible.runtime.config import ServerConfig, load_config
from crucible.runtime.errors import ConfigError
from crucible.runtime.server import create_server
from tests.reliability.support import child_env, serve_command

SERVICES = ("detector", "proposer", "scorer", "scheduler", "cost")
BLANK_TOKENS = {"empty": "", "whitespace": "  \t \n", "blank first line": "\nsecret-on-line-two\n"}


def _refused(argv: list[str], setting: str, env: dict[str, str] | None = None) -> str:
    """Run argv; assert it exits non-zero with a message naming `setting` and no traceback; return its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env or child_env())
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"started anyway: {output[-2000:]}"
    assert setting in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in output, output[-3000:]
    return done.stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}
    for label in ("a", "b"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
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
        files[f"cert_{label}"] = folder / f"cert_{label}.pem"
        files[f"cert_{label}"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"key_{label}"] = folder / f"key_{label}.pem"
        files[f"key_{label}"].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    files["garbage"] = folder / "garbage.pem"
    files["garbage"].write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    files["empty"] = folder / "empty.pem"
    files["empty"].write_text("")
    return files


# ---- servers: the auth token file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_refuses_an_empty_auth_token_file(service: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("")
    stderr = _refused(
        serve_command(service, 0, "--auth-token-file", str(token_file), "--metrics-enabled", "false"), "auth_token_file"
    )
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1, stderr


@pytest.mark.parametrize("content", sorted(BLANK_TOKENS))
def test_a_blank_token_file_set_by_environment_refuses_the_start(content: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(BLANK_TOKENS[content])
    env = child_env(CRUCIBLE_AUTH_TOKEN_FILE=str(token_file))
    _refused(
        serve_command("cost", 0, "--metrics-enabled", "false", "--state-dir", str(tmp_path / "state")), "auth_token_file", env
    )


def test_the_scheduler_refuses_an_empty_cost_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "cost-token"
    token_file.write_text(" \n")
    argv = serve_command(
        "scheduler", 0, "--cost-token-file", str(token_file), "--metrics-enabled", "false", "--state-dir", str(tmp_path / "s")
    )
    _refused(argv, "cost_token_file")


@pytest.mark.parametrize("content", sorted(BLANK_TOKENS))
def test_the_config_loader_refuses_a_blank_token_file(content: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(BLANK_TOKENS[content])
    with pytest.raises(ConfigError) as err:
        load_config(CostConfig, "cost", env={}, auth_token_file=str(token_file), state_dir=str(tmp_path))
    assert err.value.field == "auth_token_file"


def test_a_config_built_by_hand_cannot_serve_without_its_token(tmp_path: Path) -> None:
    """A config made without load_config (no validate()) still fails when the server is built, not open."""
    token_file = tmp_path / "token"
    token_file.write_text("\n")

    class _Nothing:
        short_name = "test"
        service_names = ()

        def add_to_server(self, server: object) -> None:
            pass

    with pytest.raises(ConfigError, match="auth_token_file"):
        create_server(ServerConfig(auth_token_file=str(token_file), metrics_enabled=False), _Nothing())  # type: ignore[arg-type]


# ---- servers: TLS --------------------------------------------------------------------------------------------------


TLS_CASES = {
    # case: (cert, key, client CA, setting named)
    "garbage certificate": ("garbage", "key_a", None, "tls_cert_file"),
    "empty certificate": ("empty", "key_a", None, "tls_cert_file"),
    "key as certificate": ("key_a", "key_a", None, "tls_cert_file"),
    "key of another certificate": ("cert_a", "key_b", None, "tls_key_file"),
    "garbage key": ("cert_a", "garbage", None, "tls_key_file"),
    "certificate as key": ("cert_a", "cert_a", None, "tls_key_file"),
    "garbage client CA": ("cert_a", "key_a", "garbage", "tls_client_ca_file"),
    "empty client CA": ("cert_a", "key_a", "empty", "tls_client_ca_file"),
    "key as client CA": ("cert_a", "key_a", "key_b", "tls_client_ca_file"),
}


@pytest.mark.parametrize("case", sorted(TLS_CASES))
def test_bad_tls_files_refuse_the_start_naming_the_setting(case: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    cert, key, client_ca, setting = TLS_CASES[case]
    with pytest.raises(ConfigError) as err:
        load_config(
            CostConfig,
            "cost",
            env={},
            state_dir=str(tmp_path),
            tls_cert_file=str(tls_files[cert]),
            tls_key_file=str(tls_files[key]),
            tls_client_ca_file=str(tls_files[client_ca]) if client_ca else "",
        )
    assert err.value.field == setting, str(err.value)


@pytest.mark.parametrize("case", ["garbage certificate", "key of another certificate", "garbage client CA"])
def test_bad_tls_files_through_the_command_line(case: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    cert, key, client_ca, setting = TLS_CASES[case]
    args = ["--tls-cert-file", str(tls_files[cert]), "--tls-key-file", str(tls_files[key]), "--metrics-enabled", "false"]
    if client_ca:
        args += ["--tls-client-ca-file", str(tls_files[client_ca])]
    _refused(serve_command("cost", 0, *args, "--state-dir", str(tmp_path)), setting)


def test_good_tls_files_still_pass(tls_files: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(
        CostConfig,
        "cost",
        env={},
        state_dir=str(tmp_path),
        tls_cert_file=str(tls_files["cert_a"]),
        tls_key_file=str(tls_files["key_a"]),
        tls_client_ca_file=str(tls_files["cert_b"]),
    )
    material = config.tls_material()
    assert material is not None and material[2] == tls_files["cert_b"].read_bytes()


# ---- the SDK, the console and the client command lines ------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CRUCIBLE_CLIENT_TOKEN_FILE", "CRUCIBLE_AUTH_TOKEN_FILE"])
@pytest.mark.parametrize("content", sorted(BLANK_TOKENS))
def test_the_sdk_refuses_a_blank_token_file_naming_the_variable(variable: str, content: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(BLANK_TOKENS[content])
    with pytest.raises(CredentialFileError) as err:
        MeshConfig.from_env({variable: str(token_file)})
    assert err.value.setting == variable and isinstance(err.value, ValueError)


def test_the_sdk_reads_the_first_line_of_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  abc.DEF-123  \nsecond line\n")
    assert MeshConfig.from_env({"CRUCIBLE_CLIENT_TOKEN_FILE": str(token_file)}).services["cost"].token == "abc.DEF-123"


def test_the_sdk_refuses_a_ca_file_that_is_not_certificates(tls_files: dict[str, Path]) -> None:
    with pytest.raises(CredentialFileError) as err:
        MeshConfig.from_env({"CRUCIBLE_CLIENT_CA_FILE": str(tls_files["garbage"])})
    assert err.value.setting == "ca_file"


def test_the_console_refuses_a_blank_client_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("   \n")
    argv = [*serve_command("cost", 0)[:3], "console", "--port", "0"]
    _refused(argv, "CRUCIBLE_CLIENT_TOKEN_FILE", child_env(CRUCIBLE_CLIENT_TOKEN_FILE=str(token_file)))


@pytest.mark.parametrize(("flag", "file"), [("--token-file", "empty"), ("--ca-file", "garbage")])
def test_client_commands_refuse_blank_token_and_bad_ca_files(flag: str, file: str, tls_files: dict[str, Path]) -> None:
    argv = [*serve_command("cost", 0)[:3], "jobs", "list", "--address", "127.0.0.1:9", flag, str(tls_files[file])]
    _refused(argv, flag)


def test_a_port_that_cannot_be_bound_names_the_setting(tmp_path: Path) -> None:
    """gRPC's bind failure ("Failed to bind to address") becomes a ConfigError naming `port`, not a traceback."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        stderr = _refused(serve_command("cost", port, "--metrics-enabled", "false", "--state-dir", str(tmp_path)), "port")
        assert str(port) in stderr
    finally:
        taken.close()
