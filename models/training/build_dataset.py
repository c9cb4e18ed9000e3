"""Write synthetic training examples to disk: ``python -m models.training.build_dataset``.

Each example is one ``.npz`` (image float16 (4, k, j, i), label uint8, brain bool, tumour type)
on the canonical grid. Training seeds and evaluation seeds never overlap (see ``--seed``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.training.data import make_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/training/examples"))
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="first seed (evaluation: 100000)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seed, args.seed + args.count):
        path = args.out / f"{seed:06d}.npz"
        if path.exists():
            continue
        example = make_example(seed)
        np.savez_compressed(
            path, image=example.image, label=example.label, brain=example.brain,
            tumour_type=example.tumour_type,
        )  # fmt: skip
        print(path.name, example.tumour_type, flush=True)


if __name__ == "__main__":
    main()
