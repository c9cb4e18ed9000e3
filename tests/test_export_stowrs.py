"""Results sent over STOW-RS: to Orthanc's DICOMweb plugin, and to archives that refuse or fail.

The archive is a real Orthanc with HTTP basic authentication, or a small HTTP server in the test
that answers what a failing archive answers (403, 503) and keeps what it was sent; nothing
listening is an archive that is down. Each object's outcome is read from the ``exports`` rows
and the ``export.status`` events, as the API and an operator see them.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from sqlalchemy import select

from api.queries import requeue_failed_exports
from neurogate.db.models import Analysis, Export, ExportStatus
from neurogate.settings import ExportSettings, PacsDestination, Settings, StowRsDestination
from tests.conftest import Database, free_port, make_settings
from tests.harness import wait_for
from tests.orthanc import OrthancServer
from tests.test_exporter import _exporters, _outcomes, _plan
from tests.test_listener_tls import _certificate

USER, PASSWORD = "neurogate", "stow-rs-secret"
OBJECTS = 4


def _stowrs(name: str, url: str, **auth: Any) -> StowRsDestination:
    return StowRsDestination.model_validate({"kind": "stowrs", "name": name, "url": url, **auth})


def _settings(
    tmp_path: Path, database: Database, destinations: list[StowRsDestination], **policy: float
) -> Settings:
    export = ExportSettings(destinations=destinations, **policy)
    return make_settings(tmp_path / "node", database.url).model_copy(update={"export": export})


def _rows(database: Database) -> dict[str, list[Export]]:
    with database.sessions() as session:
        rows = session.scalars(select(Export).order_by(Export.id)).all()
    by_destination: dict[str, list[Export]] = {}
    for row in rows:
        by_destination.setdefault(row.destination, []).append(row)
    return by_destination


def _settled(database: Database) -> bool:
    rows = [r for rs in _rows(database).values() for r in rs]
    return all(r.status != ExportStatus.PENDING for r in rows)


def _study_uid(database: Database) -> str:
    with database.sessions() as session:
        return session.scalars(select(Analysis.study_instance_uid)).one()


class FailingArchive:
    """An HTTP server that answers every STOW-RS request with ``status`` and keeps the requests."""

    def __init__(self, port: int, status: int, *, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                archive.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                answer = b'{"error": "archive is not taking objects now"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            key, cert = tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[FailingArchive]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def test_results_reach_orthanc_byte_identical_and_a_wrong_password_is_parked_until_resent(
    tmp_path: Path, database: Database
) -> None:
    orthanc = OrthancServer(tmp_path / "orthanc", free_port(), free_port(), users={USER: PASSWORD})
    archive = _stowrs(
        "archive", orthanc.dicomweb_url, auth="basic", username=USER, password=PASSWORD
    )
    wrong = _stowrs("wrong", orthanc.dicomweb_url, auth="basic", username=USER, password="nope")
    settings = _settings(tmp_path, database, [archive, wrong], max_attempts=2, backoff_seconds=0.1)
    uids = _plan(settings, database, OBJECTS)
    orthanc.start()
    try:
        with _exporters(settings, database.url, 1):
            wait_for(lambda: _settled(database), timeout=60, interval=0.1)
        rows = _rows(database)
        assert {(r.status, r.attempts, r.dimse_status) for r in rows["archive"]} == {
            (ExportStatus.SENT, 1, 0)
        }
        assert {(r.status, r.attempts) for r in rows["wrong"]} == {(ExportStatus.FAILED, 2)}
        assert all("HTTP 401" in (r.last_error or "") for r in rows["wrong"])
        # In Orthanc, each object as the node has it, byte for byte.
        study_uid = _study_uid(database)
        assert sorted(i["SOPInstanceUID"] for i in orthanc.instances(study_uid)) == sorted(uids)
        for path in sorted((settings.storage_root / "results").rglob("*.dcm")):
            query = {"SOPInstanceUID": str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)}
            (found,) = orthanc.post("/tools/find", {"Level": "Instance", "Query": query})
            assert orthanc.get_bytes(f"/instances/{found}/file") == path.read_bytes()
        outcomes = [o for o in _outcomes(database) if o.destination == "wrong"]
        assert [o.status for o in outcomes] == [ExportStatus.PENDING] * OBJECTS + [
            ExportStatus.FAILED
        ] * OBJECTS

        # The operator fixes the password and re-sends: the parked exports go out once.
        fixed = _stowrs(
            "wrong", orthanc.dicomweb_url, auth="basic", username=USER, password=PASSWORD
        )
        settings = _settings(tmp_path, database, [archive, fixed], max_attempts=2)
        with database.sessions.begin() as session:
            assert requeue_failed_exports(session, study_uid=study_uid) == OBJECTS
        with _exporters(settings, database.url, 1):
            wait_for(lambda: _settled(database), timeout=60, interval=0.1)
        assert {(r.status, r.attempts) for r in _rows(database)["wrong"]} == {
            (ExportStatus.SENT, 1)
        }
        assert len(orthanc.instances(study_uid)) == OBJECTS  # filed once each
    finally:
        orthanc.stop()


def test_a_403_is_parked_with_its_reason_and_the_request_is_proper_stow_rs(
    tmp_path: Path, database: Database
) -> None:
    port = free_port()
    destination = _stowrs("vna", f"http://127.0.0.1:{port}/dicomweb", auth="bearer", token="tkn")
    settings = _settings(tmp_path, database, [destination], max_attempts=1)
    uids = _plan(settings, database, 2)
    with FailingArchive(port, 403).running() as archive, _exporters(settings, database.url, 1):
        wait_for(lambda: _settled(database), timeout=60, interval=0.1)
    rows = _rows(database)["vna"]
    assert {(r.status, r.attempts, r.dimse_status) for r in rows} == {
        (ExportStatus.FAILED, 1, None)
    }
    assert all((r.last_error or "").startswith("HTTP 403 Forbidden") for r in rows)
    # What went on the wire: one multipart/related request per object, its one part the file.
    assert len(archive.requests) == 2
    sent = set()
    for headers, body in archive.requests:
        assert headers["authorization"] == "Bearer tkn"
        assert headers["accept"] == "application/dicom+json"
        content_type = headers["content-type"]
        assert content_type.startswith('multipart/related; type="application/dicom"')
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        (part,) = list(message.iter_parts())
        assert part.get_content_type() == "application/dicom"
        content = part.get_payload(decode=True)
        matches = list((settings.storage_root / "results").rglob("*.dcm"))
        assert content in {p.read_bytes() for p in matches}
        sent.add(content)
    assert len(sent) == 2 and len(uids) == 2


def test_an_archive_that_answers_503_then_is_down_then_up_gets_each_object_once(
    tmp_path: Path, database: Database
) -> None:
    port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", free_port(), port)
    destination = _stowrs("archive", orthanc.dicomweb_url)
    settings = _settings(
        tmp_path,
        database,
        [destination],
        max_attempts=50,
        backoff_seconds=0.1,
        backoff_max_seconds=0.2,
    )
    uids = _plan(settings, database, OBJECTS)

    def errors() -> list[str]:
        return [o.reason or "" for o in _outcomes(database) if o.status == ExportStatus.PENDING]

    with _exporters(settings, database.url, 1):
        with FailingArchive(port, 503).running():
            wait_for(lambda: len(errors()) >= 2 * OBJECTS, timeout=60)
        assert all(e.startswith("HTTP 503 Service Unavailable") for e in errors())
        seen = len(errors())
        wait_for(lambda: len(errors()) >= seen + 2 * OBJECTS, timeout=60)  # down now
        assert all("cannot connect" in e for e in errors()[seen + OBJECTS :])
        orthanc.start()
        try:
            wait_for(lambda: _settled(database), timeout=60, interval=0.1)
            stored = orthanc.instances(_study_uid(database))
        finally:
            orthanc.stop()
    rows = _rows(database)["archive"]
    assert {r.status for r in rows} == {ExportStatus.SENT}
    assert all(r.attempts >= 5 for r in rows)  # two 503s and two refusals at least, then sent
    assert sorted(i["SOPInstanceUID"] for i in stored) == sorted(uids)


def test_https_is_verified_against_the_destination_ca(tmp_path: Path, database: Database) -> None:
    port = free_port()
    key, cert = _certificate(tmp_path, "archive")
    url = f"https://127.0.0.1:{port}/dicomweb"
    trusted = _stowrs("trusted", url, tls_ca_file=cert)
    untrusted = _stowrs("untrusted", url)  # the system's CAs did not sign it
    settings = _settings(tmp_path, database, [trusted, untrusted], max_attempts=1)
    _plan(settings, database, 2)
    archive = FailingArchive(port, 503, tls=(key, cert))
    with archive.running(), _exporters(settings, database.url, 1):
        wait_for(lambda: _settled(database), timeout=60, interval=0.1)
    rows = _rows(database)
    # Through TLS to the archive's answer with the CA; refused at the handshake without it.
    assert all((r.last_error or "").startswith("HTTP 503") for r in rows["trusted"])
    assert all("CERTIFICATE_VERIFY_FAILED" in (r.last_error or "") for r in rows["untrusted"])
    assert len(archive.requests) == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "ftp://pacs/dicom-web"}, "http:// or https://"),
        ({"url": "http://pacs/dicom-web?x=1"}, "without ?query"),
        ({"url": "http://pacs", "auth": "basic", "username": "u"}, "needs username and password"),
        ({"url": "http://pacs", "auth": "bearer"}, "needs token"),
        ({"url": "http://pacs", "token": "t"}, "token needs auth bearer"),
        ({"url": "http://pacs", "tls_ca_file": "ca.pem"}, "needs an https:// url"),
    ],
)
def test_a_stowrs_destination_that_cannot_work_is_refused_naming_it(
    entry: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ExportSettings.model_validate(
            {"destinations": [{"kind": "stowrs", "name": "vna", **entry}]}
        )


def test_destinations_without_a_kind_are_c_store_as_before() -> None:
    export = ExportSettings.model_validate(
        {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "pacs", "port": 104}]}
    )
    assert isinstance(export.destinations[0], PacsDestination)
