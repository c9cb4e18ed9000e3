"""Delivery of result objects to the PACS: C-STORE or STOW-RS per object and destination.

Every (object, destination) pair has one ``exports`` row. The exporter sends the rows that are
due, one association (for a DICOMweb destination, one HTTP connection:
:mod:`inference_worker.stowrs`) per destination, and records each outcome: ``sent`` with its
DIMSE status (for STOW-RS, the archive's Warning Reason, or 0), or another attempt later (the
wait doubles, up to a maximum), or ``failed`` after the last attempt, parked until someone
re-sends it from the API. A ``sent`` row is never sent again, so an export neither loops nor
duplicates; the one window left (the PACS stored the object, then the node died before
recording it) re-sends the same SOP Instance UID, which a PACS files once.

Every worker runs an exporter on the same table, so rows are claimed before they are sent: one
conditional ``UPDATE`` (its candidates ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite runs
one writer at a time) stamps a batch with this pass's token and a lease. The lease is renewed
before each object is sent, and only the holder records an attempt, so each object goes out
once and each attempt counts once; the rows of an exporter that died are taken by another once
its lease has lapsed.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from inference_worker.notify import notify_export_parked
from inference_worker.stowrs import StowClient, Unreachable
from neurogate.db.models import Export, ExportStatus, ResultObject
from neurogate.outbox import enqueue
from neurogate.settings import Destination, PacsDestination, Settings, StowRsDestination
from schemas.events import ExportOutcome
from schemas.topics import Topic

log = logging.getLogger(__name__)

# DIMSE status classes (PS3.7 Annex C): success 0x0000, warnings 0x0001 and 0xB000-0xBFFF.
STATUS_SUCCESS = 0x0000
_WARNING_CODES = range(0xB000, 0xC000)
STATUS_WARNING_COERCION = 0x0001
_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR LE
_BATCH = 50


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_stored(status: int) -> bool:
    """Success or a warning: the PACS kept the object."""
    return status in (STATUS_SUCCESS, STATUS_WARNING_COERCION) or status in _WARNING_CODES


def plan_exports(
    session: Session, objects: Iterable[ResultObject], destinations: Sequence[Destination]
) -> None:
    """One pending export per object and destination (the objects must have ids)."""
    now = _now()
    for obj in objects:
        for destination in destinations:
            session.add(
                Export(
                    result_object_id=obj.id,
                    destination=destination.name,
                    status=ExportStatus.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                )
            )


@dataclass(frozen=True)
class _Due:
    export_id: int
    token: str  # the claim under which this exporter may send and record it
    path: str
    sop_class_uid: str
    sop_instance_uid: str


class Exporter:
    """Sends the exports that are due until stopped; meant to be a thread's target.

    Parameters
    ----------
    settings
        ``settings.export`` names the destinations and the retry policy.
    sessions
        Database session factory.
    on_change
        Called after outcomes are committed (wakes the outbox relay).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        on_change: Callable[[], None] = lambda: None,
        idle_wait_s: float = 2.0,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._on_change = on_change
        self._idle_wait_s = idle_wait_s
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.export_due()
            except Exception:  # a database hiccup must not end the thread: log, wait, retry
                log.exception("export pass failed")
            self._wake.wait(self._idle_wait_s)
            self._wake.clear()

    def export_due(self) -> int:
        """Send every export that is due now; the number of objects the PACS stored."""
        stored = 0
        for destination in self._settings.export.destinations:
            due = self._due(destination.name)
            if due:
                stored += self._send(destination, due)
        return stored

    def _due(self, destination: str) -> list[_Due]:
        """Claim up to a batch of the destination's due exports for this pass, for a lease."""
        now = _now()
        token = uuid.uuid4().hex
        due = (
            Export.destination == destination,
            Export.status == ExportStatus.PENDING,
            or_(Export.next_attempt_at.is_(None), Export.next_attempt_at <= now),
            or_(Export.claimed_until.is_(None), Export.claimed_until <= now),
        )
        candidates = (
            select(Export.id)
            .where(*due)
            .order_by(Export.id)
            .limit(_BATCH)
            .with_for_update(skip_locked=True)
        )
        with self._sessions.begin() as session:
            claimed = session.execute(
                update(Export)
                .where(Export.id.in_(candidates), *due)
                .values(claim_token=token, claimed_until=now + self._lease())
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return []
            rows = session.scalars(
                select(Export)
                .options(selectinload(Export.result_object))
                .where(Export.claim_token == token)
                .order_by(Export.id)
            ).all()
            return [
                _Due(
                    r.id,
                    token,
                    r.result_object.path,
                    r.result_object.sop_class_uid,
                    r.result_object.sop_instance_uid,
                )
                for r in rows
            ]

    def _lease(self) -> dt.timedelta:
        return dt.timedelta(seconds=self._settings.export.lease_seconds)

    def _renew(self, item: _Due) -> bool:
        """Extend this pass's claim on ``item`` before sending it; ``False`` if it was lost."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(Export)
                .where(
                    Export.id == item.export_id,
                    Export.claim_token == item.token,
                    Export.status == ExportStatus.PENDING,
                )
                .values(claimed_until=_now() + self._lease())
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _send(self, destination: Destination, due: list[_Due]) -> int:
        if isinstance(destination, StowRsDestination):
            return self._send_stowrs(destination, due)
        settings = self._settings.export
        ae = AE(ae_title=settings.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_seconds
        for sop_class in sorted({d.sop_class_uid for d in due}):
            ae.add_requested_context(sop_class, list(_TRANSFER_SYNTAXES))
        try:
            assoc = open_association(
                ae,
                destination.host,
                destination.port,
                destination.ae_title,
                tls_args=_tls_args(destination),
            )
        except AssociationRefused as exc:
            reason = f"{exc}: {destination.ae_title}@{destination.host}:{destination.port}"
            for item in due:
                self._record(item, destination, None, reason)
            return 0
        stored = 0
        try:
            for item in due:
                stored += self._store_one(assoc, item, destination)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return stored

    def _send_stowrs(self, destination: StowRsDestination, due: list[_Due]) -> int:
        """STOW-RS, one request per object over one connection; a destination that cannot be
        reached fails every object of the pass with the same reason, as a refused association
        does."""
        stored = 0
        with StowClient(destination, timeout_s=self._settings.export.timeout_seconds) as client:
            for n, item in enumerate(due):
                if not self._claimed(item, destination):
                    continue
                try:
                    content = (self._settings.storage_root / item.path).read_bytes()
                except OSError as exc:
                    self._record(item, destination, None, f"cannot read the stored object: {exc}")
                    continue
                try:
                    result = client.store(content, item.sop_instance_uid)
                except Unreachable as exc:
                    for left in due[n:]:
                        self._record(left, destination, None, str(exc))
                    break
                self._record(item, destination, result.status, result.reason)
                if result.reason is None:
                    stored += 1
        return stored

    def _claimed(self, item: _Due, destination: Destination) -> bool:
        """Renew the claim on ``item`` before sending it; ``False`` (logged) if it was lost."""
        if self._renew(item):
            return True
        log.warning(
            "export claim lapsed before sending; left to the exporter that holds it",
            extra={"sop_uid": item.sop_instance_uid, "destination": destination.name},
        )
        return False

    def _store_one(self, assoc: Association, item: _Due, destination: PacsDestination) -> int:
        if not self._claimed(item, destination):
            return 0
        try:
            dataset = dcmread(self._settings.storage_root / item.path)
        except (OSError, ValueError) as exc:
            self._record(item, destination, None, f"cannot read the stored object: {exc}")
            return 0
        try:
            response = assoc.send_c_store(dataset)
        except (RuntimeError, ValueError) as exc:  # no accepted context for this SOP class
            self._record(item, destination, None, f"not sent: {exc}")
            return 0
        status = int(response.Status) if "Status" in response else None
        if status is not None and is_stored(status):
            self._record(item, destination, status, None)
            return 1
        reason = (
            f"PACS answered 0x{status:04X}"
            if status is not None
            else "no answer (association aborted or timed out)"
        )
        self._record(item, destination, status, reason)
        return 0

    def _record(
        self, item: _Due, destination: Destination, status: int | None, reason: str | None
    ) -> None:
        """Commit one attempt's outcome and its status event together, and end the claim.

        Only the claim's holder records a failed attempt: one whose lease lapsed and was taken
        over leaves the row to its new holder. An object the PACS stored is recorded as sent
        in any case while the row is pending, so that nobody sends it again.
        """
        policy = self._settings.export
        held: ColumnElement[bool] = Export.claim_token == item.token
        if reason is None:
            held = or_(held, Export.status == ExportStatus.PENDING)
        with self._sessions.begin() as session:
            released = session.execute(
                update(Export)
                .where(Export.id == item.export_id, held)
                .values(claim_token=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            if not released.rowcount:  # type: ignore[attr-defined]
                log.warning(
                    "export claim lapsed; the attempt is left unrecorded",
                    extra={"sop_uid": item.sop_instance_uid, "destination": destination.name},
                )
                return
            row = session.get_one(Export, item.export_id)
            obj = session.get_one(ResultObject, row.result_object_id)
            row.attempts += 1
            row.dimse_status = status
            if reason is None:
                row.status, row.sent_at, row.last_error = ExportStatus.SENT, _now(), None
                row.next_attempt_at = None
            else:
                row.last_error = reason
                if row.attempts >= policy.max_attempts:
                    row.status, row.next_attempt_at = ExportStatus.FAILED, None
                    notify_export_parked(session, self._settings, row)
                else:
                    wait = min(
                        policy.backoff_seconds * 2 ** (row.attempts - 1),
                        policy.backoff_max_seconds,
                    )
                    row.next_attempt_at = _now() + dt.timedelta(seconds=wait)
            enqueue(
                session,
                topic=Topic.EXPORT_STATUS,
                key=obj.analysis.study_instance_uid,
                event=ExportOutcome(
                    analysis_id=obj.analysis_id,
                    study_instance_uid=obj.analysis.study_instance_uid,
                    sop_instance_uid=obj.sop_instance_uid,
                    kind=obj.kind,
                    destination=destination.name,
                    status=row.status,
                    attempts=row.attempts,
                    dimse_status=status,
                    reason=reason,
                ),
            )
            outcome, attempts = row.status, row.attempts
        self._on_change()
        extra = {
            "sop_uid": item.sop_instance_uid,
            "destination": destination.name,
            "attempts": attempts,
            "dimse_status": None if status is None else f"0x{status:04X}",
        }
        if reason is None:
            log.info("exported", extra=extra)
        elif outcome == ExportStatus.FAILED:
            log.error("export parked as failed", extra={**extra, "reason": reason})
        else:
            log.warning("export attempt failed; will retry", extra={**extra, "reason": reason})


def _tls_args(destination: PacsDestination) -> tuple[ssl.SSLContext, str] | None:
    if destination.tls_ca_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls_ca_file)
    if destination.tls_cert_file is not None:
        context.load_cert_chain(destination.tls_cert_file, destination.tls_key_file)
    return context, destination.host


class AssociationRefused(Exception):
    """A peer did not accept the association; the message says why, in the peer's words when
    it sent an A-ASSOCIATE-RJ."""


def open_association(
    ae: AE,
    host: str,
    port: int,
    ae_title: str,
    *,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
    ext_neg: Sequence[SCP_SCU_RoleSelectionNegotiation] = (),
    evt_handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> Association:
    """``ae.associate`` with the peer ``ae_title`` at ``host:port``, established, or the reason.

    The PDUs received while negotiating are watched for an A-ASSOCIATE-RJ, whose reason
    :class:`AssociationRefused` carries; once established, the association runs without that
    look at every PDU.

    Parameters
    ----------
    ae
        The calling AE, with its requested presentation contexts and timeouts.
    tls_args, ext_neg, evt_handlers
        As for :meth:`pynetdicom.ae.ApplicationEntity.associate` (role selection for C-GET,
        handlers of the events on this association).

    Raises
    ------
    AssociationRefused
        When the association was rejected, aborted or not answered.
    """
    rejections: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    assoc = ae.associate(
        host,
        port,
        ae_title=ae_title,
        ext_neg=list(ext_neg) or None,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu), *evt_handlers],
    )
    if not assoc.is_established:
        raise AssociationRefused(_refusal(assoc, rejections))
    assoc.unbind(evt.EVT_PDU_RECV, on_pdu)
    return assoc


def _refusal(assoc: Association, rejections: Sequence[A_ASSOCIATE_RJ]) -> str:
    """Why an association was not established, with the PACS's reason when it gave one.

    A PACS that rejects and closes the connection at once (Orthanc does) can leave pynetdicom
    reporting an abort although the A-ASSOCIATE-RJ arrived: in one association of four or
    five here. The PDU itself says what happened.
    """
    if rejections:
        rejected = rejections[-1]
        return (
            f"association rejected: {rejected.reason_str} "
            f"({rejected.result_str.lower()}, by the {rejected.source_str})"
        )
    return "association rejected" if assoc.is_rejected else "association failed (no answer)"
