"""Train the segmentation U-Net: ``python -m models.segmentation.train``.

Crops of the canonical grid (64x80x64 by default; inference slides a window of the same size,
see the manifest's ``window``, so instance normalisation sees what it learnt from), two thirds
centred on tumour, left-right flips and per-contrast intensity jitter. The loss is binary
cross-entropy plus soft Dice on each of brain, WT, TC and ET. Writes ``weights.pth`` (state
dict) and prints validation Dice on held-out examples as it goes.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.preprocessing import GRID_SHAPE
from models.segmentation.unet3d import UNet3D

PATCH = (64, 80, 64)


def targets(label: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(4, ...) float32: brain, WT (1, 2, 4), TC (1, 4), ET (4)."""
    return np.stack([brain, label > 0, np.isin(label, (1, 4)), label == 4]).astype(np.float32)


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["image"].astype(np.float32), targets(data["label"], data["brain"])


def random_patch(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    patch: tuple[int, int, int] = PATCH,
) -> tuple[np.ndarray, np.ndarray]:
    shape = np.array(image.shape[1:])
    size = np.array(patch)
    if np.array_equal(size, shape):
        x, y = image, target
    else:
        tumour = np.argwhere(target[1] > 0)
        if len(tumour) and rng.random() < 0.67:
            centre = tumour[rng.integers(len(tumour))]
        else:
            brain = np.argwhere(target[0] > 0)
            centre = brain[rng.integers(len(brain))]
        start = np.clip(centre - size // 2 + rng.integers(-8, 9, 3), 0, shape - size)
        sl = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        x, y = image[(slice(None), *sl)], target[(slice(None), *sl)]
    if rng.random() < 0.5:  # left-right flip: i is the last axis
        x, y = x[..., ::-1], y[..., ::-1]
    x = x * rng.uniform(0.9, 1.1, (4, 1, 1, 1)).astype(np.float32)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, y)
    p = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = (2 * (p * y).sum(dims) + 1) / (p.sum(dims) + y.sum(dims) + 1)
    return bce + (1 - dice).mean()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    if not truth.any() and not pred.any():
        return 1.0
    return float(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()))


@torch.no_grad()
def validate(net: UNet3D, paths: list[Path]) -> dict[str, float]:
    net.eval()
    scores: dict[str, list[float]] = {"brain": [], "WT": [], "TC": [], "ET": []}
    device = next(net.parameters()).device
    for path in paths:
        image, target = load(path)
        if not target[1].any():
            continue
        logits = net(torch.from_numpy(image)[None].to(device))
        pred = torch.sigmoid(logits)[0].cpu().numpy() > 0.5
        for index, name in enumerate(scores):
            scores[name].append(dice(pred[index], target[index] > 0))
    net.train()
    return {k: round(float(np.mean(v)), 3) for k, v in scores.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=Path, nargs="+", default=[Path("var/training/examples")],
        help="folders of examples, drawn from in equal shares (e.g. thin-skull and whole heads)",
    )  # fmt: skip
    parser.add_argument("--validation", type=Path, default=Path("var/training/validation"))
    parser.add_argument("--out", type=Path, default=Path("models/segmentation/weights.pth"))
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--base", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="patches per step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", type=Path, help="weights to start from (a fine-tune)")
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument(
        "--budget-s", type=float,
        help="stop after this many seconds: the learning rate's cosine runs over whichever of "
        "--iterations and the time budget ends first (a lent accelerator's fixed lease)",
    )  # fmt: skip
    parser.add_argument(
        "--patch", default=",".join(map(str, PATCH)), help=f"crop size k,j,i (grid: {GRID_SHAPE})"
    )
    args = parser.parse_args()
    k, j, i = (int(n) for n in args.patch.split(","))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    net = UNet3D(base=args.base).to(device)
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location=device, weights_only=True))
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    validation = sorted(args.validation.glob("*.npz"))[:16]
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    started = time.time()
    it, progress = 0, 0.0
    while progress < 1.0:
        it += 1
        progress = it / args.iterations
        if args.budget_s:
            progress = max(progress, (time.time() - started) / args.budget_s)
        # The example set may still be growing while training starts: look again each step.
        folders = [sorted(folder.glob("*[0-9].npz")) for folder in args.examples]
        folders = [paths for paths in folders if paths]
        batch = []
        for _ in range(args.batch):
            paths = folders[rng.integers(len(folders))]
            path = paths[rng.integers(len(paths))]
            if path not in cache:
                cache[path] = load(path)
            batch.append(random_patch(*cache[path], rng, (k, j, i)))
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
        for group in optimiser.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        optimiser.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        if it % 25 == 0:
            print(
                f"it {it} loss {loss.item():.3f} examples {sum(map(len, folders))} "
                f"{(time.time() - started) / it:.2f} s/it",
                flush=True,
            )
        if it % args.validate_every == 0 or progress >= 1.0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, args.out)
            if validation:
                print(f"it {it} validation dice {validate(net, validation)}", flush=True)


if __name__ == "__main__":
    main()
