"""Ending sessions and slowing password guessing: token revocation and sign-in throttling, on
SQLite and PostgreSQL; the client address the throttle counts, behind uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.throttle import MAX_KEYS, LoginThrottle
from neurogate.settings import ApiSettings, Settings
from tests.test_api_support import (
    ADMIN,
    PASSWORD,
    add_user,
    admin_headers,
    api_settings,
    bearer,
    error_code,
    running_app,
    served,
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


def _failed_sign_in_clients(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        getattr(record, "client", "")
        for record in caplog.records
        if record.getMessage() == "failed sign-in"
    ]


def test_a_rotating_x_forwarded_for_from_an_untrusted_peer_is_still_throttled(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(tmp_path, sqlite_url, login_max_failures=MAX_FAILURES)
    caplog.set_level(logging.WARNING, logger="api.routes.auth")
    with served(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        statuses = [
            http.post(
                "/api/auth/login",
                json={"username": ADMIN[0], "password": "guess"},
                headers={"X-Forwarded-For": f"203.0.113.{n}"},
            ).status_code
            for n in range(MAX_FAILURES + 2)
        ]
    assert statuses == [401] * MAX_FAILURES + [429, 429]
    assert _failed_sign_in_clients(caplog) == ["127.0.0.1"] * MAX_FAILURES  # the real peer


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(
        tmp_path, sqlite_url, login_max_failures=MAX_FAILURES, trusted_proxies=["127.0.0.0/8"]
    )
    caplog.set_level(logging.WARNING, logger="api.routes.auth")
    wrong = {"username": ADMIN[0], "password": "guess"}
    with served(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        behind = {"X-Forwarded-For": "198.51.100.7"}
        for _ in range(MAX_FAILURES):
            assert http.post("/api/auth/login", json=wrong, headers=behind).status_code == 401
        assert http.post("/api/auth/login", json=wrong, headers=behind).status_code == 429
        # Another client behind the same proxy is not locked out; a spoofed address in front
        # of the proxy's own entry is not believed (the proxy appends the real one).
        other = {"X-Forwarded-For": "198.51.100.7, 198.51.100.8"}
        assert http.post("/api/auth/login", json=wrong, headers=other).status_code == 401
    assert _failed_sign_in_clients(caplog) == ["198.51.100.7"] * MAX_FAILURES + ["198.51.100.8"]


@pytest.mark.parametrize("proxies", ["*", "proxy.example", "10.0.0.300"])
def test_trusted_proxies_must_be_addresses_or_networks(proxies: str) -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        ApiSettings.model_validate({"trusted_proxies": proxies})
