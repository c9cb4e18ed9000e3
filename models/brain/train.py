"""Train the brain-extraction network: ``python -m models.brain.train``.

SynthStrip's recipe, offline: whole heads from :func:`models.synthetic.head.full_head` (the
MNI152 brain with a face, orbits, sinuses, tongue and neck around it, shaped per seed) become
tissue label maps; each training image is drawn from one of them through a random affine and
elastic deformation, a random field of view (from above the vertex down to the neck, cropped
anywhere), random tissue intensities (half the time any intensity for any tissue, half the time
one of the four MR contrasts with each tissue's signal jittered), random lesions, blur, slice
thickness, bias field and noise. The target is the intracranial space: everything inside the
skull's inner table, the pituitary fossa included (and a sellar mass growing out of it).
Writes ``weights.pth`` next to this file.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.brain.extract import GRID_MM, GRID_SHAPE, brain_grid, largest_component
from models.preprocessing import normalise
from models.synthetic.acquisition import RAS_TO_LPS, grid_points, sample
from models.synthetic.anatomy import SELLA_RAS
from models.synthetic.case import MODALITIES, TISSUE_SIGNAL, rotation_matrix
from models.synthetic.head import TISSUES, extended_anatomy, full_head

HERE = Path(__file__).parent
_LESIONS = 2  # label values after the tissues: two lesion intensities
_INSIDE = 64  # added to a label value inside the skull, so one resampling carries both


@dataclass(frozen=True, eq=False)
class HeadLabels:
    labels: np.ndarray  # uint8 on the extended 2 mm RAS grid: 0 outside, 1.. TISSUES, lesions
    intracranial: np.ndarray  # uint8
    affine: np.ndarray  # voxel -> RAS
    centre_lps: np.ndarray  # of the intracranial space


def head_labels(seed: int) -> HeadLabels:
    """One whole head as a label map, with up to two random lesions inside the skull."""
    rng = np.random.default_rng(seed)
    anatomy = extended_anatomy(2.0)
    head = full_head(anatomy, rng)
    stack = np.stack([1 - np.clip(sum(head.fractions.values()), 0, 1),
                      *(head.fractions[t] for t in TISSUES)])  # fmt: skip
    labels = np.argmax(stack, axis=0).astype(np.uint8)
    intracranial = head.intracranial.copy()
    inside = np.argwhere(intracranial)
    grid = np.ogrid[tuple(slice(0, s) for s in labels.shape)]
    for n in range(int(rng.integers(0, 3))):
        centre = inside[rng.integers(len(inside))]
        radii = rng.uniform(3, 12, 3)  # voxels of 2 mm
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        labels[(distance < 1) & intracranial] = len(TISSUES) + 1 + n % _LESIONS
    if rng.random() < 0.3:  # a sellar mass, growing out of the fossa: intracranial too
        sella = np.linalg.inv(anatomy.affine) @ [*SELLA_RAS, 1]
        radii = rng.uniform([2, 2, 2.5], [4, 3.5, 6.5])  # voxels of 2 mm
        centre = sella[:3] + np.array([0, 0, radii[2] * 0.3])
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        labels[distance < 1] = len(TISSUES) + 1 + int(rng.integers(_LESIONS))
        intracranial |= distance < 1
    k = inside.mean(axis=0)
    centre_ras = anatomy.affine[:3, :3] @ k + anatomy.affine[:3, 3]
    return HeadLabels(labels, intracranial.astype(np.uint8), anatomy.affine,
                      RAS_TO_LPS @ centre_ras)  # fmt: skip


def _intensities(rng: np.random.Generator) -> np.ndarray:
    """Signal of each label value: realistic-with-jitter or anything at all."""
    count = 1 + len(TISSUES) + _LESIONS
    values = np.zeros(count, np.float32)
    if rng.random() < 0.5:
        values[1:] = rng.uniform(0, 1, count - 1)
    else:
        contrast = int(rng.integers(len(MODALITIES)))
        for index, tissue in enumerate(TISSUES, start=1):
            values[index] = TISSUE_SIGNAL[tissue][contrast] * rng.lognormal(0, 0.2)
        values[-_LESIONS:] = rng.uniform(0.1, 1.4, _LESIONS)
    values[TISSUES.index("air") + 1] = 0.0 if rng.random() < 0.8 else rng.uniform(0, 0.1)
    values[0] = 0.0 if rng.random() < 0.9 else rng.uniform(0, 0.05)
    return values


def training_pair(head: HeadLabels, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image, target) on the network's grid, float32 (k, j, i) each."""
    offset = rng.uniform([-15, -15, -35], [15, 15, 25])
    grid = brain_grid(head.centre_lps + offset)
    points = grid_points(grid.origin, grid.spacing, grid.direction, GRID_SHAPE)
    # Random affine about the head's centre, then a smooth elastic displacement.
    matrix = rotation_matrix(rng.uniform([-25, -12, -12], [25, 12, 12])) * rng.uniform(0.8, 1.1, 3)
    centre = head.centre_lps
    moved = (points - centre) @ matrix.T + centre
    coarse = rng.normal(0, rng.uniform(0, 4), (3, 5, 4, 4))
    displacement = np.stack([ndimage.zoom(c, np.array(GRID_SHAPE) / c.shape, order=1)
                             for c in coarse], axis=-1)  # fmt: skip
    moved = moved + displacement
    both = sample(head.labels + _INSIDE * head.intracranial, head.affine, moved, order=0)
    both = both.astype(np.uint8)
    labels, target = both % _INSIDE, (both >= _INSIDE).astype(np.float32)

    image = _intensities(rng)[labels]
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 0.9))
    if rng.random() < 0.6:  # thick slices along one axis
        sigma = [0.0, 0.0, 0.0]
        sigma[int(rng.integers(3))] = rng.uniform(0.3, 1.3)
        image = ndimage.gaussian_filter(image, sigma)
    image *= np.exp(rng.uniform(0, 0.5) * _smooth(rng, image.shape))
    sigma_noise = rng.uniform(0.003, 0.06) * max(float(image.max()), 1e-3)
    image = np.sqrt((image + rng.normal(0, sigma_noise, image.shape)) ** 2
                    + rng.normal(0, sigma_noise, image.shape) ** 2)  # fmt: skip
    # The field of view: acquired slabs start and end anywhere; outside is nothing at all.
    inside = np.ones(GRID_SHAPE, bool)
    k = np.arange(GRID_SHAPE[0])
    if rng.random() < 0.8:
        inside[k < rng.integers(0, 30)] = False  # up to 120 mm of neck and face left out
    if rng.random() < 0.3:
        inside[k > GRID_SHAPE[0] - 1 - rng.integers(0, 12)] = False
    if rng.random() < 0.3:
        half = rng.uniform(100, 128) / GRID_MM
        j, i = np.ogrid[: GRID_SHAPE[1], : GRID_SHAPE[2]]
        centre_j, centre_i = (np.array(GRID_SHAPE[1:]) - 1) / 2 + rng.uniform(-6, 6, 2)
        inside &= ((np.abs(j - centre_j) < half) & (np.abs(i - centre_i) < half))[None]
    image = np.where(inside, image, 0).astype(np.float32)
    if rng.random() < 0.5:
        image = image ** np.exp(rng.normal(0, 0.25))
    return normalise(image), target * inside


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    coarse = rng.normal(0, 1, (4, 4, 4))
    field = ndimage.zoom(coarse, np.array(shape) / 4, order=1)
    return (field - field.mean()) / max(float(np.abs(field).max()), 1e-6)


_HEADS: list[HeadLabels] = []


def _start_worker(count: int) -> None:
    _HEADS.extend(head_labels(seed) for seed in range(count))


def _pair_for(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return training_pair(_HEADS[rng.integers(len(_HEADS))], rng)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(int(a.sum() + b.sum()), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=24, help="whole heads (seeds 0..)")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--minutes", type=float, default=60, help="stop after this long")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--out", type=Path, default=HERE / "weights.pth")
    parser.add_argument("--resume", type=Path, help="start from these weights")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    from models.segmentation.unet3d import UNet3D

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Training images are drawn in another process while this one trains.
    from multiprocessing import Pool

    pool = Pool(args.workers, _start_worker, (args.heads,))
    pairs_in = pool.imap(_pair_for, range(1_000_000, 1_000_000 + args.iterations * args.batch))
    validation_heads = [head_labels(70_000 + n) for n in range(3)]
    validation = [training_pair(h, np.random.default_rng(900 + n))
                  for n, h in enumerate(validation_heads * 2)]  # fmt: skip
    print(f"{args.heads} training heads, {len(validation)} validation images", flush=True)
    net = UNet3D(in_channels=1, out_channels=1, base=args.base)
    if args.resume:
        net.load_state_dict(torch.load(args.resume, weights_only=True))
    optimiser = torch.optim.AdamW(net.parameters(), args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, args.iterations)
    started = time.monotonic()
    for step in range(1, args.iterations + 1):
        pairs = [next(pairs_in) for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
        net.train()
        logits = net(x)
        p = torch.sigmoid(logits)
        soft_dice = (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + (1 - soft_dice)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        elapsed = (time.monotonic() - started) / 60
        if step % 50 == 0 or step == args.iterations or elapsed > args.minutes:
            net.eval()
            with torch.no_grad():
                scores = []
                for image, target in validation:
                    prob = torch.sigmoid(net(torch.from_numpy(image[None, None])))[0, 0].numpy()
                    scores.append(dice(largest_component(prob > 0.5), target > 0))
            print(f"step {step} loss {loss.item():.4f} validation Dice {np.mean(scores):.4f} "
                  f"(min {np.min(scores):.3f}) {elapsed:.1f} min", flush=True)  # fmt: skip
            torch.save(net.state_dict(), args.out)
        if elapsed > args.minutes:
            break
    pool.terminate()


if __name__ == "__main__":
    main()
