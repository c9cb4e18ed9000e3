"""Evaluate the shipped models on a held-out synthetic set; print the metrics table.

    .venv/bin/python bench/models.py --per-class 8

Cases come from seeds the training never saw, each acquired with a random scanner protocol
(plane, obliquity, 1.5-6 mm slices, bias, noise) and preprocessed exactly as received studies
are. Detection reads FLAIR, classification T1CE, segmentation all four contrasts.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import predict  # noqa: E402
from models.registry import Task, load, manifest_for  # noqa: E402
from models.training.data import CLASSES, class_index, make_example  # noqa: E402

FIRST_SEED = 500_000
TYPES = ("glioma", "meningioma", "pituitary", "none")
T1CE, FLAIR = 1, 3


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=8)
    args = parser.parse_args()
    manifests = {task: manifest_for(task) for task in Task}
    models = {task: load(m) for task, m in manifests.items()}
    seconds: dict[str, list[float]] = defaultdict(list)
    detections: list[tuple[bool, bool]] = []
    confusion = np.zeros((len(CLASSES), len(CLASSES)), int)
    dices: dict[str, list[float]] = defaultdict(list)
    volume_errors: list[float] = []
    for n in range(args.per_class * len(TYPES)):
        tumour_type = TYPES[n % len(TYPES)]
        started = time.process_time()
        example = make_example(FIRST_SEED + n, tumour_type)
        seconds["acquire + preprocess (synthetic)"].append(time.process_time() - started)
        image = example.image.astype(np.float32)

        started = time.process_time()
        detection = predict.detect(models[Task.DETECTION], manifests[Task.DETECTION], image[FLAIR])
        seconds["detection"].append(time.process_time() - started)
        detections.append((tumour_type != "none", detection.tumour))
        if tumour_type != "none":
            started = time.process_time()
            result = predict.classify(models[Task.CLASSIFICATION], manifests[Task.CLASSIFICATION],
                                      image[T1CE], detection)  # fmt: skip
            seconds["classification"].append(time.process_time() - started)
            confusion[class_index(tumour_type), result.index] += 1
            started = time.process_time()
            predict.grad_cam(models[Task.CLASSIFICATION], manifests[Task.CLASSIFICATION],
                             image[T1CE][result.plane], result.index)  # fmt: skip
            seconds["grad-cam"].append(time.process_time() - started)
        started = time.process_time()
        masks = predict.segment(models[Task.SEGMENTATION], image,
                                manifests[Task.SEGMENTATION].window)  # fmt: skip
        seconds["segmentation"].append(time.process_time() - started)
        if tumour_type != "none":
            truth = {"WT": example.label > 0, "TC": np.isin(example.label, (1, 4)),
                     "ET": example.label == 4}  # fmt: skip
            for region, mask in truth.items():
                if mask.any():
                    dices[region].append(dice(masks[region], mask))
            volume_errors.append(abs(int(masks["WT"].sum()) - int(truth["WT"].sum()))
                                 / truth["WT"].sum())  # fmt: skip
        print(f"case {n + 1}: {tumour_type}", file=sys.stderr, flush=True)

    truth_pos = [t for t, _ in detections]
    tp = sum(t and p for t, p in detections)
    tn = sum((not t) and (not p) for t, p in detections)
    print(
        f"held-out synthetic cases: {len(detections)} (seeds {FIRST_SEED}+), 2 mm canonical grid\n"
    )
    print(f"{'metric':<34}{'value':>10}")
    print(f"{'detection sensitivity':<34}{tp / max(sum(truth_pos), 1):>10.3f}")
    print(f"{'detection specificity':<34}{tn / max(len(truth_pos) - sum(truth_pos), 1):>10.3f}")
    tumour_rows = [CLASSES.index(c) for c in ("glioma", "meningioma", "pituitary")]
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    print(f"{'classification accuracy (tumours)':<34}{accuracy:>10.3f}")
    for region in ("WT", "TC", "ET"):
        print(f"{'Dice ' + region:<34}{np.mean(dices[region]):>10.3f}")
    print(f"{'WT volume error (median)':<34}{np.median(volume_errors):>10.1%}")
    print("\nconfusion (rows: truth, columns: predicted)")
    print(" " * 12 + "".join(f"{c:>12}" for c in CLASSES))
    for row in tumour_rows:
        print(f"{CLASSES[row]:<12}" + "".join(f"{v:>12}" for v in confusion[row]))
    print(f"\n{'stage':<34}{'CPU s (median)':>16}")
    for stage, values in seconds.items():
        print(f"{stage:<34}{np.median(values):>16.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak memory (MB, whole run)':<34}{peak:>16.0f}")


if __name__ == "__main__":
    main()
