"""What the seed adapters share: their error bodies, the open image routes, display names."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import BearerToken, ContextDep, SessionDep, get_current_user, peer_address
from api.errors import ApiError, ErrorCode, ErrorDetail
from neurogate.db.models import User, UserRole

log = logging.getLogger(__name__)

# (status, code, message) -> the body a seed's clients expect for a failure.
ErrorBody = Callable[[int, str, str], dict[str, Any]]
_Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.FILE_TOO_LARGE,
}


def iso_millis(moment: dt.datetime | None = None) -> str:
    """``2024-01-15T10:30:00.000Z``: the timestamps of seeds 002 and 003."""
    moment = (moment or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def percent(fraction: float) -> float:
    """A probability as the seeds' percentages, two decimals."""
    return round(fraction * 100, 2)


def detail_body(status: int, code: str, message: str) -> dict[str, Any]:
    """FastAPI's ``{"detail": ...}`` (seeds 000, 001, 004), with the node's envelope beside it."""
    return {"detail": message, "error": {"code": code, "message": message}}


class DetailError(BaseModel):
    """The error body of seeds 000, 001 and 004."""

    detail: str
    error: ErrorDetail


def error_responses(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting a seed's error body for ``statuses`` (always 400, 422
    and 500: a body that is not JSON, one the route cannot take, a failure)."""
    return {status: {"model": model} for status in sorted({*statuses, 400, 422, 500})}


def seed_route(error_body: ErrorBody, statuses: dict[int, int] | None = None) -> type[APIRoute]:
    """A route class whose failures (ours, validation, the framework's) take ``error_body``;
    ``statuses`` renames statuses the seed does not use (seed 004: 415 -> 400)."""
    renamed = statuses or {}
    body_of = error_body

    class SeedRoute(APIRoute):
        error_body = staticmethod(body_of)

        def get_route_handler(self) -> _Handler:
            handler = super().get_route_handler()

            async def answer(request: Request) -> Response:
                try:
                    return await handler(request)
                except ApiError as exc:
                    status, code, message, headers = (
                        exc.status_code,
                        exc.code.value,
                        exc.message,
                        exc.headers,
                    )
                except RequestValidationError as exc:
                    errors = exc.errors()
                    first = errors[0] if errors else {}
                    where = ".".join(str(part) for part in first.get("loc", ()))
                    status, code, headers = 422, ErrorCode.VALIDATION_ERROR.value, None
                    message = f"{where}: {first.get('msg')}" if where else "invalid request"
                except StarletteHTTPException as exc:
                    status, headers = exc.status_code, dict(exc.headers or {}) or None
                    code = _STATUS_CODES.get(status, ErrorCode.BAD_REQUEST).value
                    message = exc.detail if isinstance(exc.detail, str) else code.lower()
                except Exception as exc:  # answered in the seed's body; logged as the app does
                    log.error(
                        "unexpected error",
                        extra={"method": request.method, "route": self.path},
                        exc_info=exc,
                    )
                    status, code, headers = 500, ErrorCode.INTERNAL_ERROR.value, None
                    message = "internal error"
                status = renamed.get(status, status)
                return JSONResponse(error_body(status, code, message), status, headers=headers)

            return answer

    return SeedRoute


# -- the open image routes -------------------------------------------------------------------


def image_caller(
    context: ContextDep, session: SessionDep, request: Request, token: BearerToken
) -> User | None:
    """Who calls an image-only seed route: a staff account (the default: a token is required),
    or, with ``api.open_image_routes`` and no token, an anonymous client within its rate
    (``api.open_rate_limit`` requests per ``api.open_rate_window_seconds``, per address; 429
    with ``Retry-After`` past it)."""
    if token or not context.settings.api.open_image_routes:
        user = get_current_user(context, session, token)
        if user.role not in (UserRole.ADMIN, UserRole.CLINICIAN):
            raise ApiError(403, ErrorCode.FORBIDDEN, "this account may not do that")
        return user
    throttle = context.open_throttle
    key = throttle.key("open-image-routes", peer_address(request))
    wait = throttle.retry_after(key)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            ErrorCode.TOO_MANY_REQUESTS,
            f"too many requests; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    throttle.failed(key)  # counts the request
    return None


ImageCaller = Annotated[User | None, Depends(image_caller)]


# -- class names -----------------------------------------------------------------------------

# The node's labels -> seed 002's (and 003's) display names; seed 000 capitalises the label.
DISPLAY_NAMES = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "notumor": "No Tumor",
    "pituitary": "Pituitary",
}
NO_TUMOUR = "notumor"


def display_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label.replace("_", " ").title())
