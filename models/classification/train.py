"""Train the slice detector and classifier: ``python -m models.classification.train``.

Both learn from axial slices of the synthetic canonical-grid examples, shown in a random
contrast so that they work on whichever series a study has, and only their intracranial part,
scaled by its own robust maximum (``models.preprocessing.brain_normalise``, what the pipeline
feeds them after brain extraction): what lies outside the skull never reaches them. Writes
``detector.keras`` and ``classifier.keras`` next to this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.classification.slices import example_slices
from models.training.data import CLASSES

HERE = Path(__file__).parent


def arrays(
    paths: list[Path], seed: int, per_example: int, whole_planes: float = 0.0,
    augmented: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    rng = np.random.default_rng(seed)
    xs, present, classes = [], [], []
    for path in paths:
        for x, p, c in example_slices(path, rng, per_example, whole_planes, augmented):
            xs.append(x)
            present.append(p)
            classes.append(c)
    return np.stack(xs)[..., None], np.array(present), np.array(classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=Path, nargs="+", default=[Path("var/training/examples")],
        help="folders of examples (models.training.build_dataset), all used",
    )  # fmt: skip
    parser.add_argument("--validation", type=Path, default=Path("var/training/validation"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--per-example", type=int, default=32)
    parser.add_argument(
        "--whole-planes", type=float, default=0.25,
        help="share of the classifier's slices shown whole, not brain only (for /api/classify)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE, help="where the .keras files go")
    parser.add_argument(
        "--resume", type=Path, help="start from the detector.keras and classifier.keras found here"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--augment", action="store_true",
        help="the classifier's training planes rotated, scaled and through a random gamma",
    )  # fmt: skip
    parser.add_argument("--only", choices=("detector", "classifier"), help="train just one")
    args = parser.parse_args()
    import keras

    keras.utils.set_random_seed(0)
    from models.classification.networks import slice_cnn

    examples = sorted(path for folder in args.examples for path in folder.glob("*.npz"))
    validation = sorted(args.validation.glob("*.npz"))
    x, present, _ = arrays(examples, 0, args.per_example)
    vx, vpresent, _ = arrays(validation, 1, args.per_example)
    print(f"{len(x)} training slices ({present.mean():.0%} with tumour), {len(vx)} validation")

    def network(name: str, outputs: int, activation: str) -> keras.Model:
        if args.resume:
            return keras.saving.load_model(args.resume / f"{name}.keras", compile=False)
        return slice_cnn(outputs, activation, f"neurogate_{name}")

    if args.only != "classifier":
        detector = network("detector", 1, "sigmoid")
        detector.compile(
            optimizer=keras.optimizers.Adam(args.lr),
            loss="binary_crossentropy",
            metrics=["accuracy"],
        )
        detector.fit(
            x, present, batch_size=32, epochs=args.epochs, validation_data=(vx, vpresent),
            verbose=2,
        )  # fmt: skip
        detector.save(args.out / "detector.keras")
    del x, vx
    if args.only == "detector":
        return

    # The classifier sees some slices whole too: /api/classify has no brain mask.
    x, _, classes = arrays(examples, 2, args.per_example, args.whole_planes, args.augment)
    vx, _, vclasses = arrays(validation, 3, args.per_example, args.whole_planes)

    classifier = network("classifier", len(CLASSES), "softmax")
    classifier.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    classifier.fit(
        x, classes, batch_size=32, epochs=args.epochs, validation_data=(vx, vclasses), verbose=2
    )
    classifier.save(args.out / "classifier.keras")


if __name__ == "__main__":
    main()
