"""What the listener reads from a received instance: the identifiers it files it under.

Only the header is decoded, never pixel data. A dataset is rejected when it is not a complete
DICOM stream (truncated or with trailing garbage), lacks the identifiers, or disagrees with the
C-STORE request that carried it.

Two readers give the same answers: :mod:`dicom_listener.part10` walks the encoded elements of
the common encodings by their lengths, and pydicom decides every stream the walk does not cover
or finds malformed (deflated and big endian streams, files without a preamble, damaged ones).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_listener import part10
from dicom_listener.status import Status
from schemas.uids import validate_uid

log = logging.getLogger(__name__)

# Values above this are not read into memory while checking the stream's structure.
_DEFER_BYTES = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = {
    True: b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # (FFFE,E0DD), little endian
    False: b"\xff\xfe\xe0\xdd\x00\x00\x00\x00",
}


class InvalidInstance(Exception):
    """A received dataset that must be refused with ``status``."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class InstanceHeader:
    """Identifiers of one received instance, and its descriptive attributes on demand.

    Only the first instance of a study or series needs the descriptive attributes, so they are
    converted (with the dataset's character set) when read rather than for every instance.
    The header lives as long as the C-STORE being handled.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    source: Dataset | part10.Walked = field(repr=False, compare=False)

    @cached_property
    def dataset(self) -> Dataset:
        """The attributes read, as a pydicom dataset (values converted on access)."""
        if isinstance(self.source, Dataset):
            return self.source
        implicit = self.source.implicit_vr
        return Dataset(
            {
                Tag(tag): RawDataElement(
                    Tag(tag), raw.vr, len(raw.value), raw.value, 0, implicit, True
                )
                for tag, raw in self.source.values.items()
                if tag in _DESCRIPTIVE_TAGS
            }
        )

    def portable(self) -> InstanceHeader:
        """This header with only what its properties read, to send to another process."""
        if not isinstance(self.source, Dataset):
            return replace(self)  # the walked values are what the properties read
        descriptive = Dataset()
        for tag in _DESCRIPTIVE_TAGS:
            element = self.source.get_item(tag)
            if element is not None:
                descriptive[tag] = element
        return replace(self, source=descriptive)

    @property
    def modality(self) -> str:
        return _text(self.dataset, "Modality") or ""

    @property
    def series_description(self) -> str:
        return _text(self.dataset, "SeriesDescription") or ""

    @property
    def patient_id(self) -> str | None:
        return _text(self.dataset, "PatientID")

    @property
    def patient_name(self) -> str | None:
        return _text(self.dataset, "PatientName")

    @property
    def patient_birth_date(self) -> str | None:
        return _text(self.dataset, "PatientBirthDate")

    @property
    def patient_sex(self) -> str | None:
        return _text(self.dataset, "PatientSex")

    @property
    def accession_number(self) -> str | None:
        return _text(self.dataset, "AccessionNumber")

    @property
    def study_date(self) -> str | None:
        return _text(self.dataset, "StudyDate")

    @property
    def study_time(self) -> str | None:
        return _text(self.dataset, "StudyTime")

    @property
    def study_description(self) -> str | None:
        return _text(self.dataset, "StudyDescription")


# UIDs are decoded from their raw bytes (ASCII digits and dots, PS3.5 9.1): pydicom's
# conversions, with their validation, are a tenth of the time spent on an instance.
_UID_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}
_SERIES_NUMBER = 0x00200011
# What the header's properties read, with the character set their text is decoded with.
_DESCRIPTIVE_TAGS = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080020,  # StudyDate
        0x00080030,  # StudyTime
        0x00080050,  # AccessionNumber
        0x00080060,  # Modality
        0x00081030,  # StudyDescription
        0x0008103E,  # SeriesDescription
        0x00100010,  # PatientName
        0x00100020,  # PatientID
        0x00100030,  # PatientBirthDate
        0x00100040,  # PatientSex
    }
)
_WANTED = frozenset({*_UID_TAGS.values(), _SERIES_NUMBER, *_DESCRIPTIVE_TAGS})


def read_header(
    path: Path | None,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    content: bytes | bytearray | None = None,
) -> InstanceHeader:
    """Read and check the header of a received Part 10 stream.

    Parameters
    ----------
    path
        A complete DICOM file as written from the received stream; ``None`` when the stream is
        only in memory.
    content
        The stream's bytes, when the caller has them: they are checked instead of the file.
    sop_class_uid, sop_instance_uid
        The Affected SOP Class/Instance UIDs of the C-STORE request; the dataset must agree.

    Raises
    ------
    InvalidInstance
        With the DIMSE status to answer and a reason for the log.
    """
    try:
        header = _walked_header(path, content)
    except part10.NotWalkable as exc:
        log.debug("header read with pydicom", extra={"path": str(path), "reason": str(exc)})
        header = _pydicom_header(path, content)
    if header.sop_class_uid != sop_class_uid:
        raise InvalidInstance(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class {header.sop_class_uid} != requested {sop_class_uid}",
        )
    if header.sop_instance_uid != sop_instance_uid:
        raise InvalidInstance(
            Status.CANNOT_UNDERSTAND,
            f"dataset SOP Instance {header.sop_instance_uid} != requested {sop_instance_uid}",
        )
    return header


def _walked_header(path: Path | None, content: bytes | bytearray | None = None) -> InstanceHeader:
    """The header from a walk over ``content``, or over the file's bytes (memory-mapped: pixel
    data stays on disk).

    Raises
    ------
    part10.NotWalkable
        When pydicom must decide.
    """
    if content is not None:
        walked = part10.walk(content, _WANTED)
    else:
        assert path is not None
        try:
            with path.open("rb", buffering=0) as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    raise part10.NotWalkable("empty file")
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    walked = part10.walk(mapped, _WANTED)
        except OSError as exc:
            raise part10.NotWalkable(str(exc)) from exc
    return _identified(walked.values.get, walked)


def _pydicom_header(path: Path | None, content: bytes | bytearray | None = None) -> InstanceHeader:
    """The header as pydicom reads it, with the completeness checks pydicom does not make.

    From ``content`` when given, else from the file at ``path``.
    """
    try:
        if content is None:
            assert path is not None
            with path.open("rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                # A file no larger than the values pydicom would read anyway is read in one
                # call and parsed in memory: parsing a file issues a seek per element, and
                # every system call lets another association's thread take the GIL.
                content = fh.readall() if size <= _DEFER_BYTES else None
        else:
            size = len(content)
        source = BytesIO(content) if content is not None else path
        assert source is not None
        ds = dcmread(source, defer_size=_DEFER_BYTES)
        _check_complete(ds, path, size, content)
        _check_readable(ds, 0)
        return _identified(ds.get_item, ds)
    except InvalidInstance:
        raise
    except RecursionError as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, "sequences nested too deep") from exc
    except _PYDICOM_ERRORS as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"unreadable dataset: {exc}") from exc


# What pydicom raises for a stream it cannot read (NotImplementedError: an unknown VR's value)
_PYDICOM_ERRORS = (
    InvalidDicomError,
    ValueError,
    KeyError,
    EOFError,
    OSError,
    TypeError,
    NotImplementedError,
    struct.error,
)


def _check_readable(ds: Dataset, depth: int) -> None:
    """Refuse what the worker could not read: an element with a VR outside PS3.5's, or
    sequences nested deeper than :data:`part10.MAX_DEPTH` (the walk's own limits).

    Values stay as read (raw), except sequences, whose items are checked: those with VR SQ,
    and those pydicom reads as sequences where the stream names no VR (Implicit VR, UN).
    """
    if depth > part10.MAX_DEPTH:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, "sequences nested too deep")
    for raw in ds.elements():
        vr = raw.VR
        if vr is None or vr == "UN":
            undefined = isinstance(raw, RawDataElement) and raw.length == _UNDEFINED_LENGTH
            if raw.tag not in part10.SEQUENCE_TAGS and not undefined:
                continue  # no VR on the wire, and pydicom reads it as a value
            vr = ds[raw.tag].VR
        if vr == "SQ":
            for item in ds[raw.tag].value:
                _check_readable(item, depth + 1)
        elif vr not in part10.KNOWN_VRS:
            raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"unknown VR {vr!r} in {Tag(raw.tag)}")


def _check_complete(
    ds: Dataset, path: Path | None, size: int, content: bytes | bytearray | None
) -> None:
    """Refuse a stream that was cut short or has bytes after its last element.

    pydicom reads truncated streams silently. Truncation can only affect the last top-level
    element, so it is enough to check that this element ends exactly where the file does.
    """
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = getattr(file_meta, "TransferSyntaxUID", None)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return  # the stream on disk is compressed; pydicom inflates it and checks zlib framing
    tags = sorted(ds.keys())
    if not tags:
        raise InvalidInstance(
            Status.CANNOT_UNDERSTAND, "no data elements could be read: truncated or not DICOM"
        )
    # keep_deferred: a value larger than _DEFER_BYTES stays on disk (memory stays flat in the
    # instance's size) and stays a raw element whose length can be checked against the file.
    last = ds.get_item(tags[-1], keep_deferred=True)
    if not isinstance(last, RawDataElement):
        return
    if last.length == _UNDEFINED_LENGTH:
        if content is not None:
            tail = bytes(content[-8:])
        else:
            assert path is not None
            with path.open("rb") as fh:
                fh.seek(max(size - 8, 0))
                tail = fh.read(8)
        if tail != _SEQUENCE_DELIMITER[last.is_little_endian]:
            raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"truncated in {last.tag}")
        return
    end = last.value_tell + last.length
    read = len(last.value) if last.value is not None else last.length
    if end != size or read != last.length:
        raise InvalidInstance(
            Status.CANNOT_UNDERSTAND,
            f"stream is {size} bytes but its last element {last.tag} ends at {end}",
        )


def _text(ds: Dataset, keyword: str) -> str | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _identified(
    get: Callable[[int], object | None], source: Dataset | part10.Walked
) -> InstanceHeader:
    """The header of an instance whose elements ``get`` returns by tag (either reader's)."""
    number = get(_SERIES_NUMBER)
    return InstanceHeader(
        sop_class_uid=_uid(get(_UID_TAGS["SOPClassUID"]), "SOPClassUID"),
        sop_instance_uid=_uid(get(_UID_TAGS["SOPInstanceUID"]), "SOPInstanceUID"),
        study_instance_uid=_uid(get(_UID_TAGS["StudyInstanceUID"]), "StudyInstanceUID"),
        series_instance_uid=_uid(get(_UID_TAGS["SeriesInstanceUID"]), "SeriesInstanceUID"),
        series_number=_integer(getattr(number, "value", None)),
        source=source,
    )


def _uid(element: object, keyword: str) -> str:
    """A UID from an element (or raw value) of either reader; refused when missing or invalid."""
    value = getattr(element, "value", None)
    if not value:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"missing {keyword}")
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        return validate_uid(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"invalid {keyword}") from exc


def _integer(value: object) -> int | None:
    """An IS value as an integer; ``None`` when absent, multi-valued or not a number.

    A Series Number only labels the series for people: an odd one is no reason to refuse the
    instance.
    """
    if value is None:
        return None
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        return int(text.strip(" \x00"))
    except ValueError:  # UnicodeDecodeError included
        return None
