"""A fast path for receiving C-STORE requests (a small, pinned and tested shim).

pynetdicom 3.0.4 decodes every command set with pydicom, converts it element by element into
a C-STORE primitive, and writes the File Meta Information of the chunked-receive file through
pydicom's ``create_file_meta`` and ``write_file_meta_info``: together more time per instance
than the listener's own checks. A C-STORE-RQ command set is a handful of Implicit VR Little
Endian elements, so this module

- parses a plain C-STORE-RQ command set (the elements PS3.7 9.3.1.1 defines, each once, in
  ascending order, with values of the expected length and characters) from its bytes, and
  anything else with pynetdicom's pydicom-based decoder, exactly as pynetdicom does;
- writes the File Meta Information as bytes, byte for byte what pydicom writes;
- builds the C-STORE primitive with the same setters, in the same order, as pynetdicom's
  ``message_to_primitive``; the pydicom command set is still there, decoded on first use, for
  ``EVT_DIMSE_RECV`` handlers.

:meth:`FastDIMSEMessage.decode_msg` is a copy of pynetdicom's; ``dicom_listener.reactor``
pins it, and the functions whose output is reproduced here, by SHA-256.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    dimse_messages,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.pdu_primitives import P_DATA

if TYPE_CHECKING:
    from pynetdicom.association import Association

_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
_UID = re.compile(rb"[0-9.]{1,64}\0?")
_AE = re.compile(rb"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII, no backslash

# (0000,eeee) element → (primitive keyword, kind); "cs" elements are read but not set on the
# primitive, as pynetdicom's C_STORE has no such attribute.
_ELEMENTS: dict[int, tuple[str, str]] = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}
_REQUIRED = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
# Command set elements that are not parameters of the C-STORE primitive
_NOT_PRIMITIVE = frozenset({0x0000, 0x0100, 0x0800})


def parse_store_request(encoded: bytes) -> list[tuple[str, Any]] | None:
    """The C-STORE primitive's parameters from a plain C-STORE-RQ command set, in tag order.

    ``None`` for anything else (another command, no data set, an unexpected element, value
    length or character, repeated or unordered elements): pynetdicom decodes those.
    """
    offset, end = 0, len(encoded)
    previous = -1
    seen: dict[int, Any] = {}
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", encoded, offset)
        offset += 8
        if group != 0 or element <= previous or element not in _ELEMENTS:
            return None
        previous = element
        value = encoded[offset : offset + length]
        offset += length
        if len(value) != length:
            return None
        kind = _ELEMENTS[element][1]
        if kind == "US":
            if length != 2:
                return None
            seen[element] = struct.unpack("<H", value)[0]
        elif kind == "UL":
            if length != 4:
                return None
            seen[element] = struct.unpack("<I", value)[0]
        elif kind == "UI":
            if not _UID.fullmatch(value):
                return None
            seen[element] = value.rstrip(b"\0").decode("ascii")
        else:  # AE
            if not _AE.fullmatch(value) or not value.strip():
                return None
            seen[element] = value.decode("ascii").strip()
    if not _REQUIRED.issubset(seen) or seen[0x0100] != _C_STORE_RQ or seen[0x0800] == _NO_DATA_SET:
        return None
    return [(_ELEMENTS[tag][0], value) for tag, value in seen.items() if tag not in _NOT_PRIMITIVE]


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """What ``write_file_meta_info(fp, create_file_meta(...))`` writes for these UIDs.

    The UIDs must be ASCII (pynetdicom validated them); the implementation class UID and
    version name are pynetdicom's, as in ``create_file_meta``.
    """
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(version) % 2:
        version += b" "
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _ui(sop_class_uid)),
            _explicit(0x0003, b"UI", _ui(sop_instance_uid)),
            _explicit(0x0010, b"UI", _ui(transfer_syntax)),
            _explicit(0x0012, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID))),
            _explicit(0x0013, b"SH", version),
        )
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


_C_STORE_RSP = 0x8001


def _command_element(element: int, value: bytes) -> bytes:
    """One command set element: group 0000, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def encode_store_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP with these values, byte for byte as pynetdicom encodes
    a response without error comment or offending element (the UIDs must be ASCII)."""
    body = b"".join(
        (
            _command_element(0x0002, _ui(sop_class_uid)),
            _command_element(0x0100, struct.pack("<H", _C_STORE_RSP)),
            _command_element(0x0120, struct.pack("<H", message_id)),
            _command_element(0x0800, struct.pack("<H", _NO_DATA_SET)),
            _command_element(0x0900, struct.pack("<H", status)),
            _command_element(0x1000, _ui(sop_instance_uid)),
        )
    )
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


class C_STORE_RQ(dimse_messages.C_STORE_RQ):
    """A C-STORE-RQ whose command set was parsed by :func:`parse_store_request`."""

    _parameters: list[tuple[str, Any]]
    _command_set: Dataset | None

    @property
    def command_set(self) -> Dataset:
        """The command set as pynetdicom decodes it, on first use."""
        if self._command_set is None:
            self.encoded_command_set.seek(0)
            self._command_set = decode(self.encoded_command_set, True, True)
        return self._command_set

    @command_set.setter
    def command_set(self, value: Dataset) -> None:
        self._command_set = value

    def message_to_primitive(self) -> C_STORE:
        """pynetdicom's ``message_to_primitive`` for a C-STORE-RQ, from the parsed values."""
        primitive = C_STORE()
        for keyword, value in self._parameters:
            setattr(primitive, keyword, value)
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


class DIMSEMessage(dimse_messages.DIMSEMessage):
    """pynetdicom's DIMSE message, decoding plain C-STORE requests without pydicom.

    Named as pynetdicom's: its ``__init__`` sets up a message by the class's name.
    """

    def decode_msg(self, primitive: P_DATA, assoc: Association | None = None) -> bool:
        """pynetdicom 3.0.4's ``DIMSEMessage.decode_msg``; two steps take a fast path."""
        # Make sure this is a P-DATA primitive
        if primitive.__class__ != P_DATA or primitive is None:
            return False

        for context_id, data in primitive.presentation_data_value_list:
            control_header_byte = data[0]

            # COMMAND SET
            if control_header_byte & 1:
                self.encoded_command_set.write(data[1:])

                # The final command set fragment (xxxxxx11) has been added
                if control_header_byte & 2:
                    self.context_id = context_id

                    # Changed from pynetdicom: a plain C-STORE-RQ is parsed from its bytes
                    parameters = parse_store_request(self.encoded_command_set.getvalue())
                    if parameters is not None:
                        self.__class__ = C_STORE_RQ  # type: ignore[assignment]
                        fast = cast(C_STORE_RQ, self)
                        fast._parameters = parameters
                        fast._command_set = None
                    else:
                        # Command Set is always encoded Implicit VR Little Endian
                        self.command_set = decode(self.encoded_command_set, True, True)

                        # Determine which DIMSE Message class to use
                        self.__class__ = dimse_messages._MESSAGE_TYPES[  # type: ignore[assignment]
                            cast(int, self.command_set.CommandField)
                        ][1]

                        # Determine if a Data Set is present
                        if self.command_set.CommandDataSetType == 0x0101:
                            return True

                    # Data Set is present
                    # Changed from pynetdicom: an association with a receive_dir (set by
                    # dicom_listener.reactor) receives into files there, whatever the
                    # process-wide _config and tempfile defaults
                    receive_dir = getattr(assoc, "receive_dir", None)
                    if (
                        _config.STORE_RECV_CHUNKED_DATASET or receive_dir is not None
                    ) and isinstance(self, dimse_messages.C_STORE_RQ):
                        self._data_set_file = cast(
                            "dimse_messages.NTF",
                            NamedTemporaryFile(  # noqa: SIM115
                                delete=False, mode="wb", suffix=".dcm", dir=receive_dir
                            ),
                        )
                        self._data_set_path = Path(self._data_set_file.name)
                        # Write the File Meta
                        self._data_set_file.write(b"\x00" * 128)
                        self._data_set_file.write(b"DICM")

                        cx = cast("Association", assoc)._accepted_cx[context_id]
                        if parameters is not None:
                            # Changed from pynetdicom: the File Meta is encoded here, as bytes
                            values = dict(parameters)
                            self._data_set_file.write(
                                encode_file_meta(
                                    values["AffectedSOPClassUID"],
                                    values["AffectedSOPInstanceUID"],
                                    str(cx.transfer_syntax[0]),
                                )
                            )
                        else:
                            cs = self.command_set
                            sop_class = cast(UID, cs.AffectedSOPClassUID)
                            sop_instance = cast(UID, cs.AffectedSOPInstanceUID)
                            write_file_meta_info(
                                self._data_set_file,  # type: ignore[arg-type]
                                create_file_meta(
                                    sop_class_uid=sop_class,
                                    sop_instance_uid=sop_instance,
                                    transfer_syntax=cx.transfer_syntax[0],
                                ),
                            )

            # DATA SET
            else:
                if self._data_set_file:
                    self._data_set_file.write(data[1:])
                    self._data_set_file.file.flush()
                else:
                    cast(Any, self.data_set).write(data[1:])

                # The final data set fragment (xxxxxx10) has been added
                if control_header_byte & 2 != 0:
                    return True

        # We return False to indicate that the message isn't yet fully decoded
        return False


FastDIMSEMessage = DIMSEMessage
