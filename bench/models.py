"""Evaluate the shipped models on held-out studies, through the whole pipeline; print tables.

    .venv/bin/python bench/models.py --per-class 4 --sets synthetic full-head phantom
    .venv/bin/python bench/models.py --dev --manifest brain_extraction=candidate.toml

Each case is acquired as a scanner would (plane, obliquity, 1-6 mm slices, bias, noise) and
analysed exactly as a received study is: brain extraction, canonical grid, detection,
segmentation, classification (``inference_worker.pipeline.analyse_volumes``). Sets:

- ``synthetic``: the generator's thin-skull heads, seeds 500000+ (never used in training);
- ``full-head``: whole heads (face, orbits, sinuses, neck in view) from the same generator,
  seeds 520000+ with their own random deformations, fields of view down to the neck;
- ``phantom``: whole heads built by ``bench/heads.py``, an anatomy that is not MNI152 and code
  that shares nothing with the training generator: the fairest test available offline.

None of these is a real patient: the model card says so. ``--dev`` runs the same sets on other
seeds (600000+, 610000+, 620000+), the ones thresholds are chosen on, so that the benchmark's own
cases never inform a choice.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference_worker.pipeline import Models, analyse_volumes  # noqa: E402
from inference_worker.selection import Role  # noqa: E402
from models.imaging import Volume  # noqa: E402
from models.registry import Task, manifest_for  # noqa: E402
from models.synthetic import generate_case  # noqa: E402
from models.synthetic.acquisition import acquire, grid_points, label_on_grid, sample  # noqa: E402
from models.synthetic.case import SyntheticCase  # noqa: E402
from models.training.data import as_volume, random_protocol  # noqa: E402

TYPES = ("glioma", "meningioma", "pituitary", "none")
ROLES = {"t1": Role.T1, "t1ce": Role.T1CE, "t2": Role.T2, "flair": Role.FLAIR}
FIRST_SEED = {"synthetic": 500_000, "full-head": 520_000, "phantom": 540_000}
DEV_SEED = {"synthetic": 610_000, "full-head": 600_000, "phantom": 620_000}


def _phantom(seed: int, tumour_type: str) -> SyntheticCase:
    sys.path.insert(0, str(REPO / "bench"))
    import heads  # bench/heads.py: the independent anatomy

    return heads.make_head(seed, tumour_type)  # type: ignore[no-any-return]


CASES: dict[str, Callable[[int, str], SyntheticCase]] = {
    "synthetic": lambda seed, t: generate_case(seed, t, voxel_mm=2.0),
    "full-head": lambda seed, t: generate_case(seed, t, voxel_mm=2.0, full_head=True),
    "phantom": _phantom,
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(int(a.sum() + b.sum()), 1))


def _on_grid(case: SyntheticCase, mask: np.ndarray, grid) -> np.ndarray:  # type: ignore[no-untyped-def]
    points = grid_points(grid.origin, grid.spacing, grid.direction, grid.shape)
    return sample(mask.astype(np.uint8), case.affine, points, order=0) > 0


def study(
    name: str, n: int, first_seed: dict[str, int] = FIRST_SEED
) -> tuple[int, str, SyntheticCase, dict[Role, Volume]]:
    """Case ``n`` of set ``name``: its seed, tumour type, ground truth and acquired series."""
    tumour_type = TYPES[n % len(TYPES)]
    seed = first_seed[name] + n
    case = CASES[name](seed, tumour_type)
    rng = np.random.default_rng(seed + 17)
    full_head = name != "synthetic"
    volumes = {
        ROLES[m]: as_volume(acquire(case, random_protocol(m, rng, full_head), rng)) for m in ROLES
    }
    return seed, tumour_type, case, volumes


def evaluate(
    name: str, per_class: int, models: Models, first_seed: dict[str, int] = FIRST_SEED
) -> dict[str, object]:
    seconds: list[float] = []
    detections: list[tuple[bool, bool]] = []
    classes: list[tuple[str, str]] = []
    alone: list[bool] = []  # the classifier alone right
    dices: dict[str, list[float]] = defaultdict(list)
    volume_errors: list[float] = []
    outside_ml: list[float] = []
    brain_dice: list[float] = []
    kept: list[float] = []  # of each true tumour, the share inside the extracted mask
    for n in range(per_class * len(TYPES)):
        seed, tumour_type, case, volumes = study(name, n, first_seed)
        started = time.process_time()
        analysis = analyse_volumes(f"2.25.{seed}", volumes, models)
        seconds.append(time.process_time() - started)
        findings = analysis.findings
        assert analysis.grid is not None and analysis.intracranial is not None
        truth_label = label_on_grid(case, analysis.grid.affine, analysis.grid.shape)
        inside = _on_grid(case, case.intracranial, analysis.grid)
        brain_dice.append(dice(analysis.intracranial, inside))
        found = bool(findings.detection and findings.detection.tumour)
        detections.append((tumour_type != "none", found))
        voxel_ml = analysis.grid.voxel_volume_ml
        masks = analysis.grid_masks
        wt = masks["WT"] if masks else np.zeros(truth_label.shape, bool)
        outside_ml.append(float((wt & ~inside).sum()) * voxel_ml)
        if tumour_type != "none":
            found_class = findings.classification
            label = found_class.label if found_class else "notumor"
            classes.append((tumour_type, label))
            # The classifier's own answer, when the location model took part in the class.
            own = found_class.classifier_probabilities if found_class else None
            alone.append((max(own, key=own.__getitem__) if own else label) == tumour_type)
            truth = {"WT": truth_label > 0, "TC": np.isin(truth_label, (1, 4)),
                     "ET": truth_label == 4}  # fmt: skip
            for region, mask in truth.items():
                predicted = masks[region] if masks else np.zeros_like(mask)
                if mask.any():
                    dices[region].append(dice(predicted, mask))
            volume_errors.append(abs(int(wt.sum()) - int(truth["WT"].sum())) / truth["WT"].sum())
            kept.append(float((truth["WT"] & analysis.intracranial).sum() / truth["WT"].sum()))
        detection = findings.detection
        basis = (
            ""
            if detection is None
            else (
                f"p {detection.probability:.2f} largest WT region {detection.largest_lesion_ml} mL "
            )
        )
        scored = (
            f"Dice WT {dices['WT'][-1]:.3f} WT {wt.sum() * voxel_ml:.1f} mL of "
            f"{(truth_label > 0).sum() * voxel_ml:.1f} (inside the mask {kept[-1]:.2f}) "
            if tumour_type != "none"
            else ""
        )
        print(f"{name} case {n + 1} (seed {seed}): {tumour_type:<10} detected {found} "
              f"class {classes[-1][1] if tumour_type != 'none' else '-':<10} {basis}{scored}"
              f"WT outside {outside_ml[-1]:.2f} mL, {seconds[-1]:.1f} s", file=sys.stderr,
              flush=True)  # fmt: skip
    positives = [t for t, _ in detections]
    tp = sum(t and p for t, p in detections)
    tn = sum((not t) and (not p) for t, p in detections)
    return {
        "cases": len(detections),
        "detection sensitivity": tp / max(sum(positives), 1),
        "detection specificity": tn / max(len(positives) - sum(positives), 1),
        "classification accuracy (tumours)": sum(t == p for t, p in classes) / max(len(classes), 1),
        "  the classifier alone": sum(alone) / max(len(alone), 1),
        "Dice WT": float(np.mean(dices["WT"])),
        "Dice TC": float(np.mean(dices["TC"])),
        "Dice ET": float(np.mean(dices["ET"])) if dices["ET"] else float("nan"),
        "WT volume error (median)": float(np.median(volume_errors)),
        "WT outside the skull, mL (mean)": float(np.mean(outside_ml)),
        "WT outside the skull, mL (max)": float(np.max(outside_ml)),
        "intracranial mask Dice": float(np.mean(brain_dice)),
        "tumour inside the mask, share (min)": float(np.min(kept)) if kept else float("nan"),
        "CPU s per study (median)": float(np.median(seconds)),
        "_classes": classes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--sets", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--dev", action="store_true", help="the dev seeds, not the benchmark's")
    parser.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="this manifest's model for TASK (a candidate, a site's); the shipped ones otherwise",
    )
    args = parser.parse_args()
    configured: dict[Task, Path] = {}
    for item in args.manifest:
        task_name, _, path = item.partition("=")
        try:
            configured[Task(task_name)] = Path(path)
        except ValueError:
            parser.error(f"--manifest {item}: TASK is one of {', '.join(t.value for t in Task)}")
    models = Models.load_all({task: manifest_for(task, configured.get(task)) for task in Task})
    for task, path in configured.items():
        print(f"{task.value}: {path}", file=sys.stderr)
    seeds = DEV_SEED if args.dev else FIRST_SEED
    results = {name: evaluate(name, args.per_class, models, seeds) for name in args.sets}
    which = "dev" if args.dev else "held-out"
    print(f"{which} cases: {args.per_class} of each of {', '.join(TYPES)} per set\n")
    metrics = [k for k in next(iter(results.values())) if not k.startswith("_")]
    print(f"{'metric':<36}" + "".join(f"{name:>14}" for name in results))
    for metric in metrics:
        cells = []
        for name in results:
            value = results[name][metric]
            cells.append(f"{value:>14d}" if isinstance(value, int) else f"{value:>14.3f}")
        print(f"{metric:<36}" + "".join(cells))
    for name, result in results.items():
        confusion: dict[tuple[str, str], int] = defaultdict(int)
        for truth, predicted in result["_classes"]:  # type: ignore[attr-defined]
            confusion[truth, predicted] += 1
        print(f"\n{name}: classes (truth -> predicted: count) "
              + ", ".join(f"{t}->{p}: {c}" for (t, p), c in sorted(confusion.items())))  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory of the benchmark process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
