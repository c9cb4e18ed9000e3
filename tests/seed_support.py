"""Helpers shared by the seed contract tests (this module holds no tests)."""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from api.inference import Classifier
from models.overlay import to_grey
from tests.test_api_support import api_settings, running_app

SEED_002_NAMES = ["Glioma", "Meningioma", "No Tumor", "Pituitary"]


@functools.cache
def brain_png(case: str = "pituitary", seed: int = 50001) -> bytes:
    """A PNG of the FLAIR plane of a synthetic case where its tumour (if any) is largest."""
    from models.training.data import make_example

    example = make_example(seed, case)
    k = int(np.argmax((example.label > 0).sum(axis=(1, 2)))) if case != "notumor" else 60
    buffer = io.BytesIO()
    Image.fromarray(to_grey(np.asarray(example.image[3, k], dtype=np.float32))).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def is_png(value: str) -> bool:
    image = Image.open(io.BytesIO(base64.b64decode(value)))
    return image.format == "PNG" and min(image.size) > 0


@contextmanager
def seed_client(tmp: Path, **api: Any) -> Iterator[TestClient]:
    """The API (``api``: settings of its own) on SQLite under ``tmp`` with the shipped
    classifier, as a seed's client calls it."""
    settings = api_settings(tmp, f"sqlite:///{tmp / 'neurogate.sqlite'}", **api)
    with running_app(settings) as client:
        client.app.state.context.classifier = Classifier(None)  # type: ignore[attr-defined]
        yield client
