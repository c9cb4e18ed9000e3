"""A cap on request bodies, enforced while they arrive (uploads are never buffered whole first)."""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorCode, error_response


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 ``FILE_TOO_LARGE`` for a body over ``max_bytes``.

    A declared Content-Length over the limit is refused before anything is read; a chunked body
    is counted as it streams, and whatever the app began to answer is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit_mb = self.max_bytes / (1 << 20)
        response = error_response(
            413,
            ErrorCode.FILE_TOO_LARGE,
            f"request body larger than the limit of {limit_mb:g} MB",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
