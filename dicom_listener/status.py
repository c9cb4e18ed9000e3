"""DIMSE status values the listener answers with (PS3.4 Annex B, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # C-STORE failures (PS3.4 B.2.3)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # DIMSE-N failures (PS3.7 C.4), used by the MPPS SCP
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    INVALID_ATTRIBUTE_VALUE = 0x0106
    MISSING_ATTRIBUTE = 0x0120
