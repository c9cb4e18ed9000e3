"""The operator page, ``/operator``: one static page over the API, no framework.

It signs in through ``/api/auth/login`` and reads ``/api/studies``: each study's state
(receiving, complete, analysing, done, failed), progress, findings, export state per destination
with a re-send button (``POST /api/studies/{uid}/resend``), the parked exports, and a link that
opens the study in OHIF when ``API__OHIF_URL`` is set. The only thing rendered on the server is
that address; the token stays in the tab's ``sessionStorage``.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.deps import ContextDep

PAGE_PATH = "/operator"
_VIEWER_MARK = "{{OHIF_URL}}"
# The page's script and style are inline: nothing else is loaded, and nothing from outside.
_SECURITY = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


@cache
def _page() -> str:
    return (files("api") / "static" / "operator.html").read_text(encoding="utf-8")


@router.get(PAGE_PATH, response_class=HTMLResponse)
def operator_page(context: ContextDep) -> HTMLResponse:
    """The page; it asks for a sign-in and then reads the API with the token it got."""
    viewer = context.settings.api.ohif_url or ""
    return HTMLResponse(
        _page().replace(_VIEWER_MARK, escape(viewer, quote=True)), headers=_SECURITY
    )
