"""Password guessing and stale logins: a per-address throttle and a book of login sessions that expire.

Both are consulted by the security middleware for the Gradio login form and for HTTP Basic alike, so one
address cannot guess through the other door. The throttle never sleeps: a refused attempt is answered at once
with 429 and ``Retry-After``, so an attacker cannot hold the server's connections open either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger("easel.security")


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many mistakes an address may make, and what follows (all per client address)."""

    free_failures: int = 5  # mistakes answered at once, as a typo deserves
    base_delay_s: float = 1.0  # then each mistake doubles the wait before the next attempt is heard
    max_delay_s: float = 60.0
    lockout_failures: int = 10  # this many mistakes within the window lock the address out
    lockout_s: float = 15 * 60
    window_s: float = 15 * 60  # mistakes older than this are forgotten


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    next_allowed: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Counts failed password checks per client address: first a growing wait, then a lockout."""

    def __init__(self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = ThrottlePolicy() if policy is None else policy
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def wait_for(self, address: str) -> float:
        """Seconds this address must wait before a password of its is checked again (0: check it now)."""
        now = self.clock()
        with self._lock:
            record = self._records.get(address)
            if record is None:
                return 0.0
            return max(0.0, record.locked_until - now, record.next_allowed - now)

    def failed(self, address: str, user: str = "", checked: bool = True) -> None:
        """A wrong password (``checked``), or an attempt made while told to wait, which counts toward the lockout."""
        now = self.clock()
        policy = self.policy
        with self._lock:
            record = self._records.setdefault(address, _Record())
            if record.locked_until > now:
                return  # already locked out: the lockout is not extended, and the log not flooded
            record.failures = [t for t in record.failures if now - t < policy.window_s] + [now]
            count = len(record.failures)
            if count >= policy.lockout_failures:
                record.locked_until = now + policy.lockout_s
                log.warning(
                    "login: %s locked out for %d s after %d wrong passwords (last user %r)",
                    address,
                    policy.lockout_s,
                    count,
                    user,
                )
            elif checked and count >= policy.free_failures:
                delay = min(policy.max_delay_s, policy.base_delay_s * 2 ** (count - policy.free_failures))
                record.next_allowed = now + delay
                log.warning(
                    "login: wrong password for %r from %s (%d in a row); next try in %.0f s",
                    user,
                    address,
                    count,
                    delay,
                )
            elif checked:
                log.warning("login: wrong password for %r from %s (%d in a row)", user, address, count)
            self._forget_old(now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._records.pop(address, None)

    def _forget_old(self, now: float) -> None:
        """Keeps the table small under a spray from many addresses. Called with the lock held."""
        if len(self._records) < 4096:
            return
        for address, record in list(self._records.items()):
            if record.locked_until < now and all(now - t >= self.policy.window_s for t in record.failures):
                del self._records[address]


def password_digest(user: str, password: str) -> bytes:
    """What a session remembers of the credentials it was made with: changing the password ends it."""
    return hashlib.sha256(f"{len(user)}:{user}:{password}".encode()).digest()


@dataclass
class _Session:
    user: str
    created: float
    digest: bytes


class SessionBook:
    """Gradio's login tokens, with the time they were made and the credentials they were made with.

    Gradio keeps its tokens forever in ``tokens`` (token -> user). A token is valid here only while it is in
    this book, younger than ``max_age_s``, and its user still has the password it logged in with; otherwise
    it is removed from Gradio's table too, so the login page shows again.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def add(self, token: str, user: str, digest: bytes) -> None:
        with self._lock:
            self._sessions[token] = _Session(user, self.clock(), digest)

    def user_of(
        self, token: str, gradio_tokens: MutableMapping[str, str], current_digest: Callable[[str], bytes | None]
    ) -> str | None:
        """The user a token logs in, or None (and the token forgotten) when it is unknown, old or outdated."""
        with self._lock:
            session = self._sessions.get(token)
            valid = (
                session is not None
                and gradio_tokens.get(token) == session.user
                and self.clock() - session.created < self.max_age_s
                and hmac.compare_digest(current_digest(session.user) or b"", session.digest)
            )
            if valid:
                assert session is not None
                return session.user
            self._sessions.pop(token, None)
        gradio_tokens.pop(token, None)
        return None
