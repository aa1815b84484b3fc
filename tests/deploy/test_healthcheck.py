"""The container health probe (deploy/docker/healthcheck.py) against a real runtime server on port 0.

Compose healthchecks and the TLS exec probes of components/tls-and-token depend on it: SERVING -> exit 0, anything
else (loading, unreachable, wrong certificate name, plaintext against TLS) -> exit 1.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys

import pytest
from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.detector.config import DetectorConfig
from crucible.runtime.config import load_config
from crucible.runtime.server import create_server
from crucible.runtime.service import BaseService
from tests.deploy.support import DEPLOY

PROBE = DEPLOY / "docker" / "healthcheck.py"
CONTRACT = "crucible.detector.v1.DetectorService"


class LoadingService(BaseService):
    """The detector contract (unimplemented methods) whose start hook waits for `loaded`, like a model loading."""

    def __init__(self) -> None:
        super().__init__("detector", [CONTRACT], pb_grpc.DetectorServiceServicer(), pb_grpc.add_DetectorServiceServicer_to_server)
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        await self.loaded.wait()


async def _probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        *args,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def _server(**settings):
    config = load_config(DetectorConfig, "detector", env={}, port=0, metrics_enabled=False, **settings)
    service = LoadingService()
    server, port = create_server(config, service, CollectorRegistry())
    await server.start()
    return server, service, port


def _certificate(tmp_path, dns_name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "tls.crt", tmp_path / "tls.key"


async def test_probe_fails_while_loading_and_passes_once_serving():
    server, service, port = await _server()
    try:
        rc, out = await _probe("detector", "--port", str(port))
        assert rc == 1 and "NOT_SERVING" in out
        service.loaded.set()
        await server.wait_ready(10)
        rc, out = await _probe("detector", "--port", str(port))
        assert rc == 0 and f"{CONTRACT}: SERVING" in out
        rc, out = await _probe("detector", "--health-service", "", env={"CRUCIBLE_DETECTOR_PORT": str(port)})
        assert rc == 0 and "(server): SERVING" in out
    finally:
        await server.stop(0)


async def test_probe_fails_when_nothing_listens():
    server, _service, port = await _server()
    await server.stop(0)
    rc, out = await _probe("detector", "--port", str(port), "--timeout", "1")
    assert rc == 1 and "UNAVAILABLE" in out


@pytest.mark.parametrize(
    "server_name, tls, expect_rc",
    [
        ("detector", "auto", 0),  # the certificate's own name, TLS chosen from CRUCIBLE_DETECTOR_TLS_CERT_FILE
        ("elsewhere", "auto", 1),  # hostname verification is on: a certificate for another name is refused
        ("detector", "off", 1),  # plaintext against a TLS server
    ],
)
async def test_probe_over_tls_verifies_the_certificate_name(tmp_path, server_name, tls, expect_rc):
    cert, key = _certificate(tmp_path, "detector")
    server, service, port = await _server(tls_cert_file=str(cert), tls_key_file=str(key))
    service.loaded.set()
    await server.wait_ready(10)
    try:
        env = {
            "CRUCIBLE_DETECTOR_TLS_CERT_FILE": str(cert),
            "CRUCIBLE_DETECTOR_TLS_KEY_FILE": str(key),
            "CRUCIBLE_CLIENT_CA_FILE": str(cert),
            "CRUCIBLE_PROBE_SERVER_NAME": server_name,
        }
        rc, out = await _probe("detector", "--port", str(port), "--tls", tls, "--timeout", "2", env=env)
        assert rc == expect_rc, out
        if expect_rc == 0:
            assert "SERVING" in out
    finally:
        await server.stop(0)


def test_probe_knows_the_same_ports_and_health_names_as_the_mesh():
    import importlib.util

    from crucible.mesh import SERVICES

    spec = importlib.util.spec_from_file_location("crucible_healthcheck", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {name: (e.port, e.proto_service) for name, e in SERVICES.items()} == module.SERVICES
