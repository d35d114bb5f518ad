"""What an attacker on the LAN tries against a logged-in Easel: each test is one defect of the adversarial review.

One server with ``--auth-file`` and its own Gradio cache folder (so the test can look inside it afterwards).
Every request goes to 127.0.0.1; the throttling tests speak from other loopback addresses (127.0.0.2 ...), so
locking those out leaves the other tests' address alone.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from tests.api_support import AUTH, USER
from tests.browser import browser_page

pytestmark = pytest.mark.app
TIMEOUT = 60

# Gradio components whose payloads carry file paths (FileData) somewhere inside them.
FILE_COMPONENTS = frozenset(
    {"image", "imageeditor", "file", "gallery", "uploadbutton", "video", "audio", "model3d", "imageslider", "sketchpad"}
)


@pytest.fixture(scope="module")
def attacked(launch):
    """A server of its own: these tests lock addresses out and rewrite the password file."""

    def add_secret(models: Path) -> None:
        Image.new("RGB", (16, 16), (1, 2, 3)).save(models / "Lora" / "secret-preview.png")

    throttle = ["--login-lockout-failures", "6", "--login-free-failures", "3"]
    with launch("attacked", *throttle, auth="file", prepare=add_secret) as server:
        yield {
            "url": server.url,
            "models": server.models,
            "outputs": server.outputs,
            "secret": server.models / "Lora" / "secret-preview.png",
            "auth_file": server.auth_file,
            "cache": server.cache,
        }


def login(url: str, session: requests.Session | None = None) -> requests.Session:
    session = session or requests.Session()
    response = session.post(url + "/login", data={"username": USER, "password": AUTH[1]}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return session


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


def payload_for(component: dict[str, Any], path: str) -> Any:
    """A value for ``component`` that smuggles ``path`` in as a file, in the shape each component takes."""
    kind = component["type"]
    if kind == "imageeditor" or kind == "sketchpad":
        return {"background": file_data(path), "layers": [file_data(path)], "composite": file_data(path)}
    if kind == "gallery":
        return [{"image": file_data(path), "caption": None}]
    if kind == "imageslider":
        return [file_data(path), file_data(path)]
    return file_data(path)


def file_events(config: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every event of the app (public and private) with the components it reads, when one of them takes a file."""
    components = {c["id"]: c for c in config["components"]}
    events = []
    for dep in config["dependencies"]:
        inputs = [components[i] for i in dep["inputs"]]
        if dep.get("backend_fn", True) and any(c["type"] in FILE_COMPONENTS for c in inputs):
            events.append((dep, inputs))
    return events


def call_event(session: requests.Session, url: str, dep: dict[str, Any], data: list[Any]) -> str:
    """Run one event as the browser would (join the queue, read its stream) and return everything it answered."""
    session_hash = hashlib.sha1(repr(data).encode()).hexdigest()[:10]
    body = {"data": data, "fn_index": dep["id"], "session_hash": session_hash, "event_data": None, "trigger_id": None}
    joined = session.post(f"{url}/gradio_api/queue/join", json=body, timeout=TIMEOUT)
    if joined.status_code != 200:
        return joined.text
    stream = session.get(f"{url}/gradio_api/queue/data", params={"session_hash": session_hash}, timeout=TIMEOUT)
    return stream.text


def last_message(stream: str) -> dict[str, Any]:
    """The closing message of an event's stream (or the refusal the queue answered with)."""
    messages = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:")]
    completed = [m for m in messages if m.get("msg") == "process_completed"]
    if completed:
        return completed[-1]
    return {"success": False, "output": stream}


def test_no_event_accepts_a_server_path(attacked) -> None:
    """D3: every event that takes a file refuses any path the session did not upload, and says nothing about it."""
    url, secret, auth_file = attacked["url"], attacked["secret"], attacked["auth_file"]
    session = login(url)
    config = session.get(f"{url}/config", timeout=TIMEOUT).json()
    events = file_events(config)
    names = {dep.get("api_name") for dep, _ in events}
    assert {"png_info", "img2img", "inpaint"} <= names, names  # public events are in the sweep
    assert any(dep.get("api_visibility") == "private" for dep, _ in events)  # and so are private ones
    missing = str(secret.parent / "no-such-file.png")
    for dep, inputs in events:
        answers = {}
        for target in (str(secret), str(auth_file), missing):
            data = [
                payload_for(c, target) if c["type"] in FILE_COMPONENTS else c.get("props", {}).get("value")
                for c in inputs
            ]
            completed = last_message(call_event(session, url, dep, data))
            assert completed.get("success") is False, (dep["id"], dep.get("api_name"), completed)
            answers[target] = json.dumps(completed.get("output")).replace(target, "PATH")
        # the answer is the same whether the file exists or not: no probing the file system through errors
        assert answers[str(secret)] == answers[missing], (dep.get("api_name"), answers)
    copied = {p.read_bytes() for p in attacked["cache"].rglob("*") if p.is_file()}
    assert secret.read_bytes() not in copied and auth_file.read_bytes() not in copied


def test_uploaded_files_still_work_in_events(attacked) -> None:
    """The same check lets through what the browser itself uploaded (PNG Info reads an uploaded picture)."""
    url = attacked["url"]
    session = login(url)
    picture = attacked["outputs"].parent / "mine.png"
    Image.new("RGB", (8, 8)).save(picture, pnginfo=_text_chunk("parameters", "a cat\nSteps: 3, Seed: 5"))
    with picture.open("rb") as handle:
        uploaded = session.post(f"{url}/gradio_api/upload", files={"files": handle}, timeout=TIMEOUT)
    assert uploaded.status_code == 200, uploaded.text
    config = session.get(f"{url}/config", timeout=TIMEOUT).json()
    dep, inputs = next((d, i) for d, i in file_events(config) if d.get("api_name") == "png_info")
    completed = last_message(call_event(session, url, dep, [file_data(uploaded.json()[0])]))
    assert completed["success"] and "Seed: 5" in json.dumps(completed["output"]), completed


def _text_chunk(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, value)
    return info


# -- D1: cross-site requests ------------------------------------------------------------------------------
def test_cross_origin_writes_are_refused(attacked) -> None:
    url = attacked["url"]
    session = login(url)
    foreign = ("http://evil.example", "http://127.0.0.1:1", "null", "http://127.0.0.1.evil.example")
    for origin in foreign:
        for method, path in (
            ("POST", "/sdapi/v1/interrupt"),
            ("POST", "/sdapi/v1/skip"),
            ("POST", "/sdapi/v1/refresh-checkpoints"),
            ("POST", "/gradio_api/upload"),
            ("POST", "/gradio_api/queue/join"),
            ("POST", "/login"),
        ):
            response = session.request(method, url + path, headers={"Origin": origin}, timeout=TIMEOUT)
            assert response.status_code == 403, (origin, path, response.status_code)
            assert "cross-site" in response.json()["detail"]
            with_basic = requests.request(method, url + path, headers={"Origin": origin}, auth=AUTH, timeout=TIMEOUT)
            assert with_basic.status_code == 403, (origin, path)
    # no Origin, a Referer from elsewhere: refused too
    response = session.post(f"{url}/sdapi/v1/interrupt", headers={"Referer": "http://evil.example/x"}, timeout=TIMEOUT)
    assert response.status_code == 403
    # the server's own origin (the UI), and clients that send neither header (webuiapi, scripts), pass
    assert session.post(f"{url}/sdapi/v1/interrupt", headers={"Origin": url}, timeout=TIMEOUT).status_code == 200
    assert session.post(f"{url}/sdapi/v1/interrupt", headers={"Referer": url + "/"}, timeout=TIMEOUT).ok
    assert requests.post(f"{url}/sdapi/v1/interrupt", auth=AUTH, timeout=TIMEOUT).status_code == 200
    # reading stays possible cross-site for nobody: GETs carry no state change and CORS grants nothing
    assert session.get(f"{url}/sdapi/v1/options", headers={"Origin": "http://evil.example"}, timeout=TIMEOUT).ok


def test_login_cookies_are_strict_and_http_only(attacked) -> None:
    url = attacked["url"]
    response = requests.post(url + "/login", data={"username": USER, "password": AUTH[1]}, timeout=TIMEOUT)
    cookies = [v for k, v in response.raw.headers.items() if k.lower() == "set-cookie"]
    assert len(cookies) >= 1
    for cookie in cookies:
        attrs = [part.strip().lower() for part in cookie.split(";")]
        assert "samesite=strict" in attrs and "httponly" in attrs, cookie
        assert "secure" not in attrs  # plain http: a Secure cookie would not come back from a LAN address
        assert any(a.startswith("max-age=") for a in attrs), cookie


# -- D2: password guessing -------------------------------------------------------------------------------
class SourceAddressAdapter(HTTPAdapter):
    """Connects from another loopback address, so each test is its own client."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(address))
    return session


@pytest.mark.parametrize("how", ["ui", "basic"])
def test_password_guessing_is_slowed_then_locked_out(attacked, how: str) -> None:
    url = attacked["url"]
    attacker = session_from("127.0.0.2" if how == "ui" else "127.0.0.3")

    def attempt(password: str) -> requests.Response:
        if how == "ui":
            return attacker.post(url + "/login", data={"username": USER, "password": password}, timeout=TIMEOUT)
        return attacker.get(f"{url}/sdapi/v1/options", auth=(USER, password), timeout=TIMEOUT)

    started = time.monotonic()
    statuses = [attempt(f"guess-{i}").status_code for i in range(50)]
    assert time.monotonic() - started < 30  # refusals are immediate: no connection is held open
    assert statuses[:3] == [400 if how == "ui" else 401] * 3  # the first few mistakes are free
    assert statuses.count(429) >= 40, statuses  # then the address must wait, and then it is locked out
    refused = attempt(AUTH[1])
    assert refused.status_code == 429, "the right password must not work straight after 50 wrong ones"
    assert int(refused.headers["retry-after"]) > 60
    # the real user, on another address, is not locked out
    assert session_from("127.0.0.4").get(f"{url}/sdapi/v1/options", auth=AUTH, timeout=TIMEOUT).ok
    assert "locked out" in (attacked["outputs"].parent / "server.log").read_text()


def test_sessions_end_when_the_password_changes(attacked) -> None:
    url, auth_file = attacked["url"], attacked["auth_file"]
    bob = session_from("127.0.0.5")
    assert bob.post(url + "/login", data={"username": "bob", "password": "other"}, timeout=TIMEOUT).ok
    assert bob.get(f"{url}/config", timeout=TIMEOUT).ok
    original = auth_file.read_bytes()
    try:
        from webui.security import write_auth_file as write

        write(auth_file, [AUTH, ("bob", "changed")])
        time.sleep(2.5)  # the server looks at the password file at most every two seconds
        assert bob.get(f"{url}/config", timeout=TIMEOUT).status_code == 401
        assert session_from("127.0.0.5").get(f"{url}/sdapi/v1/options", auth=("bob", "changed")).ok
    finally:
        auth_file.write_bytes(original)
        time.sleep(2.5)


# -- D8: oversized chunked uploads --------------------------------------------------------------------------
def test_oversized_chunked_upload_is_413_and_leaves_nothing(attacked) -> None:
    url, cache = attacked["url"], attacked["cache"]
    session = login(url)
    token = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    before = {p for p in cache.rglob("*") if p.is_file()}
    tmp_before = set(Path("/tmp").glob("tmp*"))
    host = urlsplit(url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=TIMEOUT)
    boundary = "easelboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'.encode()
    connection.putrequest("POST", "/gradio_api/upload")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Cookie", token)
    connection.endheaders()
    chunk = b"\0" * (1024 * 1024)
    try:
        connection.send(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(60):  # 60 MB, over the 50 MB limit
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once it has said no
    response = connection.getresponse()
    assert response.status == 413, (response.status, response.read()[:300])
    assert "larger than" in json.loads(response.read())["detail"]
    time.sleep(0.5)
    assert {p for p in cache.rglob("*") if p.is_file()} == before
    leftovers = [p for p in set(Path("/tmp").glob("tmp*")) - tmp_before if p.is_file() and p.stat().st_size > 10**6]
    assert not leftovers
    # and the server is fine
    assert session.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).ok


# -- D1 in a real browser: a page on another loopback port posts forms to Easel ------------------------------
@contextmanager
def evil_site(target: str) -> Iterator[str]:
    """A page on its own port whose forms post to Easel (what a site the artist visits could serve)."""
    page = f"""<!doctype html><html><body>
<form id="interrupt" method="POST" action="{target}/sdapi/v1/interrupt"></form>
<form id="upload" method="POST" enctype="multipart/form-data" action="{target}/gradio_api/upload">
  <input name="files" value="x"></form>
</body></html>""".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.parametrize("form", ["interrupt", "upload"])
def test_a_foreign_page_cannot_post_as_the_logged_in_artist(attacked, tmp_path: Path, form: str) -> None:
    url = attacked["url"]
    with browser_page(tmp_path / "profile") as page, evil_site(url) as evil:
        page.goto(url)
        page.get_by_label("username").fill(USER)
        page.get_by_label("password").fill(AUTH[1])
        page.get_by_role("button", name="Login").click()
        page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)  # logged in
        page.goto(evil)
        with page.expect_navigation():
            page.evaluate(f"document.getElementById('{form}').submit()")
        answer = page.content()
        assert "cross-site request refused" in answer, answer[:500]
        page.goto(url)  # the artist is still logged in afterwards
        page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)
