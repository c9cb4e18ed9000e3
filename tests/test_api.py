"""The REST API through its HTTP interface, on SQLite and PostgreSQL: accounts and roles,
patients, studies and their analyses, re-analysis through the outbox, re-sending, live status,
reports, health, and the error envelope."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.bootstrap import create_admin
from api.routes import studies as studies_routes
from api.server import ApiService
from neurogate.bus import open_bus
from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.db.models import Analysis, Export, OutboxEvent, Study
from neurogate.settings import ExportSettings, Settings
from schemas.events import AnalysisRequested, parse_event
from schemas.topics import Topic
from tests.conftest import free_port
from tests.test_api_support import (
    ADMIN,
    PASSWORD,
    add_patient,
    add_study,
    add_user,
    admin_headers,
    api_settings,
    bearer,
    error_code,
    running_app,
    sessions_of,
    write_pdf_report,
)

S1, S2, S3 = (
    "1.2.826.0.1.3680043.8.498.1",
    "1.2.826.0.1.3680043.8.498.2",
    "1.2.826.0.1.3680043.8.498.3",
)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running_app(settings) as client:
        yield client


@pytest.fixture
def seeded(client: TestClient) -> dict[str, dict[str, str]]:
    """Two patients with studies; headers of an admin, a clinician and patient P1's account."""
    add_patient(client, "P1")
    add_patient(client, "P2", "Roe^Richard")
    add_study(
        client,
        S1,
        patient_id="P1",
        study_date="20260105",
        analysis="completed",
        exports={"pacs": "failed", "archive": "sent"},
        findings={"models": {"classification": {"name": "c", "version": "1", "sha256": "0" * 64}}},
    )
    add_study(client, S2, patient_id="P1", study_date="20260110", analysis="running")
    add_study(client, S3, patient_id="P2", study_date="20251201")
    return {
        "admin": admin_headers(client),
        "clinician": add_user(client, "clin", "clinician"),
        "patient": add_user(client, "pat1", "patient", patient_id="P1"),
    }


# -- identity --------------------------------------------------------------------------------


def test_without_a_token_every_protected_route_is_401_in_the_envelope(client: TestClient) -> None:
    for method, path in [
        ("GET", "/api/studies"),
        ("GET", "/api/auth/me"),
        ("GET", "/api/users"),
        ("GET", "/api/patients"),
        ("POST", f"/api/studies/{S1}/reanalyze"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 401, path
        assert error_code(response) == "UNAUTHORIZED"
        assert response.headers["www-authenticate"] == "Bearer"
    forged = client.get("/api/auth/me", headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401 and error_code(forged) == "UNAUTHORIZED"


def test_login_with_a_form_or_json_gives_a_token_for_me(client: TestClient) -> None:
    form = client.post("/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    as_json = client.post("/api/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    for response in (form, as_json):
        assert response.status_code == 200
        assert response.json()["token_type"] == "bearer"
        token = response.json()["access_token"]
        me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == ADMIN[0] and me.json()["role"] == "admin"
    wrong = client.post("/api/auth/login", json={"username": ADMIN[0], "password": "nope"})
    assert wrong.status_code == 401 and error_code(wrong) == "UNAUTHORIZED"
    nobody = client.post("/api/auth/login", json={"username": "ghost", "password": "nope"})
    assert nobody.status_code == 401 and nobody.json() == wrong.json()
    unknown_type = client.post(
        "/api/auth/login", content=b"x", headers={"content-type": "text/plain"}
    )
    assert unknown_type.status_code == 415 and error_code(unknown_type) == "INVALID_FILE_TYPE"


def test_a_self_registered_clinician_waits_for_an_admin(client: TestClient) -> None:
    body = {"username": "dr.who", "password": PASSWORD, "email": "who@example.org"}
    registered = client.post("/api/auth/register", json=body)
    assert registered.status_code == 201
    assert registered.json()["role"] == "clinician" and registered.json()["active"] is False
    assert "password" not in registered.text
    pending = client.post("/api/auth/login", json={"username": "dr.who", "password": PASSWORD})
    assert pending.status_code == 403 and error_code(pending) == "FORBIDDEN"

    again = client.post("/api/auth/register", json=body)
    assert again.status_code == 409 and error_code(again) == "CONFLICT"
    weak = client.post("/api/auth/register", json={"username": "x.y.z", "password": "short"})
    assert weak.status_code == 422 and error_code(weak) == "VALIDATION_ERROR"
    assert "short" not in weak.text  # the rejected input is never echoed
    no_role_choice = client.post("/api/auth/register", json={**body, "role": "admin"})
    assert no_role_choice.status_code == 422

    admin = admin_headers(client)
    activated = client.put("/api/users/dr.who", json={"active": True}, headers=admin)
    assert activated.status_code == 200 and activated.json()["active"] is True
    assert bearer(client, "dr.who", PASSWORD)


def test_me_can_edit_its_profile_and_password(client: TestClient) -> None:
    headers = add_user(client, "clin", "clinician")
    edited = client.put(
        "/api/auth/me",
        json={"full_name": "Dr Clin", "department": "Neuroradiology"},
        headers=headers,
    )
    assert edited.status_code == 200 and edited.json()["department"] == "Neuroradiology"
    new = "another-long-password"
    refused = client.put(
        "/api/auth/me", json={"password": new, "current_password": "wrong"}, headers=headers
    )
    assert refused.status_code == 403 and error_code(refused) == "FORBIDDEN"
    changed = client.put(
        "/api/auth/me", json={"password": new, "current_password": PASSWORD}, headers=headers
    )
    assert changed.status_code == 200
    assert bearer(client, "clin", new)


def test_only_admins_manage_accounts(client: TestClient) -> None:
    add_patient(client, "P1")
    clinician = add_user(client, "clin", "clinician")
    forbidden = client.get("/api/users", headers=clinician)
    assert forbidden.status_code == 403 and error_code(forbidden) == "FORBIDDEN"

    admin = admin_headers(client)
    made = client.post(
        "/api/users",
        json={"username": "pat1", "password": PASSWORD, "role": "patient", "patient_id": "P1"},
        headers=admin,
    )
    assert made.status_code == 201 and made.json()["patient_id"] == "P1"
    unlinked = client.post(
        "/api/users",
        json={"username": "pat2", "password": PASSWORD, "role": "patient"},
        headers=admin,
    )
    assert unlinked.status_code == 422 and error_code(unlinked) == "VALIDATION_ERROR"
    missing = client.post(
        "/api/users",
        json={"username": "pat3", "password": PASSWORD, "role": "patient", "patient_id": "NOPE"},
        headers=admin,
    )
    assert missing.status_code == 404 and error_code(missing) == "NOT_FOUND"
    listed = client.get("/api/users", headers=admin).json()
    assert listed["total"] == 3 and {u["username"] for u in listed["items"]} == {
        "admin",
        "clin",
        "pat1",
    }
    last_admin = client.put(f"/api/users/{ADMIN[0]}", json={"active": False}, headers=admin)
    assert last_admin.status_code == 409 and error_code(last_admin) == "CONFLICT"
    assert client.get("/api/users/ghost", headers=admin).status_code == 404


def test_the_first_admin_comes_from_settings_or_create_admin(
    tmp_path: Path, database_url: str
) -> None:
    settings = api_settings(tmp_path, database_url).model_copy(
        update={
            "api": api_settings(tmp_path, database_url).api.model_copy(
                update={"admin_username": None, "admin_password": None}
            )
        }
    )
    with running_app(settings) as client:
        assert (
            client.post("/api/auth/login", json={"username": "admin", "password": "x"}).status_code
            == 401
        )
        with sessions_of(client).begin() as session:
            with pytest.raises(ValueError, match="at least"):
                create_admin(session, username="root", password="short")
            create_admin(session, username="root", password="root-password-1")
        assert bearer(client, "root", "root-password-1")


def test_production_refuses_to_start_without_a_jwt_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        create_app(Settings(profile="production", data_dir=tmp_path))
    secret = {"jwt_secret": secrets.token_urlsafe(48)}
    create_app(Settings(profile="production", data_dir=tmp_path, api=secret))  # type: ignore[arg-type]


# -- patients --------------------------------------------------------------------------------


def test_patients_are_created_with_or_without_an_id(client: TestClient) -> None:
    admin = admin_headers(client)
    generated = client.post("/api/patients", json={"name": "Doe^John", "sex": "M"}, headers=admin)
    assert generated.status_code == 201
    assert re.fullmatch(r"NG[0-9A-F]{10}", generated.json()["patient_id"])
    given = client.post(
        "/api/patients", json={"patient_id": "MRN-42", "birth_date": "1970-03-01"}, headers=admin
    )
    assert given.status_code == 201 and given.json()["birth_date"] == "1970-03-01"
    again = client.post("/api/patients", json={"patient_id": "MRN-42"}, headers=admin)
    assert again.status_code == 409 and error_code(again) == "CONFLICT"
    assert client.get("/api/patients", headers=admin).json()["total"] == 2
    unknown = client.get("/api/patients/NOPE", headers=admin)
    assert unknown.status_code == 404 and error_code(unknown) == "NOT_FOUND"


def test_a_patient_account_sees_only_its_own_patient(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    own = client.get("/api/patients", headers=seeded["patient"]).json()
    assert [p["patient_id"] for p in own["items"]] == ["P1"]
    detail = client.get("/api/patients/P1", headers=seeded["patient"]).json()
    assert {s["study_instance_uid"] for s in detail["studies"]} == {S1, S2}
    other = client.get("/api/patients/P2", headers=seeded["patient"])
    assert other.status_code == 404 and error_code(other) == "NOT_FOUND"
    create = client.post("/api/patients", json={"name": "X"}, headers=seeded["patient"])
    assert create.status_code == 403 and error_code(create) == "FORBIDDEN"
    assert client.get("/api/patients", headers=seeded["clinician"]).json()["total"] == 2


# -- studies ---------------------------------------------------------------------------------


def test_scan_history_filters_sorts_and_pages(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    headers = seeded["clinician"]

    def uids(**params: object) -> list[str]:
        response = client.get("/api/studies", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [s["study_instance_uid"] for s in response.json()["items"]]

    assert uids(sort="study_date") == [S3, S1, S2]
    assert uids(sort="-study_date") == [S2, S1, S3]
    assert uids(status="completed") == [S1]
    assert uids(status="running") == [S2]
    assert uids(status="none") == [S3]
    assert uids(patient_id="P2") == [S3]
    assert uids(date_from="2026-01-01", date_to="2026-01-06", sort="study_date") == [S1]
    page = client.get(
        "/api/studies", params={"limit": 1, "offset": 1, "sort": "study_date"}, headers=headers
    ).json()
    assert page["total"] == 3 and [s["study_instance_uid"] for s in page["items"]] == [S1]

    first = client.get("/api/studies", params={"status": "completed"}, headers=headers).json()
    analysis = first["items"][0]["analysis"]
    assert (
        analysis["status"] == "completed" and analysis["models"]["classification"]["version"] == "1"
    )
    exports = {e["destination"]: e["status"] for e in analysis["objects"][0]["exports"]}
    assert exports == {"pacs": "failed", "archive": "sent"}
    assert first["items"][0]["source"] == "dicom"


def test_a_patient_account_reads_only_its_own_studies(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    headers = seeded["patient"]
    listed = client.get("/api/studies", headers=headers).json()
    assert {s["study_instance_uid"] for s in listed["items"]} == {S1, S2}
    assert (
        client.get("/api/studies", params={"patient_id": "P2"}, headers=headers).json()["total"]
        == 0
    )
    other = client.get(f"/api/studies/{S3}", headers=headers)
    assert other.status_code == 404 and error_code(other) == "NOT_FOUND"
    own = client.get(f"/api/studies/{S1}", headers=headers)
    assert own.status_code == 200
    rerun = client.post(f"/api/studies/{S1}/reanalyze", headers=headers)
    assert rerun.status_code == 403 and error_code(rerun) == "FORBIDDEN"
    assert client.get("/api/stats", headers=headers).json() == {
        "studies": 2,
        "completed": 1,
        "running": 1,
    }


def test_study_detail_has_series_and_the_history_of_analyses(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    detail = client.get(f"/api/studies/{S1}", headers=seeded["clinician"]).json()
    assert [s["series_description"] for s in detail["series"]] == ["AX FLAIR"]
    assert [a["status"] for a in detail["analyses"]] == ["completed"]
    assert detail["analysis"]["objects"][0]["kind"] == "pdf"
    bad_uid = client.get("/api/studies/not-a-uid", headers=seeded["clinician"])
    assert bad_uid.status_code == 422 and error_code(bad_uid) == "VALIDATION_ERROR"
    unknown = client.get("/api/studies/1.2.3", headers=seeded["clinician"])
    assert unknown.status_code == 404 and error_code(unknown) == "NOT_FOUND"


def test_reanalyze_puts_a_rerun_request_in_the_outbox(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    woken = []
    client.app.state.context.on_change = lambda: woken.append(1)  # type: ignore[attr-defined]
    response = client.post(f"/api/studies/{S1}/reanalyze", headers=seeded["clinician"])
    assert response.status_code == 202 and response.json()["status"] == "queued"
    with sessions_of(client)() as session:
        row = session.scalars(select(OutboxEvent)).one()
    assert row.topic == Topic.ANALYSIS_REQUESTED and row.key == S1
    event = parse_event(row.payload)
    assert isinstance(event, AnalysisRequested)
    assert (event.source, event.input_format, event.path) == ("rerun", "dicom", f"studies/{S1}")
    assert event.requested_by == "clin" and str(event.event_id) == response.json()["event_id"]
    assert woken == [1]

    add_study(client, "1.2.3.4", patient_id="P1", status="receiving")
    busy = client.post("/api/studies/1.2.3.4/reanalyze", headers=seeded["clinician"])
    assert busy.status_code == 409 and error_code(busy) == "CONFLICT"
    missing = client.post("/api/studies/1.2.3.5/reanalyze", headers=seeded["clinician"])
    assert missing.status_code == 404 and error_code(missing) == "NOT_FOUND"


def test_resend_sets_failed_exports_back_to_pending(
    client: TestClient, seeded: dict[str, dict[str, str]]
) -> None:
    response = client.post(f"/api/studies/{S1}/resend", headers=seeded["clinician"])
    assert response.status_code == 200 and response.json()["requeued"] == 1
    with sessions_of(client)() as session:
        exports = {e.destination: e for e in session.scalars(select(Export))}
    assert (exports["pacs"].status, exports["pacs"].attempts, exports["pacs"].last_error) == (
        "pending",
        0,
        None,
    )
    assert (exports["archive"].status, exports["archive"].attempts) == ("sent", 1)
    again = client.post(f"/api/studies/{S1}/resend", headers=seeded["clinician"])
    assert again.json()["requeued"] == 0


def test_the_event_stream_follows_the_analysis_until_it_completes(
    client: TestClient, seeded: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_read = threading.Event()
    snapshot = studies_routes._snapshot

    def observed_snapshot(*args: Any) -> Any:
        try:
            return snapshot(*args)
        finally:
            first_read.set()

    monkeypatch.setattr(studies_routes, "_snapshot", observed_snapshot)

    def finish_once_read() -> None:  # the stream has seen the analysis running by then
        assert first_read.wait(30)
        with sessions_of(client).begin() as session:
            row = session.scalars(select(Analysis).where(Analysis.study_instance_uid == S2)).one()
            row.status, row.step, row.progress = "completed", None, 1.0

    worker = threading.Thread(target=finish_once_read)
    worker.start()
    with client.stream("GET", f"/api/studies/{S2}/events", headers=seeded["clinician"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    worker.join()
    statuses = re.findall(r'"status": "(\w+)"', body)
    assert statuses[0] == "running" and statuses[-1] == "completed"
    assert body.count("event: status") == len(statuses)
    other = client.get(f"/api/studies/{S3}/events", headers=seeded["patient"])
    assert other.status_code == 404


def test_the_report_is_the_pdf_inside_the_encapsulated_pdf(
    client: TestClient, settings: Settings, seeded: dict[str, dict[str, str]]
) -> None:
    missing = client.get(f"/api/studies/{S2}/report", headers=seeded["patient"])
    assert missing.status_code == 404 and error_code(missing) == "NOT_FOUND"
    document = write_pdf_report(client, settings)
    response = client.get(f"/api/studies/{S1}/report", headers=seeded["patient"])
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content == document


# -- service ---------------------------------------------------------------------------------


def test_anonymous_health_names_no_destination_path_or_version(
    tmp_path: Path, database_url: str
) -> None:
    pacs = {"name": "ward-7-pacs", "ae_title": "W7PACS", "host": "10.1.2.3", "port": 104}
    settings = api_settings(tmp_path, database_url).model_copy(
        update={"export": ExportSettings.model_validate({"destinations": [pacs]})}
    )
    with running_app(settings) as client:
        anonymous = client.get("/api/health")
        assert anonymous.json()["status"] == "healthy"
        version = client.app.state.context.classifier.manifest().version  # type: ignore[attr-defined]
        revealing_values = ("ward-7-pacs", "W7PACS", "10.1.2.3", "/", "sha", f'"{version}"')
        for revealing in revealing_values:
            assert revealing not in anonymous.text, revealing
        assert client.get("/api/health/details").status_code == 401
        add_patient(client, "P1")
        for role, headers in (
            ("clinician", add_user(client, "clin", "clinician")),
            ("patient", add_user(client, "pat1", "patient", patient_id="P1")),
        ):
            refused = client.get("/api/health/details", headers=headers)
            assert refused.status_code == 403 and error_code(refused) == "FORBIDDEN", role
        details = client.get("/api/health/details", headers=admin_headers(client)).json()
        assert details["checks"]["exports"]["detail"]["destinations"] == ["ward-7-pacs"]
        assert details["checks"]["models"]["detail"]["classification"]["version"]


def test_health_metrics_and_info(client: TestClient) -> None:
    details = client.get("/api/health/details", headers=admin_headers(client))
    assert details.status_code == 200
    body = details.json()
    assert body["checks"]["database"]["status"] == "healthy"
    assert body["checks"]["models"]["detail"]["classification"]["version"]
    # No export destination is configured in the tests: a note, the node is healthy.
    assert body["checks"]["exports"]["status"] == "healthy"
    assert "no export destination" in body["checks"]["exports"]["detail"]["note"]
    assert body["status"] == "healthy"
    for path in ("/api/health", "/healthcheck"):
        health = client.get(path)
        assert health.status_code == 200
        summary = health.json()
        assert summary.keys() == {
            "status",
            "model_loaded",
            "classes",
            "uptime_seconds",
            "timestamp",  # the seeds' keys (tests/test_seed_002.py)
            "services",
            "details",
        }
        assert summary["status"] == "healthy"
        assert summary["model_loaded"] is False and summary["classes"] == 4
        assert summary["uptime_seconds"] >= 0
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert (
        'neurogate_api_requests_total{method="GET",route="/api/health",status="200"} 1.0'
        in metrics.text
    )
    assert client.get("/").json()["name"] == "NeuroGate API"


def test_cors_follows_the_settings(tmp_path: Path, database_url: str) -> None:
    settings = api_settings(tmp_path, database_url, cors_origins=["https://portal.example"])
    with running_app(settings) as client:
        allowed = client.get("/", headers={"Origin": "https://portal.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://portal.example"
        other = client.get("/", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and error_code(missing) == "NOT_FOUND"
    wrong = client.delete("/api/studies")
    assert wrong.status_code == 405 and error_code(wrong) == "METHOD_NOT_ALLOWED"
    invalid = client.get("/api/studies", params={"limit": 0}, headers=admin_headers(client))
    assert invalid.status_code == 422 and error_code(invalid) == "VALIDATION_ERROR"
    assert invalid.json()["error"]["details"][0]["loc"] == ["query", "limit"]


def test_an_unexpected_error_is_500_without_a_trace_or_patient_data(settings: Settings) -> None:
    app = create_app(settings, bcrypt_rounds=4)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("Doe^Jane at /var/secret/path")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500 and error_code(response) == "INTERNAL_ERROR"
    assert "Doe" not in response.text and "Traceback" not in response.text


def test_follow_up_compares_tumour_volumes_between_analysed_studies(client: TestClient) -> None:
    add_patient(client, "P1")
    for uid, date, wt in (("1.2.40.1", "20250101", 20.0), ("1.2.40.2", "20250601", 25.0)):
        volumes = {"WT": wt, "TC": 10.0, "ET": 0.0}
        add_study(
            client,
            uid,
            patient_id="P1",
            study_date=date,
            analysis="completed",
            findings={"segmentation": {"volumes_ml": volumes, "reference_role": "FLAIR"}},
        )
    add_study(client, "1.2.40.3", patient_id="P1", study_date="20251201", analysis="running")
    headers = add_user(client, "pat1", "patient", patient_id="P1")
    body = client.get("/api/patients/P1/follow-up", headers=headers).json()
    assert [p["study_instance_uid"] for p in body["points"]] == ["1.2.40.1", "1.2.40.2"]
    (step,) = body["changes"]
    assert step["regions"]["WT"] == {
        "previous_ml": 20.0,
        "current_ml": 25.0,
        "change_ml": 5.0,
        "change_percent": 25.0,
    }
    assert step["regions"]["ET"]["change_percent"] is None
    assert client.get("/api/patients/P2/follow-up", headers=headers).status_code == 404


def test_the_api_service_serves_and_relays_its_events(tmp_path: Path, database_url: str) -> None:
    """``neurogate api``: uvicorn on a thread and an outbox relay onto the node's bus."""

    settings = api_settings(tmp_path, database_url)
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"port": free_port()})}
    )
    upgrade_to_head(database_url)
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    service = ApiService(settings, sessions, bus)
    service.start()
    try:
        base = f"http://127.0.0.1:{settings.api.port}"
        assert (
            httpx.get(f"{base}/api/health", timeout=10).json()["status"] == "healthy"
        )  # no export destination: a configuration note only
        assert httpx.get(f"{base}/healthcheck", timeout=10).status_code == 200
        token = httpx.post(
            f"{base}/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30
        ).json()["access_token"]
        with sessions.begin() as session:
            session.add(
                Study(
                    study_instance_uid=S1,
                    status="complete",
                    path=f"studies/{S1}",
                    called_ae_title="NEUROGATE",
                    first_received_at=dt.datetime.now(dt.UTC),
                    last_received_at=dt.datetime.now(dt.UTC),
                )
            )
        response = httpx.post(
            f"{base}/api/studies/{S1}/reanalyze", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 202
        consumer = bus.consumer([str(Topic.ANALYSIS_REQUESTED)], "test-group")
        deadline = time.monotonic() + 20
        messages = []
        while not messages and time.monotonic() < deadline:
            messages = consumer.poll(0.5)
        consumer.close()
        assert [parse_event(m.value).event_id for m in messages] == [
            uuid.UUID(response.json()["event_id"])
        ]
    finally:
        service.stop()
        bus.close()
        engine.dispose()
