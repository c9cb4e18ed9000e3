"""A structural walk over a Part 10 stream's bytes: is it complete, and what are its identifiers.

The listener must refuse a truncated dataset, or one with bytes after its last element, and it
needs a dozen attributes to file the instance; it never needs the rest. pydicom builds a Python
object for every element it reads, and doing so for every received instance was the largest
single cost of a C-STORE (0.6 ms of about 3 ms). This module walks the encoded elements by their
lengths instead (PS3.5 7.1 and 7.5), descending into sequences and encapsulated pixel data of
undefined length so that their delimiters are checked too, and keeps the raw values of the
attributes asked for. It decodes nothing else.

It covers the encodings scanners send: Explicit and Implicit VR Little Endian, and the
encapsulated (compressed) syntaxes, which are Explicit VR Little Endian outside the pixel data.
For anything else (deflate, big endian, a stream without the "DICM" preamble, or anything it
finds malformed) it raises :class:`NotWalkable`, and the caller decides with pydicom, which
stays the judge of what is readable: this walk never accepts a stream that pydicom's checks
in :mod:`dicom_listener.instances` would refuse, it only answers the common case faster.

What the worker reads later must be readable then: the walk descends into every sequence
item (of defined length too), so that each element's VR is one of PS3.5's and sequences are
nested at most :data:`MAX_DEPTH` deep everywhere, not only at the top level.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

PREAMBLE = 128
MAGIC = b"DICM"
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
TRANSFER_SYNTAX_UID = 0x00020010
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 table 7.1-1)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
# VRs that may have an undefined length in explicit VR: sequences, unknown (then implicit VR
# inside, PS3.5 6.2.2) and encapsulated pixel data.
_UNDEFINED_LENGTH_VRS = frozenset({b"SQ", b"UN", b"OB", b"OW"})
_NOT_WALKED = frozenset({DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})
# Deeper nesting than this is not something a scanner sends; refused (after pydicom's look).
MAX_DEPTH = 32
# Every VR of PS3.5 table 6.2-1, as text
KNOWN_VRS = frozenset(vr.decode("ascii") for vr in LONG_VRS | SHORT_VRS)
# Elements the data dictionary makes sequences: in Implicit VR (and as UN, which pydicom reads
# with the dictionary's VR) their values are items of data sets, whatever their length.
SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

# A whole stream in memory, or memory-mapped from its file
Buffer = bytes | bytearray | mmap.mmap

# Element header bytes by explicit VR: 12 for those with a 4-byte length, else 8
_HEADER_BYTES = {**dict.fromkeys(LONG_VRS, 12), **dict.fromkeys(SHORT_VRS, 8)}
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


class NotWalkable(Exception):
    """The stream is outside what this walk covers, or malformed: let pydicom decide."""


@dataclass(frozen=True, slots=True)
class RawValue:
    """One element's VR (``None`` in Implicit VR) and its value bytes, as encoded."""

    vr: str | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Walked:
    """What a complete walk found."""

    transfer_syntax_uid: str
    implicit_vr: bool
    values: dict[int, RawValue]  # the wanted top-level elements present, by tag


def walk(buffer: Buffer, wanted: Collection[int]) -> Walked:
    """Walk a whole Part 10 stream; the raw values of the top-level elements in ``wanted``.

    ``buffer`` is the whole stream, in memory or memory-mapped. Values outside ``wanted``
    are skipped, never copied.

    Raises
    ------
    NotWalkable
        For an encoding this does not cover, or a stream that is not complete and well formed.
    """
    end = len(buffer)
    if end < PREAMBLE + len(MAGIC) or bytes(buffer[PREAMBLE : PREAMBLE + 4]) != MAGIC:
        raise NotWalkable("no Part 10 preamble")
    meta: dict[int, RawValue] = {}
    position = _walk(buffer, PREAMBLE + 4, end, False, {TRANSFER_SYNTAX_UID}, meta, 0, meta=True)
    syntax = meta.get(TRANSFER_SYNTAX_UID)
    if syntax is None:
        raise NotWalkable("no transfer syntax in the file meta information")
    try:
        transfer_syntax = syntax.value.rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError as exc:
        raise NotWalkable("transfer syntax UID is not ASCII") from exc
    if transfer_syntax in _NOT_WALKED:
        raise NotWalkable(f"transfer syntax {transfer_syntax} is left to pydicom")
    implicit = transfer_syntax == ImplicitVRLittleEndian
    values: dict[int, RawValue] = {}
    position = _walk(buffer, position, end, not implicit, wanted, values, 0)
    if position != end:
        raise NotWalkable(f"stream is {end} bytes but its elements end at {position}")
    return Walked(transfer_syntax, implicit, values)


def _walk(
    buffer: Buffer,
    position: int,
    end: int,
    explicit: bool,
    wanted: Collection[int],
    values: dict[int, RawValue],
    depth: int,
    *,
    meta: bool = False,
    delimiter: int | None = None,
) -> int:
    """Walk elements from ``position``; where the walk ended.

    The file meta walk (``meta``, always Explicit VR) stops at the first element outside
    group 0002. An item of undefined length is walked to its ``delimiter``; otherwise the walk
    must end exactly at ``end``.
    """
    with_vr = explicit or meta
    # One unpack per element, as the encoding reads it: an item tag (FFFE,xxxx) has no VR,
    # but only its tag is read, which both layouts put first.
    unpack = _TAG_VR_SHORT.unpack_from if with_vr else _TAG_LENGTH.unpack_from
    while position < end:
        if end - position < 8:
            raise NotWalkable(f"truncated element header at {position}")
        if with_vr:
            group, element, vr, length = unpack(buffer, position)
        else:
            group, element, length = unpack(buffer, position)
            vr = None
        tag = group << 16 | element
        if meta and group != 0x0002:
            return position
        if group == 0xFFFE:
            if tag == delimiter:
                return position + 8
            raise NotWalkable(f"unexpected ({group:04X},{element:04X}) at {position}")
        if vr is not None:
            header = _HEADER_BYTES.get(vr)
            if header is None:
                raise NotWalkable(f"unknown VR {vr!r} at {position}")
            if header == 12:
                if end - position < 12:
                    raise NotWalkable(f"truncated element header at {position}")
                (length,) = _LONG_LENGTH.unpack_from(buffer, position + 8)
            position += header
        else:
            position += 8
        if length == UNDEFINED_LENGTH:
            if tag in wanted or (vr is not None and vr not in _UNDEFINED_LENGTH_VRS):
                raise NotWalkable(f"undefined length for ({group:04X},{element:04X})")
            # OB or OW: encapsulated pixel data, whose items are fragments
            items_are_data_sets = vr is None or vr in (b"SQ", b"UN")
            position = _skip_items(
                buffer,
                position,
                end,
                explicit and vr != b"UN",
                depth + 1,
                data_sets=items_are_data_sets,
            )
            continue
        if length > end - position:
            raise NotWalkable(f"({group:04X},{element:04X}) runs past the end of the stream")
        if length and (vr == b"SQ" or ((vr is None or vr == b"UN") and tag in SEQUENCE_TAGS)):
            # A sequence of defined length: its items are walked, to its last byte
            _skip_items(
                buffer, position, position + length, explicit and vr == b"SQ", depth + 1,
                until=position + length,
            )  # fmt: skip
        if tag in wanted:
            values[tag] = RawValue(
                vr.decode("ascii") if vr is not None else None,
                bytes(buffer[position : position + length]),
            )
        position += length
    if delimiter is not None:
        raise NotWalkable("stream ends inside an item of undefined length")
    return position


def _skip_items(
    buffer: Buffer,
    position: int,
    end: int,
    explicit: bool,
    depth: int,
    *,
    data_sets: bool = True,
    until: int | None = None,
) -> int:
    """Walk the items of a sequence (``data_sets``: each item a data set, walked in turn) or of
    encapsulated pixel data (fragments, skipped); up to its sequence delimiter, or to ``until``
    for a sequence of defined length."""
    if depth > MAX_DEPTH:
        raise NotWalkable("sequences nested too deep")
    while True:
        if until is not None and position == until:
            return position
        if end - position < 8:
            raise NotWalkable("stream ends inside a sequence")
        group, element, length = _TAG_LENGTH.unpack_from(buffer, position)
        tag = group << 16 | element
        position += 8
        if tag == SEQUENCE_DELIMITER and until is None:
            return position
        if tag != ITEM:
            raise NotWalkable(f"({group:04X},{element:04X}) where an item was expected")
        if length == UNDEFINED_LENGTH:
            if not data_sets:
                raise NotWalkable("a pixel data fragment of undefined length")
            position = _walk(
                buffer, position, end, explicit, (), {}, depth, delimiter=ITEM_DELIMITER
            )
        elif length > end - position:
            raise NotWalkable("an item runs past the end of the stream")
        elif data_sets:
            position = _walk(buffer, position, position + length, explicit, (), {}, depth)
        else:
            position += length
