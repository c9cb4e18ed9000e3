"""Train the brain-extraction network: ``python -m models.brain.train``.

SynthStrip's recipe, offline: whole heads from :func:`models.synthetic.head.full_head` (the
MNI152 brain with a face, orbits, sinuses, tongue and neck around it, shaped per seed) become
tissue label maps; each training image is drawn from one of them through a random affine and
elastic deformation, a random field of view (from above the vertex down to the neck, cropped
anywhere), random tissue intensities (half the time any intensity for any tissue, half the time
one of the four MR contrasts with each tissue's signal jittered), texture and noise inside each
tissue, random lesions, blur, slice thickness, bias field and noise. Each head also gets its own
skull: CSF rim, dura, inner table, diploe and outer table redrawn with thicknesses that vary over
the head, so that the network finds the inner table rather than a fixed distance from one
template's brain. Images are drawn at half the grid's spacing and averaged, so that thin layers
reach the network as the partial volumes a scanner's voxels hold. The target is the
intracranial space: everything inside the skull's inner table, the pituitary fossa included (and
a sellar mass growing out of it). Writes ``weights.pth`` next to this file.
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
from models.synthetic.anatomy import OUTER_TABLE_MM, SELLA_RAS, Anatomy
from models.synthetic.case import MODALITIES, TISSUE_SIGNAL, rotation_matrix
from models.synthetic.head import TISSUES, extended_anatomy, full_head

HERE = Path(__file__).parent
_LESIONS = 2  # label values after the tissues: two lesion intensities
_DURA = 1 + len(TISSUES) + _LESIONS  # the last label value: the dura, outermost in the rim
_LABELS = _DURA + 1
_FINE = 2  # images are drawn on a grid this many times finer, then averaged
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
    labels, intracranial = _own_skull(anatomy, labels, rng)
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


def _own_skull(
    anatomy: Anatomy, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The layers between brain and scalp redrawn with this head's thicknesses; the new
    intracranial space (inside the inner table, and the pituitary fossa)."""
    d = anatomy.outside_mm

    def thickness(low: float, high: float) -> np.ndarray:
        field = rng.uniform(low, high) * (1 + 0.4 * _smooth(rng, d.shape))
        return np.clip(field, 0.6 * low, 1.3 * high)

    rim = thickness(0.8, 4.5)
    inner = rim + thickness(0.8, 2.5)
    marrow = inner + thickness(0.3, 4.0)
    outer = marrow + thickness(0.8, 2.5)
    fossa = anatomy.pituitary_fossa() & ~anatomy.brain
    cranial = np.isin(labels, [code_of("rim"), code_of("bone"), code_of("marrow")])
    scalp = np.isin(labels, [code_of("fat"), code_of("muscle")])
    grown = scalp & (d < outer) & (d < OUTER_TABLE_MM + 3)
    region = (cranial | grown) & ~anatomy.brain & ~fossa
    new = np.full(labels.shape, code_of("muscle" if rng.random() < 0.5 else "fat"), np.uint8)
    new[d < outer] = code_of("bone")
    new[d < marrow] = code_of("marrow")
    new[d < inner] = code_of("bone")
    new[d < rim] = code_of("rim")
    if rng.random() < 0.6:
        new[(d < rim) & (d >= rim - rng.uniform(0.6, 1.5))] = _DURA
    labels = np.where(region, new, labels)
    return labels, (d < rim) | fossa | anatomy.brain


def _intensities(rng: np.random.Generator) -> np.ndarray:
    """Signal of each label value: realistic-with-jitter or anything at all."""
    values = np.zeros(_LABELS, np.float32)
    if rng.random() < 0.5:
        values[1:] = rng.uniform(0, 1, _LABELS - 1)
    else:
        contrast = int(rng.integers(len(MODALITIES)))
        for index, tissue in enumerate(TISSUES, start=1):
            values[index] = TISSUE_SIGNAL[tissue][contrast] * rng.lognormal(0, 0.2)
        values[_DURA - _LESIONS : _DURA] = rng.uniform(0.1, 1.4, _LESIONS)
        # The dura: dark on most sequences, enhancing after contrast, never fluid-bright.
        values[_DURA] = rng.uniform(0.03, 0.9) * max(float(values[code_of("rim")]), 0.3)
    values[code_of("air")] = 0.0 if rng.random() < 0.8 else rng.uniform(0, 0.1)
    values[0] = 0.0 if rng.random() < 0.9 else rng.uniform(0, 0.05)
    return values


def training_pair(head: HeadLabels, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image, target) on the network's grid, float32 (k, j, i) each; the target is the fraction
    of each voxel that is intracranial."""
    offset = rng.uniform([-15, -15, -35], [15, 15, 25])
    grid = brain_grid(head.centre_lps + offset)
    fine_shape = (GRID_SHAPE[0] * _FINE, GRID_SHAPE[1] * _FINE, GRID_SHAPE[2] * _FINE)
    fine_spacing = grid.spacing / _FINE
    origin = grid.origin - grid.direction @ (grid.spacing - fine_spacing) / 2
    points = grid_points(origin, fine_spacing, grid.direction, fine_shape)
    # Random affine about the head's centre, then a smooth elastic displacement.
    matrix = rotation_matrix(rng.uniform([-25, -12, -12], [25, 12, 12])) * rng.uniform(0.8, 1.1, 3)
    centre = head.centre_lps
    moved = (points - centre) @ matrix.T + centre
    coarse = rng.normal(0, rng.uniform(0, 4), (3, 5, 4, 4))
    for axis in range(3):
        moved[..., axis] += ndimage.zoom(coarse[axis], np.array(fine_shape) / (5, 4, 4), order=1)
    both = sample(head.labels + _INSIDE * head.intracranial, head.affine, moved, order=0)
    both = both.astype(np.uint8)
    labels, target = both % _INSIDE, (both >= _INSIDE).astype(np.float32)

    # Each tissue its own signal, its own slow texture and its own grain (SynthSeg's Gaussian
    # per label), so that no tissue is recognised by one brightness or one smoothness.
    image = _intensities(rng)[labels]
    texture = rng.uniform(0, 0.35, _LABELS).astype(np.float32)[labels]
    image *= 1 + texture * _smooth(rng, fine_shape, 10)
    grain = rng.uniform(0, 0.12, _LABELS).astype(np.float32)[labels]
    image += grain * rng.normal(0, 1, fine_shape).astype(np.float32) * image.mean()
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.2))
    image = _coarse(np.clip(image, 0, None))
    target = _coarse(target)
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
    return normalise(image), (target * inside).astype(np.float32)


def _coarse(fine: np.ndarray) -> np.ndarray:
    """The network's grid from the fine one: each voxel the mean of the fine voxels in it."""
    k, j, i = GRID_SHAPE
    blocks = fine.reshape(k, _FINE, j, _FINE, i, _FINE)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def code_of(tissue: str) -> int:
    return TISSUES.index(tissue) + 1


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], nodes: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1], ``nodes`` control points per axis."""
    coarse = rng.normal(0, 1, (nodes,) * 3)
    field = ndimage.zoom(coarse, np.array(shape) / nodes, order=1)
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
                    scores.append(dice(largest_component(prob > 0.5), target > 0.5))
            print(f"step {step} loss {loss.item():.4f} validation Dice {np.mean(scores):.4f} "
                  f"(min {np.min(scores):.3f}) {elapsed:.1f} min", flush=True)  # fmt: skip
            torch.save(net.state_dict(), args.out)
        if elapsed > args.minutes:
            break
    pool.terminate()


if __name__ == "__main__":
    main()
