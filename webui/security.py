"""Sharing on a LAN safely: credentials, the exposure check, and one ASGI middleware in front of everything.

The middleware runs before Gradio and before the REST API, so one set of rules covers both:

1. Host header check (DNS rebinding): only this machine's names, any IP literal, and ``--allowed-hosts`` pass;
   others get 421. IP literals always pass, so an unauthenticated LAN request still learns it needs a login (401).
2. Body size limit: uploads over the setting get 413 before anything reads them.
3. Authentication: HTTP Basic with the same credentials as the Gradio login, or a Gradio session cookie. Only
   the login page and the UI's own static assets are open without one.
4. Response headers: anti-framing, nosniff, referrer policy; every ``Access-Control-Allow-*`` header is removed,
   whoever added it (Gradio echoes foreign origins when the Host is not localhost), so no origin is ever granted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import EaselError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
DEFAULT_MAX_UPLOAD_MB = 50

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

# Open without credentials when auth is on: what the Gradio login page itself needs, nothing else.
PUBLIC_EXACT = frozenset(
    {
        "/",
        "/login",
        "/login/",
        "/login_check",
        "/login_check/",
        "/gradio_api/login_check",
        "/gradio_api/login_check/",
        "/theme.css",
        "/gradio_api/theme.css",
        "/favicon.ico",
        "/manifest.json",
        "/robots.txt",
    }
)
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
# Where a 401 carries a Basic challenge; the UI's own calls get a plain 401 so browsers show no pop-up.
CHALLENGE_PREFIXES = ("/sdapi/", "/docs", "/redoc", "/openapi.json", "/outputs")


# -- credentials ------------------------------------------------------------------------------------------
def parse_credential(text: str, where: str = "--auth") -> tuple[str, str]:
    """``user:password`` (the password may itself contain ':')."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user.strip() or not password:
        raise EaselError(f"{where}: expected user:password, got {text.strip()[:40]!r}")
    return user.strip(), password


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """One ``user:password`` a line (blank lines and ``#`` comments skipped); refuses a file others can read."""
    try:
        info = path.stat()
    except OSError as exc:
        raise EaselError(f"--auth-file {path}: cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise EaselError(f"--auth-file {path}: not a regular file")
    if info.st_mode & 0o077:
        raise EaselError(
            f"--auth-file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"make it private with: chmod 600 {path}"
        )
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            pairs.append(parse_credential(line, f"--auth-file {path} line {number}"))
    if not pairs:
        raise EaselError(f"--auth-file {path}: no user:password line in it")
    return pairs


def write_auth_file(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    """Create a password file readable by its owner only (0600 from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.writelines(f"{user}:{password}\n" for user, password in pairs)


@dataclass
class Credentials:
    """user -> password; compared in constant time."""

    users: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.users)

    def check(self, user: str, password: str) -> bool:
        ok = False
        for known_user, known_password in self.users.items():
            same_user = hmac.compare_digest(user.encode(), known_user.encode())
            same_password = hmac.compare_digest(password.encode(), known_password.encode())
            ok |= same_user and same_password
        return ok

    def check_basic_header(self, header: str | None) -> bool | None:
        """None when there is no Basic header, else whether it names a known user with the right password."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and self.check(user, password)

    def as_gradio_auth(self) -> list[tuple[str, str]] | None:
        return list(self.users.items()) or None


# -- the command line's security settings -------------------------------------------------------------------
@dataclass
class SecuritySettings:
    host: str = "127.0.0.1"
    credentials: Credentials = field(default_factory=Credentials)
    allowed_hosts: frozenset[str] = frozenset()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    insecure_no_auth: bool = False


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_from_args(args: Any) -> SecuritySettings:
    """Credentials from --auth / --auth-file, and the refusal to expose an open server to the network."""
    pairs = [parse_credential(text) for text in getattr(args, "auth", None) or []]
    for path in getattr(args, "auth_file", None) or []:
        pairs.extend(read_auth_file(Path(path)))
    host = "0.0.0.0" if getattr(args, "listen", False) else getattr(args, "host", "127.0.0.1")
    settings = SecuritySettings(
        host=host,
        credentials=Credentials(dict(pairs)),
        allowed_hosts=frozenset(
            name.strip().lower() for entry in getattr(args, "allowed_hosts", None) or [] for name in entry.split(",")
        )
        - {""},
        max_upload_bytes=int(getattr(args, "max_upload_mb", DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024),
        insecure_no_auth=bool(getattr(args, "insecure_no_auth", False)),
    )
    if not is_loopback(host) and not settings.credentials and not settings.insecure_no_auth:
        raise EaselError(
            f"refusing to listen on {host} without credentials: anyone on the network could use this machine. "
            "Add --auth USER:PASSWORD (repeatable) or --auth-file PATH (one user:password a line, chmod 600), "
            "or pass --insecure-no-auth if this network is yours alone."
        )
    return settings


# -- this machine's names ---------------------------------------------------------------------------------
def machine_names() -> set[str]:
    """Names this machine answers to (never resolved over the network: local calls only)."""
    names = set(LOOPBACK_NAMES)
    try:
        hostname = socket.gethostname().lower()
    except OSError:
        hostname = ""
    if hostname:
        names |= {hostname, f"{hostname}.local", hostname.split(".")[0], f"{hostname.split('.')[0]}.local"}
    return names


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, from local name lookups and the routing table (nothing is sent)."""
    found: list[str] = []
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect picks a route; no packet leaves
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    for address in candidates:
        if address not in found and not is_loopback(address) and address != "0.0.0.0":
            found.append(address)
    return found


def split_host_header(value: str) -> str:
    """The host name of a Host header, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the middleware ---------------------------------------------------------------------------------------
class SecurityMiddleware:
    """Host check, upload limit, authentication and response headers for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        settings: SecuritySettings,
        gradio_user: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.gradio_user = gradio_user
        self.hosts = machine_names() | set(settings.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            await _json(
                send,
                421,
                "MisdirectedRequest",
                f"unknown host name {split_host_header(host)!r}; start Easel with --allowed-hosts NAME to allow it",
            )
            return
        if scope["type"] == "websocket":
            if self.settings.credentials and not self.authenticated(scope, headers):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return

        length = headers.get("content-length")
        limit = self.settings.max_upload_bytes
        if length is not None:
            if not length.isdigit():
                await _json(send, 400, "BadRequest", "invalid Content-Length")
                return
            if int(length) > limit:
                await _json(send, 413, "PayloadTooLarge", f"the request is larger than the {limit:,} bytes allowed")
                return
        if self.settings.credentials:
            verdict = self.settings.credentials.check_basic_header(headers.get("authorization"))
            public = self.is_public(scope["path"], scope["method"])
            if verdict is False or (not public and not verdict and not self.gradio_session(scope)):
                challenge = verdict is False or scope["path"].startswith(CHALLENGE_PREFIXES)
                await _json(
                    send,
                    401,
                    "Unauthorized",
                    "wrong user name or password" if verdict is False else "log in first (HTTP Basic or login page)",
                    {b"www-authenticate": b'Basic realm="Easel", charset="UTF-8"'} if challenge else None,
                )
                return
        await self.app(scope, _limited(receive, limit), _with_headers(send))

    def host_allowed(self, header: str) -> bool:
        host = split_host_header(header)
        return _is_ip_literal(host) or host in self.hosts

    @staticmethod
    def is_public(path: str, method: str) -> bool:
        if method not in ("GET", "HEAD") and path not in ("/login", "/login/"):
            return False
        return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)

    def authenticated(self, scope: Scope, headers: dict[str, str]) -> bool:
        return bool(self.settings.credentials.check_basic_header(headers.get("authorization"))) or bool(
            self.gradio_session(scope)
        )

    def gradio_session(self, scope: Scope) -> str | None:
        return self.gradio_user(scope) if self.gradio_user else None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-allow")]
            names = {k.lower() for k, _ in kept}
            kept += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            message = {**message, "headers": kept}
        await send(message)

    return wrapped


def _limited(receive: Receive, limit: int) -> Receive:
    """Counts body bytes of requests without Content-Length (chunked); past the limit the client is cut off."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return wrapped


async def _json(
    send: Send, status: int, error: str, detail: str, extra_headers: dict[bytes, bytes] | None = None
) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra_headers or {}).items())
    await _with_headers(send)({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def gradio_session_reader(gradio_app_getter: Callable[[], Any]) -> Callable[[Scope], str | None]:
    """A function that names the user of a Gradio login cookie (None when absent or unknown)."""

    def user_of(scope: Scope) -> str | None:
        gradio_app = gradio_app_getter()
        if gradio_app is None:
            return None
        cookie_id = getattr(gradio_app, "cookie_id", None)
        tokens = getattr(gradio_app, "tokens", {})
        cookies = _cookies(_headers(scope).get("cookie", ""))
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            token = cookies.get(name)
            if token and token in tokens:
                return tokens[token]
        return None

    return user_of


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out
