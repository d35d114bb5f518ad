"""HTTPS on the LAN: --tls-certfile/--tls-keyfile serve the UI and the API over TLS, cookies become Secure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from pipelines.errors import EaselError
from tests.api_support import AUTH, USER, private_models_dir, server_args
from tests.server import running_server
from webui.cli import parse_args
from webui.security import security_from_args

pytestmark = pytest.mark.app
TIMEOUT = 60


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A one-day certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def https_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(root)
    models = private_models_dir(models_dir, root)
    args = server_args(
        models, root / "outputs", "--auth", f"{USER}:{AUTH[1]}", "--tls-certfile", str(cert), "--tls-keyfile", str(key)
    )
    with running_server(args, root / "server.log", https_ca=cert) as url:
        yield url, cert, root / "server.log"


def test_ui_and_api_answer_over_https_with_secure_cookies(https_server) -> None:
    url, cert, log = https_server
    assert url.startswith("https://")
    options = requests.get(f"{url}/sdapi/v1/options", auth=AUTH, verify=str(cert), timeout=TIMEOUT)
    assert options.status_code == 200 and "sd_model_checkpoint" in options.json()
    assert options.headers["strict-transport-security"].startswith("max-age=")
    session = (
        requests.Session()
    )  # verify= on each call: requests lets a CA bundle in the environment beat Session.verify
    verify = str(cert)
    login = session.post(url + "/login", data={"username": USER, "password": AUTH[1]}, verify=verify, timeout=TIMEOUT)
    assert login.status_code == 200
    cookies = [v for k, v in login.raw.headers.items() if k.lower() == "set-cookie"]
    assert cookies and all("secure" in [a.strip().lower() for a in c.split(";")] for c in cookies)
    assert session.get(f"{url}/config", verify=verify, timeout=TIMEOUT).status_code == 200
    # the page's own https origin may post; the http origin of the same host is another origin
    own = session.post(f"{url}/sdapi/v1/interrupt", headers={"Origin": url}, verify=verify, timeout=TIMEOUT)
    assert own.status_code == 200
    http_origin = url.replace("https://", "http://")
    refused = session.post(f"{url}/sdapi/v1/interrupt", headers={"Origin": http_origin}, verify=verify, timeout=TIMEOUT)
    assert refused.status_code == 403
    assert f"{url}/" in log.read_text()  # the banner prints the https address


def test_plain_http_to_the_tls_port_gets_nothing(https_server) -> None:
    url, *_ = https_server
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https://", "http://") + "/sdapi/v1/options", auth=AUTH, timeout=TIMEOUT)


def test_unusable_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    with pytest.raises(EaselError, match="both --tls-certfile and --tls-keyfile"):
        security_from_args(parse_args(["--tls-certfile", str(cert)]))
    key.chmod(0o644)
    with pytest.raises(EaselError, match="chmod 600"):
        security_from_args(parse_args(["--tls-certfile", str(cert), "--tls-keyfile", str(key)]))
    key.chmod(0o600)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(EaselError, match="not a PEM file"):
        security_from_args(parse_args(["--tls-certfile", str(tmp_path / "junk.pem"), "--tls-keyfile", str(key)]))
    assert security_from_args(parse_args(["--tls-certfile", str(cert), "--tls-keyfile", str(key)])).tls
