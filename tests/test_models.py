"""The shipped models through the registry: checksums, loading, and study-level predictions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models import predict
from models.registry import ChecksumMismatch, ModelManifest, Task, default_manifest, load
from models.training.data import CLASSES, make_example

# Held-out seeds: training used 0..479, validation 50000..50015, the benchmark 100000..
HELD_OUT = {"glioma": 300000, "meningioma": 300001, "pituitary": 300010, "none": 300003}


@pytest.fixture(scope="module")
def manifests() -> dict[Task, ModelManifest]:
    return {task: ModelManifest.from_toml(default_manifest(task)) for task in Task}


@pytest.fixture(scope="module")
def glioma():  # type: ignore[no-untyped-def]
    return make_example(HELD_OUT["glioma"], "glioma")


def test_manifests_describe_the_shipped_weights(manifests: dict[Task, ModelManifest]) -> None:
    assert manifests[Task.CLASSIFICATION].labels == CLASSES
    for manifest in manifests.values():
        assert manifest.file.exists()
        assert manifest.version_info["sha256"] == manifest.sha256


def test_a_tampered_weights_file_is_refused(
    tmp_path: Path, manifests: dict[Task, ModelManifest]
) -> None:
    manifest = manifests[Task.SEGMENTATION]
    copy = tmp_path / manifest.file.name
    shutil.copy(manifest.file, copy)
    with copy.open("ab") as fh:
        fh.write(b"\0")
    tampered = ModelManifest(**{**manifest.__dict__, "file": copy})
    with pytest.raises(ChecksumMismatch):
        load(tampered)


def test_segmentation_of_a_held_out_glioma(manifests, glioma) -> None:  # type: ignore[no-untyped-def]
    net = load(manifests[Task.SEGMENTATION])
    masks = predict.segment(net, glioma.image, manifests[Task.SEGMENTATION].window)
    truth = {"WT": glioma.label > 0, "TC": np.isin(glioma.label, (1, 4)), "ET": glioma.label == 4}
    for region, minimum in (("WT", 0.8), ("TC", 0.7), ("ET", 0.6)):
        overlap = (
            2 * np.sum(masks[region] & truth[region]) / (masks[region].sum() + truth[region].sum())
        )
        assert overlap > minimum, region
    assert not (masks["ET"] & ~masks["TC"]).any(), "regions are nested"


def test_detection_classification_and_grad_cam(manifests, glioma) -> None:  # type: ignore[no-untyped-def]
    detector, classifier = load(manifests[Task.DETECTION]), load(manifests[Task.CLASSIFICATION])
    t1ce = glioma.image[1].astype(np.float32)
    detection = predict.detect(detector, manifests[Task.DETECTION], t1ce)
    assert detection.tumour
    result = predict.classify(classifier, manifests[Task.CLASSIFICATION], t1ce, detection)
    assert result.label == "glioma"
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    heatmap = predict.grad_cam(classifier, manifests[Task.CLASSIFICATION], t1ce[result.plane],
                               result.index)  # fmt: skip
    assert (
        heatmap.shape == t1ce.shape[1:] and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1)
    )
    # The explanation points at the tumour: the hottest tenth of the map overlaps it.
    hot = heatmap >= np.quantile(heatmap, 0.9)
    assert (hot & (glioma.label[result.plane] > 0)).any()

    tumour_free = make_example(HELD_OUT["none"], "none")
    assert not predict.detect(
        detector, manifests[Task.DETECTION], tumour_free.image[3].astype(np.float32)
    ).tumour


def test_the_segmentation_decides_tumour_or_not_and_the_detector_only_without_it() -> None:
    """The largest whole-tumour region inside the brain decides, whatever the detector says; no
    masks: the detector."""
    confident = predict.Detection(True, 0.99, np.array([0.99]), np.array([10]))
    unsure = predict.Detection(False, 0.4, np.array([0.4]), np.array([10]))
    voxel_ml = 0.008  # 2 mm voxels
    wt = np.zeros((20, 20, 20), bool)
    wt.flat[: int(0.4 / voxel_ml)] = True  # 0.4 mL: under the minimum
    masks = {"WT": wt}

    below = predict.decide(confident, masks, voxel_ml)
    assert not below.tumour and below.decided_by == "segmentation"
    assert below.largest_lesion_ml == pytest.approx(0.4)
    wt.flat[: int(0.6 / voxel_ml)] = True  # 0.6 mL
    above = predict.decide(unsure, masks, voxel_ml)
    assert above.tumour and above.largest_lesion_ml == pytest.approx(0.6)
    assert predict.MIN_LESION_ML == 0.5
    # Two regions of 0.3 mL each, apart: scattered voxels, not one lesion.
    apart = np.zeros((20, 20, 20), bool)
    apart[0, :, :2] = apart[0, :, 18:] = True  # 2 x 40 voxels, ten columns apart
    scattered = predict.decide(confident, {"WT": apart[:, :19]}, voxel_ml)
    assert not scattered.tumour and scattered.largest_lesion_ml == pytest.approx(0.304)
    assert predict.decide(confident, None, voxel_ml) == predict.Decision(True, "detector", None)
    assert not predict.decide(unsure, None, voxel_ml).tumour


def test_a_224x224_rgb_keras_classifier_plugs_in_by_manifest(tmp_path: Path, glioma) -> None:  # type: ignore[no-untyped-def]
    """What hospitals have: a Kaggle-style 224x224 RGB classifier saved as .h5."""
    import keras

    from models.registry import sha256_of

    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, name="last_conv")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "resnet_like.h5"
    keras.Model(inputs, outputs).save(path)
    manifest_path = tmp_path / "classification.toml"
    manifest_path.write_text(
        'name = "site-classifier"\nversion = "2024.1"\ntask = "classification"\n'
        'framework = "keras"\nfile = "resnet_like.h5"\n'
        f'sha256 = "{sha256_of(path)}"\ninput_shape = [224, 224, 3]\n'
        'preprocessing = "imagenet"\nlabels = ["glioma", "meningioma", "notumor", "pituitary"]\n'
    )
    manifest = ModelManifest.from_toml(manifest_path)
    model = load(manifest)
    planes = glioma.image[1, 40:43].astype(np.float32)
    batch = predict.model_input(planes, manifest)
    assert batch.shape == (3, 224, 224, 3) and 100 < batch.max() <= 255
    assert model.predict(batch, verbose=0).shape == (3, 4)


def test_classifier_augmentation_moves_the_brain_and_keeps_the_outside_zero() -> None:
    """Training planes are brain only (zero outside the mask): rotating, scaling and a gamma must
    keep that background exactly zero, or the classifier learns a background no study has."""
    from models.classification.slices import augment

    plane = np.zeros((96, 120), np.float32)
    plane[20:70, 30:100] = np.linspace(0.2, 1.0, 70, dtype=np.float32)
    rng = np.random.default_rng(0)
    moved = [augment(plane, rng) for _ in range(8)]
    far = np.ones_like(plane, bool)
    far[5:85, 10:110] = False  # beyond any 15 degree turn and 15 % zoom of the square
    for out in moved:
        assert out.shape == plane.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1.15 + 1e-6
        assert not out[far].any()
    assert min(float(np.abs(out - plane).mean()) for out in moved) > 0.01, "each plane changes"
