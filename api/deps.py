"""Annotated dependencies of the routes: the session, the current user, role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from api.audit import Auditor
from api.context import ApiContext
from api.errors import ApiError, ErrorCode
from api.security import InvalidToken
from neurogate.db.models import User, UserRole

LOGIN_PATH = "/api/auth/login"
MAX_PAGE = 500
MAX_OFFSET = 2**31 - 1  # past any real table, within every database's integer

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
_bearer = OAuth2PasswordBearer(tokenUrl=LOGIN_PATH, auto_error=False)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
BearerToken = Annotated[str | None, Depends(_bearer)]  # the bearer token, if one was sent


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    with context.session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def peer_address(request: Request) -> str | None:
    """The client's address: the TCP peer, or what a trusted proxy says (``trusted_proxies``)."""
    return request.client.host if request.client is not None else None


def get_auditor(context: ContextDep, request: Request) -> Auditor:
    return Auditor(context.session_factory(), peer_address(request))


AuditDep = Annotated[Auditor, Depends(get_auditor)]


def unauthorized(message: str) -> ApiError:
    return ApiError(401, ErrorCode.UNAUTHORIZED, message, headers=_CHALLENGE)


def get_current_user(
    context: ContextDep, session: SessionDep, token: Annotated[str | None, Depends(_bearer)]
) -> User:
    """The active account the bearer token names; 401 otherwise."""
    if not token:
        raise unauthorized("not authenticated")
    try:
        claims = context.tokens.check(token)
    except InvalidToken as exc:
        raise unauthorized("invalid or expired token") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.active:
        raise unauthorized("account not found or disabled")
    if claims.version != user.token_version:
        raise unauthorized("token revoked: sign in again")
    return user


def revoke_tokens(user: User) -> None:
    """Invalidate every access token issued to ``user`` so far (committed by the caller)."""
    user.token_version += 1


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: str) -> Callable[[User], User]:
    """A dependency that lets only accounts with one of ``roles`` through (403 otherwise)."""

    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise ApiError(403, ErrorCode.FORBIDDEN, "this account may not do that")
        return user

    return check


AdminUser = Annotated[User, Depends(require_roles(UserRole.ADMIN))]
StaffUser = Annotated[User, Depends(require_roles(UserRole.ADMIN, UserRole.CLINICIAN))]
