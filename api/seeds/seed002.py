"""Seed 002 ("Brain Tumor Classification Backend"): ``POST /api/classify``, ``GET
/api/classes``; its ``GET /`` and ``GET /api/health`` keys are in the node's own bodies.

Percentages, the seed's class names (``No Tumor``), ``success`` on every body and its error
body ``{"success": false, "error": {"message", "code", "status"}, "timestamp"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from api.context import ApiContext
from api.deps import AuditDep, ContextDep
from api.inference import ClassifierUnavailable
from api.routes.classify import (
    CLASS_DESCRIPTIONS,
    CLASSIFY_BODY,
    classification_error,
    classify_picture,
)
from api.schemas import ClassifyOut
from api.seeds.common import (
    ImageCaller,
    display_name,
    error_responses,
    iso_millis,
    percent,
    seed_route,
)

# What seed 002's root lists (GET /), beside the node's own keys.
ENDPOINTS = {
    "/api/classify": {"method": "POST", "description": "Upload and classify a brain MRI image"},
    "/api/health": {"method": "GET", "description": "Health check endpoint"},
    "/api/classes": {"method": "GET", "description": "Get available classification classes"},
}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "success": False,
        "error": {"message": message, "code": code, "status": status},
        "timestamp": iso_millis(),
    }


class ErrorInfo(BaseModel):
    message: str
    code: str
    status: int


class ErrorResponse(BaseModel):
    success: bool = False
    error: ErrorInfo
    timestamp: str


router = APIRouter(tags=["seed 002"], route_class=seed_route(error_body))


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    class_id: int
    confidence: float  # percent
    probabilities: dict[str, float]  # display name -> percent


class Visualization(BaseModel):
    heatmap_overlay: str  # base64 PNG
    original_image: str
    heatmap_only: str


class ClassifyResponse(BaseModel):
    success: bool = True
    prediction: Prediction
    visualization: Visualization
    processing_time_ms: float
    timestamp: str
    model: dict[str, str]  # the node's: which model answered (name, version)
    # The node's own, beside the seed's percentages: every label's probability as the model
    # gave it (a fraction, not rounded), keyed by the manifest's labels.
    probabilities: dict[str, float]


class ClassInfo(BaseModel):
    id: int
    name: str
    description: str


class ClassesResponse(BaseModel):
    success: bool = True
    classes: list[ClassInfo]
    total_classes: int
    model: dict[str, str]


def health_fields(context: ApiContext, model_ready: bool) -> dict[str, Any]:
    """Seed 002's ``/api/health`` keys: ``timestamp``, ``services``, ``details``.

    The node has no Spark: it reports the service as not used. ``model_path`` is the weights'
    file name only (the public health body names no paths).
    """
    try:
        manifest = context.classifier.manifest()
    except ClassifierUnavailable:
        manifest = None
    return {
        "timestamp": iso_millis(),
        "services": {
            "model": {
                "status": "up" if model_ready else "down",
                "loaded": context.classifier.loaded,
            },
            "spark": {"status": "not_used", "active": False},
        },
        "details": {
            "model_path": manifest.file.name if manifest else None,
            "num_classes": len(manifest.labels) if manifest else 0,
            "image_size": list(manifest.input_shape[:2]) if manifest else None,
            "spark_version": None,
        },
    }


def classify_response(result: ClassifyOut) -> ClassifyResponse:
    return ClassifyResponse(
        prediction=Prediction.model_validate(
            {
                "class": display_name(result.class_),
                "class_id": result.class_id,
                "confidence": percent(result.confidence),
                "probabilities": {
                    display_name(label): percent(p) for label, p in result.probabilities.items()
                },
            }
        ),
        visualization=Visualization(
            heatmap_overlay=result.heatmap_overlay,
            original_image=result.original_image,
            heatmap_only=result.heatmap_only,
        ),
        processing_time_ms=result.processing_time_ms,
        timestamp=iso_millis(result.timestamp),
        model=result.model,
        probabilities=result.probabilities,
    )


@router.post(
    "/api/classify",
    response_model=ClassifyResponse,
    response_model_by_alias=True,
    openapi_extra=CLASSIFY_BODY,
    responses=error_responses(ErrorResponse, 400, 401, 403, 413, 415, 422, 429, 500),
)
async def classify(
    caller: ImageCaller, context: ContextDep, auditor: AuditDep, request: Request
) -> ClassifyResponse:
    """Classify one picture (PNG, JPEG, GIF, BMP, WebP or DICOM) and explain it with Grad-CAM."""
    result = await classify_picture(request, context, auditor, caller)
    return classify_response(result)


@router.get(
    "/api/classes", response_model=ClassesResponse, responses=error_responses(ErrorResponse, 500)
)
def classes(context: ContextDep) -> ClassesResponse:
    """The classes the configured classifier tells apart."""
    try:
        manifest = context.classifier.manifest()
    except ClassifierUnavailable as exc:
        raise classification_error(exc) from exc
    return ClassesResponse(
        model={"name": manifest.name, "version": manifest.version},
        classes=[
            ClassInfo(
                id=i, name=display_name(label), description=CLASS_DESCRIPTIONS.get(label, label)
            )
            for i, label in enumerate(manifest.labels)
        ],
        total_classes=len(manifest.labels),
    )
