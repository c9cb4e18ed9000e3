"""Helpers shared by the API tests (this module holds no tests): apps, accounts, studies."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi.testclient import TestClient
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.security import PasswordHasher
from api.server import uvicorn_config
from neurogate.db.models import (
    Analysis,
    Export,
    Patient,
    ResultObject,
    Series,
    Study,
    StudyStatus,
    User,
)
from neurogate.settings import ApiSettings, Settings
from tests.conftest import free_port, make_settings

ADMIN = ("admin", "admin-password-1")
PASSWORD = "a-long-password"
FAST_HASHES = 4  # bcrypt rounds in tests
_hasher = PasswordHasher(FAST_HASHES)


def api_settings(data_dir: Path, database_url: str, **api: Any) -> Settings:
    settings = make_settings(data_dir, database_url)
    api_part = ApiSettings(admin_username=ADMIN[0], admin_password=ADMIN[1], **api)
    return settings.model_copy(update={"api": api_part})


@contextmanager
def running_app(settings: Settings, **kwargs: Any) -> Iterator[TestClient]:
    """The app started (database migrated, admin created) behind a TestClient."""
    kwargs.setdefault("bcrypt_rounds", FAST_HASHES)
    kwargs.setdefault("sse_poll_seconds", 0.05)
    app = create_app(settings, **kwargs)
    with TestClient(app) as client:
        yield client


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The app behind uvicorn, configured as ``neurogate api`` configures it; its base URL."""
    port = free_port()
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"port": port})})
    server = uvicorn.Server(uvicorn_config(create_app(settings, bcrypt_rounds=4), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sessions_of(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.context.session_factory()  # type: ignore[attr-defined]
    return factory


def bearer(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def admin_headers(client: TestClient) -> dict[str, str]:
    return bearer(client, *ADMIN)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_patient(client: TestClient, patient_id: str, name: str = "Doe^Jane") -> None:
    with sessions_of(client).begin() as session:
        session.add(Patient(patient_id=patient_id, name=name, created_at=now()))


def add_user(
    client: TestClient, username: str, role: str, *, patient_id: str | None = None
) -> dict[str, str]:
    """An active account; its bearer headers."""
    with sessions_of(client).begin() as session:
        patient = None
        if patient_id is not None:
            patient = session.query(Patient).filter_by(patient_id=patient_id).one()
        session.add(
            User(
                username=username,
                role=role,
                patient_ref=patient.id if patient else None,
                password_hash=_hasher.hash(PASSWORD),
                active=True,
                created_at=now(),
            )
        )
    return bearer(client, username, PASSWORD)


def add_study(
    client: TestClient,
    uid: str,
    *,
    patient_id: str,
    study_date: str = "20260101",
    status: str = StudyStatus.COMPLETE,
    analysis: str | None = None,
    exports: dict[str, str] | None = None,
    findings: dict[str, Any] | None = None,
) -> None:
    """A received study with one series; optionally an analysis with one PDF result object
    exported to each destination in ``exports`` (destination -> status)."""
    received = now()
    with sessions_of(client).begin() as session:
        study = Study(
            study_instance_uid=uid,
            status=status,
            revision=1,
            path=f"studies/{uid}",
            instance_count=3,
            called_ae_title="NEUROGATE",
            calling_ae_titles=["MODALITY"],
            patient_id=patient_id,
            patient_name="Doe^Jane",
            study_date=study_date,
            first_received_at=received,
            last_received_at=received,
        )
        study.series.append(
            Series(
                series_instance_uid=f"{uid}.1",
                modality="MR",
                series_number=1,
                series_description="AX FLAIR",
                sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"],
                instance_count=3,
                path=f"studies/{uid}/{uid}.1",
            )
        )
        session.add(study)
        if analysis is None:
            return
        row = Analysis(
            request_event_id=f"{uid[-30:]}-req",
            study_instance_uid=uid,
            source="dicom",
            status=analysis,
            step="segmentation" if analysis == "running" else None,
            progress=1.0 if analysis == "completed" else 0.5,
            findings=findings,
            attempts=1,
            created_at=received,
        )
        session.add(row)
        session.flush()
        if exports is None:
            return
        obj = ResultObject(
            analysis_id=row.id,
            kind="pdf",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1",
            sop_instance_uid=f"{uid}.9",
            series_instance_uid=f"{uid}.8",
            path=f"results/{uid}/report.dcm",
            created_at=received,
        )
        session.add(obj)
        session.flush()
        for destination, export_status in exports.items():
            session.add(
                Export(
                    result_object_id=obj.id,
                    destination=destination,
                    status=export_status,
                    attempts=8 if export_status == "failed" else 1,
                    dimse_status=0xA700 if export_status == "failed" else 0,
                    last_error="out of resources" if export_status == "failed" else None,
                )
            )


def error_code(response: Any) -> str:
    """The envelope's code, after checking the envelope's shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    return str(body["error"]["code"])


def empty_filename_part(field: str) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose file part has ``filename=""``, as a browser sends an empty file
    input (httpx leaves the attribute out instead); the body and its Content-Type header."""
    boundary = "neurogate-test-boundary"
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename=""\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
        f"data\r\n--{boundary}--\r\n"
    ).encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


PDF_DOCUMENT = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def write_pdf_report(client: TestClient, settings: Settings) -> bytes:
    """The Encapsulated PDF file of the one PDF result object (see :func:`add_study`); the PDF."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = generate_uid()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF_DOCUMENT + b"\x00"  # padded to even length, as DICOM does
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with sessions_of(client)() as session:
        path = session.scalars(select(ResultObject.path).where(ResultObject.kind == "pdf")).one()
    (settings.storage_root / path).parent.mkdir(parents=True)
    ds.save_as(settings.storage_root / path, enforce_file_format=True)
    return PDF_DOCUMENT
