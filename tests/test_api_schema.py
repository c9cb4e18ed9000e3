"""Property-based run of the OpenAPI schema (schemathesis): no request the schema allows, and
none of the malformed ones it derives, makes the API fail with a 5xx or answer off-schema.

Left out of the fuzz, each for its cost, and tested by hand in the other ``test_api_*``
modules: ``/api/classify``, ``/predict``, ``/api/predict`` and seed 003's scan uploads (a
TensorFlow model per example), ``/api/process-mri`` and STOW-RS ``/dicomweb/studies`` (files
on disk per example; the latter in ``test_stowrs_receive``), the SSE stream ``/events`` (it
polls until an analysis finishes), and ``/api/auth/logout`` (it would end the session the fuzz
runs in).
SQLite only, bounded to a few examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.app import create_app
from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.settings import Settings
from tests.test_api_support import ADMIN, FAST_HASHES, api_settings

MAX_EXAMPLES = 15

# The routes, hence the schema, are the same for every app; this one only describes them (the
# tests call an app bound to a database of their own). schemathesis' lazy fixture loader does
# not run under pytest 9, so the schema is built at collection.
schema = (
    schemathesis.openapi.from_dict(
        create_app(Settings(data_dir=Path("unused")), bcrypt_rounds=FAST_HASHES).openapi()
    )
    .exclude(
        path_regex=r"^/(api/classify|predict|api/predict|api/process-mri|api/admin/scans/upload"
        r"|api/scan/upload|dicomweb/studies)$"
    )
    .exclude(path_regex=r"/events$")
    # Signing out would revoke the admin token the other operations are called with.
    .exclude(path_regex=r"^/api/auth/logout$")
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data: Path = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{data / 'neurogate.sqlite'}"
    upgrade_to_head(url)
    engine = create_db_engine(url)
    yield create_app(
        api_settings(data, url), sessions=session_factory(engine), bcrypt_rounds=FAST_HASHES
    )
    engine.dispose()


@pytest.fixture(scope="module")
def admin_token(app: FastAPI) -> str:
    with TestClient(app) as client:  # starts it: the admin from settings is created
        response = client.post("/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        return str(response.json()["access_token"])


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_schema(case: Case, app: FastAPI, admin_token: str) -> None:
    # Valid requests for things that do not exist (a random study UID) are rightly 404s, so
    # "positive data is accepted" does not hold for this API; every other check does.
    case.call_and_validate(
        app=app,
        headers={"Authorization": f"Bearer {admin_token}"},
        excluded_checks=[positive_data_acceptance],
    )
