"""The C-STORE receive fast path: the same messages, primitives and files as pynetdicom's."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode
from pynetdicom.pdu_primitives import P_DATA

from dicom_listener import dimse_fast, reactor
from tests.harness import requires_fast_engine

pytestmark = requires_fast_engine

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
PRIMITIVE_FIELDS = (
    "MessageID",
    "MessageIDBeingRespondedTo",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "Status",
    "ErrorComment",
    "OffendingElement",
)


def store_request(
    sop_class: str = MR,
    sop_instance: str = "1.2.3.4",
    *,
    message_id: int = 7,
    priority: int = 2,
    move_ae: str | None = None,
    move_id: int | None = None,
) -> bytes:
    """A C-STORE-RQ command set as pynetdicom (and so a pynetdicom SCU) encodes it."""
    rq = C_STORE()
    rq.MessageID = message_id
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = sop_instance
    rq.Priority = priority
    if move_ae is not None:
        rq.MoveOriginatorApplicationEntityTitle = move_ae
    if move_id is not None:
        rq.MoveOriginatorMessageID = move_id
    rq.DataSet = BytesIO(b"dataset")
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(rq)
    return cast(bytes, encode(message.command_set, True, True))


def p_data(context_id: int, *fragments: bytes) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, f] for f in fragments]
    return primitive


def receive(
    message: dimse_messages.DIMSEMessage, command: bytes, data: bytes, assoc: Any = None
) -> Any:
    """Feed a message its command set (in two fragments) and data set, as the DUL would."""
    half = len(command) // 2
    assert not message.decode_msg(p_data(3, b"\x01" + command[:half]), assoc)
    complete = message.decode_msg(p_data(3, b"\x03" + command[half:], b"\x00" + data[:5]), assoc)
    if not complete:
        complete = message.decode_msg(p_data(3, b"\x02" + data[5:]), assoc)
    assert complete
    return message.message_to_primitive()


def assert_same_primitive(fast: Any, upstream: Any) -> None:
    assert type(fast) is type(upstream)
    for name in PRIMITIVE_FIELDS:
        if hasattr(upstream, name):
            assert getattr(fast, name) == getattr(upstream, name), name
            assert type(getattr(fast, name)) is type(getattr(upstream, name)), name
    assert fast._context_id == upstream._context_id
    if not hasattr(upstream, "DataSet"):
        return
    fast_data, upstream_data = fast.DataSet, upstream.DataSet
    if isinstance(upstream_data, BytesIO):
        assert fast_data.getvalue() == upstream_data.getvalue()
    else:
        assert fast_data == upstream_data


REQUESTS = {
    "plain": {},
    "odd-length UIDs": {"sop_class": "1.2.840.10008.5.1.4.1.1.4.1", "sop_instance": "1.2.345"},
    "64-character UID": {"sop_instance": "1." + "2" * 62},
    "low priority": {"priority": 2, "message_id": 65535},
    "high priority": {"priority": 1, "message_id": 1},
    "medium priority": {"priority": 0},
    "move originator": {"move_ae": "MOVESCU", "move_id": 12},
    "odd-length move originator": {"move_ae": "ABC", "move_id": 0},
    "move originator, padded": {"move_ae": " A B ", "move_id": 65535},
}


@pytest.mark.parametrize("fields", REQUESTS.values(), ids=REQUESTS.keys())
def test_store_requests_decode_to_the_primitive_pynetdicom_makes(fields: dict[str, Any]) -> None:
    command = store_request(**fields)
    assert dimse_fast.parse_store_request(command) is not None
    data = b"\x08\x00\x16\x00" + b"x" * 40
    upstream = receive(dimse_messages.DIMSEMessage(), command, data)
    fast_message = dimse_fast.FastDIMSEMessage()
    fast = receive(fast_message, command, data)
    assert isinstance(fast_message, dimse_fast.C_STORE_RQ)
    assert_same_primitive(fast, upstream)
    # The command set is still there for EVT_DIMSE_RECV handlers, as pynetdicom decodes it
    reference = dimse_messages.DIMSEMessage()
    reference.decode_msg(p_data(3, b"\x03" + command))
    assert fast_message.command_set == reference.command_set


def _with_element(command: bytes, element: bytes) -> bytes:
    body = command[12:] + element
    return b"\x00\x00\x00\x00\x04\x00\x00\x00" + len(body).to_bytes(4, "little") + body


def _echo_request() -> bytes:
    rq = C_ECHO()
    rq.MessageID = 3
    rq.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = dimse_messages.C_ECHO_RQ()
    message.primitive_to_message(rq)
    return cast(bytes, encode(message.command_set, True, True))


UNUSUAL = {
    # an element after (0000,1031) that the fast parser does not know
    "unknown element": _with_element(store_request(), b"\x00\x00\x00\x20\x02\x00\x00\x00AB"),
    "UID padded with a space": store_request().replace(b"1.2.3.4", b"1.2.3 ", 1),
}


@pytest.mark.parametrize("command", UNUSUAL.values(), ids=UNUSUAL.keys())
def test_unusual_command_sets_are_decoded_by_pynetdicom(command: bytes) -> None:
    assert dimse_fast.parse_store_request(command) is None
    data = b"y" * 20
    upstream = receive(dimse_messages.DIMSEMessage(), command, data)
    fast = receive(dimse_fast.FastDIMSEMessage(), command, data)
    assert_same_primitive(fast, upstream)


def test_a_store_request_without_its_group_length_takes_the_fast_path() -> None:
    # pynetdicom ignores (0000,0000) when decoding, and so does the fast path
    command = store_request()[12:]
    assert dimse_fast.parse_store_request(command) is not None
    upstream = receive(dimse_messages.DIMSEMessage(), command, b"z" * 10)
    assert_same_primitive(receive(dimse_fast.FastDIMSEMessage(), command, b"z" * 10), upstream)


@pytest.mark.parametrize(
    "command",
    [
        _echo_request(),
        store_request()[:-3],  # truncated
        store_request().replace(b"\x00\x00\x00\x07\x02\x00\x00\x00", b"\x00\x00\x00\x07\x04\x00"),
    ],
    ids=["C-ECHO", "truncated", "bad length"],
)
def test_other_commands_are_not_parsed(command: bytes) -> None:
    assert dimse_fast.parse_store_request(command) is None


def test_a_request_without_a_data_set_is_not_parsed() -> None:
    original = store_request()
    at = original.index(b"\x00\x00\x00\x08\x02\x00\x00\x00") + 8
    command = original[:at] + b"\x01\x01" + original[at + 2 :]
    assert dimse_fast.parse_store_request(command) is None


def test_an_echo_request_is_decoded_by_pynetdicom() -> None:
    command = _echo_request()
    upstream = dimse_messages.DIMSEMessage()
    assert upstream.decode_msg(p_data(1, b"\x03" + command))
    fast = dimse_fast.FastDIMSEMessage()
    assert fast.decode_msg(p_data(1, b"\x03" + command))
    assert type(fast) is dimse_messages.C_ECHO_RQ
    assert_same_primitive(fast.message_to_primitive(), upstream.message_to_primitive())


@pytest.mark.parametrize("sop_class", [MR, "1.2.840.10008.5.1.4.1.1.4.1"])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.345", "1." + "9" * 62])
@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless]
)
def test_file_meta_is_encoded_as_pydicom_writes_it(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    expected = BytesIO()
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(transfer_syntax),
    )
    write_file_meta_info(cast(Any, expected), meta)
    assert dimse_fast.encode_file_meta(sop_class, sop_instance, transfer_syntax) == (
        expected.getvalue()
    )


@pytest.fixture
def chunked(tmp_path: Path) -> Iterator[Path]:
    previous_flag, previous_dir = _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(tmp_path)
    try:
        yield tmp_path
    finally:
        _config.STORE_RECV_CHUNKED_DATASET = previous_flag
        tempfile.tempdir = previous_dir


@pytest.mark.parametrize(
    "command",
    [
        store_request(),
        store_request(CT, "1.2.345", priority=1, move_ae="MOVER", move_id=4),
        UNUSUAL["unknown element"],
    ],
    ids=["plain", "move originator", "unusual"],
)
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_chunked_receive_writes_the_file_pynetdicom_writes(
    chunked: Path, command: bytes, transfer_syntax: str
) -> None:
    assoc = SimpleNamespace(
        _accepted_cx={3: SimpleNamespace(transfer_syntax=[UID(transfer_syntax)])}
    )
    data = bytes(range(256)) * 3
    upstream = receive(dimse_messages.DIMSEMessage(), command, data, assoc)
    fast = receive(dimse_fast.FastDIMSEMessage(), command, data, assoc)
    assert_same_primitive(fast, upstream)
    for primitive in (upstream, fast):
        primitive._dataset_file.close()
    assert fast._dataset_path != upstream._dataset_path
    assert fast._dataset_path.read_bytes() == upstream._dataset_path.read_bytes()
    assert fast._dataset_path.read_bytes().endswith(data)


def test_a_changed_decode_msg_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = {**reactor._UPSTREAM_DIGESTS, "DIMSEMessage.decode_msg": "0" * 64}
    monkeypatch.setattr(reactor, "_UPSTREAM_DIGESTS", digests)
    with pytest.raises(reactor.UnsupportedPynetdicom, match=r"DIMSEMessage\.decode_msg"):
        reactor.check_supported()


def test_the_reproduced_functions_are_pinned() -> None:
    for name in (
        "DIMSEServiceProvider.receive_primitive",
        "DIMSEMessage.__init__",
        "DIMSEMessage.decode_msg",
        "DIMSEMessage.message_to_primitive",
        "dsutils.create_file_meta",
        "pydicom.filewriter.write_file_meta_info",
    ):
        assert reactor.upstream_digests()[name] == reactor._UPSTREAM_DIGESTS[name]
