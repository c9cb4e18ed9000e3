"""The Application Entity: what the listener accepts, and its C-STORE and C-ECHO handlers."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import ssl
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from sqlalchemy.exc import SQLAlchemyError

from dicom_listener.assembly import InstanceRecorder
from dicom_listener.instances import InvalidInstance, read_header
from dicom_listener.limits import accepted_pdu_size
from dicom_listener.received import Received
from dicom_listener.status import Status
from neurogate.settings import ListenerSettings
from neurogate.storage import InstanceStore, StoreOutcome, tmp_name

log = logging.getLogger(__name__)

# Every transfer syntax pydicom knows: instances are stored as received, never decoded, so
# compressed syntaxes (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, deflate) cost nothing to accept.
# Every transfer syntax pydicom knows, in the order the listener prefers them when a sender
# proposes several in one presentation context (pynetdicom takes the acceptor's first match):
# explicit VR little endian, then the lossless compressed syntaxes (kept as the sender has them),
# then the other uncompressed ones, implicit VR last; lossy syntaxes only when nothing else is
# offered, so that no sender is invited to compress an image lossily on the way.
_PREFERRED_FIRST = (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
ACCEPTED_TRANSFER_SYNTAXES = [str(uid) for uid in _PREFERRED_FIRST] + [
    str(uid) for uid in AllTransferSyntaxes if uid not in _PREFERRED_FIRST
]
VERIFICATION = "1.2.840.10008.1.1"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
Handler = EventHandlerType
_MB = 1 << 20
FREE_SPACE_MAX_AGE_S = 0.5


def build_ae(settings: ListenerSettings) -> AE:
    """An AE accepting storage of every storage SOP class, verification and MPPS."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = accepted_pdu_size(settings.max_pdu_size, settings.max_associations)
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    # A-ASSOCIATE-RJ reason 7 (called AE title not recognised) / 3 (calling AE not recognised)
    ae.require_called_aet = settings.require_called_ae_title
    ae.require_calling_aet = list(settings.allowed_calling_ae_titles)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, ACCEPTED_TRANSFER_SYNTAXES)
    ae.add_supported_context(MODALITY_PERFORMED_PROCEDURE_STEP, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def build_ssl_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """Server-side TLS (PS3.15 B.1 secure transport), with client certificates if a CA is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _association_ids(assoc: Association) -> dict[str, object]:
    requestor = assoc.requestor
    return {
        "calling_ae": requestor.ae_title,
        "peer": f"{requestor.address}:{requestor.port}",
        "assoc": assoc.native_id,
    }


# A-ASSOCIATE-RJ (PS3.8 9.3.4): (source, reason/diag.) -> what it means
REJECTION_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
REJECTION_RESULTS = {1: "permanent", 2: "transient"}


def rejection(assoc: Association) -> dict[str, object]:
    """Why ``assoc`` was rejected, who asked whom: what an operator needs to fix the sender."""
    sent = assoc.acceptor.primitive  # the A-ASSOCIATE-RJ
    asked = assoc.requestor.primitive  # the A-ASSOCIATE-RQ
    source = int(getattr(sent, "result_source", 0) or 0)
    diagnostic = int(getattr(sent, "diagnostic", 0) or 0)
    reason = REJECTION_REASONS.get((source, diagnostic), f"source {source} reason {diagnostic}")
    ids = _association_ids(assoc)
    return {
        "reason": reason,
        "result": REJECTION_RESULTS.get(int(getattr(sent, "result", 0) or 0), "unknown"),
        "called_ae": getattr(asked, "called_ae_title", None),
        "calling_ae": getattr(asked, "calling_ae_title", None) or ids["calling_ae"],
        "our_ae": assoc.acceptor.ae_title,
        "peer": ids["peer"],
    }


@dataclass
class AssociationCounts:
    """What one association stored, found stored already, or was refused."""

    stored: int = 0
    duplicates: int = 0  # the same instance again: acknowledged, nothing changed
    conflicts: int = 0  # the same SOP Instance UID with other bytes: kept under conflicts/
    refused: int = 0

    def add(self, status: int, outcome: StoreOutcome | None) -> None:
        if status != Status.SUCCESS or outcome is None:
            self.refused += 1
        elif outcome is StoreOutcome.DUPLICATE:
            self.duplicates += 1
        elif outcome is StoreOutcome.CONFLICT:
            self.conflicts += 1
        else:
            self.stored += 1

    @property
    def instances(self) -> int:
        return self.stored + self.duplicates + self.conflicts


class StorageSCP:
    """C-STORE and C-ECHO handlers; dependencies are bound once at start-up.

    A C-STORE is answered with success only after the instance is durable on disk and its study
    is marked as receiving in the database; any failure before that is refused with a status
    that tells the sender to keep the instance and try again.
    """

    def __init__(
        self, store: InstanceStore, tracker: InstanceRecorder, *, min_free_mb: int
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._min_free_bytes = min_free_mb * _MB
        # Per association, until it ends (weak: an association killed without an end event
        # leaves nothing behind).
        self._counts: weakref.WeakKeyDictionary[Association, AssociationCounts] = (
            weakref.WeakKeyDictionary()
        )
        self._counts_lock = threading.Lock()

    def handlers(self) -> list[Handler]:
        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    def on_echo(self, event: Event) -> int:
        log.info("C-ECHO", extra=_association_ids(event.assoc))
        return Status.SUCCESS

    def on_accepted(self, event: Event) -> None:
        log.info("association accepted", extra=_association_ids(event.assoc))

    def on_rejected(self, event: Event) -> None:
        why = rejection(event.assoc)
        log.warning(f"association rejected: {why['reason']}", extra=why)

    def on_released(self, event: Event) -> None:
        self._ended(event.assoc, "released", logging.INFO)

    def on_aborted(self, event: Event) -> None:
        self._ended(event.assoc, "aborted", logging.WARNING)

    def _ended(self, assoc: Association, how: str, level: int) -> None:
        with self._counts_lock:
            counts = self._counts.pop(assoc, None) or AssociationCounts()
        log.log(
            level,
            f"association {how}",
            extra={
                **_association_ids(assoc),
                "instances": counts.instances,
                "stored": counts.stored,
                "duplicates": counts.duplicates,
                "conflicts": counts.conflicts,
                "refused": counts.refused,
            },
        )

    def _count(self, assoc: Association, status: int, outcome: StoreOutcome | None) -> None:
        with self._counts_lock:
            counts = self._counts.get(assoc)
            if counts is None:
                counts = self._counts[assoc] = AssociationCounts()
            counts.add(status, outcome)

    def on_store(self, event: Event) -> int:
        """``EVT_C_STORE``: a request that pynetdicom received (the fast path declined it)."""
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID)
        sop_uid = str(request.AffectedSOPInstanceUID)
        try:
            tmp = self._take_dataset(event)
        except OSError as exc:
            ids = {**_association_ids(event.assoc), "sop_instance_uid": sop_uid}
            log.error("could not write received instance", extra={**ids, "error": str(exc)})
            self._count(event.assoc, Status.OUT_OF_RESOURCES, None)
            return Status.OUT_OF_RESOURCES
        return self.store_received(Received(tmp), sop_class, sop_uid, event.assoc)

    def store_received(
        self, received: Received, sop_class: str, sop_uid: str, assoc: Association
    ) -> int:
        """Decide on a received instance, a Part 10 stream in memory or a file in the store's
        ``tmp/`` that this owns.

        Both receive paths end here: :meth:`on_store` and the fast path of
        :mod:`dicom_listener.fast_store`. Returns the DIMSE status to answer.
        """
        status, outcome = self._decide(received, sop_class, sop_uid, assoc)
        self._count(assoc, status, outcome)
        return status

    def _decide(
        self, received: Received, sop_class: str, sop_uid: str, assoc: Association
    ) -> tuple[int, StoreOutcome | None]:
        tmp = received.path
        ids = {**_association_ids(assoc), "sop_instance_uid": sop_uid}
        # A reading of the free space up to half a second old: at the node's rate that is a
        # few hundred MB at most, well inside the margin MIN_FREE_DISK_MB is there to keep.
        if self._store.free_bytes(max_age_s=FREE_SPACE_MAX_AGE_S) < self._min_free_bytes:
            _remove(tmp)
            log.error("refusing instance: storage volume is nearly full", extra=ids)
            return Status.OUT_OF_RESOURCES, None
        try:
            header = read_header(
                tmp, sop_class_uid=sop_class, sop_instance_uid=sop_uid, content=received.content
            )
        except InvalidInstance as exc:
            _remove(tmp)
            log.warning(
                "refusing instance",
                extra={**ids, "status": f"0x{exc.status:04X}", "reason": exc.reason},
            )
            return exc.status, None
        study, series = header.study_instance_uid, header.series_instance_uid
        ids.update(study=study, series=series)
        try:
            if tmp is None:
                assert received.content is not None
                outcome = self._store.write(received.content, study, series, sop_uid)
            else:
                outcome = self._store.commit(tmp, study, series, sop_uid, synced=received.synced)
        except OSError as exc:
            log.error("could not store instance", extra={**ids, "error": str(exc)})
            return Status.OUT_OF_RESOURCES, None
        try:
            self._tracker.record(
                header,
                outcome,
                calling_ae=assoc.requestor.ae_title,
                called_ae=assoc.acceptor.ae_title,
            )
        except SQLAlchemyError:
            # Without its study marked as receiving, a restart could not resume the study.
            # Undo and refuse: the sender keeps the instance and retries.
            log.exception("could not record the instance's study; refused", extra=ids)
            if outcome is StoreOutcome.STORED:
                self._store.discard(study, series, sop_uid)
            return Status.OUT_OF_RESOURCES, None
        log.debug("instance stored", extra={**ids, "outcome": outcome.value})
        return Status.SUCCESS, outcome

    def _take_dataset(self, event: Event) -> Path:
        """The received instance as a Part 10 file of our own in the store's ``tmp/``."""
        tmp = self._store.tmp_dir / tmp_name()
        # With chunked receive, the file pynetdicom wrote; otherwise None (received in memory)
        received = event.dataset_path
        if received is None:
            with tmp.open("wb") as fh:
                fh.write(event.encoded_dataset())
            return tmp
        try:
            os.link(received, tmp)  # same filesystem: no copy
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(received, tmp)
        return tmp


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
