"""C-STORE requests handled where their PDUs arrive: from bytes on the socket to a stored file.

pynetdicom passes every received PDU through its state machine, decodes it into objects, hands
the assembled DIMSE message from the network thread to the association thread, runs the
service class and the event machinery there, and hands the response back to the network thread
to be encoded and sent. For a 128 kB image that machinery took more time than receiving,
checking and durably storing the instance together.

:class:`StoreReceiver` takes the P-DATA-TF PDUs of plain C-STORE requests on the network
(DUL) thread, in an established association: the command set is parsed from its bytes
(:func:`~dicom_listener.dimse_fast.parse_store_request`), the data set's fragments are gathered
behind the File Meta Information pynetdicom would write (in memory up to ``IN_MEMORY_BYTES``,
beyond that in a file in the store's ``tmp/``), and once the last fragment is in, the listener's
store function decides and the C-STORE-RSP goes straight back on the socket. Everything else
(another command, a request pynetdicom must judge, any PDU while a handler is bound to
pynetdicom's PDU or DIMSE notifications) takes pynetdicom's own path, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicom_listener.dimse_fast import encode_file_meta, encode_store_rsp, parse_store_request
from dicom_listener.received import Received, StoreFunction
from neurogate.storage import tmp_name

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

# A Part 10 stream at most this large is gathered in memory, checked there and written once,
# straight to its place in the store; a larger one goes to a file in tmp/ as it arrives.
IN_MEMORY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FastStore:
    """What the fast path of a server's associations needs."""

    store: StoreFunction
    tmp_dir: Path  # where data sets too large for memory are written (the store's tmp/)
    fsync: bool = True  # flush each such file on its own descriptor before handing it over


P_DATA_TF = 0x04
_PDU_HEADER = 6
_PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
_COMMAND = 0x01
_LAST_FRAGMENT = 0x02
_PROCESSING_FAILURE = 0xC211  # what pynetdicom answers when a C-STORE handler raises
_PREAMBLE = b"\x00" * 128 + b"DICM"
# Notifications whose handlers expect pynetdicom's own objects: while any is bound, every PDU
# takes pynetdicom's path (the listener binds none unless pynetdicom's logs are turned up).
_NOTIFICATIONS = (
    evt.EVT_DATA_RECV,
    evt.EVT_PDU_RECV,
    evt.EVT_DIMSE_RECV,
    evt.EVT_DATA_SENT,
    evt.EVT_PDU_SENT,
    evt.EVT_DIMSE_SENT,
)


class ProtocolViolation(Exception):
    """The peer broke the DIMSE message framing; the association must be aborted."""


@dataclass(frozen=True, slots=True)
class _Fragment:
    context_id: int
    control: int
    data: memoryview  # the fragment, without its message control header


@dataclass(slots=True)
class _Incoming:
    """A C-STORE request whose data set is being received."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    content: bytearray | None  # None once too large for memory: then in the file
    path: Path | None = None
    fd: int | None = None
    error: OSError | None = None


def split_pdvs(pdu: bytes | bytearray) -> list[_Fragment] | None:
    """The presentation data values of a P-DATA-TF PDU; ``None`` when they are malformed."""
    view = memoryview(pdu)
    offset, end = _PDU_HEADER, len(pdu)
    fragments = []
    while offset < end:
        if end - offset < _PDV_HEADER:
            return None
        (length,) = struct.unpack_from(">I", pdu, offset)
        if length < 2 or length > end - offset - 4:
            return None
        fragments.append(
            _Fragment(pdu[offset + 4], pdu[offset + 5], view[offset + 6 : offset + 4 + length])
        )
        offset += 4 + length
    return fragments or None


class StoreReceiver:
    """The C-STORE fast path of one acceptor association; used from its DUL thread only.

    Parameters
    ----------
    assoc
        The association (established before any PDU is offered).
    fast
        The store function that decides on a received instance and returns the status to
        answer, and where data sets are written while they arrive (the store's ``tmp/``, on
        the same filesystem as the instances, so that storing one is a link).
    send
        Sends bytes to the peer (the association socket's ``send``).
    """

    def __init__(self, assoc: Association, fast: FastStore, send: Callable[[bytes], None]) -> None:
        self._assoc = assoc
        self._fast = fast
        self._send = send
        self._incoming: _Incoming | None = None

    def take(self, pdu: bytes | bytearray) -> bool:
        """Handle the P-DATA-TF ``pdu`` if it carries a C-STORE on the fast path.

        ``False``: nothing was done; pynetdicom handles the PDU.

        Raises
        ------
        ProtocolViolation
            When the PDU breaks the framing of the message being received (the partial
            instance is discarded).
        """
        if self._incoming is None and not self._may_start():
            return False
        fragments = split_pdvs(pdu)
        if fragments is None:
            if self._incoming is None:
                return False  # pynetdicom refuses it as it always has
            self.discard()
            raise ProtocolViolation("malformed P-DATA-TF PDU")
        started = self._incoming is None
        if started and self._start(fragments[0]) is None:
            return False
        for index, fragment in enumerate(fragments):
            if index == 0 and started:
                continue  # the command set that _start has just taken
            if self._incoming is None:
                # A message that begins within the PDU that ended the previous one: the
                # rest of the PDU is a P-DATA indication for pynetdicom, as its DT-2 makes one.
                self._hand_over(fragments[index:])
                return True
            self._receive(fragment)
        return True

    @property
    def receiving(self) -> bool:
        """Whether a data set is in progress (its next fragment is awaited)."""
        return self._incoming is not None

    def discard(self) -> None:
        """Drop a partly received data set (the association ended or broke)."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            if incoming.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(incoming.fd)
            if incoming.path is not None:
                incoming.path.unlink(missing_ok=True)
            log.warning(
                "association ended during a C-STORE; partial instance discarded",
                extra={"sop_instance_uid": incoming.sop_instance_uid},
            )

    # -- internals ----------------------------------------------------------------------------

    def _may_start(self) -> bool:
        assoc = self._assoc
        return (
            assoc.is_established
            and not assoc._sent_release
            and assoc.dimse.message is None
            and not any(assoc.get_handlers(event) for event in _NOTIFICATIONS)
        )

    def _start(self, fragment: _Fragment) -> _Incoming | None:
        """Begin a C-STORE from its command set fragment; ``None`` if it is not one for here."""
        if fragment.control & (_COMMAND | _LAST_FRAGMENT) != _COMMAND | _LAST_FRAGMENT:
            return None
        parameters = parse_store_request(bytes(fragment.data))
        if parameters is None:
            return None
        values = dict(parameters)
        sop_class = str(values["AffectedSOPClassUID"])
        context = self._assoc._accepted_cx.get(fragment.context_id)
        if (
            context is None
            or sop_class in self._assoc.acceptor.accepted_common_extended
            or not issubclass(uid_to_service_class(sop_class), StorageServiceClass)
        ):
            return None  # pynetdicom answers, or aborts, as it does for any such request
        sop_instance = str(values["AffectedSOPInstanceUID"])
        meta = encode_file_meta(sop_class, sop_instance, str(context.transfer_syntax[0]))
        incoming = _Incoming(
            fragment.context_id,
            int(values["MessageID"]),
            sop_class,
            sop_instance,
            content=bytearray(_PREAMBLE + meta),
        )
        self._incoming = incoming
        return incoming

    def _receive(self, fragment: _Fragment) -> None:
        incoming = self._incoming
        assert incoming is not None
        if fragment.control & _COMMAND or fragment.context_id != incoming.context_id:
            self.discard()
            raise ProtocolViolation(
                "a command, or another presentation context, before the data set was complete"
            )
        self._write(incoming, fragment.data)
        if fragment.control & _LAST_FRAGMENT:
            self._incoming = None
            self._complete(incoming)

    def _write(self, incoming: _Incoming, data: bytes | memoryview) -> None:
        if incoming.error is not None:
            return  # keep reading the peer's fragments; the answer is already decided
        content = incoming.content
        if content is not None:
            if len(content) + len(data) <= IN_MEMORY_BYTES:
                content += data
                return
            incoming.content = None  # too large for memory: to a file, and on in it
            self._write_to_file(incoming, content)
            if incoming.error is not None:
                return
        self._write_to_file(incoming, data)

    def _write_to_file(self, incoming: _Incoming, data: bytes | bytearray | memoryview) -> None:
        try:
            if incoming.fd is None:
                incoming.path = self._fast.tmp_dir / tmp_name()
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                incoming.fd = os.open(incoming.path, flags, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(incoming.fd, view) :]
        except OSError as exc:
            incoming.error = exc

    def _complete(self, incoming: _Incoming) -> None:
        if incoming.fd is not None:
            try:
                if self._fast.fsync and incoming.error is None:
                    os.fsync(incoming.fd)
            except OSError as exc:
                incoming.error = exc
            try:
                os.close(incoming.fd)
            except OSError as exc:
                incoming.error = incoming.error or exc
        ids = {"sop_instance_uid": incoming.sop_instance_uid}
        if incoming.error is not None:
            if incoming.path is not None:
                incoming.path.unlink(missing_ok=True)
            log.error(
                "could not write received instance", extra={**ids, "error": str(incoming.error)}
            )
            status = 0xA700  # out of resources: the sender keeps the instance and retries
        else:
            received = Received(incoming.path, incoming.content, synced=self._fast.fsync)
            try:
                status = self._fast.store(
                    received, incoming.sop_class_uid, incoming.sop_instance_uid, self._assoc
                )
            except Exception:  # as pynetdicom answers a handler that raises
                if incoming.path is not None:
                    incoming.path.unlink(missing_ok=True)
                log.exception("C-STORE handler failed", extra=ids)
                status = _PROCESSING_FAILURE
        self._respond(incoming, status)

    def _respond(self, incoming: _Incoming, status: int) -> None:
        encoded = encode_store_rsp(
            incoming.message_id, incoming.sop_class_uid, incoming.sop_instance_uid, status
        )
        peer_maximum = self._assoc.requestor.maximum_length or 0
        if peer_maximum and len(encoded) + _PDV_HEADER > peer_maximum:
            response = C_STORE()  # pynetdicom fragments it
            response.MessageIDBeingRespondedTo = incoming.message_id
            response.AffectedSOPClassUID = incoming.sop_class_uid
            response.AffectedSOPInstanceUID = incoming.sop_instance_uid
            response.Status = status
            self._assoc.dimse.send_msg(response, incoming.context_id)
            return
        pdv = struct.pack(">IBB", len(encoded) + 2, incoming.context_id, _COMMAND | _LAST_FRAGMENT)
        self._send(struct.pack(">BBI", P_DATA_TF, 0, len(pdv) + len(encoded)) + pdv + encoded)

    def _hand_over(self, fragments: list[_Fragment]) -> None:
        primitive = P_DATA()
        for fragment in fragments:
            primitive.presentation_data_value_list.append(
                (fragment.context_id, bytes([fragment.control]) + bytes(fragment.data))
            )
        self._assoc.dimse.receive_primitive(primitive)


__all__ = [
    "FastStore",
    "ProtocolViolation",
    "StoreReceiver",
    "split_pdvs",
]
