"""Seed 003's contract (the admin and patient portal), replayed as its README shows it: the
credentials e-mail goes to a real SMTP server (aiosmtpd) on this machine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from fastapi.testclient import TestClient

from neurogate.db.models import ImageScan
from tests.conftest import free_port
from tests.seed_support import SEED_002_NAMES, brain_png, seed_client
from tests.test_api_support import (
    ADMIN,
    add_patient,
    add_study,
    add_user,
    sessions_of,
)

PATIENT = {
    "name": "Jane Roe",
    "email": "jane.roe@example.org",
    "age": 47,
    "gender": "Female",
    "phone": "+44 20 7946 0000",
    "address": "1 Example Street",
}
PATIENT_FIELDS = {
    "id",
    "patient_id",
    "name",
    "email",
    "age",
    "gender",
    "phone",
    "address",
    "username",
    "created_at",
    "updated_at",
}
SCAN_FIELDS = {
    "id",
    "patient_id",
    "scan_id",
    "original_filename",
    "original_path",
    "heatmap_path",
    "overlay_path",
    "prediction",
    "confidence",
    "probability",
    "created_at",
}
REPORT_FIELDS = {
    "id",
    "patient_id",
    "report_id",
    "report_path",
    "scan_count",
    "tumor_count",
    "no_tumor_count",
    "created_at",
}


class Mailbox:
    """An aiosmtpd handler keeping each message with its recipients."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("seed003")
    mail = {"smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "smtp_starttls": False}
    with seed_client(tmp, **mail) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def admin(client: TestClient) -> dict[str, str]:
    response = client.post("/api/admin/login", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["admin"]["username"] == ADMIN[0]
    return bearer(body["token"])


def seed_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


def test_admin_login_refuses_wrong_passwords_and_other_roles(client: TestClient) -> None:
    wrong = client.post("/api/admin/login", json={"username": ADMIN[0], "password": "nope-nope"})
    seed_error(wrong, 401, "UNAUTHORIZED")
    add_user(client, "clin", "clinician")
    clinician = client.post(
        "/api/admin/login", json={"username": "clin", "password": "a-long-password"}
    )
    seed_error(clinician, 403, "FORBIDDEN")
    seed_error(client.get("/api/admin/patients"), 401, "UNAUTHORIZED")


def test_a_new_patient_gets_credentials_by_email_and_signs_in(
    client: TestClient, admin: dict[str, str], mailbox: Mailbox
) -> None:
    created = client.post("/api/admin/patients", json=PATIENT, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["success"] is True and body["email_sent"] is True
    patient = body["patient"]
    assert set(patient) >= PATIENT_FIELDS
    assert {k: patient[k] for k in PATIENT} == PATIENT
    assert "password" not in body["credentials"]  # it went by e-mail only
    username = body["credentials"]["username"]
    assert patient["username"] == username
    ((_recipients, raw),) = [m for m in mailbox.messages if PATIENT["email"] in m[0]]
    text = message_from_bytes(raw).get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"Username: {username}" in text
    password = re.search(r"Password: (\S+)", text).group(1)  # type: ignore[union-attr]
    login = client.post("/api/patient/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    assert login.json()["patient"]["id"] == patient["id"]
    own = client.get(f"/api/patient/{patient['id']}", headers=bearer(login.json()["token"]))
    assert own.status_code == 200 and own.json()["patient"]["email"] == PATIENT["email"]
    listed = client.get("/api/admin/patients", headers=admin).json()
    assert patient["id"] in [p["id"] for p in listed["patients"]]
    one = client.get(f"/api/admin/patients/{patient['id']}", headers=admin).json()
    assert one["patient"] == patient


def test_without_an_email_the_admin_gets_the_password(
    client: TestClient, admin: dict[str, str]
) -> None:
    body = client.post("/api/admin/patients", json={"name": "No Mail"}, headers=admin).json()
    assert body["email_sent"] is False
    credentials = body["credentials"]
    login = client.post("/api/patient/login", json=credentials)
    assert login.status_code == 200
    bad = client.post("/api/admin/patients", json={"name": "X", "gender": "?"}, headers=admin)
    seed_error(bad, 422, "VALIDATION_ERROR")


def _new_patient(client: TestClient, admin: dict[str, str], name: str) -> tuple[int, str]:
    body = client.post("/api/admin/patients", json={"name": name}, headers=admin).json()
    login = client.post("/api/patient/login", json=body["credentials"]).json()
    return body["patient"]["id"], login["token"]


def test_uploaded_scans_are_kept_with_gradcam_in_the_history_and_reported(
    client: TestClient, admin: dict[str, str]
) -> None:
    ref, token = _new_patient(client, admin, "Scan Patient")
    pictures = [("a.png", brain_png()), ("b.png", brain_png("meningioma", 50002))]
    uploaded = client.post(
        "/api/admin/scans/upload",
        data={"patient_id": str(ref)},
        files=[("files", (name, data, "image/png")) for name, data in pictures],
        headers=admin,
    )
    assert uploaded.status_code == 201, uploaded.text
    scans = uploaded.json()["scans"]
    assert len(scans) == 2
    for scan, (name, data) in zip(scans, pictures, strict=True):
        assert set(scan) >= SCAN_FIELDS and scan["patient_id"] == ref
        assert scan["original_filename"] == name
        assert scan["prediction"] in SEED_002_NAMES
        assert scan["confidence"] == max(scan["probability"].values())
        assert client.get(scan["original_path"], headers=admin).content == data
        for kind in ("heatmap_path", "overlay_path"):
            picture = client.get(scan[kind], headers=bearer(token))
            assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    for path in (f"/api/admin/patients/{ref}/scans", f"/api/patient/{ref}/scans"):
        history = client.get(path, headers=admin if "admin" in path else bearer(token)).json()
        assert {s["scan_id"] for s in history["scans"]} == {s["scan_id"] for s in scans}

    generated = client.post(
        "/api/report/generate",
        json={"patient_id": ref, "scan_id": scans[0]["scan_id"]},
        headers=admin,
    )
    assert generated.status_code == 201, generated.text
    report = generated.json()["report"]
    assert set(report) >= REPORT_FIELDS and report["scan_count"] == 1
    assert report["tumor_count"] + report["no_tumor_count"] == 1
    pdf = client.get(f"/api/report/download/{report['report_id']}", headers=bearer(token))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    by_name = client.get(f"/api/report/file/{report['report_path']}", headers=admin)
    assert by_name.content == pdf.content
    url = client.get(f"/api/report/download-by-filename/{report['report_path']}", headers=admin)
    assert url.json() == {
        "success": True,
        "download_url": f"/api/report/file/{report['report_path']}",
    }
    for path, headers in (
        (f"/api/admin/patients/{ref}/reports", admin),
        (f"/api/patient/{ref}/reports", bearer(token)),
        ("/api/admin/reports", admin),
    ):
        assert report["report_id"] in [
            r["report_id"] for r in client.get(path, headers=headers).json()["reports"]
        ]


def test_a_patient_sees_only_its_own_records(client: TestClient, admin: dict[str, str]) -> None:
    mine, token = _new_patient(client, admin, "Own Patient")
    other, _ = _new_patient(client, admin, "Other Patient")
    for path in (f"/api/patient/{other}", f"/api/patient/{other}/scans"):
        seed_error(client.get(path, headers=bearer(token)), 404, "NOT_FOUND")
    seed_error(client.get("/api/admin/patients", headers=bearer(token)), 403, "FORBIDDEN")
    assert client.get(f"/api/patient/{mine}/scans", headers=bearer(token)).status_code == 200


def test_a_bad_upload_keeps_nothing(client: TestClient, admin: dict[str, str]) -> None:
    ref, _ = _new_patient(client, admin, "Bad Upload")
    with sessions_of(client)() as session:
        before = session.query(ImageScan).count()
    mixed = client.post(
        "/api/admin/scans/upload",
        data={"patient_id": str(ref)},
        files=[("files", ("a.png", brain_png())), ("files", ("notes.txt", b"hello"))],
        headers=admin,
    )
    seed_error(mixed, 415, "INVALID_FILE_TYPE")
    seed_error(
        client.post(
            "/api/admin/scans/upload", files={"files": ("a.png", brain_png())}, headers=admin
        ),
        422,
        "VALIDATION_ERROR",
    )
    seed_error(
        client.post(
            "/api/admin/scans/upload",
            data={"patient_id": "999999"},
            files={"files": ("a.png", brain_png())},
            headers=admin,
        ),
        404,
        "NOT_FOUND",
    )
    with sessions_of(client)() as session:
        assert session.query(ImageScan).count() == before


def test_dashboard_stats_count_each_tumour_class(client: TestClient, admin: dict[str, str]) -> None:
    before = client.get("/api/admin/dashboard/stats", headers=admin).json()["stats"]
    add_patient(client, "DCM-1")
    add_study(
        client,
        "1.2.826.99.1",
        patient_id="DCM-1",
        analysis="completed",
        findings={"classification": {"label": "glioma"}},
    )
    ref, _ = _new_patient(client, admin, "Stats Patient")
    scan = client.post(
        "/api/scan/upload",
        data={"patient_id": str(ref)},
        files={"file": ("s.png", brain_png())},
        headers=admin,
    ).json()["scans"][0]
    stats = client.get("/api/admin/dashboard/stats", headers=admin).json()["stats"]
    assert set(stats["class_counts"]) == set(SEED_002_NAMES)
    expected = dict(before["class_counts"])
    expected["Glioma"] += 1
    expected[scan["prediction"]] += 1
    assert stats["class_counts"] == expected
    assert stats["total_patients"] == before["total_patients"] + 2
    assert stats["total_scans"] == before["total_scans"] + 1
    assert stats["tumor_detected"] + stats["no_tumor"] == sum(expected.values())
    assert stats["no_tumor"] == expected["No Tumor"]


def test_health_is_healthy(client: TestClient) -> None:
    assert client.get("/api/health").json()["status"] == "healthy"
