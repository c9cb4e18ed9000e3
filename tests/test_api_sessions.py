"""Ending sessions and slowing password guessing: token revocation and sign-in throttling, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.throttle import MAX_KEYS, LoginThrottle
from neurogate.settings import Settings
from tests.test_api_support import (
    ADMIN,
    PASSWORD,
    add_user,
    admin_headers,
    api_settings,
    bearer,
    error_code,
    running_app,
)

MAX_FAILURES = 3


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, database_url, login_max_failures=MAX_FAILURES)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running_app(settings) as client:
        yield client


def me(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/api/auth/me", headers=headers).status_code


def test_signing_out_ends_every_session_of_the_account_and_only_of_it(client: TestClient) -> None:
    laptop, workstation = bearer(client, "admin", ADMIN[1]), bearer(client, *ADMIN)
    clinician = add_user(client, "clin", "clinician")

    assert client.post("/api/auth/logout", headers=laptop).status_code == 204

    for headers in (laptop, workstation):
        refused = client.get("/api/auth/me", headers=headers)
        assert refused.status_code == 401 and error_code(refused) == "UNAUTHORIZED"
        assert "revoked" in refused.json()["error"]["message"]
    assert me(client, clinician) == 200
    assert me(client, admin_headers(client)) == 200  # signing in again works
    assert client.post("/api/auth/logout").status_code == 401


def test_a_new_password_ends_the_sessions_opened_with_the_old_one(client: TestClient) -> None:
    headers = add_user(client, "clin", "clinician")
    changed = client.put(
        "/api/auth/me",
        headers=headers,
        json={"password": "another-long-password", "current_password": PASSWORD},
    )
    assert changed.status_code == 200
    assert me(client, headers) == 401
    assert me(client, bearer(client, "clin", "another-long-password")) == 200


def test_an_admins_reset_demotion_or_deactivation_ends_the_accounts_sessions(
    client: TestClient,
) -> None:
    admin = admin_headers(client)
    headers = add_user(client, "clin", "clinician")

    renamed = client.put("/api/users/clin", headers=admin, json={"full_name": "Dr Clin"})
    assert renamed.status_code == 200 and me(client, headers) == 200  # a profile edit does not

    password = PASSWORD
    for change in ({"password": "reset-by-the-admin"}, {"role": "admin"}, {"active": False}):
        headers = bearer(client, "clin", password)
        assert client.put("/api/users/clin", headers=admin, json=change).status_code == 200
        assert me(client, headers) == 401, change
        password = str(change.get("password", password))

    reactivated = client.put("/api/users/clin", headers=admin, json={"active": True})
    assert reactivated.status_code == 200
    assert me(client, headers) == 401  # a token from before the deactivation stays dead


def test_repeated_wrong_passwords_are_refused_for_a_while_without_locking_others_out(
    client: TestClient,
) -> None:
    add_user(client, "clin", "clinician")
    for _ in range(MAX_FAILURES):
        wrong = client.post("/api/auth/login", json={"username": "clin", "password": "guess"})
        assert wrong.status_code == 401

    for password in ("guess", PASSWORD):  # the right password too: it is not even checked
        refused = client.post("/api/auth/login", json={"username": "CLIN", "password": password})
        assert refused.status_code == 429 and error_code(refused) == "TOO_MANY_REQUESTS"
        assert 290 <= int(refused.headers["retry-after"]) <= 300
    assert me(client, admin_headers(client)) == 200  # another account signs in as before


def test_a_success_clears_the_failures_and_the_window_moves_on() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=2, window_seconds=60, clock=lambda: now[0])
    key = throttle.key("Clin", "10.0.0.7")
    assert key == ("clin", "10.0.0.7")

    throttle.failed(key)
    throttle.succeeded(key)
    throttle.failed(key)
    assert throttle.retry_after(key) is None  # one failure since the success
    now[0] += 30
    throttle.failed(key)
    assert throttle.retry_after(key) == pytest.approx(30)  # until the first failure is 60 s old
    assert throttle.retry_after(throttle.key("clin", "10.0.0.8")) is None  # another client
    now[0] += 30
    assert throttle.retry_after(key) is None


def test_the_throttle_remembers_a_bounded_number_of_accounts() -> None:
    throttle = LoginThrottle(max_failures=1, window_seconds=60)
    for n in range(MAX_KEYS + 10):
        throttle.failed(throttle.key(f"user{n}", "10.0.0.7"))
    assert len(throttle._failures) == MAX_KEYS
    assert throttle.retry_after(throttle.key("user0", "10.0.0.7")) is None  # forgotten first
    assert throttle.retry_after(throttle.key(f"user{MAX_KEYS + 9}", "10.0.0.7")) is not None
