"""Seed 002's contract (``POST /api/classify``, ``GET /api/health``, ``GET /api/classes``,
``GET /``), replayed as its README shows it, against the node's own classifier."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.seed_support import SEED_002_NAMES, brain_png, is_png, seed_client
from tests.test_api_support import add_user, api_settings, running_app

ISO_MILLIS = "%Y-%m-%dT%H:%M:%S.%fZ"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with seed_client(tmp_path_factory.mktemp("seed002")) as client:
        yield client


@pytest.fixture(scope="module")
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def _timestamp(value: str) -> dt.datetime:
    assert value.endswith("Z") and len(value.split(".")[1]) == 4, value  # .000Z
    return dt.datetime.strptime(value, ISO_MILLIS)


def test_classify_answers_the_readme_shape(client: TestClient, staff: dict[str, str]) -> None:
    response = client.post(
        "/api/classify", files={"file": ("brain_scan.png", brain_png())}, headers=staff
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert {"prediction", "visualization", "processing_time_ms", "timestamp"} <= set(body)
    prediction = body["prediction"]
    assert set(prediction) == {"class", "class_id", "confidence", "probabilities"}
    assert prediction["class"] == SEED_002_NAMES[prediction["class_id"]]
    assert list(prediction["probabilities"]) == SEED_002_NAMES
    assert sum(prediction["probabilities"].values()) == pytest.approx(100, abs=0.05)
    assert prediction["confidence"] == max(prediction["probabilities"].values()) >= 25
    assert set(body["visualization"]) == {"heatmap_overlay", "original_image", "heatmap_only"}
    assert all(is_png(value) for value in body["visualization"].values())
    assert body["processing_time_ms"] > 0
    _timestamp(body["timestamp"])


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ({"image": ("a.png", b"x")}, 400, "NO_FILE"),
        ({"file": ("notes.txt", b"hello")}, 415, "INVALID_FILE_TYPE"),
        ({"file": ("scan.png", b"\x89PNG but not really")}, 400, "INVALID_IMAGE"),
    ],
)
def test_errors_take_the_seeds_body(
    client: TestClient, staff: dict[str, str], files: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/api/classify", files=files, headers=staff)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"success", "error", "timestamp"}
    assert body["success"] is False
    assert body["error"]["code"] == code and body["error"]["status"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    _timestamp(body["timestamp"])


def test_classify_without_a_token_is_401_in_the_seeds_body(client: TestClient) -> None:
    response = client.post("/api/classify", files={"file": ("s.png", brain_png())})
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "not authenticated",
        "code": "UNAUTHORIZED",
        "status": 401,
    }


def test_health_has_the_seeds_keys(client: TestClient, staff: dict[str, str]) -> None:
    client.post("/api/classify", files={"file": ("s.png", brain_png())}, headers=staff)
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    _timestamp(body["timestamp"])
    assert body["services"]["model"] == {"status": "up", "loaded": True}
    assert set(body["services"]["spark"]) == {"status", "active"}
    assert body["services"]["spark"]["active"] is False  # the node has no Spark
    details = body["details"]
    assert set(details) == {"model_path", "num_classes", "image_size", "spark_version"}
    assert details["num_classes"] == 4 and details["model_path"].endswith(".keras")
    assert len(details["image_size"]) == 2 and all(side > 0 for side in details["image_size"])


def test_classes_answer_the_readme_shape(client: TestClient) -> None:
    body = client.get("/api/classes").json()
    assert body["success"] is True and body["total_classes"] == 4
    assert [(c["id"], c["name"]) for c in body["classes"]] == list(enumerate(SEED_002_NAMES))
    assert all(
        set(c) == {"id", "name", "description"} and c["description"] for c in body["classes"]
    )


def test_root_lists_the_endpoints(client: TestClient) -> None:
    body = client.get("/").json()
    assert isinstance(body["name"], str) and isinstance(body["version"], str)
    assert body["endpoints"] == {
        "/api/classify": {"method": "POST", "description": "Upload and classify a brain MRI image"},
        "/api/health": {"method": "GET", "description": "Health check endpoint"},
        "/api/classes": {"method": "GET", "description": "Get available classification classes"},
    }


def test_a_picture_over_the_size_limit_is_413_in_the_seeds_body(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", max_request_mb=0.001)
    with running_app(settings) as client:
        staff = add_user(client, "clin", "clinician")
        response = client.post(
            "/api/classify", files={"file": ("big.png", b"\x89PNG" + bytes(4096))}, headers=staff
        )
    assert response.status_code == 413
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error", "timestamp"}
    assert body["error"]["code"] == "FILE_TOO_LARGE" and body["error"]["status"] == 413
