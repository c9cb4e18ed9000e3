"""The production profile refuses weak API secrets at start: the example configuration's
placeholders, common or short admin passwords, low-entropy JWT secrets; one line, no trace."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from api.app import create_app
from api.secret_policy import (
    InsecureSetting,
    check_production_secrets,
    estimated_bits,
    password_weakness,
    secret_weakness,
)
from neurogate.settings import ApiSettings, Settings

REPO = Path(__file__).resolve().parents[1]
STRONG_SECRET = secrets.token_urlsafe(48)
STRONG_PASSWORD = "violet-Harbour-48-tram"


def production(tmp_path: Path, **api: str) -> Settings:
    return Settings(
        profile="production",
        data_dir=tmp_path,
        api=ApiSettings.model_validate({"jwt_secret": STRONG_SECRET, **api}),
    )


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("a" * 32, "only 1 distinct character"),
        ("<jwt-secret>", "placeholder"),  # deploy/.env.example, deploy/k8s/secret.example.yaml
        ("s3cr3t-but-short", "at least 32"),
        ("abcdefghijklmnopqrstuvwxyz012345", "entropy"),  # 32 distinct characters, one step
        ("k3J9xQ2m0z" * 4, "entropy"),  # a repeated word
        ("0123456789" * 4, "entropy"),
        # 128 bits at best: below the estimate's bar (a fresh one each run; its id stays the
        # same, so that every test process collects the same tests)
        pytest.param(secrets.token_hex(16), "entropy", id="token_hex(16)-entropy"),
    ],
)
def test_low_entropy_jwt_secrets_are_refused_naming_the_setting(
    tmp_path: Path, secret: str, reason: str
) -> None:
    with pytest.raises(InsecureSetting, match=reason) as info:
        create_app(production(tmp_path, jwt_secret=secret))
    message = str(info.value)
    assert message.startswith("NEUROGATE_API__JWT_SECRET is refused") and "\n" not in message
    assert secret not in message  # the secret itself is never echoed


def test_an_unset_jwt_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InsecureSetting, match=r"JWT_SECRET is refused.*not set"):
        create_app(Settings(profile="production", data_dir=tmp_path))


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("<admin-password>", "placeholder"),  # deploy/.env.example
        ("Password123!", "common password"),
        ("qwertyuiop12", "common password"),
        ("Neurogate2026!", "common password"),
        ("short-pw-1", "at least 12"),
        ("123456789012345", "no letters"),
        ("admin-the-admin-1", "username"),
        ("ababababababab1", "distinct"),
    ],
)
def test_weak_admin_passwords_are_refused_naming_the_setting(
    tmp_path: Path, password: str, reason: str
) -> None:
    settings = production(tmp_path, admin_username="admin", admin_password=password)
    with pytest.raises(InsecureSetting, match=reason) as info:
        create_app(settings)
    message = str(info.value)
    assert message.startswith("NEUROGATE_API__ADMIN_PASSWORD is refused") and "\n" not in message
    assert password not in message


def test_strong_secrets_and_the_local_profile_start(tmp_path: Path) -> None:
    check_production_secrets(production(tmp_path, admin_password=STRONG_PASSWORD))
    check_production_secrets(production(tmp_path))  # no admin password: none to check
    for _ in range(200):  # what the README and deploy/ tell operators to generate
        assert secret_weakness(secrets.token_urlsafe(32)) is None
        assert secret_weakness(secrets.token_hex(32)) is None
    assert password_weakness("correct horse battery staple") is None
    # A developer's machine may use a weak (if not a short) password and any secret.
    local = Settings(
        data_dir=tmp_path,
        api=ApiSettings(jwt_secret="a" * 32, admin_password="password12"),  # type: ignore[arg-type]
    )
    check_production_secrets(local)
    assert estimated_bits("a" * 32) == 0


def test_the_node_refuses_to_start_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NEUROGATE_PROFILE": "production",
        "NEUROGATE_DATA_DIR": str(tmp_path),
        "NEUROGATE_API__PORT": "0",
        "NEUROGATE_API__JWT_SECRET": "a" * 32,
    }
    done = subprocess.run(
        [sys.executable, "-m", "neurogate", "api"],
        cwd=tmp_path,  # no .env
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "JWT_SECRET" in line]
    assert lines == [
        "neurogate api: NEUROGATE_API__JWT_SECRET is refused in the production profile: it has "
        "only 1 distinct character (generate one with: python -c 'import secrets; "
        "print(secrets.token_urlsafe(48))')"
    ]
    assert "Traceback" not in done.stderr
