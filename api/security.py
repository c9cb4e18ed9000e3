"""Password hashes (bcrypt) and access tokens (JWT, HS256)."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

import bcrypt
import jwt

from neurogate.settings import Settings

log = logging.getLogger(__name__)

BCRYPT_ROUNDS = 12
BCRYPT_MAX_BYTES = 72  # bcrypt ignores (bcrypt 5 refuses) anything longer
MIN_SECRET_CHARS = 32  # HS256 wants a key at least as long as its 256-bit output
_ALGORITHM = "HS256"
_ISSUER = "neurogate"


class PasswordHasher:
    """bcrypt with a fixed cost; ``verify`` takes as long for unknown users as for known ones."""

    def __init__(self, rounds: int = BCRYPT_ROUNDS) -> None:
        self.rounds = rounds
        self._dummy = self.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        encoded = password.encode()
        if len(encoded) > BCRYPT_MAX_BYTES:
            raise ValueError(f"password longer than {BCRYPT_MAX_BYTES} bytes")
        return bcrypt.hashpw(encoded, bcrypt.gensalt(self.rounds)).decode()

    def verify(self, password: str, hashed: str | None) -> bool:
        """Whether ``password`` matches ``hashed``; ``None`` (no such user) never matches."""
        encoded = password.encode()
        if len(encoded) > BCRYPT_MAX_BYTES:
            encoded = encoded[:BCRYPT_MAX_BYTES]
            hashed = None  # still spend the time, never match
        ok = bcrypt.checkpw(encoded, (hashed or self._dummy).encode())
        return ok and hashed is not None


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    role: str
    version: int  # the account's token version when issued (see User.token_version)


class InvalidToken(Exception):
    """The bearer token is malformed, forged or expired."""


class TokenIssuer:
    """Signs and checks access tokens with one secret for the life of the process."""

    def __init__(self, secret: str, minutes: int) -> None:
        self._secret = secret
        self._lifetime = dt.timedelta(minutes=minutes)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenIssuer:
        """The issuer for ``settings``; refuses to run in production without a real secret.

        Raises
        ------
        ValueError
            In the production profile, when ``api.jwt_secret`` is unset or too short.
        """
        configured = settings.api.jwt_secret
        secret = configured.get_secret_value() if configured is not None else ""
        if settings.profile == "production" and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                "NEUROGATE_API__JWT_SECRET must be set to at least "
                f"{MIN_SECRET_CHARS} characters in the production profile"
            )
        if not secret:
            log.warning("no api.jwt_secret: tokens are signed with a per-process random secret")
            secret = secrets.token_urlsafe(MIN_SECRET_CHARS)
        return cls(secret, settings.api.access_token_minutes)

    @property
    def lifetime_seconds(self) -> int:
        return int(self._lifetime.total_seconds())

    def issue(self, *, user_id: int, role: str, version: int) -> str:
        now = dt.datetime.now(dt.UTC)
        claims = {
            "sub": str(user_id),
            "role": role,
            "ver": version,
            "iss": _ISSUER,
            "iat": now,
            "exp": now + self._lifetime,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def check(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["sub", "exp", "iat", "iss", "ver"]},
            )
            return TokenClaims(
                user_id=int(claims["sub"]), role=str(claims["role"]), version=int(claims["ver"])
            )
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise InvalidToken(str(exc)) from exc
