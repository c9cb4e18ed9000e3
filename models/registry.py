"""The model registry: a manifest per model says what it is and how to feed it.

Swapping a model is a configuration change: point the node at another manifest (settings
``NEUROGATE_MODELS__BRAIN_EXTRACTION`` / ``__DETECTION`` / ``__CLASSIFICATION`` /
``__SEGMENTATION``). Manifests name the
framework and weights file (``.keras``/``.h5`` for Keras; ``.pth`` state dict of a known
architecture, or TorchScript ``.pt``, for PyTorch), the input size and preprocessing, the labels,
the version and the SHA-256 of the weights, which is checked before loading.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

MANIFESTS = Path(__file__).with_name("manifests")
_CHUNK = 1 << 20


class Task(StrEnum):
    BRAIN_EXTRACTION = "brain_extraction"
    DETECTION = "detection"
    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"


class Framework(StrEnum):
    KERAS = "keras"
    TORCH = "torch"


class Preprocessing(StrEnum):
    CANONICAL = "canonical"  # models.preprocessing: 2 mm grid, robust-max normalisation
    # The same planes, only their intracranial part, scaled by its own robust maximum
    # (models.preprocessing.brain_normalise): a model trained on brain-extracted planes.
    BRAIN = "brain"
    UNIT = "unit"  # a 2D image scaled to 0..1 (Kaggle-style classifiers)
    IMAGENET = "imagenet"  # 0..255 RGB, as keras.applications models expect


class ChecksumMismatch(ValueError):
    """The weights file is not the one the manifest describes."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    task: Task
    framework: Framework
    file: Path
    sha256: str
    input_shape: tuple[int, ...]
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    architecture: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_toml(cls, path: Path) -> ModelManifest:
        """Read and validate a manifest; relative ``file`` paths are relative to it."""
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        try:
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=Task(data["task"]),
                framework=Framework(data["framework"]),
                file=(path.parent / data["file"]).resolve(),
                sha256=str(data["sha256"]).lower(),
                input_shape=tuple(int(v) for v in data["input_shape"]),
                preprocessing=Preprocessing(data["preprocessing"]),
                labels=tuple(str(v) for v in data["labels"]),
                architecture=dict(data.get("architecture", {})),
                description=str(data.get("description", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid model manifest {path}: {exc!r}") from exc
        if len(manifest.sha256) != 64:
            raise ValueError(f"invalid model manifest {path}: sha256 must be 64 hex digits")
        return manifest

    @property
    def on_canonical_grid(self) -> bool:
        """Whether the model takes planes of the canonical grid as they are (no resizing)."""
        return self.preprocessing in (Preprocessing.CANONICAL, Preprocessing.BRAIN)

    @property
    def window(self) -> tuple[int, int, int] | None:
        """The crop a segmentation network was trained on; inference slides it over the grid."""
        window = self.architecture.get("window")
        if window is None:
            return None
        k, j, i = (int(v) for v in window)
        return k, j, i

    @property
    def version_info(self) -> dict[str, str]:
        """What a result records about the model that produced it."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(manifest: ModelManifest) -> None:
    actual = sha256_of(manifest.file)
    if actual != manifest.sha256:
        raise ChecksumMismatch(
            f"{manifest.file.name}: sha256 {actual} differs from the manifest's {manifest.sha256}"
        )


def load(manifest: ModelManifest) -> Any:
    """The model object: a Keras model, or a PyTorch module in eval mode."""
    verify(manifest)
    if manifest.framework is Framework.KERAS:
        import keras

        return keras.saving.load_model(manifest.file, compile=False)
    import torch

    if manifest.file.suffix == ".pth":
        module = _torch_architecture(manifest.architecture)
        module.load_state_dict(torch.load(manifest.file, map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(manifest.file, map_location="cpu")
    return module.eval()


def _torch_architecture(spec: dict[str, Any]) -> Any:
    name = spec.get("name")
    if name == "unet3d":
        from models.segmentation.unet3d import UNet3D

        return UNet3D(
            in_channels=int(spec.get("in_channels", 4)),
            out_channels=int(spec.get("out_channels", 4)),
            base=int(spec.get("base", 12)),
        )
    raise ValueError(f"unknown architecture {name!r}: ship a TorchScript file (.pt) instead")


def default_manifest(task: Task) -> Path:
    return MANIFESTS / f"{task.value}.toml"


def manifest_for(task: Task, configured: Path | None = None) -> ModelManifest:
    """The manifest configured for ``task`` (``Settings.models``), else the shipped one."""
    return ModelManifest.from_toml(configured or default_manifest(task))
