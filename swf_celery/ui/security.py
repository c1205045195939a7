"""The console's guards: allowed Host names, bind rules, the access token, CSRF tokens and
response headers.

- Every request must name an allowed host in its ``Host`` header (the loopback names, the
  address the console was started on, and the names it was given), so a page whose DNS name
  was rebound to a loopback address cannot read or drive the console: its requests carry
  its own name.
- Loopback binds need nothing more; any other address needs a token (``SWF_UI_TOKEN``).
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
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from swf_celery.errors import ConfigurationError

#: Host names that always reach a console on this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: In ``allowed_hosts``: any Host name (only with a token).
ANY_HOST = "*"
#: Bind addresses meaning "every interface": no Host name follows from them.
WILDCARD_BINDS = ("0.0.0.0", "::", "")
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


def host_name(value: str) -> str:
    """The host of a ``Host`` header or a host name, comparable: lower case, no port, no
    brackets, no trailing dot, IP addresses in their short form."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.partition(":")[0]
    value = value.rstrip(".")
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value


def allowed_host_names(names: Sequence[str] | None, token: str | None) -> frozenset[str]:
    """The Host names a console answers to, checked: at least one, ``*`` only with a token."""
    if isinstance(names, str):
        raise ConfigurationError(f"allowed_hosts must be a list of host names, not the string "
                                 f"{names!r}")
    if not names:
        raise ConfigurationError(
            "the console needs allowed_hosts: the Host names browsers use to reach it, e.g. "
            "allowed_hosts=['ops.example.com'] (or swf_celery.ui.LOOPBACK_HOSTS); a request "
            "naming any other host is refused, so no page whose DNS name points at the "
            "console's address can read or drive it")
    checked = set()
    for name in names:
        if not isinstance(name, str) or not host_name(name) or "/" in name:
            raise ConfigurationError(f"allowed_hosts: {name!r} is not a host name")
        checked.add(ANY_HOST if name.strip() == ANY_HOST else host_name(name))
    if ANY_HOST in checked and not token:
        raise ConfigurationError(
            f"allowed_hosts={ANY_HOST!r} answers to any Host name: it needs a token "
            f"(set {TOKEN_ENV}), else any web page can drive the console by DNS rebinding")
    return frozenset(checked)


def bind_hosts(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names of a console bound to ``host``: the loopback names, ``host`` itself
    (unless it is a wildcard address) and ``extra``; a wildcard bind needs ``extra``."""
    if host_name(host) in WILDCARD_BINDS and not extra:
        raise ConfigurationError(
            f"the console would listen on every address ({host!r}) without knowing its own "
            "name: pass --allowed-host NAME (repeatable) with each Host name clients use")
    own = [] if host_name(host) in WILDCARD_BINDS else [host]
    return [*LOOPBACK_HOSTS, *own, *extra]


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
    """ASGI middleware: the Host check, the token check (when a token is set) and the
    security headers.

    Starlette's TrustedHostMiddleware is not used: it cuts the port at the first colon,
    which leaves ``[`` of an IPv6 Host such as ``[::1]:8800``.
    """

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if ANY_HOST not in self.allowed_hosts and host_name(host) not in self.allowed_hosts:
            await _refuse_host(scope, send, host)
            return
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


async def _refuse_host(scope: Scope, send: Send, host: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = (f"400: this console does not answer to the host {host[:100]!r}. Open it under a "
            "name it was started for (127.0.0.1, localhost, its --host), or add the name "
            "(--allowed-host NAME, or allowed_hosts of create_app).\n").encode("utf-8",
                                                                              "replace")
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS]})
    await send({"type": "http.response.body", "body": body})
