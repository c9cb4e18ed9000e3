"""``POST /api/process-mri``: NIfTI volumes stored, a study recorded, an analysis requested."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from neurogate.db.models import AuditEvent, OutboxEvent, Patient, Study, Upload
from neurogate.settings import Settings
from schemas.events import AnalysisRequested, parse_event
from tests.bombs import nifti_bomb
from tests.test_api_support import (
    add_patient,
    add_user,
    api_settings,
    empty_filename_part,
    error_code,
    running_app,
    sessions_of,
)

MODALITIES = ("t1", "t1ce", "t2", "flair")


def nifti_bytes(seed: int, *, compressed: bool = True) -> bytes:
    """A small synthetic volume as NIfTI-1 (gzip-compressed unless told otherwise).

    The gzip header's timestamp is fixed so that the same seed always gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    image = nib.Nifti1Image(rng.random((12, 10, 8), dtype=np.float32), np.diag([2.0, 2, 2, 1]))
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if compressed else raw


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return api_settings(tmp_path, database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running_app(settings) as client:
        yield client


@pytest.fixture
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def test_a_brats_named_upload_becomes_a_study_and_an_analysis_request(
    client: TestClient, settings: Settings, staff: dict[str, str]
) -> None:
    files = [("files", (f"BraTS_001_{m}.nii.gz", nifti_bytes(i))) for i, m in enumerate(MODALITIES)]
    response = client.post(
        "/api/process-mri",
        files=files,
        data={"patient_id": "MRN-7", "patient_name": "Doe^Jane"},
        headers=staff,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    uid = body["study_instance_uid"]
    assert body["patient_id"] == "MRN-7" and body["status"] == "queued"
    assert body["files"] == {m.upper(): f"BraTS_001_{m}.nii.gz" for m in MODALITIES}

    with sessions_of(client)() as session:
        study = session.scalars(select(Study)).one()
        event = parse_event(session.scalars(select(OutboxEvent.payload)).one())
        upload = session.scalars(select(Upload)).one()
        patient = session.scalars(select(Patient)).one()
    assert study.study_instance_uid == uid and study.status == "complete"
    assert study.completion_trigger == "upload" and study.patient_name == "Doe^Jane"
    assert (patient.patient_id, patient.name) == ("MRN-7", "Doe^Jane")
    assert isinstance(event, AnalysisRequested)
    assert (event.source, event.input_format, event.requested_by) == ("upload", "nifti", "clin")
    assert event.path == f"uploads/{uid}" and upload.files == event.nifti_files
    for index, modality in enumerate(MODALITIES):
        stored = settings.storage_root / event.nifti_files[modality.upper()]
        assert stored.read_bytes() == nifti_bytes(index)
    with sessions_of(client)() as session:
        audited = session.scalars(select(AuditEvent).where(AuditEvent.action == "study.upload"))
        [recorded] = audited.all()
    assert (recorded.username, recorded.study_instance_uid, recorded.patient_id) == (
        "clin",
        uid,
        "MRN-7",
    )
    assert recorded.detail == {"roles": ["FLAIR", "T1", "T1CE", "T2"]}

    listed = client.get("/api/studies", headers=staff).json()["items"]
    assert [(s["study_instance_uid"], s["source"]) for s in listed] == [(uid, "upload")]
    rerun = client.post(f"/api/studies/{uid}/reanalyze", headers=staff)
    assert rerun.status_code == 202
    with sessions_of(client)() as session:
        payloads = session.scalars(select(OutboxEvent.payload).order_by(OutboxEvent.id)).all()
    again = parse_event(payloads[-1])
    assert isinstance(again, AnalysisRequested)
    assert (again.source, again.input_format) == ("rerun", "nifti")
    assert again.nifti_files == event.nifti_files


def test_contrasts_may_be_given_as_fields_and_a_patient_id_is_made_up(
    client: TestClient, staff: dict[str, str]
) -> None:
    response = client.post(
        "/api/process-mri",
        files={
            "flair": ("scan-a.nii", nifti_bytes(1, compressed=False)),
            "t1ce": ("scan-b.nii.gz", nifti_bytes(2)),
        },
        headers=staff,
    )
    assert response.status_code == 202, response.text
    assert set(response.json()["files"]) == {"FLAIR", "T1CE"}
    assert response.json()["patient_id"].startswith("NG")


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ({"files": ("notes.txt", b"hello")}, 415, "INVALID_FILE_TYPE"),
        ({"files": ("x_t1.nii.gz", b"not gzip at all")}, 400, "INVALID_IMAGE"),
        ({"files": ("x_t1.nii", b"\x00" * 400)}, 400, "INVALID_IMAGE"),
        ({"files": ("volume.nii.gz", b"")}, 422, "VALIDATION_ERROR"),  # which contrast?
        ({"other": ("x_t1.nii.gz", b"data")}, 400, "NO_FILE"),
    ],
)
def test_bad_uploads_are_refused_with_their_code(
    client: TestClient,
    staff: dict[str, str],
    settings: Settings,
    files: dict[str, tuple[str, bytes]],
    status: int,
    code: str,
) -> None:
    if files.get("files", ("",))[0] == "volume.nii.gz":
        files = {"files": ("volume.nii.gz", nifti_bytes(0))}
    response = client.post("/api/process-mri", files=files, headers=staff)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert not (settings.storage_root / "uploads").exists() or not any(
        (settings.storage_root / "uploads").iterdir()
    )


def test_a_file_without_a_name_is_refused(client: TestClient, staff: dict[str, str]) -> None:
    body, headers = empty_filename_part("files")
    response = client.post("/api/process-mri", content=body, headers={**staff, **headers})
    assert response.status_code == 400 and error_code(response) == "EMPTY_FILENAME"


def test_without_multipart_there_is_no_file(client: TestClient, staff: dict[str, str]) -> None:
    response = client.post("/api/process-mri", json={"t1": "x"}, headers=staff)
    assert response.status_code == 400 and error_code(response) == "NO_FILE"


def test_an_upload_over_the_limit_is_413(tmp_path: Path, database_url: str) -> None:
    settings = api_settings(tmp_path, database_url, max_upload_mb=0.01)  # 10 KiB
    with running_app(settings) as client:
        staff = add_user(client, "clin", "clinician")
        big = io.BytesIO(np.random.default_rng(0).bytes(64 * 1024))
        response = client.post(
            "/api/process-mri", files={"files": ("x_t1.nii.gz", big)}, headers=staff
        )
        assert response.status_code == 413 and error_code(response) == "FILE_TOO_LARGE"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(8):
                yield b"x" * 4096

        streamed = client.post(
            "/api/process-mri",
            content=chunks(),
            headers={**staff, "content-type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413 and error_code(streamed) == "FILE_TOO_LARGE"


def test_patients_cannot_upload(client: TestClient) -> None:
    add_patient(client, "P1")
    patient = add_user(client, "pat", "patient", patient_id="P1")
    response = client.post(
        "/api/process-mri", files={"files": ("x_t1.nii.gz", nifti_bytes(0))}, headers=patient
    )
    assert response.status_code == 403 and error_code(response) == "FORBIDDEN"


def test_a_nifti_whose_header_claims_1_5_gib_is_refused_before_it_is_read(
    client: TestClient, settings: Settings, staff: dict[str, str]
) -> None:
    bomb = nifti_bomb()  # 1.6 MB of gzip: a 1024 x 1024 x 1536 volume of 8-bit zeros
    for name, data in (("a_t1.nii.gz", bomb), ("b_t1.nii.gz", _truncated(bomb))):
        response = client.post("/api/process-mri", files={"files": (name, data)}, headers=staff)
        assert response.status_code == 413, response.text
        assert error_code(response) == "FILE_TOO_LARGE"
        message = response.json()["error"]["message"]
        assert "1536 x 1024 x 1024 of 8 bits" in message and "NEUROGATE_MAX_DECODE_MB" in message
    with sessions_of(client)() as session:
        assert session.scalars(select(Study)).all() == []
        assert session.scalars(select(OutboxEvent)).all() == []
    uploads = settings.storage_root / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def _truncated(bomb: bytes) -> bytes:
    """The bomb's first 4 KiB: its header and no volume to speak of."""
    return bomb[:4096]
