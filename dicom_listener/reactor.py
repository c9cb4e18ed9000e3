"""Event-driven associations for pynetdicom acceptors (a small, pinned and tested shim).

pynetdicom 3.0.4 runs two polling loops per association: the DUL thread sleeps 1 ms whenever
it finds nothing to do (``DULServiceProvider.run_reactor``) and the association thread sleeps
1 ms on every turn (``Association._run_reactor``). A C-STORE crosses the threads three times
(request in, response handed over, response out), so the sleeps alone cost an association
some 2 ms per instance, whatever the handler does.

This module keeps pynetdicom's loops statement for statement and replaces only the sleeps with
waits that end as soon as there is something to do:

- the DUL thread waits in ``select()`` on the peer's socket and on a wake-up socket pair that
  is written whenever a primitive or event is queued for it (``to_provider_queue``,
  ``event_queue``) or it is told to stop;
- the association thread waits on an event that is set whenever a DIMSE message or an ACSE
  primitive is queued for it (``dimse.msg_queue``, ``dul.to_user_queue``) or it is killed.

Both waits are bounded by :data:`MAX_IDLE_S`, so what pynetdicom checks by the clock (ARTIM
and network timeouts, a dead DUL thread) is still noticed promptly. Two more per-instance
costs go: a PDU is read with one ``recv`` rather than one per 4 kB, and a plain C-STORE-RSP
is encoded directly (byte for byte what pynetdicom's pydicom-based encoder writes).

The same copies guard the listener against peers that claim, withhold or flood (issue #19):
a PDU's claimed length is bounded before anything is allocated for it
(:func:`~dicom_listener.limits.accepted_pdu_size`,
``CONTROL_PDU_LIMIT``) and its buffer grows only with what arrives; each PDU must arrive whole
before a deadline (the ARTIM timer before the association, the network timeout after), and
no wait on a socket outlasts the association's timeouts (:func:`bound_waits`); a connection
that ends before its A-ASSOCIATE-RQ frees its thread, and its slot, at once; and the server
takes at most so many connections from one address (``max_connections_per_peer``).

:func:`start_server` goes through pynetdicom's extension point for servers
(:meth:`~pynetdicom.ae.ApplicationEntity.make_server` with a ``request_handler`` class).
The replaced methods are copies, so :func:`check_supported` refuses, at start-up, any
pynetdicom other than the release and the source (by SHA-256) they were copied from.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pynetdicom
from pydicom.filewriter import write_file_meta_info
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE, DimsePrimitiveType
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from dicom_listener.dimse_fast import FastDIMSEMessage, encode_store_rsp
from dicom_listener.fast_store import P_DATA_TF, FastStore, StoreReceiver
from dicom_listener.limits import PDU_CEILING

log = logging.getLogger(__name__)

# The pynetdicom release and the SHA-256 of each method whose loop is copied below.
SUPPORTED_PYNETDICOM = "3.0.4"
_UPSTREAM_DIGESTS = {
    "DULServiceProvider.run_reactor": (
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803"
    ),
    "DULServiceProvider._read_pdu_data": (
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
    ),
    "DULServiceProvider.kill_dul": (
        "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842"
    ),
    "DULServiceProvider.stop_dul": (
        "28a7e0be126e7b306369cc1b131daec8e907d21d0f5692930133b6599b8c6e5f"
    ),
    "Association._run_reactor": (
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
    ),
    "DIMSEServiceProvider.send_msg": (
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0"
    ),
    "RequestHandler._create_association": (
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e"
    ),
    # Copied or reproduced by dicom_listener.dimse_fast
    "DIMSEServiceProvider.receive_primitive": (
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f"
    ),
    "DIMSEMessage.__init__": "b9c44307ebf25f196c1a13ef9273539444cb5f20207322544ab5feb4f6afda84",
    "DIMSEMessage.decode_msg": "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
    "DIMSEMessage.message_to_primitive": (
        "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac"
    ),
    "dsutils.create_file_meta": (
        "035ed415f5aeea15543cca3b0b7b2b6d5a3189bc807a0211f5c633bb356ab9e3"
    ),
    "pydicom.filewriter.write_file_meta_info": (
        "0568f3155349513bbef9976e179831f8aa76591e0adaa36566a1a17947c667e5"
    ),
}
# A PDV's item length (4) and context ID (1), and the message control header (1)
_PDV_OVERHEAD = 6
# Longest wait between two looks at pynetdicom's clocks and flags.
MAX_IDLE_S = 0.05
# Other PDUs (A-ASSOCIATE, A-RELEASE, A-ABORT) are smaller than this: 128 presentation
# contexts with every transfer syntax pydicom knows make an A-ASSOCIATE-RQ of about 150 kB.
CONTROL_PDU_LIMIT = 1 << 20
# A PDU's buffer starts at most this large and grows with what arrives
READ_STEP = 1 << 20
# How long a PDU may take when the association has neither a network nor an ACSE timeout
DEFAULT_PDU_TIMEOUT_S = 60.0
# Events made from a primitive on the DUL's to_provider_queue (PS3.8 table 9-9)
_LOCAL_PRIMITIVE_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
# A-ABORT reasons from the service provider (PS3.8 table 9-26)
_REASON_NOT_SPECIFIED = 0x00
_INVALID_PDU_PARAMETER_VALUE = 0x06


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not the one the reactors were copied from."""


def bound_waits(sock: socket.socket, seconds: float) -> None:
    """Make every receive and send on ``sock`` wait at most ``seconds``.

    A plain socket stays a blocking one (no ``poll`` before each call, as Python makes for a
    socket with a timeout): the kernel ends the wait (``SO_RCVTIMEO``, ``SO_SNDTIMEO``) and
    the call raises ``BlockingIOError``. A TLS socket gets Python's timeout (the kernel's
    would only make OpenSSL ask again).
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _wait_bound(ae: ApplicationEntity) -> float:
    """The longest single wait on an association's socket: the shorter of its timeouts."""
    timeouts = [t for t in (ae.acse_timeout, ae.network_timeout) if t is not None]
    return float(min(timeouts)) if timeouts else DEFAULT_PDU_TIMEOUT_S


def _upstream() -> dict[str, Callable[..., Any]]:
    return {
        "DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
        "DULServiceProvider._read_pdu_data": DULServiceProvider._read_pdu_data,
        "DULServiceProvider.kill_dul": DULServiceProvider.kill_dul,
        "DULServiceProvider.stop_dul": DULServiceProvider.stop_dul,
        "Association._run_reactor": Association._run_reactor,
        "DIMSEServiceProvider.send_msg": DIMSEServiceProvider.send_msg,
        "RequestHandler._create_association": RequestHandler._create_association,
        "DIMSEServiceProvider.receive_primitive": DIMSEServiceProvider.receive_primitive,
        "DIMSEMessage.__init__": DIMSEMessage.__init__,
        "DIMSEMessage.decode_msg": DIMSEMessage.decode_msg,
        "DIMSEMessage.message_to_primitive": DIMSEMessage.message_to_primitive,
        "dsutils.create_file_meta": create_file_meta,
        "pydicom.filewriter.write_file_meta_info": write_file_meta_info,
    }


def upstream_digests() -> dict[str, str]:
    """SHA-256 of the source of each pynetdicom method this module replaces."""
    return {
        name: hashlib.sha256(inspect.getsource(method).encode()).hexdigest()
        for name, method in _upstream().items()
    }


def check_supported() -> None:
    """Raise :class:`UnsupportedPynetdicom` unless pynetdicom is the release copied here."""
    if pynetdicom.__version__ != SUPPORTED_PYNETDICOM:
        raise UnsupportedPynetdicom(
            f"dicom_listener.reactor was written against pynetdicom {SUPPORTED_PYNETDICOM}, "
            f"found {pynetdicom.__version__}: compare the methods named in _UPSTREAM_DIGESTS "
            "with the new release's and update the copies and their digests"
        )
    changed = [
        name for name, digest in upstream_digests().items() if _UPSTREAM_DIGESTS[name] != digest
    ]
    if changed:
        raise UnsupportedPynetdicom(
            f"pynetdicom {pynetdicom.__version__} differs from the copies in "
            f"dicom_listener.reactor: {', '.join(changed)}"
        )


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after each ``put``."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class _WakeUp:
    """A socket pair that lets another thread interrupt a ``select()``."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        # A full buffer means a wake-up is pending already; a closed one, that the
        # association is over.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def clear(self) -> None:
        # Drain the pending wake-ups: the non-blocking read ends with BlockingIOError once empty
        # (or OSError once the association's socket pair is closed).
        with contextlib.suppress(OSError):
            while self._reader.recv(4096):
                continue

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class _WholeReadSocket(AssociationSocket):
    """pynetdicom's socket, reading each PDU with as few ``recv`` calls as the kernel allows.

    pynetdicom reads 4 kB per call: some 30 calls (and as many releases and re-acquisitions of
    the GIL, each of which can wait for another busy thread) per 128 kB image.
    """

    # Set by the reactor when the select it has just waited in found the socket readable:
    # ``ready`` then answers without a select of its own.
    readable_hint = False
    # When the PDU being read must be in (time.monotonic()); None: no deadline. Set by the DUL
    # before each PDU; each wait inside a read is bounded by the socket's own timeout
    # (:func:`bound_waits`), after which this deadline is looked at.
    pdu_deadline: float | None = None

    @property
    def ready(self) -> bool:
        hinted, self.readable_hint = self.readable_hint, False
        if hinted and self.socket is not None and self._is_connected:
            return True
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` from the socket; fewer only if the peer closed the connection.

        The buffer grows with what arrives (by at most ``READ_STEP``, then doubling), so a
        length claimed by a peer costs memory only once its bytes are here.

        Raises
        ------
        TimeoutError
            When ``pdu_deadline`` passes before the bytes are in.
        """
        sock = cast(socket.socket, self.socket)
        # MSG_WAITALL: the kernel fills the whole buffer before returning (blocking sockets)
        flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
        buffer = bytearray(min(nr_bytes, READ_STEP))
        nr_read = 0
        while nr_read < nr_bytes:
            if nr_read == len(buffer):
                buffer.extend(bytes(min(len(buffer), nr_bytes - len(buffer))))
            with memoryview(buffer) as whole, whole[nr_read:] as view:
                try:
                    received = sock.recv_into(view, len(view), flags)
                except (BlockingIOError, TimeoutError):  # a wait bounded by bound_waits
                    received = -1
            if not received:
                break  # connection broken: return what we have, as pynetdicom does
            if received > 0:
                nr_read += received
            if nr_read < nr_bytes and self._past_deadline():
                raise TimeoutError(f"{nr_read} of {nr_bytes} bytes arrived in time")
        del buffer[nr_read:]
        return buffer

    def _past_deadline(self) -> bool:
        deadline = self.pdu_deadline
        return deadline is not None and time.monotonic() >= deadline

    def recv_waiting(self, nr_bytes: int) -> bytearray | None:
        """As :meth:`recv` if bytes wait on the socket; ``None``, having read nothing, if none do.

        One ``recv`` that may find nothing, where asking ``select`` first costs a second system
        call whenever something is there. A TLS socket, or one with a timeout, is asked with
        ``select`` (there a flag-less, waiting ``recv`` is all there is).
        """
        if self.socket is None or not self._is_connected:
            return None
        sock = cast(socket.socket, self.socket)
        if isinstance(sock, ssl.SSLSocket) or sock.gettimeout() is not None:
            # A socket with a timeout waits for data before any recv, whatever its flags
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return self.recv(nr_bytes)
            try:
                ready, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):  # closed under us: the reactor loop notices
                return None
            return self.recv(nr_bytes) if ready else None
        buffer = bytearray(min(nr_bytes, READ_STEP))
        try:
            received = sock.recv_into(buffer, len(buffer), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        if received == len(buffer) < nr_bytes:  # a PDU larger than READ_STEP: read the rest
            buffer += self.recv(nr_bytes - received)
            return buffer
        if 0 < received < nr_bytes:  # the rest is on its way: wait for it as recv does
            buffer[received:] = self.recv(nr_bytes - received)
        else:
            del buffer[received:]  # 0: the peer closed the connection
        return buffer


def encode_store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP, as pynetdicom would encode it.

    ``None`` for a response this does not cover (one with an error comment or offending
    element, without its UIDs, or with a UID that is not ASCII, as a request may carry):
    pynetdicom's own, general encoder handles those.
    """
    if (
        primitive.MessageIDBeingRespondedTo is None
        or primitive.Status is None
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or not primitive.AffectedSOPClassUID
        or not primitive.AffectedSOPInstanceUID
        or not primitive.AffectedSOPClassUID.isascii()
        or not primitive.AffectedSOPInstanceUID.isascii()
    ):
        return None
    return encode_store_rsp(
        primitive.MessageIDBeingRespondedTo,
        primitive.AffectedSOPClassUID,
        primitive.AffectedSOPInstanceUID,
        primitive.Status,
    )


class _StoreResponseDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, encoding plain C-STORE responses without pydicom.

    Requests are decoded by :class:`~dicom_listener.dimse_fast.FastDIMSEMessage`: pynetdicom's
    ``receive_primitive`` creates a message only when none is in progress.

    pynetdicom builds every response as a pydicom dataset and encodes it twice (once to measure
    the group length): a third of a millisecond per instance, as long as the rest of the
    listener's own work on it. Anything else, or any response while a handler is bound to
    ``EVT_DIMSE_SENT`` (which expects pynetdicom's message object), takes pynetdicom's path.
    """

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = FastDIMSEMessage()
        try:
            super().receive_primitive(primitive)
        except Exception as exc:  # noqa: BLE001 - whatever a command set that pydicom
            # decodes but pynetdicom cannot read raises (no Command Field, an unknown one):
            # pynetdicom let it end the DUL thread; this aborts the association, as pynetdicom
            # does for a message it cannot convert (Evt19: A-ABORT, then closed)
            requestor = self.assoc.requestor
            log.error(
                f"undecodable DIMSE message ({exc!r}); association aborted",
                extra={"peer": f"{requestor.address}:{requestor.port}"},
            )
            self.message = None
            self.dul.event_queue.put("Evt19")

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = encode_store_response(primitive)
        max_pdu = self.maximum_pdu_size
        if encoded is None or (max_pdu and len(encoded) + _PDV_OVERHEAD > max_pdu):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        # Message control header 0x03: command information, last fragment
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider, waiting on its socket instead of sleeping 1 ms per turn."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        # Set by the request handler when the server has a C-STORE fast path
        self.store_receiver: StoreReceiver | None = None
        self._requested = False  # an A-ASSOCIATE-RQ came (Sta3 was reached)
        self._woken = False  # the association thread was told that none will
        self._wake_up = _WakeUp()
        self.to_provider_queue = _SignallingQueue(self._wake_up.set)
        self.event_queue = _SignallingQueue(self._wake_up.set)

    def _wait_for_work(self) -> None:
        """Return when the peer sent data, a primitive was queued, or after ``MAX_IDLE_S``."""
        watched: list[Any] = [self._wake_up]
        raw = self._connected_socket()
        if raw is not None:
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes already buffered: select() would not see them
            watched.append(raw)
        try:
            readable, _, _ = select.select(watched, [], [], MAX_IDLE_S)
        except (OSError, ValueError):
            time.sleep(self._run_loop_delay)  # socket closed under us: the loop notices
            self._wake_up.clear()
            return
        # Each system call lets another association's thread take the interpreter lock, and
        # four busy associations made over a hundred lock hand-offs per image: none is made
        # for what select has just answered.
        if self._wake_up in readable:
            self._wake_up.clear()
        if raw is not None and raw in readable and isinstance(self.socket, _WholeReadSocket):
            self.socket.readable_hint = True

    def kill_dul(self) -> None:
        """Kill the DUL reactor and stop the thread"""
        self._kill_thread = True
        self._wake_up.set()

    def stop_dul(self) -> bool:
        """Stop the reactor if current state is ``'Sta1'``"""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake_up.set()
            while self.is_alive():
                time.sleep(self._run_loop_delay)
            return True
        return False

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``; the sleep became a wait."""
        try:
            self._run_reactor_loop()
        finally:
            self._wake_up.close()
            if self.store_receiver is not None:
                self.store_receiver.discard()

    def _read_pdu_data(self) -> None:
        """Read a PDU; while it leaves a C-STORE data set in progress on the fast path and the
        next PDU is already waiting on the socket, read that one too.

        A data set follows its command set without waiting for anything from this side, so
        its PDUs are taken here rather than one per turn of the reactor loop, each turn costing
        two ``select`` calls, a wake-up drain and the queue and timer checks. Whether the next
        one is there is asked by reading it (:meth:`_WholeReadSocket.recv_waiting`), not by a
        ``select`` before the read: every system call is a chance for another association's
        thread to take the interpreter lock, and for this one to wait to get it back.
        """
        in_progress = self._read_one_pdu()
        while in_progress and not self._kill_thread:
            in_progress = self._read_one_pdu(only_waiting=True)

    def _pdu_timeout(self) -> float:
        """How long the next PDU may take to arrive, once it has begun to.

        Before an association is established, what is left of the ARTIM timer (PS3.8 9.1.5:
        the A-ASSOCIATE-RQ must be in before it expires); after, the network timeout.
        """
        artim = self.artim_timer
        if artim.timeout is not None and artim._start_time is not None and artim._end_time is None:
            return max(artim.remaining, 0.0)
        assoc = self.assoc
        for timeout in (assoc.network_timeout, assoc.acse_timeout):
            if timeout is not None:
                return float(timeout)
        return DEFAULT_PDU_TIMEOUT_S

    def _pdu_limit(self, pdu_type: int) -> int:
        """The most bytes a PDU of ``pdu_type`` may claim: what the listener advertised for
        P-DATA-TF (never more than ``PDU_CEILING``), ``CONTROL_PDU_LIMIT`` for the others."""
        if pdu_type != P_DATA_TF:
            return CONTROL_PDU_LIMIT
        advertised = self.assoc.acceptor.maximum_length or PDU_CEILING
        return min(advertised, PDU_CEILING)

    def _abort_refused(self, reason: str) -> None:
        """Abort for a PDU that cannot be read (its stream cannot be followed any further)."""
        log.error(f"{reason}; association aborted", extra=self._peer())
        self._abort_and_close(_INVALID_PDU_PARAMETER_VALUE)

    def _abort_stalled(self, exc: TimeoutError) -> None:
        log.error(f"PDU not received in time ({exc}); association aborted", extra=self._peer())
        self._abort_and_close(_REASON_NOT_SPECIFIED)

    def _abort_and_close(self, reason: int) -> None:
        """Send an A-ABORT (best effort, bounded by the socket's send timeout) and treat the
        connection as closed (Evt17): the association ends and its thread closes the socket."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02  # the service provider
        abort_pdu.reason_diagnostic = reason
        raw = self._connected_socket()
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.send(abort_pdu.encode())
        self.event_queue.put("Evt17")

    def _peer(self) -> dict[str, object]:
        requestor = self.assoc.requestor
        return {"peer": f"{requestor.address}:{requestor.port}"}

    def _connected_socket(self) -> socket.socket | None:
        assoc_socket = self.socket
        if assoc_socket is None or not assoc_socket._is_connected:
            return None
        return assoc_socket.socket

    def _recv_waiting(self, nr_bytes: int) -> bytearray | None:
        """``nr_bytes`` from the socket if they have begun to arrive; ``None`` if not, or if the
        socket cannot tell without waiting (then the reactor loop waits for them)."""
        sock = self.socket
        return sock.recv_waiting(nr_bytes) if isinstance(sock, _WholeReadSocket) else None

    def _read_one_pdu(self, *, only_waiting: bool = False) -> bool:
        """pynetdicom 3.0.4's ``DULServiceProvider._read_pdu_data``; C-STORE PDUs short-cut.

        Changed from pynetdicom: once a PDU is read whole, a P-DATA-TF PDU in an established
        association is offered to the C-STORE fast path (:mod:`dicom_listener.fast_store`);
        any other PDU ends a data set in progress there. What the fast path declines is
        decoded and put on the state machine's queue exactly as before. Returns whether the
        fast path took the PDU and a data set is still in progress there. ``only_waiting``:
        read a PDU only if its first bytes are on the socket already (else return ``False``).

        Also changed: a PDU must arrive whole before a deadline (:meth:`_pdu_timeout`), and
        one claiming more than the listener accepts (:meth:`_pdu_limit`) is not read; either
        aborts the association (A-ABORT, then the connection is closed).
        """
        bytestream = bytearray()
        self.socket = cast("AssociationSocket", self.socket)
        log = pynetdicom.dul.LOGGER
        if isinstance(self.socket, _WholeReadSocket):
            self.socket.pdu_deadline = time.monotonic() + self._pdu_timeout()

        # Try and read the PDU type and length from the socket
        try:
            if only_waiting:
                # Changed from pynetdicom: a PDU that has not begun to arrive is not waited for
                header = self._recv_waiting(6)
                if header is None:
                    return False
                bytestream.extend(header)
            else:
                bytestream.extend(self.socket.recv(6))
        except TimeoutError as exc:
            self._abort_stalled(exc)
            return False
        except OSError as exc:
            # READ_PDU_EXC_A
            log.error("Connection closed before the entire PDU was received")
            log.exception(exc)
            # Evt17: Transport connection closed
            self.event_queue.put("Evt17")
            return False

        try:
            # Byte 1 is always the PDU type
            # Byte 2 is always reserved
            # Bytes 3-6 are always the PDU length
            pdu_type, _, pdu_length = struct.unpack(">BBL", bytestream)
        except struct.error:
            # READ_PDU_EXC_B
            # Evt17: Transport connection closed
            self.event_queue.put("Evt17")
            return False

        # If the `pdu_type` is unrecognised
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            # READ_PDU_EXC_C
            log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            # Evt19: Unrecognised or invalid PDU received
            self.event_queue.put("Evt19")
            return False

        # Changed from pynetdicom: a length is bounded before anything is allocated for it
        limit = self._pdu_limit(pdu_type)
        if pdu_length > limit:
            self._abort_refused(
                f"PDU of type 0x{pdu_type:02X} claims {pdu_length} bytes, more than the "
                f"{limit} accepted"
            )
            return False

        # Try and read the rest of the PDU
        try:
            bytestream += self.socket.recv(pdu_length)
        except TimeoutError as exc:
            self._abort_stalled(exc)
            return False
        except OSError as exc:
            # READ_PDU_EXC_D
            log.error("Connection closed before the entire PDU was received")
            log.exception(exc)
            # Evt17: Transport connection closed
            self.event_queue.put("Evt17")
            return False

        # Check that the PDU data was completely read
        if len(bytestream) != 6 + pdu_length:
            # READ_PDU_EXC_E
            # Evt17: Transport connection closed
            log.error(
                f"The received PDU is shorter than expected ({len(bytestream)} of "
                f"{6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return False

        # Changed from pynetdicom: the C-STORE fast path. A ProtocolViolation it raises ends
        # in the reactor loop's handler, which aborts the association.
        receiver = self.store_receiver
        if receiver is not None:
            if pdu_type == P_DATA_TF and self.state_machine.current_state == "Sta6":
                if receiver.take(bytestream):
                    return receiver.receiving
            else:
                receiver.discard()

        try:
            # Decode the PDU data, get corresponding FSM event
            pdu, event = self._decode_pdu(bytestream)
            self.event_queue.put(event)
        except Exception as exc:  # noqa: BLE001 - pynetdicom's own handling, one line
            # READ_PDU_EXC_F; changed from pynetdicom: one line, not a traceback
            log.error(f"Unable to decode the received PDU data: {exc!r}")
            # Evt19: Unrecognised or invalid PDU received
            self.event_queue.put("Evt19")
            return False

        self._recv_pdu.put(pdu)
        return False

    def _run_reactor_loop(self) -> None:
        # Main DUL loop
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                # Changed from pynetdicom: wait for work rather than sleep 1 ms
                self._wait_for_work()

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            # Check the connection for incoming data
            try:
                # We can either encode and send a primitive **OR**
                #   receive and decode a PDU per loop of the reactor
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - pynetdicom's own handling, unchanged
                pynetdicom.dul.LOGGER.error("Exception in DUL.run(), aborting association")
                pynetdicom.dul.LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            # If the queue is empty, return to the start of the loop
            except queue.Empty:
                sleep = True
                continue

            try:
                self.state_machine.do_action(event)
            except InvalidEventError:
                # Changed from pynetdicom: an event the state has no transition for (a local
                # A-ASSOCIATE response racing an abort the peer provoked, Sta13 + Evt7) is
                # dropped, where it ended the DUL thread with a traceback (fsm logged it).
                # A local primitive's event leaves the primitive queued (the transition's
                # action takes it): it goes too, or it would be offered again at every turn.
                if event in _LOCAL_PRIMITIVE_EVENTS:
                    with contextlib.suppress(queue.Empty):
                        self.to_provider_queue.get(block=False)
                continue
            sleep = False
            # Changed from pynetdicom: a connection that ends before its A-ASSOCIATE-RQ
            # (closed, ARTIM expired, a PDU refused) wakes the association thread, which
            # otherwise waits the whole ACSE timeout for it, holding one of the slots.
            state = self.state_machine.current_state
            if state == "Sta3":
                self._requested = True
            elif state == "Sta1" and not self._requested and not self._woken:
                self._woken = True
                cast(Any, self.to_user_queue).put(None)  # read as "no A-ASSOCIATE-RQ came"


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits for work instead of sleeping 1 ms per turn."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        super().__init__(ae, mode)
        self._activity = threading.Event()
        self.dul = EventDrivenDUL(self)
        self.network_timeout = ae.network_timeout  # the setter arms the new DUL's idle timer
        self.acse_timeout = ae.acse_timeout  # and this one its ARTIM timer (else 30 s)
        self.dul.to_user_queue = _SignallingQueue(self._activity.set)
        self.dimse = _StoreResponseDIMSE(self)
        self.dimse.msg_queue = _SignallingQueue(self._activity.set)

    # Called once the association's thread ends (the server's count of its peer's connections)
    on_end: Callable[[], None] | None = None

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            if self.on_end is not None:
                self.on_end()

    def kill(self) -> None:
        self._activity.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor``; the sleep became a wait."""
        log = pynetdicom.association.LOGGER
        self._is_paused = False
        while not self._kill:
            # Changed from pynetdicom: wait for work rather than sleep 1 ms. Clearing after
            # the wait and before looking at the queues loses no wake-up.
            self._activity.wait(MAX_IDLE_S)
            self._activity.clear()

            # The reactor may be paused (send_*() from the acceptor, release)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            # Check with the DIMSE provider to see if a completely decoded
            #   message is available
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                # Send A-RELEASE response
                self.acse.send_release(is_response=True)
                log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                log.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            #   DUL.is_alive() is inherited from threading.thread
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """Creates :class:`EventDrivenAssociation` acceptors; otherwise pynetdicom's handler."""

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4's RequestHandler._create_association with our Association class
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        # Changed from pynetdicom: no wait on the socket outlasts the association's timeouts
        bound_waits(self.request, _wait_bound(self.ae))
        sock = _WholeReadSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)
        # Changed from pynetdicom: where data sets are received into files (dimse_fast), and
        # the C-STORE fast path, where the server has them
        assoc.receive_dir = getattr(self.server, "receive_dir", None)  # type: ignore[attr-defined]
        fast_store: FastStore | None = getattr(self.server, "fast_store", None)
        if fast_store is not None:
            cast(EventDrivenDUL, assoc.dul).store_receiver = StoreReceiver(
                assoc, fast_store, sock.send
            )

        # Association Acceptor object -> local AE
        server = cast(AssociationServer, self.server)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # Changed from pynetdicom: a copy of each context, not a deep copy of them all.
        # Negotiation only reads the acceptor's contexts (a new PresentationContext holds each
        # result); deep-copying the storage classes with their transfer syntaxes took 50 ms
        # of CPU per association, a quarter of a millisecond per instance for a scanner that
        # opens one association per series.
        assoc.acceptor.supported_contexts = [copy.copy(cx) for cx in server.contexts]

        # Association Requestor object -> remote AE
        assoc.requestor.address_info = self.remote
        if isinstance(self.server, _Server):  # Changed from pynetdicom: the per-peer count
            self.server.hand_to(assoc, str(self.client_address[0]))

        # Bind events to handlers
        for event in server._handlers:
            if event.is_intervention and server._handlers[event]:
                assoc.bind(event, *server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, guarded against peers that hold connections open.

    At most ``max_per_peer`` connections from one address at a time (0: any number): one more
    is closed as it is accepted, before a thread is started for it. The TLS handshake is made
    on the connection's own thread, within the association's timeouts (pynetdicom makes it on
    the thread that accepts, where one peer that never completes it stops all the others).
    """

    max_per_peer = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: dict[str, int] = {}  # connections by address, until their association ends
        self._open_lock = threading.Lock()
        self._handing = threading.local()  # on a connection's thread: its association took over
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        return cast(socket.socket, self.socket).accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self._open_lock:
            open_now = self._open.get(host, 0)
            refused = bool(self.max_per_peer) and open_now >= self.max_per_peer
            if not refused:
                self._open[host] = open_now + 1
        if refused:
            log.warning(
                "connection refused: too many from this peer",
                extra={"peer": f"{host}:{client_address[1]}", "open": open_now},
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.closed(host)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._handing.taken = False
        try:
            if self.ssl_context is not None and not isinstance(request, ssl.SSLSocket):
                request.settimeout(_wait_bound(self.ae))
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    pynetdicom.transport.LOGGER.error(f"TLS handshake failed: {exc}")
                    request.close()
                    return
            super().process_request_thread(request, client_address)
        finally:
            if not self._handing.taken:
                self.closed(str(client_address[0]))

    def hand_to(self, assoc: EventDrivenAssociation, host: str) -> None:
        """Called on the connection's thread: ``assoc`` ends the connection's count."""
        self._handing.taken = True
        assoc.on_end = functools.partial(self.closed, host)

    def closed(self, host: str) -> None:
        """A connection from ``host`` has ended."""
        with self._open_lock:
            left = self._open.get(host, 1) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)


def start_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    *,
    fast_store: FastStore | None = None,
    receive_dir: Path | None = None,
    max_connections_per_peer: int = 0,
    **kwargs: Any,
) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, **kwargs)`` with event-driven associations.

    ``fast_store``: what the C-STORE fast path needs
    (:class:`~dicom_listener.fast_store.StoreReceiver`); without it every C-STORE goes through
    pynetdicom's service class and the ``EVT_C_STORE`` handler. ``receive_dir``: where the
    data sets of C-STOREs pynetdicom receives are written as they arrive (``event.dataset_path``);
    ``None``: pynetdicom's default (in memory). ``max_connections_per_peer``: connections one
    address may have open at once (0: any number).
    """
    check_supported()
    server = ae.make_server(
        address,
        server_class=_Server,
        request_handler=EventDrivenRequestHandler,
        **kwargs,
    )
    cast(_Server, server).max_per_peer = max_connections_per_peer
    server.fast_store = fast_store  # type: ignore[attr-defined]
    server.receive_dir = receive_dir  # type: ignore[attr-defined]
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(
        target=make_target(server.serve_forever),
        name=f"AcceptorServer@{timestamp}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)
    return cast(ThreadedAssociationServer, server)


__all__ = ["MAX_IDLE_S", "UnsupportedPynetdicom", "check_supported", "start_server"]
