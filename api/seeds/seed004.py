"""Seed 004 (a skin-lesion backend's contract): ``POST /api/predict``, answered by the node's
brain-tumour classifier; its ``GET /api/health`` (``status``, ``uptime_seconds``) and ``GET /``
(``message``, ``version``, ``docs``) keys are in the node's own bodies.

``predictions`` lists every class with its probability (0-1), most probable first;
``malignant_score`` is the probability of a tumour (every class but ``notumor``); ``grad_cam``
a PNG data URI of the Grad-CAM overlay. Errors are FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request

from api.deps import AuditDep, ContextDep
from api.routes.classify import CLASSIFY_BODY, classify_picture
from api.seeds.common import (
    NO_TUMOUR,
    DetailError,
    ImageCaller,
    detail_body,
    error_responses,
    seed_route,
)

# The seed answers 400 for a picture it cannot take (type, size, content), 500 for the model.
router = APIRouter(
    tags=["seed 004"], route_class=seed_route(detail_body, {415: 400, 422: 400, 413: 400})
)


class LabelProbability(BaseModel):
    label: str
    probability: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[LabelProbability]
    malignant_score: float
    grad_cam: str  # data:image/png;base64,...
    explanation: str
    processing_time_ms: int


@router.post(
    "/api/predict",
    response_model=PredictResponse,
    openapi_extra=CLASSIFY_BODY,
    responses=error_responses(DetailError, 400, 401, 403, 429, 500),
)
async def predict(
    caller: ImageCaller, context: ContextDep, auditor: AuditDep, request: Request
) -> PredictResponse:
    """Classify one picture, with every class's probability and a Grad-CAM overlay.

    The seed's optional form fields ``skin_tone`` and ``lesion_location`` are accepted and
    have no bearing on a brain MRI.
    """
    result = await classify_picture(request, context, auditor, caller)
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])
    top_label, top_probability = ranked[0]
    return PredictResponse(
        model_version=result.model["version"],
        predictions=[LabelProbability(label=label, probability=p) for label, p in ranked],
        malignant_score=round(
            sum(p for label, p in result.probabilities.items() if label != NO_TUMOUR), 6
        ),
        grad_cam="data:image/png;base64," + result.heatmap_overlay,
        explanation=(
            f"Model focused on regions with highest activation for {top_label}. "
            f"Classification confidence: {top_probability:.1%}."
        ),
        processing_time_ms=round(result.processing_time_ms),
    )
