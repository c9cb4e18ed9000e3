"""The event-driven association shim: pinned to its pynetdicom, and behaving like pynetdicom."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_listener import reactor
from tests.harness import requires_fast_engine, wait_for

pytestmark = requires_fast_engine

VERIFICATION = "1.2.840.10008.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_the_installed_pynetdicom_is_the_one_the_copies_were_made_from() -> None:
    reactor.check_supported()


def test_another_pynetdicom_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    with pytest.raises(reactor.UnsupportedPynetdicom, match=r"3\.0\.5"):
        reactor.start_server(AE(), ("127.0.0.1", 0))


def test_a_changed_upstream_method_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = {**reactor._UPSTREAM_DIGESTS, "Association._run_reactor": "0" * 64}
    monkeypatch.setattr(reactor, "_UPSTREAM_DIGESTS", digests)
    with pytest.raises(reactor.UnsupportedPynetdicom, match=r"Association\._run_reactor"):
        reactor.check_supported()


def _store_response(status: int, sop_class: str, sop_instance: str) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC000, 0xB000])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1." + "2" * 62])
def test_store_responses_are_encoded_as_pynetdicom_encodes_them(
    status: int, sop_instance: str
) -> None:
    rsp = _store_response(status, MR_IMAGE_STORAGE, sop_instance)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert reactor.encode_store_response(rsp) == encode(message.command_set, True, True)


def test_responses_with_an_error_comment_are_left_to_pynetdicom() -> None:
    rsp = _store_response(0xC000, MR_IMAGE_STORAGE, "1.2.3")
    rsp.ErrorComment = "cannot understand"
    assert reactor.encode_store_response(rsp) is None


@pytest.fixture
def server() -> Iterator[ThreadedAssociationServer]:
    ae = AE("SHIM")
    ae.network_timeout = 1.0
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(MR_IMAGE_STORAGE)

    def on_store(event: Event) -> int:
        return 0x0000

    running = reactor.start_server(
        ae,
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)],
    )
    yield running
    running.shutdown()


def _associate(server: ThreadedAssociationServer) -> pynetdicom.association.Association:
    scu = AE("SCU")
    scu.add_requested_context(VERIFICATION)
    scu.add_requested_context(MR_IMAGE_STORAGE)
    assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SHIM")
    assert assoc.is_established
    return assoc


def _mr(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = uid
    ds.PatientID = "SHIM"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def test_many_requests_are_answered_on_one_association_and_release_is_prompt(
    server: ThreadedAssociationServer,
) -> None:
    assoc = _associate(server)
    for index in range(50):
        status = assoc.send_c_store(_mr(f"1.2.826.0.1.3680043.10.511.{index + 1}"))
        assert status.Status == 0x0000
    assert assoc.send_c_echo().Status == 0x0000
    started = time.monotonic()
    assoc.release()
    assert assoc.is_released
    wait_for(lambda: not server.active_associations, timeout=2.0)
    assert time.monotonic() - started < 1.0


def test_an_abort_from_the_peer_ends_the_association(server: ThreadedAssociationServer) -> None:
    assoc = _associate(server)
    assoc.abort()
    wait_for(lambda: not server.active_associations, timeout=2.0)


def test_an_idle_peer_is_dropped_after_the_network_timeout(
    server: ThreadedAssociationServer,
) -> None:
    assoc = _associate(server)
    started = time.monotonic()
    wait_for(lambda: assoc.is_aborted, timeout=5.0)
    assert 0.9 < time.monotonic() - started < 3.0
    wait_for(lambda: not server.active_associations, timeout=2.0)


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "with a timeout"])
def test_reading_the_next_pdu_only_if_it_has_begun_to_arrive_never_waits_for_one(
    timeout: float | None,
) -> None:
    ours, peer = socket.socketpair()
    ours.settimeout(timeout)  # with one, Python polls before every recv, whatever its flags
    wrapped = object.__new__(reactor._WholeReadSocket)  # the socket alone, no association
    wrapped.socket, wrapped._is_connected = ours, True
    try:
        nothing_yet = wrapped.recv_waiting(6)
        peer.sendall(b"\x04\x00\x00\x00")  # part of a PDU header: the rest is on its way
        threading.Timer(0.05, peer.sendall, (b"\x00\x02",)).start()
        wait_for(lambda: select.select([ours], [], [], 0)[0] != [], timeout=10)
        header = wrapped.recv_waiting(6)
        peer.close()
        closed = wrapped.recv_waiting(6)
    finally:
        ours.close()

    assert nothing_yet is None  # not a wait of `timeout`, not a TimeoutError
    assert header == b"\x04\x00\x00\x00\x00\x02"  # begun, so read whole
    assert closed == b""  # the peer's end: an empty read, as recv gives
