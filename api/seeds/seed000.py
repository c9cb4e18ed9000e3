"""Seed 000 ("Brain Tumor Detection - Backend API"): ``POST /predict``.

Base64 pictures in; per picture, numbered from 1, the detected class with its confidence in
percent and the seed's class names (``Glioma``, ``Meningioma``, ``Notumor``, ``Pituitary``).
``GET /healthcheck`` (``status``, ``model_loaded``) is the node's own (``api.routes.service``).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import AuditDep, ContextDep
from api.routes.classify import predict_batch
from api.schemas import PredictRequest
from api.seeds.common import (
    DetailError,
    ImageCaller,
    detail_body,
    error_responses,
    percent,
    seed_route,
)

router = APIRouter(tags=["seed 000"], route_class=seed_route(detail_body))


class Detection(BaseModel):
    classId: int
    className: str
    confidence: float  # percent


class PredictResult(BaseModel):
    id: int  # the picture's place in the request, from 1
    detections: list[Detection]
    # The node's own, beside the seed's: every label's probability as the model gave it
    # (a fraction, not rounded), keyed by the manifest's labels.
    probabilities: dict[str, float]


class PredictOut(BaseModel):
    results: list[PredictResult]


def class_name(label: str) -> str:
    """Seed 000's spelling: the label capitalised (``notumor`` -> ``Notumor``)."""
    return label[:1].upper() + label[1:]


@router.post(
    "/predict",
    response_model=PredictOut,
    responses=error_responses(DetailError, 400, 401, 403, 413, 422, 429, 500),
)
def predict(
    caller: ImageCaller, context: ContextDep, auditor: AuditDep, body: PredictRequest
) -> PredictOut:
    """Classify base64 pictures in one batch; each result names the class detected."""
    predictions = predict_batch(body.image, context, auditor, caller)
    return PredictOut(
        results=[
            PredictResult(
                id=number,
                detections=[
                    Detection(
                        classId=prediction.index,
                        className=class_name(prediction.label),
                        confidence=percent(prediction.confidence),
                    )
                ],
                probabilities=prediction.probabilities,
            )
            for number, prediction in enumerate(predictions, start=1)
        ]
    )
