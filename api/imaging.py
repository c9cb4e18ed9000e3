"""Uploaded pictures to greyscale planes, and planes to base64 PNG."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import PurePath

import numpy as np

from api.errors import ApiError, ErrorCode
from neurogate.budget import DecodeBudget, DecodeBudgetExceeded, Geometry

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
ACCEPTED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
MAX_PIXELS = 40_000_000  # refuse decompression bombs long before PIL's own limit
MIN_SIDE = 16  # smaller than this is not a picture of a head
_DATA_URL_SEPARATOR = ";base64,"


def is_dicom(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)] == _DICOM_MAGIC


def check_file_type(filename: str, data: bytes) -> None:
    """Accept the image types and DICOM (by suffix, or by the DICM preamble when there is none).

    Raises
    ------
    ApiError
        415 ``INVALID_FILE_TYPE`` for anything else.
    """
    suffix = PurePath(filename).suffix.lower()
    if suffix in ACCEPTED_SUFFIXES or (not suffix and is_dicom(data)):
        return
    accepted = ", ".join(sorted(s.lstrip(".") for s in ACCEPTED_SUFFIXES))
    raise ApiError(415, ErrorCode.INVALID_FILE_TYPE, f"unsupported file type; accepted: {accepted}")


def decode_plane(data: bytes, budget: DecodeBudget) -> np.ndarray:
    """The picture in ``data`` as a 2D float32 plane (luma for colour pictures).

    Raises
    ------
    ApiError
        400 ``INVALID_IMAGE`` when it cannot be decoded, 413 ``FILE_TOO_LARGE`` when its header
        declares more pixels than ``budget`` allows to decode (nothing is decoded then), 422
        when it decodes to something that is not a usable plane (too small, blank).
    """
    try:
        plane = _decode_dicom(data, budget) if is_dicom(data) else _decode_picture(data, budget)
    except DecodeBudgetExceeded as exc:
        raise ApiError(413, ErrorCode.FILE_TOO_LARGE, str(exc)) from exc
    if min(plane.shape) < MIN_SIDE:
        raise ApiError(
            422, ErrorCode.INVALID_IMAGE, f"image too small: at least {MIN_SIDE} pixels a side"
        )
    finite = plane[np.isfinite(plane)]
    if finite.size == 0 or float(finite.max()) <= float(finite.min()):
        raise ApiError(422, ErrorCode.INVALID_IMAGE, "image is blank")
    return plane


def _decode_picture(data: bytes, budget: DecodeBudget) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ApiError(400, ErrorCode.INVALID_IMAGE, "image has too many pixels")
            geometry = Geometry((image.height, image.width, len(image.getbands())), 1)
            budget.check(geometry.decode_bytes, f"the picture ({geometry})")
            image.seek(0)  # the first frame of an animation
            return np.asarray(image.convert("F"), dtype=np.float32)
    except DecodeBudgetExceeded:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "file is not a readable image") from exc


def _decode_dicom(data: bytes, budget: DecodeBudget) -> np.ndarray:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(io.BytesIO(data))
        budget.check_dicom([ds], "the DICOM image")
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except DecodeBudgetExceeded:
        raise
    except (
        InvalidDicomError,
        AttributeError,
        ValueError,
        RuntimeError,
        OSError,
        NotImplementedError,
    ) as exc:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "DICOM file has no readable image") from exc
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:  # colour: the mean of the samples
        pixels = pixels.mean(axis=-1)
    if pixels.ndim == 3:  # multi-frame: the middle frame
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim != 2:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "DICOM image is not a plane")
    pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


def decode_base64(value: str, index: int) -> bytes:
    """Bytes of a base64 string (a ``data:`` URL is accepted too); 400 names the bad item."""
    if _DATA_URL_SEPARATOR in value[:100]:
        value = value.split(_DATA_URL_SEPARATOR, 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, f"image {index} is not valid base64") from exc


def png_base64(picture: np.ndarray) -> str:
    """A uint8 grey (h, w) or RGB (h, w, 3) picture as base64 PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
