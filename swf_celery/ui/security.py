"""The console's guards: bind rules, the access token, CSRF tokens and response headers.

- Loopback binds need nothing; any other address needs a token (``SWF_UI_TOKEN``).
- With a token every request must carry it: ``Authorization: Bearer <token>``, the
  ``swf_ui_token`` cookie, or once ``?token=<token>`` (which sets the cookie and redirects
  to the same page without it). Tokens are compared with :func:`hmac.compare_digest`.
- Every POST carries a CSRF token: an HMAC, under a per-process secret, of a random cookie
  of the browser (double submit); a request from another origin is refused as well.
- Responses forbid inline scripts and framing (Content-Security-Policy) and sniffing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from swf_celery.errors import ConfigurationError

TOKEN_ENV = "SWF_UI_TOKEN"
TOKEN_COOKIE = "swf_ui_token"
CSRF_COOKIE = "swf_ui_csrf"
CSRF_FIELD = "csrf"
HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"the console would be reachable at {host!r} without a token: set {TOKEN_ENV} "
            "(a long random string) or bind 127.0.0.1")


def same(a: str | None, b: str) -> bool:
    """Constant-time comparison of two tokens (``None`` never matches)."""
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


class Csrf:
    """Double-submit CSRF tokens bound to a per-process secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def token_for(self, cookie: str) -> str:
        """The form token that matches a browser's CSRF cookie."""
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, submitted: str | None) -> bool:
        """Does ``submitted`` match the browser's cookie?"""
        return bool(cookie) and same(submitted, self.token_for(cookie or ""))

    @staticmethod
    def new_cookie() -> str:
        """A fresh random CSRF cookie value."""
        return secrets.token_urlsafe(24)


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is ignored, not fatal
                continue
    return {k: m.value for k, m in jar.items()}


class Guard:
    """ASGI middleware: the token check (when a token is set) and the security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        if self.token and not await self._authorised(scope, send_with_headers):
            return
        await self.app(scope, receive, send_with_headers)

    async def _authorised(self, scope: Scope, send: Send) -> bool:
        assert self.token is not None
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.startswith("Bearer ") and same(auth[7:], self.token):
            return True
        if same(_cookies(scope).get(TOKEN_COOKIE), self.token):
            return True
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        given = next((v for k, v in query if k == "token"), None)
        if same(given, self.token):  # once: set the cookie, drop the token from the URL
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            # ASGI: "path" is the full path, the mount point (root_path) included.
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = (f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                      f"Path={scope.get('root_path') or '/'}")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")),
                                    (b"set-cookie", cookie.encode("latin-1"))]})
            await send({"type": "http.response.body", "body": b""})
            return False
        body = (b"401: this console needs its token. Open it once as ?token=<SWF_UI_TOKEN> "
                b"or send 'Authorization: Bearer <token>'.\n")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})
        return False
