"""A cap on request bodies, enforced while they arrive (uploads are never buffered whole first).

Two caps: NIfTI uploads (``api.max_upload_mb``, spooled to disk as they stream) and every other
body (``api.max_request_mb``): JSON, ``/predict``'s base64 pictures and ``/api/classify``'s
picture are read into memory whole and decoded, so each byte allowed costs a few in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorCode, error_response


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 ``FILE_TOO_LARGE`` for a body over its path's limit.

    A declared Content-Length over the limit is refused before anything is read; a chunked body
    is counted as it streams (refused at the first chunk past the limit, so at most the limit is
    ever held), and whatever the app began to answer is replaced by the 413.

    Parameters
    ----------
    max_bytes
        The limit of every path not in ``path_limits``.
    path_limits
        Limits of particular paths (exact match), e.g. the upload route's larger one.
    path_bodies
        The error body of particular paths (exact match), from (status, code, message): the
        seed routes' own (``api.seeds``); others get the node's envelope.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        path_limits: Mapping[str, int] | None = None,
        path_bodies: Mapping[str, Callable[[int, str, str], dict[str, Any]]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})
        self.path_bodies = dict(path_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):  # the 413 below answers it
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = f"request body larger than the limit of {limit / (1 << 20):g} MB"
        headers = {"Connection": "close"}
        body = self.path_bodies.get(scope.get("path", ""))
        if body is not None:
            response = JSONResponse(
                body(413, ErrorCode.FILE_TOO_LARGE.value, message), 413, headers=headers
            )
        else:
            response = error_response(413, ErrorCode.FILE_TOO_LARGE, message, headers=headers)
        await response(scope, receive, send)
