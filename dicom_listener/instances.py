"""What the listener reads from a received instance: the identifiers it files it under.

Only the header is decoded, never pixel data. A dataset is rejected when it is not a complete
DICOM stream (truncated or with trailing garbage), lacks the identifiers, or disagrees with the
C-STORE request that carried it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
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
    """Identifiers and descriptive attributes of one received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None


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
        ds = dcmread(path, defer_size=_DEFER_BYTES)
        _check_complete(ds, path)
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


def _check_complete(ds: object, path: Path) -> None:
    """Refuse a stream that was cut short or has bytes after its last element.

    pydicom reads truncated streams silently. Truncation can only affect the last top-level
    element, so it is enough to check that this element ends exactly where the file does.
    """
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = getattr(file_meta, "TransferSyntaxUID", None)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return  # the stream on disk is compressed; pydicom inflates it and checks zlib framing
    elements = list(ds.elements())  # type: ignore[attr-defined]
    if not elements:
        raise InvalidInstance(
            Status.CANNOT_UNDERSTAND, "no data elements could be read: truncated or not DICOM"
        )
    last = elements[-1]
    size = path.stat().st_size
    if not isinstance(last, RawDataElement):
        return
    if last.length == _UNDEFINED_LENGTH:
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


def _text(ds: object, keyword: str) -> str | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _header(ds: object) -> InstanceHeader:
    def uid(keyword: str) -> str:
        value = _text(ds, keyword)
        if value is None:
            raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"missing {keyword}")
        try:
            return validate_uid(value)
        except ValueError as exc:
            raise InvalidInstance(Status.CANNOT_UNDERSTAND, f"invalid {keyword}") from exc

    series_number = getattr(ds, "SeriesNumber", None)
    return InstanceHeader(
        sop_class_uid=uid("SOPClassUID"),
        sop_instance_uid=uid("SOPInstanceUID"),
        study_instance_uid=uid("StudyInstanceUID"),
        series_instance_uid=uid("SeriesInstanceUID"),
        modality=_text(ds, "Modality") or "",
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=_text(ds, "SeriesDescription") or "",
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
    )
