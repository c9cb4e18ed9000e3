"""What decoding an image will cost in memory, told from its header alone, and the limit on it.

A 50 MB RLE instance can declare 6000 frames of 512 x 512 (3 GB of pixels, 6 GB more once
converted to float32), and a 1.6 MB ``.nii.gz`` a 1.5 GiB volume: decoded, either takes the
process down. The worker (series and NIfTI volumes) and the API (pictures, DICOM and NIfTI
uploads) therefore read the declared geometry first and refuse anything whose decoded pixels
plus their float32 copy exceed ``Settings.max_decode_mb``. This module is that one check; it
imports nothing heavy, so both services can use it wherever a header is at hand.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset

MB = 1 << 20
DEFAULT_MAX_DECODE_MB = 1024.0
FLOAT32_BYTES = 4
SETTING = "NEUROGATE_MAX_DECODE_MB"

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_HEADER, _NIFTI2_HEADER = 348, 540
_MAX_NIFTI_DIMS = 7


@dataclass(frozen=True)
class Geometry:
    """The array an image decodes to: its shape (frames or slices first) and value size."""

    shape: tuple[int, ...]
    bytes_per_value: int

    def __post_init__(self) -> None:
        if any(n < 0 for n in self.shape) or self.bytes_per_value < 1:
            raise ValueError(f"impossible geometry {self.shape} x {self.bytes_per_value} bytes")

    @property
    def values(self) -> int:
        return math.prod(self.shape)

    @property
    def decode_bytes(self) -> int:
        """The decoded array plus the float32 volume made of it."""
        return self.values * (self.bytes_per_value + FLOAT32_BYTES)

    def __str__(self) -> str:
        return f"{' x '.join(map(str, self.shape))} of {self.bytes_per_value * 8} bits"


class DecodeBudgetExceeded(ValueError):
    """Decoding would need more memory than the budget allows: refused, permanently."""

    def __init__(self, what: str, needed: int, limit: int) -> None:
        self.needed, self.limit = needed, limit
        super().__init__(
            f"{what} would need {needed / MB:,.0f} MB to decode, more than the limit of "
            f"{limit / MB:,.0f} MB ({SETTING})"
        )


@dataclass(frozen=True)
class DecodeBudget:
    """The most memory one image, series or volume may take once decoded."""

    max_bytes: int

    @classmethod
    def of_mb(cls, megabytes: float) -> DecodeBudget:
        return cls(int(megabytes * MB))

    def check(self, needed: int, what: str) -> None:
        """Raise :class:`DecodeBudgetExceeded` when ``needed`` bytes are over the budget."""
        if needed > self.max_bytes:
            raise DecodeBudgetExceeded(what, needed, self.max_bytes)

    def check_dicom(self, datasets: Iterable[Dataset], what: str) -> None:
        """Check the pixels of ``datasets`` (headers suffice) taken together, as one series."""
        geometries = [dicom_geometry(ds) for ds in datasets]
        needed = sum(g.decode_bytes for g in geometries)
        if needed > self.max_bytes:
            largest = max(geometries, key=lambda g: g.decode_bytes)
            detail = f"{len(geometries)} instances, the largest {largest}"
            if len(geometries) == 1:
                detail = str(largest)
            raise DecodeBudgetExceeded(f"{what} ({detail})", needed, self.max_bytes)

    def check_nifti(self, stream: IO[bytes], what: str) -> Geometry:
        """Check a NIfTI file from its header (read from ``stream``'s start, rewound after)."""
        geometry = nifti_geometry(stream)
        self.check(geometry.decode_bytes, f"{what} ({geometry})")
        return geometry


DEFAULT_BUDGET = DecodeBudget.of_mb(DEFAULT_MAX_DECODE_MB)


def dicom_geometry(ds: Dataset) -> Geometry:
    """The decoded pixel array of ``ds`` from Rows, Columns, Number of Frames, Samples per
    Pixel and Bits Allocated (1-bit data decodes to one byte a value); empty without pixels."""

    def number(keyword: str, default: int) -> int:
        value = ds.get(keyword)
        try:
            return int(value) if value not in (None, "") else default
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{keyword} is not a number: {value!r}") from exc

    rows, columns = number("Rows", 0), number("Columns", 0)
    frames, samples = number("NumberOfFrames", 1), number("SamplesPerPixel", 1)
    bits = number("BitsAllocated", 16)
    shape = (frames, rows, columns) if samples == 1 else (frames, rows, columns, samples)
    return Geometry(shape, max(1, math.ceil(bits / 8)))


def nifti_geometry(stream: IO[bytes]) -> Geometry:
    """The volume a NIfTI-1 or NIfTI-2 file (gzip-compressed or not) declares in its header.

    Only the header is read (for a ``.nii.gz``, only what decompresses to it); ``stream`` is
    rewound to its start afterwards.

    Raises
    ------
    ValueError
        When the stream does not start with a NIfTI header (or is broken gzip).
    """
    stream.seek(0)
    try:
        magic = stream.read(2)
        stream.seek(0)
        try:
            if magic == _GZIP_MAGIC:
                header = gzip.GzipFile(fileobj=stream, mode="rb").read(_NIFTI2_HEADER)
            else:
                header = stream.read(_NIFTI2_HEADER)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError("not a readable gzip-compressed file") from exc
    finally:
        stream.seek(0)
    return _parse_nifti(header)


def _parse_nifti(header: bytes) -> Geometry:
    if len(header) < 4:
        raise ValueError("not a NIfTI file")
    for order in "<>":
        size = struct.unpack(f"{order}i", header[:4])[0]
        if size == _NIFTI1_HEADER and len(header) >= _NIFTI1_HEADER:
            dims = struct.unpack(f"{order}8h", header[40:56])
            bitpix = struct.unpack(f"{order}h", header[72:74])[0]
            break
        if size == _NIFTI2_HEADER and len(header) >= _NIFTI2_HEADER:
            dims = struct.unpack(f"{order}8q", header[16:80])
            bitpix = struct.unpack(f"{order}h", header[14:16])[0]
            break
    else:
        raise ValueError("not a NIfTI file")
    rank = dims[0]
    if not 1 <= rank <= _MAX_NIFTI_DIMS or any(n < 0 for n in dims[1 : rank + 1]) or bitpix < 1:
        raise ValueError(f"not a valid NIfTI header (dim {list(dims)}, bitpix {bitpix})")
    shape = tuple(int(n) for n in reversed(dims[1 : rank + 1]))  # slowest axis first
    return Geometry(shape, max(1, math.ceil(bitpix / 8)))
