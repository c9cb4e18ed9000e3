"""STOW-RS into the node: ``POST /dicomweb/studies`` behind uvicorn, from a real STOW-RS client.

``dicomweb-client`` (the DICOMweb client of the Imaging Data Commons) sends a study; what it
sent is compared byte for byte with what lies in the store, and the study is assembled and
announced as a C-STORE'd one is. Duplicates, conflicts, refusals and requests that are not
STOW-RS are answered as PS3.18 says, from raw HTTP.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite
from pydicom.uid import CTImageStorage, MRImageStorage
from sqlalchemy import select

from api.security import PasswordHasher
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import OutboxEvent, Patient, Study, StudyStatus, User, UserRole
from neurogate.settings import Settings
from neurogate.storage import CONFLICTS, InstanceStore
from schemas.events import StudyReceived, parse_event
from schemas.topics import Topic
from tests.dicomgen import write_mr_study
from tests.harness import wait_for
from tests.test_api_support import ADMIN, FAST_HASHES, PASSWORD, api_settings, now, served

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE = "00081155"
BOUNDARY = "stow-test-boundary"


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[tuple[Settings, str, dict[str, str]]]:
    """The API behind uvicorn; its settings, base URL and an admin's bearer header."""
    settings = api_settings(tmp_path / "node", database_url)
    with served(settings) as base:
        login = httpx.post(
            f"{base}/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]}
        )
        assert login.status_code == 200, login.text
        yield settings, base, {"Authorization": f"Bearer {login.json()['access_token']}"}


def _multipart(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    chunks = [
        f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts
    ]
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def _post(base: str, headers: dict[str, str], body: bytes, **kind: str) -> httpx.Response:
    content_type = kind.get(
        "content_type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    )
    return httpx.post(
        f"{base}/dicomweb/studies",
        content=body,
        headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )


def _uids(answer: dict[str, Any], sequence: str) -> list[str]:
    items = answer.get(sequence, {}).get("Value", [])
    return [i[REFERENCED_SOP_INSTANCE]["Value"][0] for i in items]


def _sent_parts(bodies: list[bytes], content_type: str) -> list[bytes]:
    parts: list[bytes] = []
    for body in bodies:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        parts += [p.get_payload(decode=True) for p in message.iter_parts()]  # type: ignore[attr-defined]
    return parts


def _study_events(settings: Settings, study_uid: str) -> list[StudyReceived]:
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                select(OutboxEvent).where(OutboxEvent.topic == str(Topic.STUDY_RECEIVED))
            ).all()
        events = [parse_event(r.payload) for r in rows]
    finally:
        engine.dispose()
    return [e for e in events if isinstance(e, StudyReceived) and e.study_instance_uid == study_uid]


def _study(settings: Settings, study_uid: str) -> Study | None:
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    finally:
        engine.dispose()


def test_a_study_stored_with_dicomweb_client_is_on_disk_byte_for_byte_and_assembled(
    tmp_path: Path, node: tuple[Settings, str, dict[str, str]]
) -> None:
    settings, base, auth = node
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3, size=16)
    datasets = [dcmread(f) for f in study.files]
    sent: list[bytes] = []
    content_types: list[str] = []

    def keep_request(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
        assert isinstance(response.request.body, bytes)
        sent.append(response.request.body)
        content_types.append(response.request.headers["Content-Type"])
        return response

    anonymous = DICOMwebClient(url=f"{base}/dicomweb")
    with pytest.raises(requests.HTTPError) as refused:
        anonymous.store_instances(datasets=datasets[:1])
    assert refused.value.response.status_code == 401

    client = DICOMwebClient(url=f"{base}/dicomweb", headers=auth, callback=keep_request)
    answer = client.store_instances(datasets=datasets)
    stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert "FailedSOPSequence" not in answer

    # What the client sent is what the store holds, byte for byte.
    store = InstanceStore(settings.storage_root, fsync=False)
    parts = _sent_parts(sent, content_types[0])
    assert len(parts) == len(datasets)
    for part in parts:
        ds = dcmread(BytesIO(part), stop_before_pixels=True)
        path = store.instance_path(study.study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert path.read_bytes() == part

    # Assembled as a C-STORE'd study: complete after the quiet period, announced once.
    events = wait_for(lambda: _study_events(settings, study.study_uid), timeout=60)
    (event,) = events
    assert event.instance_count == len(datasets)
    assert event.called_ae_title == "DICOMWEB" and event.calling_ae_titles == ["STOW-RS"]
    assert sorted(s.series_instance_uid for s in event.series) == sorted(study.series_uids)
    assert {s.instance_count for s in event.series} == {3}
    row = _study(settings, study.study_uid)
    assert row is not None and row.status == StudyStatus.COMPLETE

    # The same instances again: acknowledged, nothing changes (a duplicate, as over C-STORE).
    again = client.store_instances(datasets=datasets[:2])
    assert len(again.ReferencedSOPSequence) == 2
    assert _study(settings, study.study_uid).revision == 1  # type: ignore[union-attr]
    assert len(_study_events(settings, study.study_uid)) == 1


def test_conflicts_refusals_and_what_is_not_stow_rs(
    tmp_path: Path, node: tuple[Settings, str, dict[str, str]]
) -> None:
    settings, base, auth = node
    study = write_mr_study(tmp_path / "scanner", series=1, slices=3, size=16)
    first, second, third = (f.read_bytes() for f in study.files)
    assert _post(base, auth, _multipart(first)).status_code == 200

    # The same SOP Instance UID with other bytes: acknowledged, kept under conflicts/.
    changed = dcmread(BytesIO(first))
    changed.PatientName = "Other^Name"
    with BytesIO() as buffer:
        dcmwrite(buffer, changed, enforce_file_format=True)
        conflicting = buffer.getvalue()
    response = _post(base, auth, _multipart(conflicting))
    assert response.status_code == 200, response.text
    kept = list((settings.storage_root / CONFLICTS).iterdir())
    assert [p.read_bytes() for p in kept] == [conflicting]

    # A dataset whose File Meta Information names another SOP Class, and garbage: refused
    # with their Failure Reasons, the good instance stored: 202.
    mislabelled = dcmread(BytesIO(second))
    mr, ct = (uid.encode() for uid in (MRImageStorage, CTImageStorage))  # the same length
    wrong_class = second.replace(mr, ct, 1)  # the first: in the File Meta Information
    assert dcmread(BytesIO(wrong_class)).file_meta.MediaStorageSOPClassUID == CTImageStorage
    response = _post(base, auth, _multipart(third, wrong_class, b"not DICOM at all"))
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    third_uid = str(dcmread(BytesIO(third)).SOPInstanceUID)
    assert _uids(answer, REFERENCED_SOP_SEQUENCE) == [third_uid]
    failed = answer[FAILED_SOP_SEQUENCE]["Value"]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [0xA900, 0xC000]
    assert failed[0][REFERENCED_SOP_INSTANCE]["Value"] == [str(mislabelled.SOPInstanceUID)]
    store = InstanceStore(settings.storage_root, fsync=False)
    assert not store.instance_path(
        study.study_uid, mislabelled.SeriesInstanceUID, mislabelled.SOPInstanceUID
    ).exists()

    # Nothing stored: 409.
    response = _post(base, auth, _multipart(b"\x00" * 200))
    assert response.status_code == 409, response.text
    assert response.json()[FAILED_SOP_SEQUENCE]["Value"][0][FAILURE_REASON]["Value"] == [0xC000]

    # Not STOW-RS of application/dicom: refused whole, in the API's error envelope.
    json_parts = _multipart(first, part_type="application/dicom+json")
    response = _post(base, auth, json_parts)
    assert response.status_code == 415 and response.json()["error"]["code"] == "INVALID_FILE_TYPE"
    response = _post(base, auth, first, content_type="application/dicom")
    assert response.status_code == 415
    truncated = _multipart(first)[:-40]
    response = _post(base, auth, truncated)
    assert response.status_code == 400 and "truncated" in response.json()["error"]["message"]
    response = _post(base, {}, _multipart(first))
    assert response.status_code == 401
    response = _post(base, _patient_account(settings, base), _multipart(first))
    assert response.status_code == 403  # patient accounts read; they do not store


def _patient_account(settings: Settings, base: str) -> dict[str, str]:
    """A patient's account (made in the database); its bearer header."""
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine).begin() as session:
            # The studies stored above made this patient from their headers (issue #14).
            patient = session.scalar(select(Patient).where(Patient.patient_id == "NG-TEST-1"))
            if patient is None:
                patient = Patient(patient_id="NG-TEST-1", created_at=now())
                session.add(patient)
                session.flush()
            session.add(
                User(
                    username="patient1",
                    role=UserRole.PATIENT,
                    patient_ref=patient.id,
                    password_hash=PasswordHasher(FAST_HASHES).hash(PASSWORD),
                    active=True,
                    created_at=now(),
                )
            )
    finally:
        engine.dispose()
    login = httpx.post(
        f"{base}/api/auth/login", data={"username": "patient1", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def _quiet(settings: Settings, seconds: float) -> Settings:
    listener = settings.listener.model_copy(update={"study_quiet_seconds": seconds})
    return settings.model_copy(update={"listener": listener})


def test_a_study_the_api_was_receiving_when_it_stopped_completes_after_its_restart(
    tmp_path: Path, database_url: str
) -> None:
    settings = api_settings(tmp_path / "node", database_url)
    study = write_mr_study(tmp_path / "scanner", series=1, slices=3, size=16)
    with served(_quiet(settings, 3600)) as base:  # not complete before the API stops
        login = httpx.post(
            f"{base}/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]}
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        parts = _multipart(*(f.read_bytes() for f in study.files))
        assert _post(base, auth, parts).status_code == 200
    row = _study(settings, study.study_uid)
    assert row is not None and row.status == StudyStatus.RECEIVING
    assert not _study_events(settings, study.study_uid)

    with served(_quiet(settings, 0.5)):
        (event,) = wait_for(lambda: _study_events(settings, study.study_uid), timeout=60)
    assert event.instance_count == 3 and event.called_ae_title == "DICOMWEB"
    assert _study(settings, study.study_uid).status == StudyStatus.COMPLETE  # type: ignore[union-attr]


def test_a_body_over_the_upload_limit_is_refused_with_413(
    tmp_path: Path, database_url: str
) -> None:
    settings = api_settings(tmp_path / "node", database_url, max_upload_mb=0.01)  # 10 kB
    study = write_mr_study(tmp_path / "scanner", series=1, slices=1, size=128)  # 32 kB pixels
    with served(settings) as base:
        login = httpx.post(
            f"{base}/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]}
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        response = _post(base, auth, _multipart(study.files[0].read_bytes()))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "FILE_TOO_LARGE"
    assert _study(settings, study.study_uid) is None
