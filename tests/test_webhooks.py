"""Result notifications against a real HTTP receiver (http.server in a thread).

A glioma study pushed with storescu is analysed and the receiver gets an
``analysis.completed`` webhook: a signed FHIR R4 transaction Bundle whose DiagnosticReport and
Observations (WT/TC/ET volumes, intracranial volume, class) parse with ``fhir.resources``; its
PACS is down, so the parked export is announced too. A receiver that answers 503 and then 200
gets the same delivery twice, and both attempts are recorded; one that never answers 2xx is
given up after the last attempt, and one that is down is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from sqlalchemy import select

from inference_worker.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)
from inference_worker.pipeline import Models
from models.synthetic.dicom import SyntheticStudy
from neurogate.bus import open_bus
from neurogate.db.models import Analysis, AnalysisStatus, DeliveryStatus, WebhookDelivery
from neurogate.settings import (
    ExportSettings,
    NotifySettings,
    PacsDestination,
    Settings,
    Webhook,
)
from schemas.topics import Topic
from tests.conftest import Database, free_port, make_settings
from tests.harness import running_listener, storescu, wait_for
from tests.test_api_support import admin_headers, api_settings, running_app
from tests.test_routing import NO_MODELS, _event, _worker
from tests.test_worker import _files

SECRET = "s3cret-for-the-ehr-engine"
SNOMED, LOINC = "http://snomed.info/sct", "http://loinc.org"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """An HTTP server that answers each POST with the next of ``statuses`` (then 200)."""

    statuses: list[int]
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def receiving(statuses: list[int]) -> Iterator[Receiver]:
    receiver = Receiver(list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                headers = {k.lower(): v for k, v in self.headers.items()}  # names are case-blind
                receiver.requests.append(Received(headers, body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/fhir/notify"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _settings(tmp_path: Path, database: Database, url: str, **notify: Any) -> Settings:
    policy = {"backoff_seconds": 0.05, "backoff_max_seconds": 0.2, **notify}
    return make_settings(tmp_path / "node", database.url).model_copy(
        update={
            "notify": NotifySettings(
                webhooks=[Webhook(name="ehr", url=url, secret=SECRET)], **policy
            )
        }
    )


def _deliveries(database: Database) -> list[WebhookDelivery]:
    with database.sessions() as session:
        rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
        return list(rows)


def _signed_by_us(request: Received) -> bool:
    """The receiver's check: HMAC-SHA256 of "<timestamp>.<body>" with the shared secret."""
    timestamp = request.headers[TIMESTAMP_HEADER.lower()]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
    return hmac.compare_digest(
        request.headers[SIGNATURE_HEADER.lower()], f"sha256={expected.hexdigest()}"
    )


def _publish(settings: Settings, database: Database, *events: Any) -> None:
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    publisher = bus.publisher()
    for event in events:
        publisher.publish(str(Topic.STUDY_RECEIVED), event.study_instance_uid, event.to_bytes())
    publisher.close()
    bus.close()


def test_a_receiver_answering_503_then_200_gets_the_failure_twice_and_both_are_recorded(
    tmp_path: Path, database: Database
) -> None:
    with receiving([503]) as receiver:
        settings = _settings(tmp_path, database, receiver.url)
        event = _event(settings, tmp_path, "small", "MR BRAIN")  # fails: no usable series
        with _worker(settings, database, NO_MODELS):
            _publish(settings, database, event)
            wait_for(
                lambda: [d.status for d in _deliveries(database)] == [DeliveryStatus.SENT],
                timeout=60,
            )
    assert [r.answered for r in receiver.requests] == [503, 200]
    first, second = receiver.requests
    assert first.body == second.body and all(_signed_by_us(r) for r in receiver.requests)
    assert first.headers[DELIVERY_HEADER.lower()] == second.headers[DELIVERY_HEADER.lower()]
    assert first.headers[EVENT_HEADER.lower()] == "analysis.failed"
    assert first.headers["content-type"] == "application/fhir+json"
    delivery = _deliveries(database)[0]
    assert delivery.attempts == 2 and delivery.http_status == 200
    assert [(o["http_status"], o["error"]) for o in delivery.outcomes] == [
        (503, "receiver answered HTTP 503"),
        (200, None),
    ]
    bundle = json.loads(second.body)
    Bundle.model_validate(bundle)
    report = bundle["entry"][0]["resource"]
    DiagnosticReport.model_validate(report)
    with database.sessions() as session:
        error = session.scalars(select(Analysis.error)).one()
    assert report["status"] == "cancelled" and report["conclusion"] == error
    assert error and "series" in error
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{event.study_instance_uid}"
    # A forged or altered body fails the receiver's check.
    assert not _signed_by_us(Received(first.headers, first.body + b" ", 200))


def test_a_receiver_that_never_takes_it_is_given_up_after_the_last_attempt(
    tmp_path: Path, database: Database
) -> None:
    with receiving([500, 502, 503, 500]) as receiver:
        settings = _settings(tmp_path, database, receiver.url, max_attempts=3)
        event = _event(settings, tmp_path, "small", "MR BRAIN")
        with _worker(settings, database, NO_MODELS):
            _publish(settings, database, event)
            wait_for(
                lambda: [d.status for d in _deliveries(database)] == [DeliveryStatus.FAILED],
                timeout=60,
            )
    assert [r.answered for r in receiver.requests] == [500, 502, 503]
    delivery = _deliveries(database)[0]
    assert delivery.attempts == 3 and delivery.last_error == "receiver answered HTTP 503"
    assert [o["http_status"] for o in delivery.outcomes] == [500, 502, 503]


def test_a_receiver_that_is_down_is_retried_until_it_answers(
    tmp_path: Path, database: Database
) -> None:
    port = free_port()  # nobody listens yet
    settings = _settings(tmp_path, database, f"http://127.0.0.1:{port}/hook")
    event = _event(settings, tmp_path, "small", "MR BRAIN")
    with _worker(settings, database, NO_MODELS):
        _publish(settings, database, event)
        wait_for(lambda: _deliveries(database) and _deliveries(database)[0].attempts >= 2)
        assert _deliveries(database)[0].outcomes[0]["http_status"] is None
        assert "no answer from" in (_deliveries(database)[0].last_error or "")
    assert _deliveries(database)[0].status == DeliveryStatus.PENDING


# -- the FHIR report of a real analysis ------------------------------------------------------


def _coded(concept: dict[str, Any], system: str, code: str) -> bool:
    return any(c["system"] == system and c["code"] == code for c in concept.get("coding", []))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_completed_analysis_is_a_fhir_diagnostic_report_with_its_observations(
    tmp_path: Path, database: Database, glioma: SyntheticStudy, models: Models
) -> None:
    with receiving([]) as receiver:
        settings = _settings(tmp_path, database, receiver.url).model_copy(
            update={
                "export": ExportSettings(
                    destinations=[
                        PacsDestination(
                            name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port()
                        )
                    ],
                    max_attempts=1,
                )
            }
        )
        with running_listener(settings) as listener, _worker(settings, database, models):
            sent = storescu(listener.address[1], _files(glioma))
            assert sent.returncode == 0, sent.stderr
            wait_for(
                lambda: (
                    {d.event for d in _deliveries(database) if d.status == "sent"}
                    == {"analysis.completed", "export.parked"}
                ),
                timeout=400,
                interval=0.5,
            )
    with database.sessions() as session:
        analysis = session.scalars(select(Analysis)).one()
        assert analysis.status == AnalysisStatus.COMPLETED
        objects = {o.kind: o.sop_instance_uid for o in analysis.objects}
        volumes = analysis.findings["segmentation"]["volumes_ml"]  # type: ignore[index]
    completed = next(
        r for r in receiver.requests if r.headers[EVENT_HEADER.lower()] == "analysis.completed"
    )
    assert _signed_by_us(completed)
    bundle = json.loads(completed.body)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    resources = [e["resource"] for e in bundle["entry"]]
    report, observations = resources[0], resources[1:]
    DiagnosticReport.model_validate(report)
    for observation in observations:
        Observation.model_validate(observation)
    assert report["status"] == "final"
    assert _coded(report["code"], LOINC, "24590-2")
    assert report["subject"]["identifier"]["value"] == "NG-TEST-1"
    uids = {i["value"] for i in report["identifier"]}
    assert {f"urn:oid:{objects['sr']}", f"urn:oid:{objects['seg']}"} <= uids
    assert bundle["entry"][0]["request"]["ifNoneExist"].startswith("identifier=")
    assert [r["reference"] for r in report["result"]] == [e["fullUrl"] for e in bundle["entry"][1:]]
    by_text = {o["code"]["text"]: o for o in observations}
    assert _coded(by_text["Neoplasm"]["code"], SNOMED, "108369006")
    assert _coded(by_text["Neoplasm"]["valueCodeableConcept"], SNOMED, "52101004")  # Present
    assert by_text["Tumour class"]["valueCodeableConcept"]["coding"][0]["code"] == "C3059"
    for key, label in (("WT", "Whole tumour"), ("TC", "Tumour core"), ("ET", "Enhancing tumour")):
        volume = by_text[f"{label} ({key}) volume"]
        assert _coded(volume["code"], SNOMED, "118565006")
        assert volume["valueQuantity"]["code"] == "mL"
        assert volume["valueQuantity"]["value"] == round(volumes[key], 2)
    assert by_text["Intracranial volume"]["valueQuantity"]["value"] > 500
    parked = next(
        r for r in receiver.requests if r.headers[EVENT_HEADER.lower()] == "export.parked"
    )
    tags = json.loads(parked.body)["meta"]["tag"]
    assert any(t["system"] == "urn:neurogate:export" and t["code"] == "pacs" for t in tags)

    # The API's study detail shows each notification and how it went.
    api = api_settings(tmp_path / "api", database.url).api
    with running_app(settings.model_copy(update={"api": api})) as client:
        uid = glioma.study_instance_uid
        body = client.get(f"/api/studies/{uid}", headers=admin_headers(client)).json()
    shown = {
        (n["event"], n["status"], n["attempts"], n["http_status"]) for n in body["notifications"]
    }
    assert shown == {("analysis.completed", "sent", 1, 200), ("export.parked", "sent", 1, 200)}
