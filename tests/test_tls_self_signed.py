"""--tls-self-signed: a certificate for this machine made on first start, kept 0600, reused, pinned by clients."""

from __future__ import annotations

import re
import socket
import stat
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.api_support import AUTH, USER, private_models_dir, server_args
from tests.server import running_server
from webui import self_signed
from webui.asgi import banner, reachable_urls
from webui.cli import parse_args
from webui.security import Credentials, SecuritySettings, TlsFiles

TIMEOUT = 60


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_made_once_private_and_reused(tmp_path: Path) -> None:
    first = self_signed.self_signed_files(tmp_path)
    assert first.certfile == tmp_path / "tls" / "cert.pem"
    assert stat.S_IMODE(first.keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    names, addresses = sans(first.certfile)
    assert {"127.0.0.1", "::1"} <= addresses and "localhost" in names
    assert socket.gethostname().lower() in names
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", first.fingerprint or "")
    again = self_signed.self_signed_files(tmp_path)
    assert again.fingerprint == first.fingerprint and again.certfile.read_bytes() == first.certfile.read_bytes()
    cert = x509.load_pem_x509_certificate(first.certfile.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_renewed_when_the_machine_has_a_new_address_or_the_file_is_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = self_signed.self_signed_files(tmp_path)
    names, addresses = self_signed.this_machine()
    monkeypatch.setattr(self_signed, "this_machine", lambda: (names, addresses | {"192.0.2.77"}))
    renewed = self_signed.self_signed_files(tmp_path)
    assert renewed.fingerprint != first.fingerprint and "192.0.2.77" in sans(renewed.certfile)[1]
    renewed.certfile.write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    assert self_signed.self_signed_files(tmp_path).fingerprint not in (None, renewed.fingerprint)


def test_it_does_not_mix_with_given_certificate_files(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--tls-self-signed", "--tls-certfile", str(tmp_path / "c.pem")])


def test_the_banner_warns_about_plain_http_on_the_lan_and_shows_the_fingerprint() -> None:
    lan = SecuritySettings(host="0.0.0.0", credentials=Credentials.from_sources([("ann", "pw")], []))
    text = banner(reachable_urls(lan.host, 7860, lan.scheme), lan, True)
    assert "WARNING: plain HTTP" in text and "passwords" in text and "clear text" in text
    assert "--tls-self-signed" in text
    assert "WARNING: plain HTTP" not in banner(["http://127.0.0.1:7860"], SecuritySettings(), True)  # loopback
    tls = TlsFiles(Path("/d/tls/cert.pem"), Path("/d/tls/key.pem"), "AB:CD")
    secure = SecuritySettings(host="0.0.0.0", credentials=lan.credentials, tls=tls)
    text = banner(reachable_urls(secure.host, 7860, secure.scheme), secure, True)
    assert "plain HTTP" not in text and "AB:CD" in text and "https://127.0.0.1:7860/" in text


@pytest.mark.app
def test_a_server_with_a_self_signed_certificate_answers_pinned_clients(models_dir: Path, tmp_path: Path) -> None:
    models = private_models_dir(models_dir, tmp_path)
    cert = tmp_path / "tls" / "cert.pem"
    args = server_args(models, tmp_path / "outputs", "--auth", f"{USER}:{AUTH[1]}", "--tls-self-signed")
    log = tmp_path / "server.log"
    with running_server(args, log, https_ca=cert) as url:
        assert url.startswith("https://")
        answer = requests.get(f"{url}/sdapi/v1/options", auth=AUTH, verify=str(cert), timeout=TIMEOUT)
        assert answer.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/sdapi/v1/options", auth=AUTH, verify=True, timeout=TIMEOUT)  # not a public CA's
    first = x509.load_pem_x509_certificate(cert.read_bytes())
    fingerprint = self_signed.fingerprint(first)
    printed = log.read_text()
    assert fingerprint in printed and f"{url}/" in printed
    assert stat.S_IMODE((tmp_path / "tls" / "key.pem").stat().st_mode) == 0o600
    with running_server(args, log, https_ca=cert) as url:  # the next start reuses it: clients keep trusting it
        assert requests.get(f"{url}/sdapi/v1/options", auth=AUTH, verify=str(cert), timeout=TIMEOUT).ok
    assert self_signed.fingerprint(x509.load_pem_x509_certificate(cert.read_bytes())) == fingerprint
