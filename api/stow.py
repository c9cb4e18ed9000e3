"""STOW-RS receive (DICOMweb Store, PS3.18 10.5): instances over HTTP into the listener's store.

Each part of a ``multipart/related; type="application/dicom"`` request is a Part 10 file. It
goes through the function the listener's C-STORE handlers end in
(:meth:`dicom_listener.scp.StorageSCP.store_received`): the same header checks, the same
durable, no-clobber placement (a duplicate is acknowledged, a conflicting one kept under
``conflicts/``), the same free-space refusal, and the same study assembly
(:class:`dicom_listener.assembly.StudyTracker`: a study is complete after the quiet period,
and its ``StudyReceived`` event goes through the outbox). The DIMSE status it answers becomes
the instance's outcome: stored (Referenced SOP Sequence), or failed with that status as its
Failure Reason (Failed SOP Sequence). The answer is 200 when all were stored, 409 when none
was, 202 otherwise.

This process runs a study tracker of its own, beside the listener's. At start it resumes the
studies that came over STOW-RS and were still being received when the API stopped (their quiet
period starts again); the listener's recovery at its own start resumes every study still being
received, those too.
"""

from __future__ import annotations

import logging
import mmap
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO, Any, cast

from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom.association import Association
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.assembly import InstanceRecorder, InstanceRef, StudyTracker
from dicom_listener.fast_store import Received
from dicom_listener.instances import InstanceHeader, InvalidInstance, read_header
from dicom_listener.scp import StorageSCP
from dicom_listener.status import Status
from neurogate.db.models import Study, StudyStatus
from neurogate.settings import Settings
from neurogate.storage import DICOM_SUFFIX, InstanceStore, StoreOutcome

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# How a study received over STOW-RS is labelled where C-STORE records the AE titles.
CALLING_AE = "STOW-RS"
CALLED_AE = "DICOMWEB"
# Tags of the response (PS3.18 Table 10.5.3-2), in DICOM JSON (PS3.18 F.2)
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_MAX_PART_HEADERS = 8192


class BadRequest(ValueError):
    """A request that is not a STOW-RS request this node takes: nothing of it was stored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InstanceResult:
    """One part's outcome: ``status`` 0 when stored (or already stored)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int
    outcome: StoreOutcome | None = None
    study_instance_uid: str | None = None


@dataclass
class StowResponse:
    """The results of one request, as PS3.18 answers them."""

    results: list[InstanceResult]

    @property
    def stored(self) -> list[InstanceResult]:
        return [r for r in self.results if r.status == Status.SUCCESS]

    @property
    def http_status(self) -> int:
        if len(self.stored) == len(self.results):
            return 200
        return 409 if not self.stored else 202

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        failed = [r for r in self.results if r.status != Status.SUCCESS]
        if self.stored:
            answer[_REFERENCED_SOP_SEQUENCE] = _sequence(_reference(r) for r in self.stored)
        if failed:
            answer[_FAILED_SOP_SEQUENCE] = _sequence(
                {**_reference(r), _FAILURE_REASON: {"vr": "US", "Value": [r.status]}}
                for r in failed
            )
        return answer


def _reference(result: InstanceResult) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if result.sop_class_uid:
        item[_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [result.sop_class_uid]}
    if result.sop_instance_uid:
        item[_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [result.sop_instance_uid]}
    return item


def _sequence(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


@dataclass(eq=False)
class _Party:
    ae_title: str
    address: str
    port: int


@dataclass(eq=False)
class _HttpPeer:
    """What the listener's store function reads of an association, for one HTTP request: who
    sent (for its logs and the study's calling AE titles) and who received."""

    requestor: _Party
    acceptor: _Party
    native_id: int | None = None


@dataclass
class _Recorded:
    """The tracker, noting each instance's store outcome on the way (for the response)."""

    tracker: InstanceRecorder
    # SOP Instance UID -> (outcome, Study Instance UID)
    outcomes: dict[str, tuple[StoreOutcome, str]] = field(default_factory=dict)

    def record(
        self, header: InstanceHeader, outcome: StoreOutcome, *, calling_ae: str, called_ae: str
    ) -> None:
        self.tracker.record(header, outcome, calling_ae=calling_ae, called_ae=called_ae)
        self.outcomes[header.sop_instance_uid] = (outcome, header.study_instance_uid)

    def procedure_step_completed(self, study_uid: str, referenced: Iterable[InstanceRef]) -> None:
        self.tracker.procedure_step_completed(study_uid, referenced)


class StowReceiver:
    """The API's receiving end: the listener's store and a study tracker, bound at start.

    Parameters
    ----------
    settings
        ``settings.listener`` has the store's fsync, the free-space floor and the quiet period.
    sessions
        Database session factory.
    on_completed
        Called after a study's completion is committed (wakes the outbox relay).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        on_completed: Callable[[], None],
    ) -> None:
        listener = settings.listener
        self.store = InstanceStore(settings.storage_root, fsync=listener.fsync)
        self.tracker = StudyTracker(
            sessions,
            self.store,
            quiet_seconds=listener.study_quiet_seconds,
            on_completed=on_completed,
        )
        self._sessions = sessions
        self._min_free_mb = listener.min_free_disk_mb
        self._check_s = listener.completion_check_seconds
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="stow-completion", daemon=True)

    def start(self) -> None:
        """Resume the STOW-RS studies left receiving, then run the completion timer."""
        resumed = self.resume()
        if resumed:
            log.info("resumed STOW-RS studies after restart", extra={"count": resumed})
        self._timer.start()

    def resume(self) -> int:
        """Track again the studies received here that were not complete when the API stopped;
        how many. Each is opened from its files on disk, as a new instance opens a study."""
        with self._sessions() as session:
            uids = session.scalars(
                select(Study.study_instance_uid).where(
                    Study.status == StudyStatus.RECEIVING, Study.called_ae_title == CALLED_AE
                )
            ).all()
        resumed = 0
        for uid in uids:
            stored = next(self.store.study_dir(uid).glob(f"*/*{DICOM_SUFFIX}"), None)
            if stored is None:
                continue
            try:
                meta = read_preamble_and_meta(stored.read_bytes())
                header = read_header(
                    stored,
                    sop_class_uid=str(meta.MediaStorageSOPClassUID),
                    sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                )
            except (*_UNREADABLE, OSError, InvalidInstance) as exc:
                log.error("cannot resume STOW-RS study", extra={"study": uid, "error": str(exc)})
                continue
            self.tracker.record(
                header, StoreOutcome.STORED, calling_ae=CALLING_AE, called_ae=CALLED_AE
            )
            resumed += 1
        return resumed

    def stop(self) -> None:
        self._stop.set()
        self._timer.join()
        self.tracker.tick()

    def _tick(self) -> None:
        while not self._stop.wait(self._check_s):
            self.tracker.tick()

    def body_file(self) -> IO[bytes]:
        """An unnamed file on the storage volume for a request's body (a crash leaves none)."""
        return tempfile.TemporaryFile(dir=self.store.tmp_dir)

    def receive(
        self, body: IO[bytes], content_type: str, *, client: tuple[str, int], user: str
    ) -> StowResponse:
        """Store every part of the request body in ``body``; their outcomes.

        Raises
        ------
        BadRequest
            The request is not ``multipart/related`` of ``application/dicom`` parts (415) or
            its body is malformed (400); nothing was stored.
        """
        boundary = _boundary(content_type)
        body.seek(0, 2)
        if body.tell() == 0:
            raise BadRequest(400, "empty request body: no instances")
        with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            parts = _parts(buffer, boundary)
            recorded = _Recorded(self.tracker)
            scp = StorageSCP(self.store, recorded, min_free_mb=self._min_free_mb)
            peer = _HttpPeer(_Party(CALLING_AE, *client), _Party(CALLED_AE, "", 0))
            results = [
                self._store_part(scp, recorded, peer, buffer[start:end], user)
                for start, end in parts
            ]
        return StowResponse(results)

    def _store_part(
        self, scp: StorageSCP, recorded: _Recorded, peer: _HttpPeer, content: bytes, user: str
    ) -> InstanceResult:
        try:  # The File Meta Information names the instance, as a C-STORE request does.
            meta = read_preamble_and_meta(content)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_uid = str(meta.MediaStorageSOPInstanceUID)
        except _UNREADABLE as exc:
            log.warning(
                "refusing STOW-RS part: not a DICOM file with its File Meta Information",
                extra={"user": user, "error": str(exc)},
            )
            return InstanceResult(None, None, Status.CANNOT_UNDERSTAND)
        status = scp.store_received(
            Received(None, content), sop_class, sop_uid, cast(Association, peer)
        )
        if status != Status.SUCCESS:
            return InstanceResult(sop_class, sop_uid, status)
        outcome, study_uid = recorded.outcomes[sop_uid]
        return InstanceResult(sop_class, sop_uid, status, outcome, study_uid)


# What pydicom raises for a file it cannot read, or without the two UIDs.
_UNREADABLE = (InvalidDicomError, ValueError, KeyError, EOFError, TypeError, AttributeError)


def read_preamble_and_meta(content: bytes) -> FileMetaDataset:
    """The File Meta Information of a Part 10 file (preamble, ``DICM``, group 0002)."""
    with BytesIO(content) as fp:
        if read_preamble(fp, force=False) is None:
            raise InvalidDicomError("no preamble")
        return _read_file_meta_info(fp)


def _boundary(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS request's ``Content-Type``; 415 for another type."""
    media, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for param in rest.split(";"):
        name, _, value = param.strip().partition("=")
        if name:
            params[name.strip().lower()] = value.strip().strip('"')
    if media.strip().lower() != "multipart/related":
        raise BadRequest(415, f'expected multipart/related; type="{DICOM}", not {media!r}')
    if params.get("type", DICOM).lower() != DICOM:
        raise BadRequest(415, f"only {DICOM} parts are taken, not type={params['type']!r}")
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 70:
        raise BadRequest(400, "multipart/related without a valid boundary")
    return boundary.encode("latin-1")


def _parts(buffer: mmap.mmap, boundary: bytes) -> list[tuple[int, int]]:
    """Where each part's content is in the body (RFC 2046 5.1); every part must be DICOM."""
    delimiter = b"--" + boundary
    position = buffer.find(delimiter)
    if position < 0 or (position > 0 and buffer[position - 2 : position] != b"\r\n"):
        raise BadRequest(400, "multipart body without its boundary")
    parts: list[tuple[int, int]] = []
    while True:
        position += len(delimiter)
        if buffer[position : position + 2] == b"--":
            break  # the close delimiter
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            raise BadRequest(400, "multipart body ends inside a boundary line")
        headers_end = buffer.find(b"\r\n\r\n", line_end, line_end + _MAX_PART_HEADERS)
        if buffer[line_end : line_end + 4] == b"\r\n\r\n":
            headers_end = line_end
        if headers_end < 0:
            raise BadRequest(400, "a part without the blank line that ends its headers")
        _check_part_type(bytes(buffer[line_end + 2 : headers_end]))
        start = headers_end + 4
        end = buffer.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise BadRequest(400, "multipart body is truncated: no closing boundary")
        parts.append((start, end))
        position = end + 2
    if not parts:
        raise BadRequest(400, "multipart body without parts: no instances")
    return parts


def _check_part_type(headers: bytes) -> None:
    for line in headers.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-type":
            media = value.split(";")[0].strip().lower()
            if media != DICOM:
                raise BadRequest(415, f"a part of type {media!r}: only {DICOM} parts are taken")
            return
    # No Content-Type: the request's type (application/dicom) applies (RFC 2387).
