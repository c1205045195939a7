"""POST handling shared by every control: read-only refusal, origin and CSRF checks.

Forms are ``application/x-www-form-urlencoded`` (what a browser sends for these forms),
parsed here with the standard library, so no multipart parser is needed.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from swf_celery.ui.security import CSRF_COOKIE, CSRF_FIELD, Csrf

#: Largest form body accepted (a cancel reason and a few message ids).
MAX_FORM_BYTES = 65536


class Form:
    """The fields of a posted form."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        values = self._fields.get(name)
        return values[0] if values else None

    def getlist(self, name: str) -> list[str]:
        """Every value of ``name``."""
        return list(self._fields.get(name, []))


async def checked_form(request: Request, csrf: Csrf, read_only: bool) -> Form | Response:
    """The form of a control POST, or the 403 (413, 415) response that refuses it."""
    if read_only:
        return PlainTextResponse("403: the console is read-only", status_code=403)
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != request.headers.get("host", ""):
            return PlainTextResponse("403: cross-origin request refused", status_code=403)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in ("application/x-www-form-urlencoded", ""):
        return PlainTextResponse("415: send the form as application/x-www-form-urlencoded",
                                 status_code=415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("413: form too large", status_code=413)
    form = Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
    if not csrf.valid(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        return PlainTextResponse("403: missing or stale CSRF token: reload the page and try "
                                 "again", status_code=403)
    return form


def back(request: Request, path: str, notice: str) -> RedirectResponse:
    """303 to ``path`` (under the mount point) showing ``notice`` there."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{root}{path}?{urlencode({'notice': notice})}", status_code=303)
