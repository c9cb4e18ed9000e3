"""DICOM UID values as they cross service boundaries."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# PS3.5 9.1 allows only digits and dots, at most 64 characters. Some devices emit components with
# leading zeros; those are accepted (they are still safe as file names) but nothing else is.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


def validate_uid(value: str) -> str:
    """Return ``value`` without DICOM padding, or raise ``ValueError`` if it is not a UID."""
    uid = value.strip("\x00 ")
    if not uid or len(uid) > MAX_UID_LENGTH or not _UID.match(uid):
        raise ValueError(f"not a DICOM UID: {value!r}")
    return uid


DicomUID = Annotated[str, AfterValidator(validate_uid)]
