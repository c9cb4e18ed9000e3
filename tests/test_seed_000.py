"""Seed 000's contract (``POST /predict``, ``GET /healthcheck``), replayed as its README shows
it, against the node's own classifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.inference import Classifier
from neurogate.settings import Settings
from tests.seed_support import b64, brain_png
from tests.test_api_support import add_user, api_settings, running_app

NAMES = ["Glioma", "Meningioma", "Notumor", "Pituitary"]  # seed 000's spelling, by classId


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(None)


def _app(tmp: Path, classifier: Classifier, **api: object) -> Iterator[TestClient]:
    settings: Settings = api_settings(tmp, f"sqlite:///{tmp / 'neurogate.sqlite'}", **api)
    with running_app(settings) as client:
        client.app.state.context.classifier = classifier  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, classifier: Classifier
) -> Iterator[TestClient]:
    yield from _app(tmp_path_factory.mktemp("seed000"), classifier)


@pytest.fixture(scope="module")
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def test_predict_answers_the_readme_shape(client: TestClient, staff: dict[str, str]) -> None:
    pictures = [b64(brain_png()), b64(brain_png("meningioma", 50002))]
    response = client.post("/predict", json={"image": pictures}, headers=staff)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results"}
    assert [result["id"] for result in body["results"]] == [1, 2]
    for result in body["results"]:
        # The seed's keys, and the node's own unrounded probabilities beside them (#13, #14).
        assert set(result) == {"id", "detections", "probabilities"}
        (detection,) = result["detections"]
        label = detection["className"].lower()
        assert round(result["probabilities"][label] * 100, 2) == detection["confidence"]
        assert set(detection) == {"classId", "className", "confidence"}
        assert detection["className"] == NAMES[detection["classId"]]
        # The detected class is the most probable of four: at least a quarter, in percent.
        assert 25.0 <= detection["confidence"] <= 100.0
        assert detection["confidence"] == round(detection["confidence"], 2)


def test_predict_agrees_with_the_class_probabilities(
    client: TestClient, staff: dict[str, str]
) -> None:
    """The detection is the class seed 002's route ranks first, with the same percentage."""
    picture = brain_png()
    detection = client.post("/predict", json={"image": [b64(picture)]}, headers=staff).json()[
        "results"
    ][0]["detections"][0]
    classified = client.post(
        "/api/classify", files={"file": ("slice.png", picture)}, headers=staff
    ).json()["prediction"]
    assert detection["classId"] == classified["class_id"]
    assert detection["confidence"] == pytest.approx(classified["confidence"], abs=0.01)


def test_predict_needs_a_token_by_default(client: TestClient) -> None:
    response = client.post("/predict", json={"image": [b64(brain_png())]})
    assert response.status_code == 401
    assert response.json()["detail"] == "not authenticated"


def test_bad_base64_is_a_400_with_fastapis_detail(
    client: TestClient, staff: dict[str, str]
) -> None:
    response = client.post("/predict", json={"image": ["not base64!"]}, headers=staff)
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "image 0 is not valid base64"
    assert body["error"]["code"] == "INVALID_IMAGE"


def test_healthcheck_is_healthy_with_the_model_loaded(
    client: TestClient, staff: dict[str, str]
) -> None:
    """No PACS destination is configured here: a configuration note, not degraded."""
    client.post("/predict", json={"image": [b64(brain_png())]}, headers=staff)
    response = client.get("/healthcheck")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True
    assert client.get("/api/health").json()["status"] == "healthy"


def test_open_image_routes_take_no_token_within_the_rate(
    tmp_path: Path, classifier: Classifier
) -> None:
    for client in _app(tmp_path, classifier, open_image_routes=True, open_rate_limit=2):
        body = {"image": [b64(brain_png())]}
        assert client.post("/predict", json=body).status_code == 200
        assert client.post("/predict", json=body).status_code == 200
        refused = client.post("/predict", json=body)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "too many requests" in refused.json()["detail"]
        # The rest of the API still wants a token.
        assert client.get("/api/studies").status_code == 401
