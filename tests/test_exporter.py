"""Exports shared by several workers: each object reaches the PACS once, attempts count once.

Every worker runs an exporter against the same database. The PACS here is a pynetdicom SCP in
the test that counts every SOP Instance it receives, so a duplicate is seen where it happens;
it is down first (nothing listens on its port) and comes up while the exporters retry.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from inference_worker.exporter import (
    AssociationRefused,
    Exporter,
    open_association,
    plan_exports,
)
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import (
    Analysis,
    AnalysisStatus,
    Export,
    ExportStatus,
    OutboxEvent,
    ResultObject,
)
from neurogate.settings import ExportSettings, PacsDestination, Settings
from schemas.events import ExportOutcome, parse_event
from schemas.topics import Topic
from tests.conftest import Database, free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import wait_for

PACS_AE = "COUNTING-PACS"
OBJECTS = 24


class CountingPacs:
    """A C-STORE SCP that counts each SOP Instance UID it is sent; started and stopped at will."""

    def __init__(self, port: int, calling_ae_titles: list[str] | None = None) -> None:
        self.port = port
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ae = AE(ae_title=PACS_AE)
        self._ae.add_supported_context(MRImageStorage)
        self._ae.require_calling_aet = calling_ae_titles or []  # others: A-ASSOCIATE-RJ
        self._server: object | None = None

    def _store(self, event: Event) -> int:
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    def start(self) -> None:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def stop(self) -> None:
        self._ae.shutdown()


def _settings(tmp_path: Path, url: str, port: int, **policy: float) -> Settings:
    destination = PacsDestination(name="pacs", ae_title=PACS_AE, host="127.0.0.1", port=port)
    export = ExportSettings(destinations=[destination], **policy)  # type: ignore[arg-type]
    return make_settings(tmp_path / "node", url).model_copy(update={"export": export})


def _plan(settings: Settings, database: Database, count: int) -> list[str]:
    """A finished analysis with ``count`` small MR objects as its results, exports planned."""
    root = settings.storage_root
    study = write_mr_study(root / "results" / "study", series=1, slices=count, size=16)
    now = dt.datetime.now(dt.UTC)
    with database.sessions.begin() as session:
        analysis = Analysis(
            request_event_id=str(uuid.uuid4()),
            study_instance_uid=study.study_uid,
            revision=1,
            source="dicom",
            status=AnalysisStatus.COMPLETED,
            progress=1.0,
            attempts=1,
            created_at=now,
        )
        session.add(analysis)
        session.flush()
        objects = []
        for n, path in enumerate(study.files):
            ds = dcmread(path, stop_before_pixels=True)
            objects.append(
                ResultObject(
                    analysis_id=analysis.id,
                    kind=f"obj{n}",
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=str(path.relative_to(root)),
                    created_at=now,
                )
            )
        session.add_all(objects)
        session.flush()
        plan_exports(session, objects, settings.export.destinations)
    return [o.sop_instance_uid for o in objects]


@contextmanager
def _exporters(settings: Settings, url: str, count: int) -> Iterator[list[Exporter]]:
    """``count`` exporters, each with its own engine as separate workers have, running."""
    engines = [create_db_engine(url) for _ in range(count)]
    exporters = [Exporter(settings, session_factory(e), idle_wait_s=0.05) for e in engines]
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in exporters]
    for thread in threads:
        thread.start()
    try:
        yield exporters
    finally:
        stop.set()
        for exporter in exporters:
            exporter.wake()
        for thread in threads:
            thread.join(timeout=30)
        for engine in engines:
            engine.dispose()


def _outcomes(database: Database) -> list[ExportOutcome]:
    with database.sessions() as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.topic == str(Topic.EXPORT_STATUS))
            .order_by(OutboxEvent.id)
        ).all()
    events = [parse_event(row.payload) for row in rows]
    return [e for e in events if isinstance(e, ExportOutcome)]


def test_two_workers_send_each_object_once_to_a_pacs_that_was_down(
    tmp_path: Path, database: Database
) -> None:
    pacs = CountingPacs(free_port())
    settings = _settings(
        tmp_path,
        database.url,
        pacs.port,
        backoff_seconds=0.25,
        backoff_max_seconds=0.5,
        max_attempts=8,
    )
    uids = _plan(settings, database, OBJECTS)

    with _exporters(settings, database.url, 2):
        wait_for(lambda: len(_outcomes(database)) >= OBJECTS, timeout=30)  # first tries failed
        threading.Event().wait(1.5)  # the PACS stays down a while: several rounds of retries
        pacs.start()
        try:

            def settled() -> bool:
                with database.sessions() as session:
                    statuses = session.scalars(select(Export.status)).all()
                return all(s != ExportStatus.PENDING for s in statuses)

            wait_for(settled, timeout=60, interval=0.1)
            threading.Event().wait(0.5)  # a late duplicate would arrive now
        finally:
            pacs.stop()

    assert sorted(pacs.received) == sorted(uids)
    assert set(pacs.received.values()) == {1}, "an object arrived more than once"
    with database.sessions() as session:
        rows = session.scalars(select(Export)).all()
        assert {r.status for r in rows} == {ExportStatus.SENT}
        assert all(2 <= r.attempts <= settings.export.max_attempts for r in rows)
        attempts = {r.result_object.sop_instance_uid: r.attempts for r in rows}
    # Each attempt is recorded once: per object, the outcomes count 1, 2, ... n, the last sent.
    per_object: dict[str, list[ExportOutcome]] = {}
    for outcome in _outcomes(database):
        per_object.setdefault(outcome.sop_instance_uid, []).append(outcome)
    for uid, outcomes in per_object.items():
        assert [o.attempts for o in outcomes] == list(range(1, attempts[uid] + 1))
        assert [o.status for o in outcomes].count(ExportStatus.SENT) == 1
        assert outcomes[-1].status == ExportStatus.SENT


def test_the_exports_of_a_worker_that_died_are_sent_by_another_once_its_lease_lapses(
    tmp_path: Path, database: Database
) -> None:
    pacs = CountingPacs(free_port())
    settings = _settings(tmp_path, database.url, pacs.port, lease_seconds=1.0)
    uids = _plan(settings, database, 3)
    dead = Exporter(settings, database.sessions)
    survivor = Exporter(settings, database.sessions)
    pacs.start()
    try:
        claimed = dead._due("pacs")  # it took the rows, then died before sending them
        assert len(claimed) == 3
        assert survivor.export_due() == 0  # held by the dead worker's lease
        assert wait_for(survivor.export_due, timeout=10, interval=0.1) == 3
        assert survivor.export_due() == 0
        # The dead worker's late word changes nothing: its claim is gone.
        dead._record(claimed[0], settings.export.destinations[0], None, "association failed")
    finally:
        pacs.stop()
    assert sorted(pacs.received) == sorted(uids) and set(pacs.received.values()) == {1}
    with database.sessions() as session:
        rows = session.scalars(select(Export)).all()
        assert {(r.status, r.attempts, r.claim_token) for r in rows} == {
            (ExportStatus.SENT, 1, None)
        }


# What pynetdicom's A-ASSOCIATE-RJ says of a calling AE title the PACS does not know (reason 3).
REJECTED = (
    "association rejected: Calling AE title not recognised (rejected (permanent), by the DUL "
    "service-user)"
)


def test_open_association_says_why_a_peer_refused_and_hands_over_an_established_one() -> None:
    """The A-ASSOCIATE-RJ's reason, or that no one answered; once established, the PDUs are no
    longer watched, the caller's handlers stay bound."""
    ae = AE(ae_title="NEUROGATE")
    ae.add_requested_context(MRImageStorage)
    with pytest.raises(AssociationRefused, match=r"^association failed \(no answer\)$"):
        open_association(ae, "127.0.0.1", free_port(), PACS_AE)
    for calling, refused in ((["SOMEONE_ELSE"], True), (None, False)):
        pacs = CountingPacs(free_port(), calling)
        pacs.start()
        try:
            if refused:
                with pytest.raises(AssociationRefused, match=f"^{re.escape(REJECTED)}$"):
                    open_association(ae, "127.0.0.1", pacs.port, PACS_AE)
                continue

            def on_released(event: Event) -> None:
                pass

            handlers = [(evt.EVT_RELEASED, on_released)]
            assoc = open_association(ae, "127.0.0.1", pacs.port, PACS_AE, evt_handlers=handlers)
            assert assoc.is_established
            watching = [h for h, _ in assoc.get_handlers(evt.EVT_PDU_RECV)]
            assert not [h for h in watching if h.__qualname__.startswith("open_association.")]
            assert [h for h, _ in assoc.get_handlers(evt.EVT_RELEASED)] == [on_released]
            assoc.release()
        finally:
            pacs.stop()


def test_a_pacs_that_rejects_the_association_is_named_with_its_reason(
    tmp_path: Path, database: Database
) -> None:
    pacs = CountingPacs(free_port(), calling_ae_titles=["SOMEONE_ELSE"])
    settings = _settings(tmp_path, database.url, pacs.port, max_attempts=1)
    _plan(settings, database, 2)
    pacs.start()
    try:
        with _exporters(settings, database.url, 1):
            wait_for(lambda: len(_outcomes(database)) >= 2, timeout=30)
    finally:
        pacs.stop()
    with database.sessions() as session:
        rows = session.scalars(select(Export)).all()
        parked = {(r.status, r.last_error) for r in rows}
    [(status, error)] = parked
    assert status == ExportStatus.FAILED
    assert error == f"{REJECTED}: {PACS_AE}@127.0.0.1:{pacs.port}"
    assert not pacs.received
