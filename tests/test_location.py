"""The location model: the lesion's measurements in the frame of the intracranial mask, the
shipped regression, and how its answer combines with the classifier's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.classification import location
from models.classification.location import FEATURES, LocationModel, combine, features
from models.classification.train_location import jittered, moved_boundary

SHAPE = (80, 96, 80)  # (k, j, i) on the canonical 2 mm grid: k superior, j posterior, i left
VOXEL_MM = 2.0


def _ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    k, j, i = np.indices(SHAPE, dtype=float)
    q = sum(((a - c) / r) ** 2 for a, c, r in zip((k, j, i), centre, radii, strict=True))
    return np.asarray(q <= 1)


INSIDE = _ellipsoid((40, 48, 40), (28, 36, 30))  # a skull's inside, 56 x 72 x 60 mm half-axes


def _lesion(core: np.ndarray, oedema_mm: float = 0.0) -> dict[str, np.ndarray]:
    from scipy import ndimage

    wt = core
    if oedema_mm:
        wt = ndimage.binary_dilation(core, iterations=int(oedema_mm / VOXEL_MM)) & INSIDE
    return {"WT": wt, "TC": core, "ET": core}


def named(x: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURES, x.tolist(), strict=True))


def test_features_say_where_the_lesion_is_in_the_intracranial_frame() -> None:
    # A deep lesion with oedema, a lesion against the left convexity, a small one at the floor
    # on the midline, in front of the centre.
    deep = named(features(_lesion(_ellipsoid((44, 50, 28), (6, 6, 6)), 8), INSIDE, VOXEL_MM))
    convexity = named(features(_lesion(_ellipsoid((50, 44, 68), (6, 7, 5)) & INSIDE), INSIDE, 2))
    floor = named(features(_lesion(_ellipsoid((15, 36, 40), (3, 3, 3)) & INSIDE), INSIDE, 2))

    assert deep["oedema share"] > 0.5 and convexity["oedema share"] == 0
    assert deep["TC depth, median mm"] > 15 > convexity["TC depth, median mm"]
    assert convexity["TC within 4 mm of the boundary"] > 0.3
    assert deep["TC within 4 mm of the boundary"] == 0
    lateral = "TC |left-right| from the centre"
    assert floor[lateral] < 0.05 < convexity[lateral]
    assert floor["TC anterior-posterior"] > 0 and floor["TC inferior-superior"] < -1
    assert floor["TC below the mask's 10th height percentile"] > 0.5
    assert floor["log WT mL"] < convexity["log WT mL"] < deep["log WT mL"]


def test_the_lesion_is_the_largest_region_of_whole_tumour() -> None:
    lesion = _ellipsoid((44, 50, 28), (6, 6, 6))
    speck = _ellipsoid((15, 36, 40), (1, 1, 1))
    alone = features(_lesion(lesion), INSIDE, VOXEL_MM)
    with_speck = features(_lesion(lesion | speck), INSIDE, VOXEL_MM)
    np.testing.assert_allclose(with_speck, alone)


def test_features_need_a_lesion_and_a_brain() -> None:
    empty = np.zeros(SHAPE, bool)
    with pytest.raises(ValueError, match="whole-tumour mask"):
        features({"WT": empty, "TC": empty, "ET": empty}, INSIDE, VOXEL_MM)


def test_the_experts_combine_as_a_renormalised_product() -> None:
    classifier = {"glioma": 0.7, "meningioma": 0.2, "notumor": 0.0, "pituitary": 0.1}
    where = {"glioma": 0.05, "meningioma": 0.15, "pituitary": 0.8}
    joint = combine(classifier, where)

    assert joint["notumor"] == 0.0  # the location model knows tumour types only
    assert sum(joint.values()) == pytest.approx(1.0)
    assert max(joint, key=joint.__getitem__) == "pituitary"  # 0.08 against 0.035 and 0.03
    assert joint["pituitary"] == pytest.approx(0.08 / (0.035 + 0.03 + 0.08))
    # Two experts that agree stay agreed; a confident classifier and an undecided location
    # model give the classifier's answer.
    assert combine(classifier, {k: 1 / 3 for k in where})["glioma"] == pytest.approx(0.7)
    # A weight under 1 flattens the classifier's say: sqrt(0.7) * 0.05 against sqrt(0.1) * 0.8.
    weighted = combine(classifier, where, 0.5)
    assert weighted["glioma"] / weighted["pituitary"] == pytest.approx(
        0.7**0.5 * 0.05 / (0.1**0.5 * 0.8)
    )


def test_the_shipped_location_model_reads_back_and_names_its_file() -> None:
    model = location.load()
    assert model.labels == location.TUMOUR_LABELS
    assert len(model.sha256) == 64 and model.version_info["name"] == location.NAME
    again = LocationModel.from_json(model.to_json())
    np.testing.assert_array_equal(again.coefficients, model.coefficients)
    p = model.probabilities(model.mean)
    assert sum(p.values()) == pytest.approx(1.0)


def test_a_location_model_for_other_features_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "location.json"
    path.write_text(location.load().to_json().replace('"log WT mL"', '"WT mL"'))
    with pytest.raises(ValueError, match=r"location\.json.*other features"):
        location.load(path)
    with pytest.raises(ValueError, match=r"location model .*missing\.json"):
        location.load(tmp_path / "missing.json")
    model = location.load()
    with pytest.raises(ValueError, match="coefficients"):
        replace(model, coefficients=model.coefficients[:, :3])
    with pytest.raises(ValueError, match="classifier_weight"):
        replace(model, classifier_weight=0.0)


def test_the_shipped_model_reads_archetypal_lesions_as_a_radiologist_would() -> None:
    """Deep with oedema: glioma; against the convexity: meningioma; a small mass at the
    floor on the midline: pituitary (the measured cases are in bench/models.py)."""
    model = location.load()

    def guess(masks: dict[str, np.ndarray]) -> str:
        p = model.probabilities(features(masks, INSIDE, VOXEL_MM))
        return max(p, key=p.__getitem__)

    assert guess(_lesion(_ellipsoid((44, 50, 28), (9, 9, 8)), 10)) == "glioma"
    assert guess(_lesion(_ellipsoid((52, 44, 68), (8, 9, 7)) & INSIDE)) == "meningioma"
    assert guess(_lesion(_ellipsoid((16, 36, 40), (4, 4, 5)) & INSIDE)) == "pituitary"


def test_a_meningioma_stays_one_when_the_extracted_boundary_lies_outside_the_inner_table() -> None:
    """On a head unlike the training heads the extracted intracranial mask lies a few mm outside
    the inner table (the dev phantom heads: 2-3 mm in the median); a convexity meningioma then
    touches the mask nowhere and must still not read as another type."""
    model = location.load()
    meningioma = _lesion(_ellipsoid((52, 44, 68), (8, 9, 7)) & INSIDE)
    for steps in (0, 1, 2):
        x = features(meningioma, moved_boundary(INSIDE, steps), VOXEL_MM)
        assert steps == 0 or named(x)["TC within 4 mm of the boundary"] < 0.3
        p = model.probabilities(x)
        assert max(p, key=p.__getitem__) == "meningioma", (steps, p)


def test_training_cases_are_measured_again_with_the_boundary_moved() -> None:
    core = _ellipsoid((44, 50, 28), (6, 6, 6))
    masks = _lesion(core, 8)
    stack = np.stack([masks["WT"], masks["TC"], masks["ET"], INSIDE])
    row = {"masks": np.packbits(stack), "shape": np.array(stack.shape), "voxel_mm": VOXEL_MM}
    same, grown, shrunk = jittered(row, (0, 2, -1))
    np.testing.assert_array_equal(same, features(masks, INSIDE, VOXEL_MM))
    depth = FEATURES.index("TC depth, median mm")
    assert grown[depth] == pytest.approx(same[depth] + 2 * VOXEL_MM, abs=1.0)
    assert shrunk[depth] == pytest.approx(same[depth] - VOXEL_MM, abs=1.0)
    assert moved_boundary(INSIDE, 2).sum() > INSIDE.sum() > moved_boundary(INSIDE, -1).sum()
