"""Write the manifests of the shipped models: ``python -m models.training.manifests``.

Run after training: records each weights file's SHA-256 so the registry can check it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.registry import MANIFESTS, sha256_of
from models.training.data import CLASSES

VERSION = "0.1.0"
_MODELS: dict[str, dict[str, Any]] = {
    "brain_extraction": {
        "version": "0.2.0",
        "name": "neurogate-brain-extraction",
        "framework": "torch",
        "file": "../brain/weights.pth",
        "input_shape": [1, 80, 64, 64],
        "preprocessing": "canonical",
        "labels": ["intracranial"],
        "architecture": {"name": "unet3d", "in_channels": 1, "out_channels": 1, "base": 8},
        "description": "Intracranial space (inside the skull's inner table, the pituitary fossa "
        "included) on a 4 mm whole-head grid, from any single MR contrast.",
    },
    "detection": {
        "name": "neurogate-slice-detector",
        "framework": "keras",
        "file": "../classification/detector.keras",
        "input_shape": [128, 128, 1],
        "preprocessing": "canonical",
        "labels": ["tumour"],
        "description": "Tumour present on an axial 2 mm plane; any MR contrast.",
    },
    "classification": {
        "version": "0.3.0",
        "name": "neurogate-slice-classifier",
        "framework": "keras",
        "file": "../classification/classifier.keras",
        "input_shape": [128, 128, 1],
        "preprocessing": "brain",
        "labels": list(CLASSES),
        "description": "Glioma / meningioma / no tumour / pituitary on the intracranial part of "
        "an axial 2 mm plane.",
        "location": True,  # combined with models/classification/location.json
    },
    "segmentation": {
        "version": "0.2.0",
        "name": "neurogate-unet3d",
        "framework": "torch",
        "file": "../segmentation/weights.pth",
        "input_shape": [4, 96, 120, 96],
        "preprocessing": "canonical",
        "labels": ["brain", "WT", "TC", "ET"],
        "architecture": {"name": "unet3d", "base": 16, "window": [64, 80, 64]},
        "description": "Brain, whole tumour, tumour core, enhancing tumour from T1/T1CE/T2/FLAIR.",
    },
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def main() -> None:
    MANIFESTS.mkdir(exist_ok=True)
    for task, spec in _MODELS.items():
        weights = (MANIFESTS / str(spec["file"])).resolve()
        lines = [
            "# Written by models/training/manifests.py; see models/MODEL_CARD.md.",
            f'task = "{task}"',
            f'version = "{spec.get("version", VERSION)}"',
            f'sha256 = "{sha256_of(weights)}"',
        ]
        for key, value in spec.items():
            if key not in ("architecture", "version"):
                lines.append(f"{key} = {_toml_value(value)}")
        if "architecture" in spec:
            lines.append("\n[architecture]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in spec["architecture"].items()]
        (MANIFESTS / f"{task}.toml").write_text("\n".join(lines) + "\n")
        print(f"{task}: {weights.name} {Path(weights).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
