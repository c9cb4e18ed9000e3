"""What the production profile refuses as the API's secrets: the JWT signing secret and the
first admin's password from the environment.

Refused, at start and with one line naming the setting: the placeholders of
``deploy/.env.example`` (``<admin-password>``), common or short passwords, and signing secrets
whose estimated entropy is below :data:`MIN_SECRET_BITS` (32 times ``a`` is 32 characters and
0 bits). The estimate is the secret's length times the Shannon entropy of its characters, or
of the steps between neighbouring characters where that is lower (``abcd…`` steps by 1), and
at most the bits it takes compressed (a repeated word compresses to one copy): a random secret
scores close to its real entropy or above, a pattern far below.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

from api.security import MIN_SECRET_CHARS
from neurogate.settings import Settings

MIN_SECRET_BITS = 128
MIN_SECRET_DISTINCT = 10
MIN_ADMIN_PASSWORD = 12
MIN_PASSWORD_DISTINCT = 6
JWT_SECRET_SETTING = "NEUROGATE_API__JWT_SECRET"
ADMIN_PASSWORD_SETTING = "NEUROGATE_API__ADMIN_PASSWORD"
_GENERATE = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
_ZLIB_OVERHEAD = len(zlib.compress(b"", 9))
_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")  # deploy/.env.example, deploy/k8s: <jwt-secret>
# The most common passwords of the public breach lists, and what deployments tend to be given;
# compared after lower-casing and dropping everything but letters (Password123! is password).
COMMON_PASSWORDS = frozenset(
    """
    password passwort passw passwd pass admin administrator root toor qwerty qwertz azerty
    qwertyuiop asdfgh asdfghjkl zxcvbnm letmein welcome welcomeback changeme changeit default
    secret topsecret supersecret master monkey dragon shadow sunshine princess football
    baseball superman batman trustno iloveyou abc abcdef abcdefgh abcdefghij test tester
    testing guest user login hello hellothere freedom whatever starwars pokemon computer
    internet michael charlie jordan jennifer hunter killer ninja mustang access secure
    security neurogate orthanc pacs dicom hospital clinic radiology doctor nurse patient
    summer winter spring autumn fall january adminadmin rootroot passwordpassword
    """.split()  # noqa: SIM905 (a list literal of 90 words would not read better)
)


class InsecureSetting(ValueError):
    """A secret the production profile refuses; the message is one line naming the setting."""


def _entropy(symbols: Sequence[object]) -> float:
    """Shannon entropy of the symbols' distribution, in bits per symbol."""
    if not symbols:
        return 0.0
    counts = Counter(symbols)
    n = len(symbols)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def estimated_bits(secret: str) -> float:
    """A (generous to randomness, harsh to patterns) estimate of the entropy of ``secret``."""
    steps = [ord(b) - ord(a) for a, b in itertools.pairwise(secret)]
    per_symbol = len(secret) * min(_entropy(secret), _entropy(steps))
    compressed = (len(zlib.compress(secret.encode(), 9)) - _ZLIB_OVERHEAD) * 8
    return float(min(per_symbol, compressed))


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` may not sign tokens in production; ``None`` when it may."""
    if not secret:
        return "it is not set"
    if _PLACEHOLDER.match(secret):
        return "it is still the placeholder of the example configuration"
    if len(secret) < MIN_SECRET_CHARS:
        return f"it has {len(secret)} characters, at least {MIN_SECRET_CHARS} are needed"
    distinct = len(set(secret))
    if distinct < MIN_SECRET_DISTINCT:
        return f"it has only {distinct} distinct character{'s' if distinct != 1 else ''}"
    bits = estimated_bits(secret)
    if bits < MIN_SECRET_BITS:
        return f"its estimated entropy is {bits:.0f} bits, at least {MIN_SECRET_BITS} are needed"
    return None


def password_weakness(password: str, *, username: str | None = None) -> str | None:
    """Why ``password`` may not be the configured admin's in production; ``None`` when it may."""
    if _PLACEHOLDER.match(password):
        return "it is still the placeholder of the example configuration"
    if len(password) < MIN_ADMIN_PASSWORD:
        return f"it has {len(password)} characters, at least {MIN_ADMIN_PASSWORD} are needed"
    letters = re.sub(r"[^a-z]", "", password.casefold())
    if not letters:
        return "it has no letters"
    if letters in COMMON_PASSWORDS:
        return "it is a common password (or one with a few digits or symbols added)"
    if username and username.casefold() in password.casefold():
        return "it contains the admin's username"
    if len(set(password)) < MIN_PASSWORD_DISTINCT:
        return f"it has only {len(set(password))} distinct characters"
    return None


def check_production_secrets(settings: Settings) -> None:
    """Refuse weak API secrets in the production profile (nothing is checked when local).

    Raises
    ------
    InsecureSetting
        Naming the first refused setting and why, in one line.
    """
    if settings.profile != "production":
        return
    configured = settings.api.jwt_secret
    reason = secret_weakness(configured.get_secret_value() if configured is not None else "")
    if reason is not None:
        raise InsecureSetting(
            f"{JWT_SECRET_SETTING} is refused in the production profile: {reason} ({_GENERATE})"
        )
    password = settings.api.admin_password
    if password is not None:
        reason = password_weakness(
            password.get_secret_value(), username=settings.api.admin_username
        )
        if reason is not None:
            raise InsecureSetting(
                f"{ADMIN_PASSWORD_SETTING} is refused in the production profile: {reason}"
            )
