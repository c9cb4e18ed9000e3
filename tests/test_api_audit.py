"""The audit trail, on SQLite and PostgreSQL: who read or exported which patient's study,
report or images, sign-ins, account changes; admins read it, nobody changes it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from neurogate.db import create_db_engine
from neurogate.settings import Settings
from tests.test_api_support import (
    ADMIN,
    PASSWORD,
    add_patient,
    add_study,
    add_user,
    admin_headers,
    api_settings,
    error_code,
    running_app,
    write_pdf_report,
)

S1, S2 = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"
PEER = "testclient"  # what Starlette's TestClient connects from
EVENT_FIELDS = {
    "id",
    "at",
    "username",
    "role",
    "peer",
    "action",
    "object_type",
    "object_id",
    "study_instance_uid",
    "patient_id",
    "outcome",
    "detail",
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running_app(settings) as client:
        add_patient(client, "P1")
        add_patient(client, "P2", "Roe^Richard")
        add_study(client, S1, patient_id="P1", analysis="completed", exports={"pacs": "failed"})
        add_study(client, S2, patient_id="P2")
        yield client


def trail(client: TestClient, **filters: Any) -> list[dict[str, Any]]:
    response = client.get("/api/audit", params=filters, headers=admin_headers(client))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def only(events: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The one event with every field in ``match``."""
    found = [e for e in events if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, events)
    return found[0]


def test_reads_exports_sign_ins_and_account_changes_are_recorded(
    client: TestClient, settings: Settings
) -> None:
    wrong = client.post("/api/auth/login", json={"username": "clin", "password": "guess"})
    assert wrong.status_code == 401
    clinician = add_user(client, "clin", "clinician")  # signs in
    patient = add_user(client, "pat1", "patient", patient_id="P1")
    write_pdf_report(client, settings)
    assert client.get("/api/studies", params={"patient_id": "P1"}, headers=clinician).is_success
    assert client.get(f"/api/studies/{S1}", headers=clinician).is_success
    assert client.get(f"/api/studies/{S1}/report", headers=patient).is_success
    assert client.get(f"/api/studies/{S2}", headers=patient).status_code == 404  # not theirs
    assert client.post(f"/api/studies/{S1}/resend", headers=clinician).json()["requeued"] == 1
    assert client.post(f"/api/studies/{S1}/reanalyze", headers=clinician).status_code == 202
    assert client.get("/api/patients/P2", headers=clinician).is_success
    admin = admin_headers(client)
    created = client.post(
        "/api/users",
        json={"username": "pat2", "password": PASSWORD, "role": "patient", "patient_id": "P2"},
        headers=admin,
    )
    assert created.status_code == 201
    changed = client.put("/api/users/clin", json={"role": "admin", "password": "n3w-pass-word"})
    assert changed.status_code == 401  # no token: not an admin action, and nothing recorded
    assert client.put("/api/users/clin", json={"active": False}, headers=admin).is_success

    events = trail(client)
    assert all(e.keys() == EVENT_FIELDS and e["peer"] == PEER for e in events)
    assert only(events, action="login", outcome="failure", username="clin")["detail"] == {
        "reason": "unknown account"
    }
    login = only(events, action="login", outcome="success", username="clin")
    assert (login["role"], login["object_type"]) == ("clinician", "user")
    query = only(events, action="study.query", username="clin")
    assert query["patient_id"] == "P1" and query["detail"]["studies"] == [S1]
    read = only(events, action="study.read", username="clin", study_instance_uid=S1)
    assert (read["patient_id"], read["object_type"], read["outcome"]) == ("P1", "study", "success")
    assert read["detail"] == {"series": [f"{S1}.1"]}
    report = only(events, action="report.download")
    assert (report["username"], report["role"], report["patient_id"]) == ("pat1", "patient", "P1")
    assert (report["object_type"], report["object_id"]) == ("report", f"{S1}.9")
    assert report["study_instance_uid"] == S1
    refused = only(events, action="study.read", username="pat1")
    assert (refused["study_instance_uid"], refused["outcome"]) == (S2, "failure")
    assert refused["patient_id"] is None  # the study's patient is not revealed by a failure
    resend = only(events, action="export.resend")
    assert (resend["username"], resend["patient_id"], resend["detail"]) == (
        "clin",
        "P1",
        {"requeued": 1, "added": 0},
    )
    assert only(events, action="analysis.rerun")["study_instance_uid"] == S1
    assert only(events, action="patient.read", username="clin")["patient_id"] == "P2"
    create = only(events, action="user.create")
    assert (create["username"], create["object_id"], create["patient_id"]) == (
        ADMIN[0],
        "pat2",
        "P2",
    )
    update = only(events, action="user.update", object_id="clin")
    assert update["username"] == ADMIN[0] and update["detail"]["fields"] == ["active"]
    assert update["detail"]["sessions_ended"] is True
    assert "n3w-pass-word" not in str(events) and PASSWORD not in str(events)


def test_only_admins_read_the_trail_filtered_and_paged(client: TestClient) -> None:
    clinician = add_user(client, "clin", "clinician")
    add_user(client, "pat1", "patient", patient_id="P1")
    for headers, status in ((clinician, 403), (None, 401)):
        response = client.get("/api/audit", headers=headers)
        assert response.status_code == status
        assert error_code(response) == ("FORBIDDEN" if status == 403 else "UNAUTHORIZED")
    patient = add_user(client, "pat1b", "patient", patient_id="P1")
    refused = client.get("/api/audit", headers=patient)
    assert refused.status_code == 403 and error_code(refused) == "FORBIDDEN"
    for uid in (S1, S2, S1):
        client.get(f"/api/studies/{uid}", headers=clinician)
    before = dt.datetime.now(dt.UTC)

    reads = trail(client, user="clin", action="study.read")
    assert [e["study_instance_uid"] for e in reads] == [S1, S2, S1]  # newest first
    assert [e["patient_id"] for e in trail(client, study=S2)] == ["P2"]
    assert {e["study_instance_uid"] for e in trail(client, patient="P1", action="study.read")} == {
        S1
    }
    assert trail(client, since=before.isoformat(), action="study.read") == []
    assert len(trail(client, until=before.isoformat(), action="study.read")) == 3
    page = client.get(
        "/api/audit",
        params={"user": "clin", "action": "study.read", "limit": 2, "offset": 2},
        headers=admin_headers(client),
    ).json()
    assert (page["total"], len(page["items"]), page["items"][0]["study_instance_uid"]) == (
        3,
        1,
        S1,
    )
    assert trail(client, action="audit.read")  # reading the trail is recorded too
    bad = client.get("/api/audit", params={"study": "x"}, headers=admin_headers(client))
    assert bad.status_code == 422 and error_code(bad) == "VALIDATION_ERROR"


def test_there_is_no_route_that_changes_the_trail(client: TestClient) -> None:
    admin = admin_headers(client)
    for method in ("PUT", "PATCH", "DELETE"):
        response = client.request(method, "/api/audit", headers=admin)
        assert response.status_code == 405, method


def test_the_database_refuses_to_update_or_delete_audit_events(
    client: TestClient, database_url: str
) -> None:
    assert trail(client)  # the admin's sign-in at least
    engine = create_db_engine(database_url)
    try:
        for statement in (
            "UPDATE audit_events SET username = 'someone-else'",
            "DELETE FROM audit_events",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text("TRUNCATE audit_events"))
        with engine.connect() as connection:
            names = connection.execute(text("SELECT username FROM audit_events")).scalars().all()
        assert names and "someone-else" not in names
    finally:
        engine.dispose()


def test_the_audit_migration_downgrades_and_upgrades_again(database_url: str) -> None:
    from alembic import command

    from neurogate.db.migrate import alembic_config, upgrade_to_head

    upgrade_to_head(database_url)
    command.downgrade(alembic_config(database_url), "0004")
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            assert "audit_events" not in inspect(connection).get_table_names()
    finally:
        engine.dispose()
    upgrade_to_head(database_url)
