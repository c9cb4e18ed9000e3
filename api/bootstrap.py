"""The first administrator: from settings at start-up, or from a script.

There is no built-in account and no default password. With ``api.admin_username`` and
``api.admin_password`` set, the app creates that admin when the database has no active admin;
otherwise ``neurogate users create-admin`` (:func:`create_admin`) does it, once.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy.orm import Session, sessionmaker

from api import queries
from api.schemas import MIN_PASSWORD, USERNAME_PATTERN
from api.security import PasswordHasher
from neurogate.db.models import User, UserRole
from neurogate.settings import Settings

log = logging.getLogger(__name__)


def create_admin(
    session: Session,
    *,
    username: str,
    password: str,
    passwords: PasswordHasher | None = None,
    email: str | None = None,
    full_name: str | None = None,
) -> User:
    """Add an active admin account (the caller commits).

    Raises
    ------
    ValueError
        When ``username`` is malformed or taken, or ``password`` is too short.
    """
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise ValueError(f"invalid username {username!r}")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"admin password must have at least {MIN_PASSWORD} characters")
    if queries.user_by_username(session, username=username) is not None:
        raise ValueError(f"user {username!r} exists already")
    user = User(
        username=username,
        email=email,
        full_name=full_name,
        role=UserRole.ADMIN,
        password_hash=(passwords or PasswordHasher()).hash(password),
        active=True,
        created_at=queries.now(),
    )
    session.add(user)
    session.flush()
    return user


def ensure_admin(
    settings: Settings, sessions: sessionmaker[Session], passwords: PasswordHasher
) -> bool:
    """Create the admin named in settings when there is no active admin; whether it did."""
    username = settings.api.admin_username
    password = settings.api.admin_password
    with sessions.begin() as session:
        if queries.count_admins(session) > 0:
            return False
        if not username or password is None:
            log.warning(
                "no admin account: run `neurogate users create-admin NAME`, or set "
                "NEUROGATE_API__ADMIN_USERNAME and NEUROGATE_API__ADMIN_PASSWORD and restart"
            )
            return False
        if queries.user_by_username(session, username=username) is not None:
            log.warning("the configured admin username belongs to another account; not created")
            return False
        create_admin(
            session,
            username=username,
            password=password.get_secret_value(),
            passwords=passwords,
        )
    log.info("admin account created from settings", extra={"username": username})
    return True
