"""A patient whose study arrives over DICOM becomes a patient of the portal: the listener's
first sight of a Patient ID makes the record from the headers (name, birth date, sex)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from pydicom import dcmread

from tests.dicomgen import write_mr_study
from tests.harness import running_listener, storescu, study_row, wait_for
from tests.test_api_support import add_user, api_settings, running_app

pytestmark = pytest.mark.dcmtk

# DICOM-legal (LO): spaces, a caret and a slash; not safe in a URL path unencoded.
PATIENT_ID = "MRN 0042/A^7"


def _scanner_study(folder: Path, seed: int, **headers: str) -> tuple[str, list[Path]]:
    study = write_mr_study(folder, series=1, slices=2, patient_id=PATIENT_ID, seed=seed)
    for path in study.files:
        ds = dcmread(path)
        for keyword, value in headers.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return study.study_uid, study.files


def test_a_study_received_over_dicom_makes_its_patient(tmp_path: Path, database_url: str) -> None:
    settings = api_settings(tmp_path / "node", database_url, registration="approval")
    first_uid, first = _scanner_study(
        tmp_path / "a", 1, PatientName="Doe^Jane", PatientBirthDate="19700412", PatientSex="F"
    )
    second_uid, second = _scanner_study(tmp_path / "b", 2, PatientName="Doe^Jane")
    with running_listener(settings) as listener:
        assert storescu(listener.address[1], first).returncode == 0
        assert storescu(listener.address[1], second).returncode == 0
        for uid in (first_uid, second_uid):
            wait_for(lambda uid=uid: (row := study_row(settings, uid)) and row.status == "complete")
    with running_app(settings) as client:
        staff = add_user(client, "clin", "clinician")
        path = f"/api/patients/{quote(PATIENT_ID, safe='')}"
        response = client.get(path, headers=staff)
        assert response.status_code == 200, response.text
        patient = response.json()
        assert (patient["patient_id"], patient["name"]) == (PATIENT_ID, "Doe^Jane")
        assert (patient["birth_date"], patient["sex"]) == ("1970-04-12", "F")
        assert {s["study_instance_uid"] for s in patient["studies"]} == {first_uid, second_uid}
        listed = client.get("/api/patients", headers=staff).json()
        assert [p["patient_id"] for p in listed["items"]] == [PATIENT_ID]  # one record, not two
        assert client.get(f"{path}/follow-up", headers=staff).json()["patient_id"] == PATIENT_ID
        # A patient account can be linked to the scanner's patient and sees its studies.
        admin_token = client.post(
            "/api/auth/login", data={"username": "admin", "password": "admin-password-1"}
        ).json()["access_token"]
        created = client.post(
            "/api/users",
            json={
                "username": "jane",
                "password": "a-long-password",
                "role": "patient",
                "patient_id": PATIENT_ID,
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert created.status_code == 201, created.text
        jane = client.post(
            "/api/auth/login", data={"username": "jane", "password": "a-long-password"}
        ).json()["access_token"]
        own = client.get("/api/studies", headers={"Authorization": f"Bearer {jane}"}).json()
        assert {s["study_instance_uid"] for s in own["items"]} == {first_uid, second_uid}
