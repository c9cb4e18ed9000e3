"""Single pictures: classification with a Grad-CAM explanation, and batches of pictures.

The services behind the seed-compatible routes (``api.seeds``): ``/api/classify`` (seed 002),
``/predict`` (seed 000), ``/api/predict`` (seed 004) and seed 003's scan uploads all classify
through :func:`classify_picture` and :func:`predict_batch`, and differ only in their shapes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time

import numpy as np
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.requests import Request

from api.audit import AuditAction, AuditObject, Auditor
from api.context import ApiContext
from api.errors import ApiError, ErrorCode
from api.imaging import check_file_type, decode_base64, decode_plane, png_base64
from api.inference import Classifier, ClassifierUnavailable, Prediction
from api.schemas import ClassifyOut
from neurogate.db.models import User

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.4
MAX_PICTURE_SIDE = 512  # the returned pictures; larger uploads are shown downsampled
_UPLOAD_FIELD = "file"
CLASS_DESCRIPTIONS = {
    "glioma": "Glioma: a tumour of the glial cells, usually within the brain parenchyma.",
    "meningioma": "Meningioma: a tumour of the meninges, outside the brain, often dural-based.",
    "notumor": "No tumour: no tumour visible on the image.",
    "pituitary": "Pituitary tumour: an adenoma of the pituitary gland, in the sella turcica.",
}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {_UPLOAD_FIELD: {"type": "string", "format": "binary"}},
                    "required": [_UPLOAD_FIELD],
                }
            }
        },
    }
}


def classification_error(exc: Exception) -> ApiError:
    log.error("classifier unavailable", extra={"error": str(exc)})
    return ApiError(500, ErrorCode.CLASSIFICATION_ERROR, "the classifier is not available")


async def uploaded_picture(request: Request) -> tuple[str, bytes]:
    """The one file of a multipart form: its name and bytes (NO_FILE, EMPTY_FILENAME)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, ErrorCode.NO_FILE, f"send the image as multipart field {_UPLOAD_FIELD!r}"
        )
    form = await request.form()
    upload = form.get(_UPLOAD_FIELD)
    if upload is None:
        raise ApiError(400, ErrorCode.NO_FILE, f"no file in field {_UPLOAD_FIELD!r}")
    if not isinstance(upload, StarletteUploadFile) or not upload.filename:
        raise ApiError(400, ErrorCode.EMPTY_FILENAME, "the file has no name")
    data = await upload.read()
    if not data:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, "the file is empty")
    return upload.filename, data


def fingerprint(data: bytes) -> str:
    """What the audit trail calls an uploaded picture: a hash, never its pixels or file name
    (a name may be a patient's)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _display(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    scale = MAX_PICTURE_SIDE / max(image.shape)
    if scale >= 1:
        return image
    return ndimage.zoom(image, scale, order=1)


def _explained(classifier: Classifier, image: np.ndarray) -> ClassifyOut:
    from scipy import ndimage

    from models.overlay import blend, heatmap_rgb, to_grey

    started = time.perf_counter()
    plane = classifier.prepare(image)
    prediction = classifier.predict([plane])[0]
    heatmap = classifier.explain(plane, prediction.index)
    shown = _display(image)
    heat = ndimage.zoom(
        heatmap, (shown.shape[0] / heatmap.shape[0], shown.shape[1] / heatmap.shape[1]), order=1
    )
    heat = np.clip(heat[: shown.shape[0], : shown.shape[1]], 0, 1)
    manifest = classifier.manifest()
    return ClassifyOut.model_validate(
        {
            "class": prediction.label,
            "class_id": prediction.index,
            "confidence": prediction.confidence,
            "probabilities": prediction.probabilities,
            "heatmap_overlay": png_base64(blend(shown, heat, OVERLAY_ALPHA)),
            "original_image": png_base64(to_grey(shown)),
            "heatmap_only": png_base64(heatmap_rgb(heat)),
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 1),
            "timestamp": dt.datetime.now(dt.UTC),
            "model": {"name": manifest.name, "version": manifest.version},
        }
    )


async def classify_picture(
    request: Request, context: ApiContext, auditor: Auditor, user: User | None
) -> ClassifyOut:
    """The picture of the request's multipart field ``file``, classified and explained."""
    filename, data = await uploaded_picture(request)
    return await explain_picture(filename, data, context, auditor, user)


async def explain_picture(
    filename: str, data: bytes, context: ApiContext, auditor: Auditor, user: User | None
) -> ClassifyOut:
    """A picture classified and explained with Grad-CAM, the classification audited."""
    from starlette.concurrency import run_in_threadpool

    check_file_type(filename, data)
    image = await run_in_threadpool(decode_plane, data, context.settings.decode_budget)
    try:
        result = await run_in_threadpool(_explained, context.classifier, image)
    except ClassifierUnavailable as exc:
        raise classification_error(exc) from exc
    context.metrics.classifications.inc()
    await run_in_threadpool(
        auditor.record,
        AuditAction.IMAGE_CLASSIFY,
        AuditObject.IMAGE,
        user=user,
        object_id=fingerprint(data),
        detail={"images": 1, "gradcam": True, "class": result.class_},
    )
    return result


def predict_batch(
    images: list[str], context: ApiContext, auditor: Auditor, user: User | None
) -> list[Prediction]:
    """Base64 pictures classified in one batch (no Grad-CAM), audited as one event."""
    planes = []
    budget = context.settings.decode_budget
    for index, value in enumerate(images):
        image = decode_plane(decode_base64(value, index), budget)
        try:
            planes.append(context.classifier.prepare(image))
        except ClassifierUnavailable as exc:
            raise classification_error(exc) from exc
    try:
        predictions = context.classifier.predict(planes)
    except ClassifierUnavailable as exc:
        raise classification_error(exc) from exc
    context.metrics.classifications.inc(len(planes))
    auditor.record(
        AuditAction.IMAGE_CLASSIFY,
        AuditObject.IMAGE,
        user=user,
        object_id=fingerprint("".join(images).encode()),
        detail={"images": len(planes), "gradcam": False},
    )
    return predictions
