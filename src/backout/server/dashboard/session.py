"""The dashboard's login session: a cookie derived from the environment's token, never the token itself.

The cookie holds a random nonce, the operator's name and an HMAC of both keyed by the token; the CSRF token
of its forms is another HMAC of the nonce. Nothing is kept server-side, so a session survives a supervisor
restart, and a new token (`state_dir/token` replaced) ends every session. The cookie is `HttpOnly` (no
script reads it), `SameSite=Strict` (no other site's page sends it), scoped to the dashboard's path and
named after the environment (cookies ignore ports, and environments on one host have different tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

COOKIE = "backout_session"
MAX_NAME = 64


def cookie_name(env: str) -> str:
    """One cookie per environment: browsers do not tell ports apart, and each environment has its own token."""
    return f"{COOKIE}_{re.sub(r'[^A-Za-z0-9_-]', '_', env)}"


@dataclass(frozen=True)
class Session:
    nonce: str
    who: str
    csrf: str


class Sessions:
    """Signs and checks session cookies and CSRF tokens with one environment's token."""

    def __init__(self, token: str) -> None:
        self._key = token.encode()

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self._key)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    def issue(self, who: str) -> str:
        """A new session's cookie value for operator `who`."""
        nonce = secrets.token_urlsafe(16)
        name = base64.urlsafe_b64encode(who.encode()).decode().rstrip("=")
        return f"{nonce}.{name}.{self._mac('session', nonce, name)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for, or None when it is missing, forged or from another token."""
        if not cookie or not cookie.isascii() or cookie.count(".") != 2:  # every cookie this issues is ASCII
            return None
        nonce, name, mac = cookie.split(".")
        if not _same(mac, self._mac("session", nonce, name)):
            return None
        try:
            who = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return Session(nonce, who, self._mac("csrf", nonce))

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and _same(given or "", session.csrf)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of what a browser sent and an ASCII MAC. `compare_digest` raises TypeError on
    a str with non-ASCII characters (a 500), so anything non-ASCII is simply not equal."""
    return given.isascii() and hmac.compare_digest(given.encode(), expected.encode())
