"""Token and PEM files named by a setting, read and checked before anything uses them: one reader for SDK and servers.

An empty or blank token file, or a certificate, key or CA bundle that does not parse, is refused naming the setting.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

#: Longest token a token file may hold (bytes of its first line); longer first lines are refused, never cut.
MAX_TOKEN_BYTES = 4096
#: Largest PEM file (certificate chain, key or CA bundle) read; a real bundle of every public root is about 250 KB.
MAX_PEM_BYTES = 4 * 1024 * 1024


class CredentialFileError(ValueError):
    """A token, certificate, key or CA file named by `setting` cannot be used; str() reads '<setting>: <detail>'."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


def _open_error(setting: str, path: str | os.PathLike[str], err: OSError) -> CredentialFileError:
    return CredentialFileError(setting, f"cannot read {path}: {err.strerror or err}")


def read_token_file(path: str | os.PathLike[str], setting: str) -> str:
    """The bearer token in a token file: its first line, stripped of surrounding whitespace; only that line is read.

    Raises CredentialFileError naming `setting` when the file cannot be read, or its first line is empty or blank (a
    service would otherwise run without auth, a client without its token), longer than MAX_TOKEN_BYTES, or holds
    anything but printable ASCII (gRPC metadata cannot carry it).
    """
    try:
        with open(Path(path).expanduser(), "rb") as handle:
            line = handle.readline(MAX_TOKEN_BYTES + 2)
    except OSError as err:
        raise _open_error(setting, path, err) from None
    token_bytes = line.strip()
    if len(token_bytes) > MAX_TOKEN_BYTES:
        raise CredentialFileError(setting, f"the token in {path} is longer than {MAX_TOKEN_BYTES} bytes")
    if not token_bytes:
        raise CredentialFileError(
            setting, f"{path} holds no token (the file or its first line is empty or blank); refusing to run without one"
        )
    if not all(0x21 <= b <= 0x7E for b in token_bytes):
        raise CredentialFileError(setting, f"the token in {path} must be printable ASCII without spaces")
    return token_bytes.decode("ascii")


def _read_pem(path: str | os.PathLike[str], setting: str) -> bytes:
    try:
        with open(Path(path).expanduser(), "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as err:
        raise _open_error(setting, path, err) from None
    if len(data) > MAX_PEM_BYTES:
        raise CredentialFileError(setting, f"{path} is larger than {MAX_PEM_BYTES} bytes: not a PEM file")
    if not data.strip():
        raise CredentialFileError(setting, f"{path} is empty")
    return data


def check_certificates(data: bytes, setting: str, path: str | os.PathLike[str] = "") -> None:
    """Raise CredentialFileError naming `setting` unless `data` is PEM holding at least one X.509 certificate that
    parses (`path` only names the file in the message)."""
    where = f"{path} " if path else ""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialFileError(setting, f"{where}is not a PEM certificate file (binary content)") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as err:
        reason = getattr(err, "reason", None) or str(err)
        raise CredentialFileError(setting, f"{where}does not hold a usable PEM certificate ({reason})") from None


def read_ca_file(path: str | os.PathLike[str], setting: str) -> bytes:
    """The bytes of a PEM CA bundle (certificates that sign the other side's), checked to parse; CredentialFileError
    naming `setting` otherwise."""
    data = _read_pem(path, setting)
    check_certificates(data, setting, path)
    return data


def check_key_pair(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], cert_setting: str, key_setting: str
) -> tuple[bytes, bytes]:
    """(certificate chain, private key) as bytes after checking that the chain parses, the key parses without a
    passphrase, and the key belongs to the chain's first certificate; CredentialFileError naming the setting at fault."""
    cert = _read_pem(cert_path, cert_setting)
    check_certificates(cert, cert_setting, cert_path)
    key = _read_pem(key_path, key_setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl needs file names: load the very bytes read above from one private temporary file (0600, removed at once).
    with tempfile.TemporaryDirectory(prefix="crucible-tls-check-") as folder:
        cert_copy, key_copy = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_copy.write_bytes(cert)
        fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        try:
            context.load_cert_chain(cert_copy, key_copy, password=lambda: b"")
        except ssl.SSLError as err:
            reason = err.reason or str(err)
            if "MISMATCH" in str(reason).upper():
                raise CredentialFileError(
                    key_setting, f"the key in {key_path} does not belong to the certificate in {cert_path}"
                ) from None
            raise CredentialFileError(
                key_setting, f"{key_path} does not hold a usable unencrypted PEM private key ({reason})"
            ) from None
    return cert, key


__all__ = [
    "MAX_PEM_BYTES",
    "MAX_TOKEN_BYTES",
    "CredentialFileError",
    "check_certificates",
    "check_key_pair",
    "read_ca_file",
    "read_token_file",
]
