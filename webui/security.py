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
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipelines.errors import EaselError
from webui.login_guard import LoginThrottle, SessionBook, ThrottlePolicy, password_digest

if TYPE_CHECKING:
    from webui.config import ServerConfig

log = logging.getLogger("easel.security")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_SESSION_DAYS = 7.0
SPOOL_IN_MEMORY_BYTES = 1024 * 1024  # chunked bodies are held in memory up to this, then on disk
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATHS = frozenset({"/login", "/login/"})
USER_SCOPE_KEY = "easel.user"
"""Where the middleware leaves the authenticated user name in the ASGI scope (routes read it; absent without one)."""

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
    """user -> password; compared in constant time. Password files named in ``files`` are re-read when they
    change (looked at no more than every ``RELOAD_EVERY_S``), so a password can be changed without a restart
    and the sessions made with the old one end (see ``login_guard.SessionBook``)."""

    users: dict[str, str] = field(default_factory=dict)
    inline: list[tuple[str, str]] = field(default_factory=list)  # from --auth, kept across reloads
    files: list[Path] = field(default_factory=list)
    _stamp: tuple = field(default=(), repr=False)
    _looked_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    RELOAD_EVERY_S = 2.0

    @classmethod
    def from_sources(cls, inline: list[tuple[str, str]], files: list[Path]) -> Credentials:
        """Credentials from ``--auth`` pairs and ``--auth-file`` files (EaselError when a file is unusable)."""
        creds = cls(inline=list(inline), files=list(files))
        creds.users = creds._read()
        creds._stamp = creds._file_stamp()
        return creds

    def __bool__(self) -> bool:
        return bool(self.users)

    def refresh(self) -> None:
        """Re-read the password files if they changed; a file that became unusable keeps the old logins."""
        now = time.monotonic()
        if not self.files or now - self._looked_at < self.RELOAD_EVERY_S:
            return
        with self._lock:
            self._looked_at = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                users = self._read()
            except EaselError as exc:
                log.error("password file changed but cannot be used, keeping the previous logins: %s", exc)
                return
            changed = sorted(u for u in set(users) | set(self.users) if users.get(u) != self.users.get(u))
            self.users = users
            log.warning("password file reloaded; logins changed for: %s", ", ".join(changed) or "nobody")

    def _read(self) -> dict[str, str]:
        pairs = list(self.inline)
        for path in self.files:
            pairs.extend(read_auth_file(path))
        return dict(pairs)

    def _file_stamp(self) -> tuple:
        stamps = []
        for path in self.files:
            try:
                info = path.stat()
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def check(self, user: str, password: str) -> bool:
        ok = False
        for known_user, known_password in self.users.items():
            same_user = hmac.compare_digest(user.encode(), known_user.encode())
            same_password = hmac.compare_digest(password.encode(), known_password.encode())
            ok |= same_user and same_password
        return ok

    def digest(self, user: str) -> bytes | None:
        """A fingerprint of the user's current password (None for an unknown user)."""
        password = self.users.get(user)
        return None if password is None else password_digest(user, password)

    def basic_user(self, header: str | None) -> tuple[str, str] | None:
        """The (user, password) of a Basic header, or None when there is none or it is not Basic."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return ("", "")
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else (user, "")

    def check_basic_header(self, header: str | None) -> bool | None:
        """None when there is no Basic header, else whether it names a known user with the right password."""
        pair = self.basic_user(header)
        if pair is None:
            return None
        return bool(pair[0]) and bool(pair[1]) and self.check(*pair)

    def as_gradio_auth(self) -> Callable[[str, str], bool] | None:
        """Gradio's login form checks through us, so a reloaded password file applies to it too."""
        return self.check if self.users else None


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate and its private key for HTTPS."""

    certfile: Path
    keyfile: Path
    fingerprint: str | None = None  # SHA-256, shown at start for a certificate Easel made (--tls-self-signed)


def tls_files(certfile: Path | None, keyfile: Path | None) -> TlsFiles | None:
    """Checked --tls-certfile/--tls-keyfile: both or neither, readable, the key private to its owner."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise EaselError("HTTPS needs both --tls-certfile and --tls-keyfile")
    for flag, path in (("--tls-certfile", certfile), ("--tls-keyfile", keyfile)):
        try:
            info = path.stat()
            with path.open("rb") as handle:
                head = handle.read(64)
        except OSError as exc:
            raise EaselError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
        if not stat.S_ISREG(info.st_mode) or b"-----BEGIN" not in head:
            raise EaselError(f"{flag} {path}: not a PEM file")
    if keyfile.stat().st_mode & 0o077:
        raise EaselError(
            f"--tls-keyfile {keyfile} can be read by other users; make it private with: chmod 600 {keyfile}"
        )
    return TlsFiles(certfile, keyfile)


# -- the command line's security settings -------------------------------------------------------------------
@dataclass
class SecuritySettings:
    host: str = "127.0.0.1"
    credentials: Credentials = field(default_factory=Credentials)
    allowed_hosts: frozenset[str] = frozenset()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    insecure_no_auth: bool = False
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    session_max_age_s: float = DEFAULT_SESSION_DAYS * 86400
    tls: TlsFiles | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_from_args(config: ServerConfig) -> SecuritySettings:
    """Credentials from --auth / --auth-file, and the refusal to expose an open server to the network."""
    pairs = [parse_credential(text) for text in config.auth]
    host = config.bind_host
    settings = SecuritySettings(
        host=host,
        credentials=Credentials.from_sources(pairs, list(config.auth_file)),
        allowed_hosts=frozenset(name.strip().lower() for entry in config.allowed_hosts for name in entry.split(","))
        - {""},
        max_upload_bytes=int(config.max_upload_mb * 1024 * 1024),
        insecure_no_auth=config.insecure_no_auth,
        throttle=ThrottlePolicy(
            free_failures=config.login_free_failures, lockout_failures=config.login_lockout_failures
        ),
        session_max_age_s=config.session_days * 86400,
        tls=_tls(config),
    )
    if not is_loopback(host) and not settings.credentials and not settings.insecure_no_auth:
        raise EaselError(
            f"refusing to listen on {host} without credentials: anyone on the network could use this machine. "
            "Add --auth USER:PASSWORD (repeatable) or --auth-file PATH (one user:password a line, chmod 600), "
            "or pass --insecure-no-auth if this network is yours alone."
        )
    if not is_loopback(host) and settings.tls is None:
        log.warning("serving plain HTTP on %s: passwords and images cross the network readable", host)
    return settings


def _tls(config: ServerConfig) -> TlsFiles | None:
    if config.tls_self_signed:
        from webui.self_signed import self_signed_files  # imports cryptography: only when asked for

        return self_signed_files(config.data_dir)
    return tls_files(config.tls_certfile, config.tls_keyfile)


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
    """Host check, cross-site check, upload limit, authentication with throttling, and response headers."""

    def __init__(
        self,
        app: ASGIApp,
        settings: SecuritySettings,
        gradio_tokens: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.gradio_tokens = gradio_tokens or (lambda: None)
        self.hosts = machine_names() | set(settings.allowed_hosts)
        self.throttle = LoginThrottle(settings.throttle)
        self.sessions = SessionBook(settings.session_max_age_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _json(send, *refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes
        if "content-length" not in headers and scope["method"] in STATE_CHANGING_METHODS:
            receive = await _spooled(receive, limit)
            if receive is None:
                await _json(send, 413, "PayloadTooLarge", f"the request is larger than the {limit:,} bytes allowed")
                return
        send = _with_headers(send, https=scope.get("scheme") in ("https", "wss"), max_age=self.cookie_max_age)
        if scope["method"] == "POST" and scope["path"] in LOGIN_PATHS and self.settings.credentials:
            send = self._watch_login(scope, send)
        await self.app(scope, _limited(receive, limit), send)

    @property
    def cookie_max_age(self) -> int:
        return int(self.settings.session_max_age_s)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[Any, ...] | None:
        """Why this request is refused before it reaches the app (status, error, detail[, headers]), or None."""
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            name = split_host_header(host)
            return (
                421,
                "MisdirectedRequest",
                f"unknown host name {name!r}; start Easel with --allowed-hosts NAME to allow it",
            )
        method = scope.get("method", "GET")
        if (scope["type"] == "websocket" or method in STATE_CHANGING_METHODS) and not self.same_origin(scope, headers):
            return 403, "Forbidden", "cross-site request refused: this action must come from Easel's own page"
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None and not length.isdigit():
                return 400, "BadRequest", "invalid Content-Length"
            if length is not None and int(length) > self.settings.max_upload_bytes:
                limit = self.settings.max_upload_bytes
                return 413, "PayloadTooLarge", f"the request is larger than the {limit:,} bytes allowed"
        credentials = self.settings.credentials
        if not credentials:
            return None
        credentials.refresh()
        address = client_address(scope)
        session_user = self.session_user(scope, headers)
        basic = credentials.basic_user(headers.get("authorization"))
        is_login = method == "POST" and scope["path"] in LOGIN_PATHS
        if basic is not None or is_login:
            wait = self.throttle.wait_for(address)
            if wait > 0:
                self.throttle.failed(address, basic[0] if basic else "", checked=False)
                wait = self.throttle.wait_for(address)
                retry = str(max(1, round(wait)))
                detail = f"too many wrong passwords from {address}; try again in {retry} s"
                return 429, "TooManyRequests", detail, {b"retry-after": retry.encode()}
        if basic is not None:
            if credentials.check(*basic) and basic[1]:
                self.throttle.succeeded(address)
                scope[USER_SCOPE_KEY] = basic[0]
                return None
            self.throttle.failed(address, basic[0])
            return 401, "Unauthorized", "wrong user name or password", _CHALLENGE
        if session_user is not None:
            scope[USER_SCOPE_KEY] = session_user
            return None
        if self.is_public(scope["path"], method):
            return None
        challenge = _CHALLENGE if scope["path"].startswith(CHALLENGE_PREFIXES) else None
        return 401, "Unauthorized", "log in first (HTTP Basic or login page)", challenge

    def host_allowed(self, header: str) -> bool:
        host = split_host_header(header)
        return _is_ip_literal(host) or host in self.hosts

    @staticmethod
    def same_origin(scope: Scope, headers: dict[str, str]) -> bool:
        """Whether a browser says this request comes from a page of this server (Origin, else Referer).

        Clients that are not browsers send neither header and pass: they hold no ambient cookie to abuse.
        """
        source = headers.get("origin")
        if source is None:
            source = headers.get("referer")
            if source is None:
                return True
        return origin_of(source) == own_origin(scope, headers)

    @staticmethod
    def is_public(path: str, method: str) -> bool:
        if method not in ("GET", "HEAD") and path not in LOGIN_PATHS:
            return False
        return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)

    def session_user(self, scope: Scope, headers: dict[str, str]) -> str | None:
        """The user of a valid Gradio login cookie; stale ones are forgotten here and in Gradio."""
        tokens = self.gradio_tokens()
        if tokens is None:
            return None
        user = None
        for name, token in _cookies(headers.get("cookie", "")).items():
            if name.startswith("access-token-") and token:
                found = self.sessions.user_of(token, tokens, self.settings.credentials.digest)
                user = user or found
        return user

    def _watch_login(self, scope: Scope, send: Send) -> Send:
        """Counts the login form's answers: a new session is booked, a wrong password is throttled."""
        address = client_address(scope)

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 200:
                    self._book_login(message)
                    self.throttle.succeeded(address)
                elif status in (400, 401):
                    self.throttle.failed(address)
            await send(message)

        return watched

    def _book_login(self, start: Message) -> None:
        tokens = self.gradio_tokens() or {}
        for key, value in start.get("headers", []):
            if key.lower() != b"set-cookie":
                continue
            name, _, rest = value.decode("latin-1").partition("=")
            token = rest.split(";", 1)[0].strip().strip('"')
            user = tokens.get(token)
            if name.startswith("access-token-") and user is not None:
                digest = self.settings.credentials.digest(user)
                if digest is not None:
                    self.sessions.add(token, user, digest)


_CHALLENGE = {b"www-authenticate": b'Basic realm="Easel", charset="UTF-8"'}


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, with the scheme's default port; None for ``null`` or garbage."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def own_origin(scope: Scope, headers: dict[str, str]) -> tuple[str, str, int] | None:
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    host = headers.get("host")
    if not host:
        server = scope.get("server")
        if not server:
            return None
        host = f"[{server[0]}]:{server[1]}" if ":" in str(server[0]) else f"{server[0]}:{server[1]}"
    return origin_of(f"{scheme}://{host}")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def harden_cookie(value: bytes, https: bool, max_age: int) -> bytes:
    """A Set-Cookie value made SameSite=Strict and HttpOnly, Secure only under TLS, with an expiry.

    Gradio sets its login cookie SameSite=None (sent along with cross-site form posts) and without an expiry.
    """
    name_value, *attributes = value.decode("latin-1").split(";")
    kept = [a.strip() for a in attributes if a.strip().split("=")[0].lower() not in _COOKIE_RULED]
    kept += ["HttpOnly", "SameSite=Strict"]
    deleted = any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes)
    if not deleted and name_value.strip().startswith("access-token-"):
        kept.append(f"Max-Age={max_age}")
    elif deleted:
        kept.append("Max-Age=0")
    if https:
        kept.append("Secure")
    return "; ".join([name_value.strip(), *kept]).encode("latin-1")


_COOKIE_RULED = frozenset({"samesite", "httponly", "secure", "max-age"})


def _with_headers(send: Send, https: bool = False, max_age: int = int(DEFAULT_SESSION_DAYS * 86400)) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = []
            for key, value in message.get("headers", []):
                name = key.lower()
                if name.startswith(b"access-control-allow"):
                    continue
                kept.append((key, harden_cookie(value, https, max_age) if name == b"set-cookie" else value))
            names = {k.lower() for k, _ in kept}
            kept += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            if https and b"strict-transport-security" not in names:
                kept.append((b"strict-transport-security", b"max-age=31536000"))
            message = {**message, "headers": kept}
        await send(message)

    return wrapped


def _limited(receive: Receive, limit: int) -> Receive:
    """Counts body bytes as they arrive; past the limit the client is cut off."""
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


async def _spooled(receive: Receive, limit: int) -> Receive | None:
    """Reads a body of unknown length (chunked) before the app sees any of it; None when it is over ``limit``.

    An app that finds the client gone halfway through an upload leaves its temporary files behind and answers
    500; reading first lets the server answer 413 and keep nothing (the spool deletes itself).
    """
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 (closed by the replay)
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            spool.close()
            return _replay(None, message, receive)
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            spool.close()
            return None
        spool.write(body)
        more = message.get("more_body", False)
    spool.seek(0)
    return _replay(spool, None, receive)


def _replay(spool: Any, final: Message | None, receive: Receive) -> Receive:
    chunk_size = 256 * 1024
    done = False

    async def replayed() -> Message:
        nonlocal done
        if final is not None:
            return final
        if done:
            return await receive()
        data = spool.read(chunk_size)
        more = bool(data) and spool.tell() < _size(spool)
        if not more:
            done = True
            spool.close()
        return {"type": "http.request", "body": data, "more_body": more}

    return replayed


def _size(spool: Any) -> int:
    position = spool.tell()
    spool.seek(0, 2)
    end = spool.tell()
    spool.seek(position)
    return end


async def _json(
    send: Send, status: int, error: str, detail: str, extra_headers: dict[bytes, bytes] | None = None
) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra_headers or {}).items())
    await _with_headers(send)({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out
