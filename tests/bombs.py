"""Decompression bombs: small files whose headers declare images too large to decode.

Neither is ever decoded by a test that passes: the node must refuse them from their headers.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.dicomgen import _slice

NIFTI_BOMB_SHAPE = (1024, 1024, 1536)  # uint8: 1.5 GiB
_CHUNK = 1 << 24
_NIFTI_DATA_OFFSET = 352  # a 348-byte header and 4 bytes of extension flags


def rle_blank_frame(rows: int, columns: int) -> bytes:
    """One 16-bit frame of zeros, RLE Lossless encoded (PS3.5 Annex G): two segments of runs.

    A run of 128 equal bytes costs two bytes, so a 512 x 512 frame is 8 KiB on disk and 512 KiB
    decoded (1 MiB more as float32).
    """
    runs, rest = divmod(rows * columns, 128)
    segment = b"\x81\x00" * runs + (bytes([257 - rest, 0]) if rest else b"")
    header = np.zeros(16, dtype="<u4")
    header[0], header[1], header[2] = 2, 64, 64 + len(segment)
    return header.tobytes() + segment + segment


def write_rle_bomb(
    path: Path,
    *,
    frames: int = 6000,
    size: int = 512,
    description: str = "t1_mprage_tra",
    study_uid: str | None = None,
) -> Path:
    """An Enhanced MR instance of ``frames`` blank ``size`` x ``size`` frames, RLE Lossless.

    6000 frames of 512 x 512 are 50 MB on disk, 3 GB decoded and 6 GB more as float32. The
    header is an ordinary axial 1 mm 3D T1, so the series is selected and would be loaded.
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import EnhancedMRImageStorage, RLELossless

    ds = _slice(study_uid or generate_uid(), generate_uid(), generate_uid(), 1, description, 0,
                size, np.random.default_rng(0))  # fmt: skip
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                    "SliceThickness", "InstanceNumber"):  # fmt: skip
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.MRAcquisitionType = "3D"
    ds.NumberOfFrames = frames
    ds.BitsStored, ds.HighBit = 16, 15
    shared, orientation, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, float(k)]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = encapsulate([rle_blank_frame(size, size)] * frames)
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def nifti_bomb() -> bytes:
    """A valid 1.6 MB ``.nii.gz`` of a 1024 x 1024 x 1536 uint8 volume (1.5 GiB) of zeros.

    Built from one deflate block of 16 MiB of zeros repeated (each ends with a full flush, so
    none refers to another), without compressing 1.5 GiB.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(NIFTI_BOMB_SHAPE)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = _NIFTI_DATA_OFFSET
    header["magic"] = b"n+1"
    head = header.binaryblock + b"\x00" * (_NIFTI_DATA_OFFSET - len(header.binaryblock))
    size = int(np.prod(NIFTI_BOMB_SHAPE))
    chunk = bytes(_CHUNK)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(size // _CHUNK):
        crc = zlib.crc32(chunk, crc)
    body = first + block * (size // _CHUNK) + deflate.flush()
    trailer = struct.pack("<II", crc, (len(head) + size) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + trailer
