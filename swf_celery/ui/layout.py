"""HTML building blocks of the console: the page frame, escaping, forms, formats.

Everything a user or a step produced goes through :func:`esc` (``html.escape`` with
quotes); nothing is rendered as markup. Pages are complete without JavaScript; the
script (``static/console.js``) only adds live updates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from swf_celery.ui.security import CSRF_COOKIE, CSRF_FIELD, Csrf

NAV = (("runs", "Runs", "/"), ("queues", "Queues", "/queues"), ("flows", "Flows", "/flows"),
       ("goals", "Goals", "/goals"), ("keys", "Keys", "/keys"),
       ("schedules", "Schedules", "/schedules"), ("health", "Health", "/health"),
       ("metrics", "Metrics", "/metrics"))


def esc(value: Any) -> str:
    """Text safe to place in HTML content and quoted attributes."""
    return escape("" if value is None else str(value), quote=True)


def qs(**params: Any) -> str:
    """A query string of the non-empty ``params`` (values escaped for an href)."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return esc("?" + urlencode(kept)) if kept else ""


def path_part(value: str) -> str:
    """One URL path segment (a queue name may hold '/', '@', '.')."""
    return quote(value, safe="")


_FRACTION = re.compile(r"\.(\d{1,6})\d*")


def parse_time(text: str) -> datetime:
    """An ISO-8601 timestamp as PostgreSQL's JSON writes it (trailing zeros of the fraction
    dropped, and ``Z``, both of which Python 3.10's ``fromisoformat`` refuses)."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(
        _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), text, count=1))


def when(value: datetime | str | None) -> str:
    """A timestamp as UTC text, with a machine-readable <time>."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = parse_time(value)
        except ValueError:
            return esc(value)
    utc = value.astimezone(timezone.utc)
    return f'<time datetime="{esc(utc.isoformat())}">{utc:%Y-%m-%d %H:%M:%S}</time>'


def seconds(value: float | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 01 min``."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def badge(status: str) -> str:
    """A status word coloured by CSS class."""
    return f'<span class="badge state-{esc(status)}">{esc(status)}</span>'


@dataclass
class Context:
    """What every page needs: the request, the CSRF token and whether controls show."""

    request: Request
    csrf: Csrf
    read_only: bool
    cookie: str | None = None  # a CSRF cookie to set on the response

    @property
    def root(self) -> str:
        """The path the console is mounted at ('' at the root)."""
        return str(self.request.scope.get("root_path", "")).rstrip("/")

    def url(self, path: str) -> str:
        """``path`` under the mount point."""
        return self.root + path

    def csrf_input(self) -> str:
        """The hidden CSRF field of a POST form (sets the browser's cookie when missing)."""
        cookie = self.request.cookies.get(CSRF_COOKIE)
        if not cookie:
            cookie = self.cookie = self.cookie or Csrf.new_cookie()
        return (f'<input type="hidden" name="{CSRF_FIELD}" '
                f'value="{esc(self.csrf.token_for(cookie))}">')

    def form(self, action: str, label: str, *, fields: str = "", cls: str = "",
             confirm: str | None = None) -> str:
        """A POST form with one button (nothing in read-only mode)."""
        if self.read_only:
            return ""
        data = f' data-confirm="{esc(confirm)}"' if confirm else ""
        return (f'<form method="post" action="{esc(self.url(action))}" class="inline {cls}"'
                f'{data}>{self.csrf_input()}{fields}<button type="submit">{esc(label)}'
                "</button></form>")

    def page(self, title: str, section: str, body: str, *, status: int = 200,
             live: Mapping[str, str] | None = None) -> HTMLResponse:
        """The whole HTML document. ``live``: data attributes the script reads."""
        here = ' class="here"'
        nav = "".join(
            f'<a href="{esc(self.url(href))}"{here if key == section else ""}>'
            f"{esc(text)}</a>" for key, text, href in NAV)
        attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (live or {}).items())
        mode = '<span class="mode">read-only</span>' if self.read_only else ""
        notice = self.request.query_params.get("notice")
        note = f'<p class="notice" role="status">{esc(notice)}</p>' if notice else ""
        html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} \u00b7 swf-celery</title>"
            f'<link rel="stylesheet" href="{esc(self.url("/static/console.css"))}">'
            f'<script src="{esc(self.url("/static/console.js"))}" defer></script></head>'
            f'<body{attrs}><header><a class="brand" href="{esc(self.url("/"))}">swf-celery</a>'
            f"<nav>{nav}</nav>{mode}</header><main>{note}{body}</main></body></html>")
        response = HTMLResponse(html, status_code=status)
        if self.cookie:
            response.set_cookie(CSRF_COOKIE, self.cookie, httponly=True, samesite="strict",
                                path=self.root or "/")
        return response

    def error(self, status: int, message: str) -> HTMLResponse:
        """An error page (404 for unknown runs and queues, 400 for bad input)."""
        return self.page(f"{status}", "", f'<h1>{status}</h1><p class="error">{esc(message)}'
                         "</p>", status=status)


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, cls: str = "",
          empty: str = "nothing here") -> str:
    """An HTML table; cells are already-rendered HTML (escape with :func:`esc`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def capped(text: str | None, length: int | None, cap: int) -> str:
    """A <pre> of JSON text cut at ``cap`` characters, saying how much was left out."""
    if text is None:
        return '<p class="empty">none</p>'
    note = ""
    if length is not None and length > cap:
        note = f'<p class="cut">showing {cap:,} of {length:,} characters</p>'
    return f"<pre>{esc(text)}</pre>{note}"
