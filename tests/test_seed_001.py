"""Seed 001's contract (registration with ``fullName``, login, profile, ``/api/process-mri``
with ``patientName``, ``/api/scans``), replayed as its README shows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.test_api_support import (
    add_patient,
    add_study,
    add_user,
    admin_headers,
    api_settings,
    running_app,
)
from tests.test_api_uploads import nifti_bytes

DOCTOR = {
    "username": "doctor1",
    "email": "doctor@hospital.com",
    "password": "securepassword",
    "fullName": "Dr. John Smith",
    "title": "Neurologist",
    "department": "Neurology",
}
SCAN_FIELDS = {
    "id",
    "studyInstanceUid",
    "patientId",
    "patientName",
    "scanDate",
    "modalities",
    "status",
    "progress",
    "pipelineStep",
    "results",
    "createdAt",
    "userId",
}
FINDINGS = {"classification": {"label": "glioma"}, "segmentation": {"volumes_ml": {"WT": 12.5}}}


def _client(tmp: Path, **api: object) -> Iterator[TestClient]:
    with running_app(api_settings(tmp, f"sqlite:///{tmp / 'neurogate.sqlite'}", **api)) as client:
        yield client


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path, registration="open")


def _login(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_registration_takes_fullname_and_waits_for_approval_by_default(tmp_path: Path) -> None:
    for client in _client(tmp_path):
        registered = client.post("/api/auth/register", json=DOCTOR)
        assert registered.status_code == 201, registered.text
        assert registered.json()["full_name"] == "Dr. John Smith"
        assert registered.json()["active"] is False
        refused = client.post("/api/auth/login", json={"username": "doctor1", "password": "x" * 14})
        assert refused.status_code == 401
        waiting = client.post(
            "/api/auth/login", json={"username": "doctor1", "password": "securepassword"}
        )
        assert waiting.status_code == 403
        approve = client.put(
            "/api/users/doctor1", json={"active": True}, headers=admin_headers(client)
        )
        assert approve.status_code == 200
        assert _login(client, "doctor1", "securepassword")


def test_open_registration_signs_in_at_once_and_the_profile_takes_camelcase(
    open_client: TestClient,
) -> None:
    registered = open_client.post("/api/auth/register", json=DOCTOR)
    assert registered.status_code == 201 and registered.json()["active"] is True
    headers = _login(open_client, "doctor1", "securepassword")
    me = open_client.get("/api/auth/me", headers=headers).json()
    assert (me["username"], me["email"], me["full_name"]) == (
        "doctor1",
        "doctor@hospital.com",
        "Dr. John Smith",
    )
    assert (me["title"], me["department"]) == ("Neurologist", "Neurology")
    changed = open_client.put("/api/auth/me", json={"fullName": "Dr. J. Smith"}, headers=headers)
    assert changed.status_code == 200 and changed.json()["full_name"] == "Dr. J. Smith"
    typo = open_client.post("/api/auth/register", json={**DOCTOR, "username": "d2", "fulName": "x"})
    assert typo.status_code == 422  # unknown fields are still refused


def test_process_mri_keeps_the_patient_name_and_the_scan_lists_it(
    open_client: TestClient,
) -> None:
    open_client.post("/api/auth/register", json=DOCTOR)
    headers = _login(open_client, "doctor1", "securepassword")
    files = [
        ("files", (f"{m}.nii.gz", nifti_bytes(i)))
        for i, m in enumerate(("flair", "t1ce", "t2", "t1"))
    ]
    uploaded = open_client.post(
        "/api/process-mri", files=files, data={"patientName": "John Doe"}, headers=headers
    )
    assert uploaded.status_code == 202, uploaded.text
    patient_id = uploaded.json()["patient_id"]
    patient = open_client.get(f"/api/patients/{patient_id}", headers=headers).json()
    assert patient["name"] == "John Doe"
    scans = open_client.get("/api/scans", headers=headers)
    assert scans.status_code == 200
    (scan,) = scans.json()
    assert set(scan) == SCAN_FIELDS
    me = open_client.get("/api/auth/me", headers=headers).json()
    assert (scan["patientId"], scan["patientName"], scan["userId"]) == (
        patient_id,
        "John Doe",
        me["id"],
    )
    assert scan["modalities"] == ["FLAIR", "T1", "T1CE", "T2"]
    assert scan["status"] == "received" and scan["progress"] == 0 and scan["results"] is None
    assert scan["studyInstanceUid"] == uploaded.json()["study_instance_uid"]


def test_scans_carry_the_analysis_and_patients_see_only_their_own(
    open_client: TestClient,
) -> None:
    add_patient(open_client, "P1", "Doe^Jane")
    add_patient(open_client, "P2")
    add_study(open_client, "1.2.3.1", patient_id="P1", analysis="completed", findings=FINDINGS)
    add_study(open_client, "1.2.3.2", patient_id="P2", analysis="running")
    staff = add_user(open_client, "clin", "clinician")
    scans = {s["studyInstanceUid"]: s for s in open_client.get("/api/scans", headers=staff).json()}
    done = scans["1.2.3.1"]
    assert (done["status"], done["progress"], done["results"]) == ("completed", 100.0, FINDINGS)
    assert done["scanDate"] == "2026-01-01" and done["modalities"] == ["AX FLAIR"]
    assert done["userId"] is None  # sent by a modality
    assert (scans["1.2.3.2"]["status"], scans["1.2.3.2"]["pipelineStep"]) == (
        "running",
        "segmentation",
    )
    one = open_client.get(f"/api/scans/{done['id']}", headers=staff)
    assert one.status_code == 200 and one.json() == done
    patient = add_user(open_client, "pat1", "patient", patient_id="P1")
    own = open_client.get("/api/scans", headers=patient).json()
    assert [s["studyInstanceUid"] for s in own] == ["1.2.3.1"]
    other = open_client.get(f"/api/scans/{scans['1.2.3.2']['id']}", headers=patient)
    assert other.status_code == 404 and other.json()["detail"] == "scan not found"
    missing = open_client.get("/api/scans/99999", headers=staff)
    assert missing.status_code == 404 and missing.json()["detail"] == "scan not found"
    assert open_client.get("/api/scans").status_code == 401
