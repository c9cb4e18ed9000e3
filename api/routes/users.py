"""Account management, for admins."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api import queries
from api.audit import AuditAction, AuditObject
from api.deps import AdminUser, AuditDep, ContextDep, Limit, Offset, SessionDep, revoke_tokens
from api.errors import ApiError, ErrorCode, not_found, responses
from api.routes.auth import add_user
from api.schemas import Page, Role, UserCreate, UserOut, UserUpdate
from api.views import user_out
from neurogate.db.models import Patient, User

router = APIRouter(prefix="/api/users", tags=["users"], responses=responses(401, 403, 422))


def _patient_link(session: Session, role: Role, patient_id: str | None) -> Patient | None:
    """The patient a patient account reads; only patient accounts have one, and they must."""
    if role is not Role.PATIENT:
        if patient_id is not None:
            raise ApiError(422, ErrorCode.VALIDATION_ERROR, "only patient accounts name a patient")
        return None
    if patient_id is None:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "a patient account needs a patient_id")
    patient = queries.patient_by_id(session, patient_id=patient_id)
    if patient is None:
        raise not_found("patient")
    return patient


@router.get("", response_model=Page[UserOut])
def list_users(
    _admin: AdminUser,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    users, total = queries.list_users(session, limit=limit, offset=offset)
    return Page(items=[user_out(u) for u in users], total=total, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=UserOut, responses=responses(404, 409))
def create_user(
    admin: AdminUser, context: ContextDep, session: SessionDep, auditor: AuditDep, body: UserCreate
) -> UserOut:
    """Create an account of any role; patient accounts are linked to an existing patient."""
    patient = _patient_link(session, body.role, body.patient_id)
    user = User(
        username=body.username,
        email=body.email,
        full_name=body.full_name,
        title=body.title,
        department=body.department,
        institution=body.institution,
        role=body.role.value,
        patient_ref=patient.id if patient is not None else None,
        password_hash=context.passwords.hash(body.password),
        active=body.active,
        created_at=queries.now(),
    )
    add_user(session, user)
    auditor.record(
        AuditAction.USER_CREATE,
        AuditObject.USER,
        user=admin,
        object_id=user.username,
        patient_id=body.patient_id,
        detail={"role": user.role, "active": user.active},
    )
    return user_out(user)


def _user(session: Session, username: str) -> User:
    user = queries.user_by_username(session, username=username)
    if user is None:
        raise not_found("user")
    return user


@router.get("/{username}", response_model=UserOut, responses=responses(404))
def get_user(_admin: AdminUser, session: SessionDep, username: str) -> UserOut:
    return user_out(_user(session, username))


@router.put("/{username}", response_model=UserOut, responses=responses(404, 409))
def update_user(
    admin: AdminUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    username: str,
    body: UserUpdate,
) -> UserOut:
    """Activate or deactivate, change role, link a patient, reset the password, edit profile.

    The last active admin cannot be demoted or deactivated (nobody could manage accounts).
    """
    user = _user(session, username)
    changes = body.model_dump(exclude_unset=True, exclude={"password", "role", "patient_id"})
    role = body.role if body.role is not None else Role(user.role)
    linked = user.patient.patient_id if user.patient is not None else None
    if "role" in body.model_fields_set or "patient_id" in body.model_fields_set:
        patient_id = body.patient_id if "patient_id" in body.model_fields_set else linked
        if role is not Role.PATIENT and "patient_id" not in body.model_fields_set:
            patient_id = None
        patient = _patient_link(session, role, patient_id)
        user.patient_ref = patient.id if patient is not None else None
        linked = patient.patient_id if patient is not None else None
    losing_admin = user.role == Role.ADMIN.value and (
        role is not Role.ADMIN or changes.get("active") is False
    )
    if losing_admin and queries.count_admins(session) <= 1:
        raise ApiError(409, ErrorCode.CONFLICT, "the last active admin must stay an active admin")
    new_email = changes.get("email")
    if new_email not in (None, user.email) and queries.user_by_email(session, email=new_email):
        raise ApiError(409, ErrorCode.CONFLICT, "email already registered")
    # A password reset, a change of role or a deactivation ends the account's sessions: its
    # tokens stop working (a deactivated account's, also once it is activated again).
    revoke = body.password is not None or role.value != user.role or changes.get("active") is False
    for name, value in changes.items():
        if name == "active" and value is None:
            continue
        setattr(user, name, value)
    user.role = role.value
    if body.password is not None:
        user.password_hash = context.passwords.hash(body.password)
    if revoke:
        revoke_tokens(user)
    session.commit()
    auditor.record(
        AuditAction.USER_UPDATE,
        AuditObject.USER,
        user=admin,
        object_id=user.username,
        patient_id=linked,
        detail={
            "fields": sorted(body.model_fields_set),  # names only: never a password
            "role": user.role,
            "active": user.active,
            "sessions_ended": revoke,
        },
    )
    return user_out(user)
