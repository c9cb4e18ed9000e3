"""What an engine hands the listener: a data set received whole, and the function it goes to.

Engine-independent: the storage SCP (:mod:`dicom_listener.scp`) decides on a :class:`Received`
whichever engine (:mod:`dicom_listener.engines`) turned the wire into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom.association import Association


@dataclass(frozen=True, slots=True)
class Received:
    """A data set received whole, as a Part 10 stream: in memory, or a file in ``tmp/``."""

    path: Path | None  # the file in tmp/; None: only in memory, in ``content``
    content: bytes | bytearray | None = None  # the stream's bytes, when it is small enough
    synced: bool = False  # the file's content is on stable storage already


# (received, SOP Class UID, SOP Instance UID, association) -> DIMSE status. The function owns
# the received file from then on.
StoreFunction = Callable[[Received, str, str, "Association"], int]

__all__ = ["Received", "StoreFunction"]
