"""Single pictures: ``/api/classify`` with Grad-CAM, the batch ``/predict``, ``/api/classes``
(in the shapes of seeds 002 and 000, whose contracts tests/test_seed_00*.py replay).

The classifier is loaded once for the module (TensorFlow takes seconds) and handed to each app.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from api.inference import Classifier
from models.overlay import to_grey
from models.registry import Task, default_manifest
from neurogate.settings import ModelSettings, Settings
from tests.bombs import write_rle_bomb
from tests.test_api_support import (
    add_patient,
    add_user,
    admin_headers,
    api_settings,
    empty_filename_part,
    running_app,
)

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
NAMES = ["Glioma", "Meningioma", "No Tumor", "Pituitary"]  # seed 002's


def code_of(response: Any) -> str:
    """The stable code of a seed route's error body (seed 002's, or FastAPI's with ours)."""
    return str(response.json()["error"]["code"])


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(None)


@pytest.fixture(scope="module")
def brain_plane() -> np.ndarray:
    """The FLAIR plane of a synthetic pituitary case where the tumour is largest."""
    from models.training.data import make_example

    example = make_example(50001, "pituitary")
    k = int(np.argmax((example.label > 0).sum(axis=(1, 2))))
    return np.asarray(example.image[3, k], dtype=np.float32)


def png(plane: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    image = Image.fromarray(to_grey(plane))
    if size is not None:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom(plane: np.ndarray) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.clip(plane, 0, None) * 1000).astype(np.uint16).tobytes()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("classify")
    return api_settings(data, f"sqlite:///{data / 'neurogate.sqlite'}")


@pytest.fixture(scope="module")
def client(settings: Settings, classifier: Classifier) -> Iterator[TestClient]:
    with running_app(settings) as client:
        client.app.state.context.classifier = classifier  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def picture(value: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(value)))


def test_a_png_slice_is_classified_and_explained(
    client: TestClient, staff: dict[str, str], brain_plane: np.ndarray
) -> None:
    response = client.post(
        "/api/classify", files={"file": ("slice.png", png(brain_plane, (240, 192)))}, headers=staff
    )
    assert response.status_code == 200, response.text
    body = response.json()
    prediction, shown = body["prediction"], body["visualization"]
    assert prediction["class"] in NAMES and NAMES[prediction["class_id"]] == prediction["class"]
    assert set(prediction["probabilities"]) == set(NAMES)
    assert sum(prediction["probabilities"].values()) == pytest.approx(100.0, abs=0.05)
    assert prediction["confidence"] == max(prediction["probabilities"].values())
    overlay, original, heat = (
        picture(shown[k]) for k in ("heatmap_overlay", "original_image", "heatmap_only")
    )
    assert original.size == overlay.size == heat.size == (240, 192)
    assert overlay.mode == heat.mode == "RGB" and original.mode == "L"
    assert body["processing_time_ms"] > 0 and body["model"]["version"]
    audit = client.get(
        "/api/audit", params={"action": "image.classify"}, headers=admin_headers(client)
    )
    event = audit.json()["items"][0]  # the picture by its hash: no file name, no pixels
    assert (event["username"], event["object_type"]) == ("clin", "image")
    assert event["object_id"].startswith("sha256:") and "slice.png" not in audit.text
    label = LABELS[prediction["class_id"]]
    assert event["detail"] == {"images": 1, "gradcam": True, "class": label}


def test_a_dicom_slice_is_classified(
    client: TestClient, staff: dict[str, str], brain_plane: np.ndarray
) -> None:
    response = client.post(
        "/api/classify", files={"file": ("IM0001", dicom(brain_plane))}, headers=staff
    )
    assert response.status_code == 200, response.text
    assert picture(response.json()["visualization"]["original_image"]).size == (96, 120)


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ({"image": ("a.png", b"x")}, 400, "NO_FILE"),
        ({"file": ("notes.txt", b"hello")}, 415, "INVALID_FILE_TYPE"),
        ({"file": ("scan.png", b"\x89PNG but not really")}, 400, "INVALID_IMAGE"),
        ({"file": ("scan.dcm", b"\x00" * 128 + b"DICM" + b"\x00" * 10)}, 400, "INVALID_IMAGE"),
        ({"file": ("empty.png", b"")}, 400, "INVALID_IMAGE"),
    ],
)
def test_bad_pictures_are_refused_with_their_code(
    client: TestClient, staff: dict[str, str], files: dict[str, Any], status: int, code: str
) -> None:
    response = client.post("/api/classify", files=files, headers=staff)
    assert response.status_code == status, response.text
    assert code_of(response) == code


def test_a_blank_picture_is_unprocessable(client: TestClient, staff: dict[str, str]) -> None:
    blank = png(np.zeros((64, 64), np.float32))
    response = client.post("/api/classify", files={"file": ("b.png", blank)}, headers=staff)
    assert response.status_code == 422 and code_of(response) == "INVALID_IMAGE"


def test_a_file_without_a_name_and_no_multipart(client: TestClient, staff: dict[str, str]) -> None:
    body, headers = empty_filename_part("file")
    response = client.post("/api/classify", content=body, headers={**staff, **headers})
    assert response.status_code == 400 and code_of(response) == "EMPTY_FILENAME"
    not_multipart = client.post("/api/classify", json={"file": "x"}, headers=staff)
    assert not_multipart.status_code == 400 and code_of(not_multipart) == "NO_FILE"


def test_predict_classifies_a_batch_in_one_call(
    client: TestClient, staff: dict[str, str], brain_plane: np.ndarray, classifier: Classifier
) -> None:
    calls = []
    model = classifier._loaded_model()
    original = model.predict

    def counting(batch: np.ndarray, **kwargs: Any) -> Any:
        calls.append(len(batch))
        return original(batch, **kwargs)

    images = [
        base64.b64encode(png(brain_plane)).decode(),
        "data:image/png;base64," + base64.b64encode(png(brain_plane, (300, 300))).decode(),
        base64.b64encode(png(np.rot90(brain_plane).copy())).decode(),
    ]
    model.predict = counting
    try:
        response = client.post("/predict", json={"image": images}, headers=staff)
    finally:
        model.predict = original
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [1, 2, 3] and calls == [3]
    audit = client.get(
        "/api/audit", params={"action": "image.classify"}, headers=admin_headers(client)
    )
    assert audit.json()["items"][0]["detail"] == {"images": 3, "gradcam": False}
    for result in results:  # the detected class, seed 000's spelling, in percent
        (detection,) = result["detections"]
        assert detection["className"] == LABELS[detection["classId"]].capitalize()
        assert 25 <= detection["confidence"] <= 100
    bad = client.post("/predict", json={"image": ["@@not base64@@"]}, headers=staff)
    assert bad.status_code == 400 and code_of(bad) == "INVALID_IMAGE"
    empty = client.post("/predict", json={"image": []}, headers=staff)
    assert empty.status_code == 422 and code_of(empty) == "VALIDATION_ERROR"


def test_classes_are_described(client: TestClient) -> None:
    body = client.get("/api/classes").json()
    assert [c["name"] for c in body["classes"]] == NAMES
    assert all(c["description"] for c in body["classes"])


def test_patients_may_not_classify(client: TestClient, brain_plane: np.ndarray) -> None:
    add_patient(client, "P9")
    patient = add_user(client, "pat9", "patient", patient_id="P9")
    response = client.post(
        "/api/classify", files={"file": ("s.png", png(brain_plane))}, headers=patient
    )
    assert response.status_code == 403 and code_of(response) == "FORBIDDEN"
    anonymous = client.post("/api/classify", files={"file": ("s.png", png(brain_plane))})
    assert anonymous.status_code == 401 and code_of(anonymous) == "UNAUTHORIZED"


def test_a_picture_over_the_limit_is_413(tmp_path: Path, brain_plane: np.ndarray) -> None:
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", max_request_mb=0.001)
    with running_app(settings) as client:
        staff = add_user(client, "clin", "clinician")
        big = png(brain_plane, (512, 512))
        response = client.post("/api/classify", files={"file": ("s.png", big)}, headers=staff)
    assert response.status_code == 413 and code_of(response) == "FILE_TOO_LARGE"


def test_an_altered_model_is_a_classification_error(
    tmp_path: Path, brain_plane: np.ndarray
) -> None:
    shipped = default_manifest(Task.CLASSIFICATION)
    manifest = tmp_path / "classification.toml"
    text = shipped.read_text().replace("../classification/classifier.keras", "classifier.keras")
    (tmp_path / "classifier.keras").write_bytes(b"tampered")
    manifest.write_text(text)
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    settings = settings.model_copy(update={"models": ModelSettings(classification=manifest)})
    with running_app(settings) as client:
        staff = add_user(client, "clin", "clinician")
        response = client.post(
            "/api/classify", files={"file": ("s.png", png(brain_plane))}, headers=staff
        )
    assert response.status_code == 500 and code_of(response) == "CLASSIFICATION_ERROR"
    assert "sha256" not in response.text


@pytest.fixture(scope="module")
def dicom_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """50 MB of RLE declaring 6000 frames of 512 x 512: 3 GB decoded, 6 GB more as float32."""
    return write_rle_bomb(tmp_path_factory.mktemp("bomb") / "bomb.dcm").read_bytes()


def test_a_decompression_bomb_is_refused_from_its_header_by_classify_and_predict(
    tmp_path: Path, classifier: Classifier, dicom_bomb: bytes
) -> None:
    """A bomb small enough to pass the body limit (here raised above its 50 MB) still never gets
    decoded: its header is what is refused."""
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", max_request_mb=128)
    with running_app(settings) as client:
        client.app.state.context.classifier = classifier  # type: ignore[attr-defined]
        staff = add_user(client, "clin", "clinician")
        classify = client.post(
            "/api/classify", files={"file": ("bomb.dcm", dicom_bomb)}, headers=staff
        )
        batch = client.post(
            "/predict", json={"image": [base64.b64encode(dicom_bomb).decode()]}, headers=staff
        )
    for response in (classify, batch):
        assert response.status_code == 413, response.text
        assert code_of(response) == "FILE_TOO_LARGE"
        message = response.json()["error"]["message"]
        assert "6000 x 512 x 512 of 16 bits" in message, message
        assert "9,000 MB" in message and "NEUROGATE_MAX_DECODE_MB" in message
