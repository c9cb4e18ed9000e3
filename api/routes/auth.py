"""Sign-in, self-registration and one's own account.

Registration policy: anyone may register; a self-registered account is a *clinician* account
that, with ``api.registration = "approval"`` (the default), stays inactive (it cannot sign in)
until an admin activates it, and with ``"open"`` is active at once. Patient accounts
are only made by admins, because they must be linked to the right patient record; admins are
made by admins or from settings (:mod:`api.bootstrap`).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queries
from api.audit import AuditAction, AuditObject
from api.deps import (
    AuditDep,
    ContextDep,
    CurrentUser,
    SessionDep,
    peer_address,
    revoke_tokens,
    unauthorized,
)
from api.errors import ApiError, ErrorCode, responses
from api.schemas import LoginRequest, MeUpdate, RegisterRequest, Role, Token, UserOut
from api.views import user_out
from neurogate.db.models import AuditOutcome, User

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/auth", tags=["auth"])

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": LoginRequest.model_json_schema()}
            for media in ("application/json", "application/x-www-form-urlencoded")
        },
    }
}


async def login_credentials(request: Request) -> LoginRequest:
    """Username and password from an OAuth2 password form or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    if content_type in _FORM_TYPES:
        form = await request.form()
        data = {key: form.get(key) for key in ("username", "password") if key in form}
    elif content_type == "application/json":
        try:
            data = await request.json()
        except ValueError as exc:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "body is not valid JSON") from exc
    else:
        raise ApiError(
            415, ErrorCode.INVALID_FILE_TYPE, "send a JSON body or an OAuth2 password form"
        )
    try:
        return LoginRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from exc


@router.post(
    "/login",
    response_model=Token,
    openapi_extra=_LOGIN_BODY,
    responses=responses(400, 401, 403, 415, 422, 429),
)
def login(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    credentials: Annotated[LoginRequest, Depends(login_credentials)],
) -> Token:
    """An access token for a username and password (OAuth2 password flow, or JSON).

    After ``api.login_max_failures`` wrong passwords for one account from one client within
    ``api.login_window_seconds``, that client's sign-ins to the account get 429 with
    ``Retry-After`` (the password is then not even checked) until the window has moved on.
    """
    client = peer_address(request)
    throttle = context.login_throttle

    def failed(reason: str, user: User | None = None) -> None:
        auditor.record(
            AuditAction.LOGIN,
            AuditObject.USER,
            user=user,
            username=credentials.username,
            object_id=credentials.username,
            outcome=AuditOutcome.FAILURE,
            detail={"reason": reason},
        )

    key = throttle.key(credentials.username, client)
    wait = throttle.retry_after(key)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        log.warning(
            "sign-in refused: too many failures",
            extra={"username": credentials.username, "client": client, "retry_after": seconds},
        )
        failed("throttled")
        raise ApiError(
            429,
            ErrorCode.TOO_MANY_REQUESTS,
            f"too many failed sign-ins; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    user = queries.user_by_username(session, username=credentials.username)
    ok = context.passwords.verify(credentials.password, user.password_hash if user else None)
    if user is None or not ok:
        throttle.failed(key)
        log.warning("failed sign-in", extra={"username": credentials.username, "client": client})
        failed("unknown account" if user is None else "wrong password")
        raise unauthorized("incorrect username or password")
    throttle.succeeded(key)
    if not user.active:
        failed("account not active", user)
        raise ApiError(403, ErrorCode.FORBIDDEN, "account is not active (awaiting an admin?)")
    token = context.tokens.issue(user_id=user.id, role=user.role, version=user.token_version)
    auditor.record(AuditAction.LOGIN, AuditObject.USER, user=user, object_id=user.username)
    return Token(access_token=token, expires_in=context.tokens.lifetime_seconds)


@router.post("/logout", status_code=204, responses=responses(401))
def logout(session: SessionDep, auditor: AuditDep, user: CurrentUser) -> None:
    """Sign out everywhere: every access token of the account stops working."""
    revoke_tokens(user)
    session.commit()
    auditor.record(AuditAction.LOGOUT, AuditObject.USER, user=user, object_id=user.username)


@router.post("/register", status_code=201, response_model=UserOut, responses=responses(409, 422))
def register(
    context: ContextDep, session: SessionDep, auditor: AuditDep, body: RegisterRequest
) -> UserOut:
    """Ask for a clinician account; it can sign in once an admin has activated it (or at once,
    with ``api.registration = "open"``). Seed 001's ``fullName`` is taken for ``full_name``."""
    active = context.settings.api.registration == "open"
    user = User(
        username=body.username,
        email=body.email,
        full_name=body.full_name,
        title=body.title,
        department=body.department,
        institution=body.institution,
        role=Role.CLINICIAN.value,
        password_hash=context.passwords.hash(body.password),
        active=active,
        created_at=queries.now(),
    )
    add_user(session, user)
    auditor.record(
        AuditAction.REGISTER,
        AuditObject.USER,
        username=user.username,
        object_id=user.username,
        detail={"role": user.role, "active": active},
    )
    return user_out(user)


def add_user(session: Session, user: User) -> None:
    """Insert and commit ``user``; 409 when its username or email is taken."""
    taken = queries.user_by_username(session, username=user.username) is not None or (
        user.email is not None and queries.user_by_email(session, email=user.email) is not None
    )
    if taken:
        raise ApiError(409, ErrorCode.CONFLICT, "username or email already registered")
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent registration won
        session.rollback()
        raise ApiError(409, ErrorCode.CONFLICT, "username or email already registered") from exc


@router.get("/me", response_model=UserOut, responses=responses(401))
def me(user: CurrentUser) -> UserOut:
    """The signed-in account."""
    return user_out(user)


@router.put("/me", response_model=UserOut, responses=responses(401, 403, 409, 422))
def update_me(
    context: ContextDep, session: SessionDep, auditor: AuditDep, user: CurrentUser, body: MeUpdate
) -> UserOut:
    """Change one's profile, or one's password (the current password is then required; the
    account's tokens, this one included, stop working: sign in again with the new password)."""
    changes = body.model_dump(exclude_unset=True, exclude={"password", "current_password"})
    if body.password is not None:
        current = body.current_password or ""
        if not context.passwords.verify(current, user.password_hash):
            raise ApiError(403, ErrorCode.FORBIDDEN, "current password is wrong")
        user.password_hash = context.passwords.hash(body.password)
        revoke_tokens(user)
    if changes.get("email") not in (None, user.email):
        other = queries.user_by_email(session, email=changes["email"])
        if other is not None:
            raise ApiError(409, ErrorCode.CONFLICT, "email already registered")
    for name, value in changes.items():
        setattr(user, name, value)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ApiError(409, ErrorCode.CONFLICT, "email already registered") from exc
    fields = sorted(changes) + (["password"] if body.password is not None else [])
    auditor.record(
        AuditAction.USER_UPDATE,
        AuditObject.USER,
        user=user,
        object_id=user.username,
        detail={"fields": fields},
    )
    return user_out(user)
