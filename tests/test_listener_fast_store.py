"""The C-STORE fast path on PDUs framed as a sender may frame them, well and badly.

A pynetdicom requestor negotiates the association; its PDUs are then written on its socket
by hand, so that fragments can be split, mixed and cut where storescu never would, and the
listener's answers are read back through the requestor's own DIMSE provider.
"""

from __future__ import annotations

import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import MRImageStorage, Verification

from dicom_listener import fast_store
from dicom_listener.fast_store import IN_MEMORY_BYTES, split_pdvs
from dicom_listener.service import ListenerService
from dicom_listener.status import Status
from neurogate.settings import Settings
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import echo, requires_fast_engine, running_listener, storescu, wait_for

pytestmark = requires_fast_engine

COMMAND_LAST = 0x03
DATA = 0x00
DATA_LAST = 0x02


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(tmp_path / "node", sqlite_url, engine="fast")


@pytest.fixture
def listener(settings: Settings) -> Iterator[ListenerService]:
    with running_listener(settings) as service:
        yield service


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return write_mr_study(tmp_path / "scanner", series=1, slices=1, size=64).files[0]


def pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (presentation context ID, message control header, fragment) items."""
    items = b"".join(
        struct.pack(">IBB", len(data) + 2, context, control) + data
        for context, control, data in pdvs
    )
    return struct.pack(">BBI", 0x04, 0, len(items)) + items


def store_request(path: Path, message_id: int) -> tuple[bytes, bytes]:
    """The encoded command set of a C-STORE-RQ for ``path``, and its data set as stored."""
    ds = dcmread(path)
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = BytesIO(dataset_bytes(path))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    (command,) = [
        data[1:]
        for p in message.encode_msg(1, 0)
        for _, data in p.presentation_data_value_list
        if data[0] & 1
    ]
    return command, dataset_bytes(path)


def echo_request(message_id: int) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(1, 0)
    return bytes(pdata.presentation_data_value_list[0][1][1:])


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little") :]


@contextmanager
def raw_association(port: int) -> Iterator[tuple[Association, int, int]]:
    """An association with MR storage and verification; its reactor paused for raw PDUs."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
    assert assoc.is_established
    contexts = {str(cx.abstract_syntax): cx.context_id for cx in assoc.accepted_contexts}
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        yield assoc, contexts[MRImageStorage], contexts[Verification]
    finally:
        assoc._reactor_checkpoint.set()
        if _connection_closed(assoc):
            # No A-RELEASE can be answered on a connection the test closed: release() would
            # wait out the ACSE timeout (30 s) whenever it ran before the requestor noticed.
            assoc.kill()
        elif assoc.is_established:
            assoc.release()


def _connection_closed(assoc: Association) -> bool:
    sock = assoc.dul.socket
    return sock is None or sock.socket is None or sock.socket.fileno() == -1


def send(assoc: Association, data: bytes) -> None:
    assert assoc.dul.socket is not None
    assoc.dul.socket.send(data)


def response(assoc: Association) -> tuple[int, int]:
    """(Message ID Being Responded To, Status) of the next DIMSE response."""
    _, primitive = assoc.dimse.get_msg(block=True)
    assert primitive is not None, "no response"
    return int(primitive.MessageIDBeingRespondedTo), int(primitive.Status)


def stored(settings: Settings) -> list[Path]:
    return sorted(settings.storage_root.joinpath("studies").rglob("*.dcm"))


def partial_files(settings: Settings) -> list[Path]:
    return list(settings.storage_root.joinpath("tmp").iterdir())


def test_fragments_split_across_pdus_and_mixed_with_the_next_message(
    settings: Settings, listener: ListenerService, instance: Path
) -> None:
    command, data = store_request(instance, message_id=7)
    third = len(data) // 3
    with raw_association(listener.address[1]) as (assoc, store_cx, echo_cx):
        # Command and first fragment in one PDU, one fragment alone, and the last fragment
        # sharing its PDU with a whole C-ECHO request (pynetdicom's to answer).
        send(assoc, pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA, data[:third])))
        send(assoc, pdu((store_cx, DATA, data[third : 2 * third])))
        send(
            assoc,
            pdu((store_cx, DATA_LAST, data[2 * third :]), (echo_cx, COMMAND_LAST, echo_request(8))),
        )
        answers = {response(assoc), response(assoc)}

    assert answers == {(7, Status.SUCCESS), (8, Status.SUCCESS)}
    (path,) = stored(settings)
    assert path.read_bytes()[-len(data) :] == data
    assert dcmread(path).SOPInstanceUID == dcmread(instance).SOPInstanceUID


def test_a_data_set_whose_pdus_arrive_slowly_and_in_pieces_is_stored(
    settings: Settings, listener: ListenerService, instance: Path
) -> None:
    # A slow sender: after the command the listener finds only part of the next PDU's header,
    # then no PDU at all, and must wait for the rest each time rather than misread or give up.
    command, data = store_request(instance, message_id=3)
    half = len(data) // 2
    first, last = pdu((1, DATA, data[:half])), pdu((1, DATA_LAST, data[half:]))
    gap_s = 0.05  # the pause of a sender on a slow link, not a wait for the listener
    with raw_association(listener.address[1]) as (assoc, store_cx, _):
        assert store_cx == 1
        send(assoc, pdu((store_cx, COMMAND_LAST, command)) + first[:3])
        time.sleep(gap_s)
        send(assoc, first[3:])
        time.sleep(gap_s)
        send(assoc, last)
        answer = response(assoc)

    assert answer == (3, Status.SUCCESS)
    (path,) = stored(settings)
    assert path.read_bytes()[-len(data) :] == data


def test_a_damaged_data_set_is_refused_and_the_association_goes_on(
    settings: Settings, listener: ListenerService, instance: Path
) -> None:
    command, data = store_request(instance, message_id=1)
    with raw_association(listener.address[1]) as (assoc, store_cx, _):
        send(assoc, pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA_LAST, data[:-9])))
        refused = response(assoc)
        send(assoc, pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA_LAST, data)))
        accepted = response(assoc)

    assert refused == (1, Status.CANNOT_UNDERSTAND)
    assert accepted == (1, Status.SUCCESS)
    assert len(stored(settings)) == 1
    assert partial_files(settings) == []


def test_a_command_inside_a_data_set_aborts_and_nothing_is_kept(
    settings: Settings, listener: ListenerService, instance: Path
) -> None:
    command, data = store_request(instance, message_id=1)
    with raw_association(listener.address[1]) as (assoc, store_cx, _):
        send(assoc, pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA, data[:100])))
        send(assoc, pdu((store_cx, COMMAND_LAST, command)))
        assoc._reactor_checkpoint.set()  # let the requestor notice the A-ABORT
        wait_for(lambda: assoc.is_aborted, timeout=10)

    assert stored(settings) == [] and partial_files(settings) == []
    assert echo(listener.address[1]) == Status.SUCCESS


@pytest.mark.parametrize("held", ["in memory", "in a file"])
@pytest.mark.parametrize("ending", ["A-ABORT", "connection closed"])
def test_an_association_that_ends_mid_data_set_leaves_nothing_behind(
    settings: Settings,
    listener: ListenerService,
    instance: Path,
    ending: str,
    held: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if held == "in a file":
        monkeypatch.setattr(fast_store, "IN_MEMORY_BYTES", 512)  # the 1000 bytes sent spill
    command, data = store_request(instance, message_id=1)
    with raw_association(listener.address[1]) as (assoc, store_cx, _):
        send(assoc, pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA, data[:1000])))
        if held == "in a file":
            wait_for(lambda: len(partial_files(settings)) == 1, timeout=10)
        # in memory: the fragment is read before the ending, which comes after it on the socket
        if ending == "A-ABORT":
            assoc.abort()
        else:
            assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
            assoc.dul.socket.socket.close()

    wait_for(lambda: "partial instance discarded" in caplog.text, timeout=10)
    wait_for(lambda: not partial_files(settings), timeout=10)
    assert stored(settings) == []
    assert echo(listener.address[1]) == Status.SUCCESS


def test_a_connection_closed_inside_a_pdu_leaves_nothing_behind(
    settings: Settings, listener: ListenerService, instance: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command, data = store_request(instance, message_id=1)
    with raw_association(listener.address[1]) as (assoc, store_cx, _):
        whole = pdu((store_cx, COMMAND_LAST, command), (store_cx, DATA_LAST, data))
        send(assoc, whole[: len(whole) // 2])  # the header promises more than ever comes
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        assoc.dul.socket.socket.close()

    wait_for(lambda: "shorter than expected" in caplog.text, timeout=10)
    assert stored(settings) == [] and partial_files(settings) == []
    assert echo(listener.address[1]) == Status.SUCCESS


def test_split_pdvs_reads_items_and_refuses_malformed_ones() -> None:
    whole = pdu((1, COMMAND_LAST, b"abc"), (3, DATA_LAST, b"de"))
    fragments = split_pdvs(whole)
    assert fragments is not None
    assert [(f.context_id, f.control, bytes(f.data)) for f in fragments] == [
        (1, COMMAND_LAST, b"abc"),
        (3, DATA_LAST, b"de"),
    ]
    assert split_pdvs(whole[:-1]) is None  # an item longer than the PDU
    assert split_pdvs(whole[:6]) is None  # no item at all
    assert split_pdvs(whole[:6] + struct.pack(">IB", 1, 1)) is None  # item without a header


def test_the_listener_leaves_process_wide_defaults_alone(
    listener: ListenerService, instance: Path
) -> None:
    """Receiving into the store's tmp/ is the listener's own setting, not pynetdicom's global
    switch or the tempfile default that every other component of the process would inherit."""
    assert storescu(listener.address[1], [instance]).returncode == 0
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    assert tempfile.gettempdir() != str(listener.store.tmp_dir)


def test_an_instance_too_large_to_keep_in_memory_is_checked_from_its_file(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    (large,) = write_mr_study(tmp_path / "large", series=1, slices=1, size=1024).files
    assert large.stat().st_size > IN_MEMORY_BYTES
    assert storescu(listener.address[1], [large]).returncode == 0
    (path,) = stored(settings)
    assert path.read_bytes().endswith(dataset_bytes(large))
