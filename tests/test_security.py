"""Sharing safely: 401 everywhere without a login, no CORS grants, rebinding refused, unsafe starts refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.api_support import AUTH, USER
from tests.server import ROOT, LaunchedServer

pytestmark = pytest.mark.app
TIMEOUT = 60
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(auth_server: LaunchedServer) -> tuple[str, Path, Path]:
    """The session's shared server behind ``--auth-file`` (ann and bob), ``--allowed-hosts easel.lan,studio.local``
    and no throttling: every route is tried with a wrong password here (throttling: test_security_attacks.py)."""
    kept = auth_server.outputs / "txt2img-images" / "kept.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes((ROOT / "webui" / "style.css").read_bytes())
    return auth_server.url, auth_server.models, auth_server.outputs


def api_paths(url: str) -> list[tuple[str, str]]:
    schema = requests.get(f"{url}/openapi.json", auth=AUTH, timeout=TIMEOUT).json()
    return [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]


GRADIO_ROUTES = [
    ("GET", "/config"),
    ("GET", "/gradio_api/info"),
    ("GET", "/gradio_api/openapi.json"),
    ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data?session_hash=x"),
    ("POST", "/gradio_api/upload"),
    ("POST", "/gradio_api/run/txt2img"),
    ("POST", "/gradio_api/call/txt2img"),
    ("GET", "/gradio_api/file=/etc/passwd"),
    ("GET", "/gradio_api/heartbeat/abc"),
    ("POST", "/gradio_api/cancel"),
    ("POST", "/gradio_api/reset"),
    ("GET", "/gradio_api/startup-events"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]


def test_every_route_needs_credentials(server) -> None:
    url, *_ = server
    routes = api_paths(url) + GRADIO_ROUTES
    assert len(routes) > 30
    for method, path in routes:
        bare = requests.request(method, url + path, timeout=TIMEOUT)
        assert bare.status_code == 401, (method, path, bare.status_code)
        wrong = requests.request(method, url + path, auth=(USER, "wrong"), timeout=TIMEOUT)
        assert wrong.status_code == 401, (method, path, wrong.status_code)
        assert wrong.headers["www-authenticate"].startswith("Basic")
        if path.startswith("/sdapi/"):
            assert bare.headers["www-authenticate"].startswith("Basic")
            assert bare.json()["error"] == "Unauthorized"
    # the login page itself is open (it is how people log in), but not to a wrong password
    assert requests.get(url + "/", timeout=TIMEOUT).status_code == 200
    assert requests.get(url + "/", auth=(USER, "wrong"), timeout=TIMEOUT).status_code == 401
    # a second user from the same file
    assert requests.get(f"{url}/sdapi/v1/options", auth=("bob", "other"), timeout=TIMEOUT).status_code == 200


def test_security_headers_on_every_response(server) -> None:
    url, *_ = server
    for response in (
        requests.get(url + "/", timeout=TIMEOUT),
        requests.get(f"{url}/sdapi/v1/options", auth=AUTH, timeout=TIMEOUT),
        requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT),
        requests.get(f"{url}/sdapi/v1/options", headers={"Host": "evil.example"}, timeout=TIMEOUT),
        requests.post(f"{url}/sdapi/v1/txt2img", json={"width": 3}, auth=AUTH, timeout=TIMEOUT),
    ):
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"


def test_no_cors_grant_to_a_foreign_origin(server) -> None:
    url, *_ = server
    session = requests.Session()
    assert session.post(url + "/login", data={"username": USER, "password": AUTH[1]}, timeout=TIMEOUT).ok
    for host in (None, "192.168.1.20:7860", "easel.lan"):
        headers = {"Origin": EVIL, **({"Host": host} if host else {})}
        for response in (
            requests.get(f"{url}/sdapi/v1/options", auth=AUTH, headers=headers, timeout=TIMEOUT),
            session.get(f"{url}/config", headers=headers, timeout=TIMEOUT),
            requests.options(
                f"{url}/sdapi/v1/txt2img",
                headers={**headers, "Access-Control-Request-Method": "POST"},
                auth=AUTH,
                timeout=TIMEOUT,
            ),
            session.options(
                f"{url}/gradio_api/queue/join",
                headers={**headers, "Access-Control-Request-Method": "POST"},
                timeout=TIMEOUT,
            ),
        ):
            granted = {k.lower() for k in response.headers if k.lower().startswith("access-control-allow")}
            assert not granted, (host, response.request.url, response.headers)
    assert session.get(f"{url}/config", timeout=TIMEOUT).status_code == 200  # the login cookie works


def test_rebinding_host_is_refused_but_ip_literals_reach_the_login(server) -> None:
    url, *_ = server
    for host in ("evil.example", "evil.example:7860", "attacker.test", "localhost.evil.example"):
        for auth in (None, AUTH):
            response = requests.get(f"{url}/sdapi/v1/options", headers={"Host": host}, auth=auth, timeout=TIMEOUT)
            assert response.status_code == 421, host
            assert "--allowed-hosts" in response.json()["detail"]
    for host in ("192.168.1.20:7860", "10.0.0.7", "[fe80::1]:7860"):
        response = requests.get(f"{url}/sdapi/v1/options", headers={"Host": host}, timeout=TIMEOUT)
        assert response.status_code == 401, host  # an IP literal: the LAN user is told to log in
        assert requests.get(f"{url}/sdapi/v1/options", headers={"Host": host}, auth=AUTH).status_code == 200
    for host in ("localhost:7860", "easel.lan", "STUDIO.local:7860"):
        assert requests.get(f"{url}/sdapi/v1/options", headers={"Host": host}, auth=AUTH).status_code == 200


def test_only_outputs_and_assets_are_served_as_files(server) -> None:
    url, models, outputs = server
    session = requests.Session()
    assert session.post(url + "/login", data={"username": USER, "password": AUTH[1]}, timeout=TIMEOUT).ok
    kept = outputs / "txt2img-images" / "kept.png"
    assert session.get(f"{url}/gradio_api/file={kept.resolve()}", timeout=TIMEOUT).status_code == 200
    deleted = outputs / ".trash" / "20261201-000000-abc" / "txt2img-images" / "deleted.png"
    deleted.parent.mkdir(parents=True, exist_ok=True)
    deleted.write_bytes(kept.read_bytes())
    for path in (
        str(deleted.resolve()),
        "/etc/passwd",
        str((ROOT / "pyproject.toml").resolve()),
        str((models / "Stable-diffusion" / "tiny-sd1.safetensors").resolve()),
        str((models / "Lora" / "tiny-style.safetensors").resolve()),
        str(outputs.parent / "users.txt"),
        f"{outputs}/../users.txt",
    ):
        response = session.get(f"{url}/gradio_api/file={path}", timeout=TIMEOUT)
        assert response.status_code in (403, 404), (path, response.status_code)


def _start(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "webui", *args, "--port", "1"],  # never binds: refused before that
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_listen_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    result = _start(["--listen", "--models-dir", str(tmp_path / "models"), "--no-demo"])
    assert result.returncode == 2
    assert "--auth USER:PASSWORD" in result.stderr and "--auth-file" in result.stderr
    assert "Easel is running" not in result.stdout


def test_loose_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("ann:secret\n")
    path.chmod(0o644)
    result = _start(["--auth-file", str(path), "--models-dir", str(tmp_path / "models"), "--no-demo"])
    assert result.returncode == 2 and "chmod 600" in result.stderr
