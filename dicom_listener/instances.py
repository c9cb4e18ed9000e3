"""What the listener reads from a received instance: the identifiers it files it under.

Only the header is decoded, never pixel data. A dataset is rejected when it is not a complete
DICOM stream (truncated or with trailing garbage), lacks the identifiers, or disagrees with the
C-STORE request that carried it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

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


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Identifiers of one received instance, and its descriptive attributes on demand.

    Only the first instance of a study or series needs the descriptive attributes, so they are
    converted from ``dataset`` when read rather than for every instance. The header lives as
    long as the C-STORE being handled.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    dataset: Dataset = field(repr=False, compare=False)

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


def read_header(path: Path, *, sop_class_uid: str, sop_instance_uid: str) -> InstanceHeader:
    """Read and check the header of the Part 10 file at ``path``.

    Parameters
    ----------
    path
        A complete DICOM file as written from the received stream.
    sop_class_uid, sop_instance_uid
        The Affected SOP Class/Instance UIDs of the C-STORE request; the dataset must agree.

    Raises
    ------
    InvalidInstance
        With the DIMSE status to answer and a reason for the log.
    """
    try:
        with path.open("rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            # A file no larger than the values pydicom would read anyway is read in one call
            # and parsed in memory: parsing a file issues a seek per element, and every system
            # call lets another association's thread take the GIL.
            content = fh.readall() if size <= _DEFER_BYTES else None
        ds = dcmread(BytesIO(content) if content is not None else path, defer_size=_DEFER_BYTES)
        _check_complete(ds, path, size, content)
        header = _header(ds)
    except InvalidInstance:
        raise
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, TypeError) as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"unreadable dataset: {exc}") from exc
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


def _check_complete(ds: Dataset, path: Path, size: int, content: bytes | None) -> None:
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
            tail = content[-8:]
        else:
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


# UIDs are decoded from their raw bytes (ASCII digits and dots, PS3.5 9.1): four pydicom
# conversions, with their validation, are a tenth of the time spent on an instance.
_UID_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


def _uid(ds: Dataset, keyword: str) -> str:
    element = ds.get_item(_UID_TAGS[keyword])
    value = None if element is None else element.value
    if not value:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"missing {keyword}")
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        return validate_uid(text.strip())
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"invalid {keyword}") from exc


def _header(ds: Dataset) -> InstanceHeader:
    series_number = getattr(ds, "SeriesNumber", None)
    return InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        series_number=int(series_number) if series_number not in (None, "") else None,
        dataset=ds,
    )
