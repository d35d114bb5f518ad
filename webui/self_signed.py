"""``--tls-self-signed``: a key and certificate for this machine, made on first start and reused afterwards.

Kept in ``<data-dir>/tls/`` (the key 0600 from its first byte, the folder 0700). Reused while it is valid and
still names this machine; a new one is made when it expires or the machine's names or addresses changed (the
fingerprint printed at start then changes, and browsers ask again). The certificate is its own issuer, marked as
no CA (Firefox refuses a CA certificate used as a server's), for server authentication only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipelines.errors import EaselError
from webui.security import TlsFiles, lan_addresses, machine_names

log = logging.getLogger("easel.security")

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 825
"""Validity: the longest some clients (Apple's) accept for a server certificate."""
RENEW_BEFORE = dt.timedelta(days=7)


def this_machine() -> tuple[set[str], set[str]]:
    """The DNS names and IP addresses the certificate must name: loopback, the host name, the LAN addresses."""
    names = {n for n in machine_names() if n and not n.startswith("ip6-")}
    addresses = {"127.0.0.1", "::1", *lan_addresses()}
    return names, addresses


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate, as browsers show it (``AB:CD:...``)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _names_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def _why_renew(cert: x509.Certificate, names: set[str], addresses: set[str]) -> str | None:
    if cert.not_valid_after_utc - RENEW_BEFORE < dt.datetime.now(dt.UTC):
        return "the previous certificate expires or has expired"
    have_names, have_addresses = _names_of(cert)
    missing = (names - have_names) | (addresses - have_addresses)
    if missing:
        return f"this machine's names changed (not in the previous certificate: {', '.join(sorted(missing))})"
    return None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with ``mode`` from the first byte (the temp file is made 0600 by mkstemp)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError:
        Path(temp).unlink(missing_ok=True)
        raise


def make_certificate(names: set[str], addresses: set[str]) -> tuple[bytes, bytes, x509.Certificate]:
    """A new P-256 key and a self-issued certificate for ``names`` and ``addresses``: (key PEM, cert PEM, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    common = sorted(names - {"localhost"})[0] if names - {"localhost"} else "localhost"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Easel (self-signed)")])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names)]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digital signature only
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), cert


def self_signed_files(data_dir: Path) -> TlsFiles:
    """The certificate in ``<data_dir>/tls/``, made or renewed when needed; its fingerprint is printed and logged."""
    folder = Path(data_dir) / "tls"
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    names, addresses = this_machine()
    reason: str | None = "none was made yet"
    try:
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            serialization.load_pem_private_key(key_path.read_bytes(), password=None)  # a broken key: make anew
            reason = _why_renew(cert, names, addresses)
    except (OSError, ValueError) as exc:
        reason = f"the previous one could not be read ({exc})"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        if reason is not None:
            key_pem, cert_pem, cert = make_certificate(names, addresses)
            _write_private(key_path, key_pem, 0o600)
            _write_private(cert_path, cert_pem, 0o644)
            log.warning("made a self-signed certificate in %s because %s", folder, reason)
        else:
            key_path.chmod(0o600)
    except OSError as exc:
        raise EaselError(f"--tls-self-signed: cannot write the certificate in {folder}: {exc.strerror}") from exc
    print_ = fingerprint(cert)
    log.info("self-signed certificate %s, SHA-256 fingerprint %s", cert_path, print_)
    return TlsFiles(cert_path, key_path, print_)
