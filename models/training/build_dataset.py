"""Write synthetic training examples to disk: ``python -m models.training.build_dataset``.

Each example is one ``.npz`` (image float16 (4, k, j, i), label uint8, brain bool, tumour type)
on the canonical grid. Training seeds and evaluation seeds never overlap (see ``--seed``).
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from models.training.data import make_example


def write_example(job: tuple[Path, int, bool]) -> str:
    out, seed, full_head = job
    path = out / f"{seed:06d}.npz"
    example = make_example(seed, full_head=full_head)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(
        partial, image=example.image, label=example.label, brain=example.brain,
        intracranial=example.intracranial, tumour_type=example.tumour_type,
    )  # fmt: skip
    partial.rename(path)  # an interrupted run never leaves a truncated example behind
    return f"{path.name} {example.tumour_type}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/training/examples"))
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="first seed (evaluation: 100000)")
    parser.add_argument(
        "--full-head", action="store_true",
        help="whole heads with face and neck in view (models.synthetic.head), not thin skulls",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="processes generating examples")
    parser.add_argument(
        "--seeds", type=int, nargs="+",
        help="these seeds instead of --seed/--count (tumour type: TUMOUR_TYPES[seed %% 4])",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or range(args.seed, args.seed + args.count)
    jobs = [
        (args.out, seed, args.full_head)
        for seed in seeds
        if not (args.out / f"{seed:06d}.npz").exists()
    ]
    with Pool(args.workers) as pool:
        for line in pool.imap_unordered(write_example, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
