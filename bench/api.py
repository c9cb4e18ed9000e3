"""API benchmark: ``/predict`` with a batch of 8 against 8 single calls; ``/api/classify`` latency.

The app runs in-process behind FastAPI's TestClient (the HTTP hop is not measured, the whole
request handling is: decoding, preprocessing, the model, Grad-CAM, PNG encoding). Pictures are
axial planes of held-out synthetic studies, as PNG. Prints the median of several rounds.

    .venv/bin/python bench/api.py --rounds 5
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from api.app import create_app  # noqa: E402
from models.training.data import make_example  # noqa: E402
from neurogate.settings import ApiSettings  # noqa: E402
from tests.conftest import make_settings  # noqa: E402

BATCH = 8
ADMIN = ("bench-admin", "bench-password-not-secret")


def planes() -> list[bytes]:
    """Eight PNGs: T1CE planes through the middle of four held-out studies."""
    pictures = []
    for n, tumour in enumerate(("glioma", "meningioma", "pituitary", "none")):
        image = make_example(600000 + n, tumour).image[1].astype(np.float32)
        for k in (40, 48):
            plane = np.clip(image[k] / 1.5, 0, 1)
            buffer = io.BytesIO()
            Image.fromarray((plane * 255).astype(np.uint8)).save(buffer, format="PNG")
            pictures.append(buffer.getvalue())
    return pictures[:BATCH]


def timed(call: object, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurogate-api-bench-"))
    settings = make_settings(work, f"sqlite:///{work / 'api.sqlite'}")
    settings = settings.model_copy(
        update={"api": ApiSettings(admin_username=ADMIN[0], admin_password=ADMIN[1])}
    )
    pictures = planes()
    encoded = [base64.b64encode(p).decode() for p in pictures]
    with TestClient(create_app(settings, bcrypt_rounds=4)) as client:
        token = client.post(
            "/api/auth/login", data={"username": ADMIN[0], "password": ADMIN[1]}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def predict(images: list[str]) -> None:
            response = client.post("/predict", json={"image": images}, headers=headers)
            assert response.status_code == 200, response.text

        def classify() -> None:
            files = {"file": ("plane.png", pictures[0], "image/png")}
            response = client.post("/api/classify", files=files, headers=headers)
            assert response.status_code == 200, response.text

        predict(encoded[:1])  # loads the model
        batch = timed(lambda: predict(encoded), args.rounds)
        singles = timed(lambda: [predict([e]) for e in encoded], args.rounds)
        classify_s = timed(classify, args.rounds)
    print(f"\nAPI, in-process, median of {args.rounds} rounds\n")
    print(f"{'request':<46}{'ms':>9}{'ms/image':>10}")
    print(f"{'/predict, one batch of 8':<46}{batch * 1000:>9.0f}{batch * 1000 / BATCH:>10.1f}")
    print(f"{'/predict, 8 single calls':<46}{singles * 1000:>9.0f}{singles * 1000 / BATCH:>10.1f}")
    print(f"{'batch speed-up':<46}{singles / batch:>9.2f}x")
    print(f"{'/api/classify with Grad-CAM, one picture':<46}{classify_s * 1000:>9.0f}")


if __name__ == "__main__":
    main()
