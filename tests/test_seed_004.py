"""Seed 004's contract (``POST /api/predict``, ``GET /api/health``, ``GET /``), replayed as its
README and its own tests show it, answered by the node's brain-tumour classifier."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.seed_support import brain_png, is_png, seed_client
from tests.test_api_support import add_user

LABELS = {"glioma", "meningioma", "notumor", "pituitary"}
DATA_URI = "data:image/png;base64,"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with seed_client(tmp_path_factory.mktemp("seed004")) as client:
        yield client


@pytest.fixture(scope="module")
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def test_predict_answers_the_readme_shape(client: TestClient, staff: dict[str, str]) -> None:
    response = client.post(
        "/api/predict",
        files={"file": ("test.jpg", brain_png(), "image/jpeg")},
        data={"skin_tone": "III", "lesion_location": "head"},
        headers=staff,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {
        "model_version",
        "predictions",
        "malignant_score",
        "grad_cam",
        "explanation",
        "processing_time_ms",
    }
    assert isinstance(data["model_version"], str) and data["model_version"]
    predictions = data["predictions"]
    assert {p["label"] for p in predictions} == LABELS
    assert all(set(p) == {"label", "probability"} for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    tumour = sum(p["probability"] for p in predictions if p["label"] != "notumor")
    assert data["malignant_score"] == pytest.approx(tumour, abs=1e-5)
    assert data["grad_cam"].startswith(DATA_URI)
    assert is_png(data["grad_cam"][len(DATA_URI) :])
    top = predictions[0]
    assert top["label"] in data["explanation"]
    assert f"{top['probability']:.1%}" in data["explanation"]
    assert isinstance(data["processing_time_ms"], int) and data["processing_time_ms"] >= 0
    base64.b64decode(data["grad_cam"][len(DATA_URI) :], validate=True)


def test_a_file_type_not_allowed_is_400_with_detail(
    client: TestClient, staff: dict[str, str]
) -> None:
    response = client.post(
        "/api/predict", files={"file": ("notes.txt", b"hello", "text/plain")}, headers=staff
    )
    assert response.status_code == 400
    assert "unsupported file type" in response.json()["detail"]


def test_predict_needs_a_token_by_default(client: TestClient) -> None:
    response = client.post("/api/predict", files={"file": ("t.png", brain_png(), "image/png")})
    assert response.status_code == 401 and response.json()["detail"] == "not authenticated"


def test_health_has_status_and_uptime(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert isinstance(body["uptime_seconds"], int | float) and body["uptime_seconds"] >= 0
    assert isinstance(body["model_loaded"], bool)


def test_root_has_message_version_and_docs(client: TestClient) -> None:
    body = client.get("/").json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["version"], str)
    assert body["docs"] == "/docs"
    assert client.get(body["docs"]).status_code == 200
