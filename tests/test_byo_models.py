"""Bring your own model: real architectures built offline, saved in each format, plugged in by
manifest, and the node's answers compared with the model run directly with its own
preprocessing (as its authors' notebooks do: PIL resize, the convention's scaling, predict).

Keras: ``keras.applications.Xception`` (``weights=None``, 71 px, a nested base model, a Dense
head without softmax) as ``.keras`` and ``.h5``. PyTorch: a ResNet18 (torchvision's layout) as a
state dict, TorchScript and ONNX. Frameworks are imported once per module (TensorFlow is slow).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.inference import Classifier, ClassifierUnavailable
from models import predict
from models.registry import ManifestError, ModelManifest, load, sha256_of
from neurogate.settings import Settings
from tests.test_api_support import add_user, admin_headers, api_settings, running_app

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
XCEPTION_SIDE = 71  # Xception's smallest input
RESNET_SIDE = 96
TOLERANCE = 1e-5
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def write_manifest(folder: Path, weights: Path, **fields: Any) -> Path:
    """A manifest for ``weights`` with ``fields`` (TOML scalars and lists only)."""
    values: dict[str, Any] = {
        "name": f"site-{weights.stem}",
        "version": "2026.1",
        "task": "classification",
        "file": weights.name,
        "sha256": sha256_of(weights),
        "labels": LABELS,
    } | fields
    lines = []
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if key not in tables:
            lines.append(f"{key} = {_toml(value)}")
    for key, table in tables.items():
        lines.append(f"[{key}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path = folder / f"{weights.stem}-{len(list(folder.glob('*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def brain_pictures() -> list[np.ndarray]:
    """Two different 8-bit grey MR-like pictures (synthetic planes, 160 x 128)."""
    from models.overlay import to_grey
    from models.training.data import make_example

    pictures = []
    for seed, kind in ((50001, "pituitary"), (50002, "glioma")):
        example = make_example(seed, kind)
        k = int(np.argmax((example.label > 0).sum(axis=(1, 2))))
        picture = Image.fromarray(to_grey(example.image[3, k])).resize((128, 160))
        pictures.append(np.asarray(picture))
    return pictures


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def as_users_do(data: bytes, side: int) -> np.ndarray:
    """What a notebook does with a PNG: RGB, PIL's bilinear resize, float32 (n=1, H, W, 3)."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.BILINEAR)
    return np.asarray(image, np.float32)[None]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return brain_pictures()


# --- Keras: Xception with a nested base model and logits --------------------------------------


@pytest.fixture(scope="module")
def xception(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import keras

    folder = tmp_path_factory.mktemp("xception")
    keras.utils.set_random_seed(0)
    base = keras.applications.Xception(
        weights=None, include_top=False, input_shape=(XCEPTION_SIDE, XCEPTION_SIDE, 3)
    )
    inputs = keras.Input((XCEPTION_SIDE, XCEPTION_SIDE, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs))
    # No softmax: the user's model. Large weights, so that untrained features give distinct
    # answers for distinct pictures (else every softmax is 0.25 to 1e-5).
    head = keras.layers.Dense(
        len(LABELS), kernel_initializer=keras.initializers.RandomNormal(0, 30)
    )
    logits = head(features)
    model = keras.Model(inputs, logits)
    paths = {"keras": folder / "xception.keras", "h5": folder / "xception.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    manifests = {
        kind: write_manifest(
            folder,
            path,
            framework="keras",
            input_shape=[XCEPTION_SIDE, XCEPTION_SIDE, 3],
            preprocessing="tf",
            output="softmax",
        )
        for kind, path in paths.items()
    }
    return {"model": model, "manifests": manifests, "folder": folder}


def xception_directly(model: Any, data: bytes) -> np.ndarray:
    from keras.applications.xception import preprocess_input

    x = preprocess_input(as_users_do(data, XCEPTION_SIDE))
    return softmax(np.asarray(model.predict(x, verbose=0), np.float64))[0]


# --- PyTorch: ResNet18 as a state dict, TorchScript and ONNX ------------------------------------


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from models.byo.architectures import build

    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    module = build({"name": "resnet18", "num_classes": len(LABELS)}).eval()
    with torch.no_grad():  # trained-looking statistics, so that batch norm is not the identity
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    paths = {
        "state_dict": folder / "resnet18.pth",
        "torchscript": folder / "resnet18.pt",
        "onnx": folder / "resnet18.onnx",
    }
    torch.save(module.state_dict(), paths["state_dict"])
    dummy = torch.zeros(1, 3, RESNET_SIDE, RESNET_SIDE)
    torch.jit.trace(module, dummy).save(str(paths["torchscript"]))
    torch.onnx.export(
        module,
        (dummy,),
        str(paths["onnx"]),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )
    common = {
        "input_shape": [3, RESNET_SIDE, RESNET_SIDE],
        "preprocessing": "torch",
        "output": "softmax",
    }
    manifests = {
        "state_dict": write_manifest(
            folder,
            paths["state_dict"],
            framework="torch",
            architecture={"name": "resnet18", "num_classes": len(LABELS)},
            **common,
        ),
        "torchscript": write_manifest(folder, paths["torchscript"], framework="torch", **common),
        "onnx": write_manifest(folder, paths["onnx"], framework="onnx", **common),
    }
    return {"module": module, "manifests": manifests}


def resnet_directly(module: Any, data: bytes) -> np.ndarray:
    import torch

    x = (as_users_do(data, RESNET_SIDE) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        logits = module(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
    return softmax(logits.numpy().astype(np.float64))[0]


# --- The API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("byo")
    return api_settings(data, f"sqlite:///{data / 'neurogate.sqlite'}")


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with running_app(settings) as client:
        yield client


@pytest.fixture(scope="module")
def staff(client: TestClient) -> dict[str, str]:
    return add_user(client, "clin", "clinician")


def serve(client: TestClient, manifest: Path) -> Classifier:
    """Plug the manifest's model into the running app, checked as the API service does."""
    classifier = Classifier(manifest)
    classifier.load()
    client.app.state.context.classifier = classifier  # type: ignore[attr-defined]
    return classifier


def node_answers(
    client: TestClient, staff: dict[str, str], data: list[bytes]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Probabilities from /api/classify (one picture each, with Grad-CAM) and /predict."""
    classified = []
    for picture in data:
        response = client.post(
            "/api/classify", files={"file": ("slice.png", picture)}, headers=staff
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["visualization"]["heatmap_overlay"] and body["visualization"]["heatmap_only"]
        classified.append(np.array([body["probabilities"][label] for label in LABELS]))
    response = client.post(
        "/predict",
        json={"image": [base64.b64encode(picture).decode() for picture in data]},
        headers=staff,
    )
    assert response.status_code == 200, response.text
    batch = []
    for result in response.json()["results"]:
        batch.append(np.array([result["probabilities"][label] for label in LABELS]))
    return classified, batch


def assert_answers_as_directly(
    client: TestClient, staff: dict[str, str], data: list[bytes], direct: list[np.ndarray]
) -> None:
    """/api/classify and /predict give, for each picture, the model's own output (1e-5)."""
    assert np.abs(direct[0] - direct[1]).max() > 1e-4, "the two pictures must differ"
    classified, batch = node_answers(client, staff, data)
    for mine, theirs in zip(classified + batch, direct + direct, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=TOLERANCE)


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_a_keras_xception_with_a_nested_base_answers_as_it_does_directly(
    kind: str,
    xception: dict[str, Any],
    client: TestClient,
    staff: dict[str, str],
    pictures: list[np.ndarray],
) -> None:
    classifier = serve(client, xception["manifests"][kind])
    # Grad-CAM found the last convolution inside the nested `xception` base, unnamed.
    assert classifier.state()["gradcam_layer"] == "block14_sepconv2"
    data = [png(p) for p in pictures]
    direct = [xception_directly(xception["model"], d) for d in data]
    assert_answers_as_directly(client, staff, data, direct)


@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "onnx"])
def test_a_torch_resnet18_answers_as_it_does_directly(
    kind: str,
    resnet: dict[str, Any],
    client: TestClient,
    staff: dict[str, str],
    pictures: list[np.ndarray],
) -> None:
    classifier = serve(client, resnet["manifests"][kind])
    assert classifier.state()["state"] == "ready"
    data = [png(p) for p in pictures]
    direct = [resnet_directly(resnet["module"], d) for d in data]
    assert_answers_as_directly(client, staff, data, direct)


def test_grad_cam_of_an_onnx_export_is_the_one_pytorch_computes(
    resnet: dict[str, Any], pictures: list[np.ndarray]
) -> None:
    """ONNX has no gradients: the node's finite differences on the graph's tail give torch's
    own Grad-CAM at the same layer: the last convolution of the export, unnamed, where the
    exporter has folded ``layer4.1.bn2`` into ``layer4.1.conv2``."""
    assert load(ModelManifest.from_toml(resnet["manifests"]["state_dict"])).layer == (
        "layer4.1.conv2"
    )
    state_dict = ModelManifest.from_toml(resnet["manifests"]["state_dict"])
    named = write_manifest(
        state_dict.file.parent,
        state_dict.file,
        framework="torch",
        architecture={"name": "resnet18", "num_classes": len(LABELS)},
        input_shape=[3, RESNET_SIDE, RESNET_SIDE],
        preprocessing="torch",
        output="softmax",
        gradcam_layer="layer4.1.bn2",
    )
    by_hook = load(ModelManifest.from_toml(named))
    by_graph = load(ModelManifest.from_toml(resnet["manifests"]["onnx"]))
    assert by_graph.layer is not None and "layer4.1/conv2" in by_graph.layer
    batch = predict.model_input(pictures[0][None], by_hook.manifest)
    expected = np.stack([by_hook.explain(batch, index) for index in range(len(LABELS))])
    got = np.stack([by_graph.explain(batch, index) for index in range(len(LABELS))])
    peak = float(expected.max())
    assert peak > 0
    np.testing.assert_allclose(got, expected, atol=1e-2 * peak)


def test_the_worker_classifies_grid_planes_as_the_model_does_directly(
    resnet: dict[str, Any],
) -> None:
    """The pipeline's classify: each canonical plane becomes the 8-bit picture a user would
    export (windowed as for display), then goes the model's own way."""
    import torch

    from models.byo.pictures import picture_batch
    from models.overlay import to_grey
    from models.training.data import make_example

    manifest = ModelManifest.from_toml(resnet["manifests"]["state_dict"])
    model = load(manifest)
    volume = make_example(50003, "meningioma").image[1].astype(np.float32)
    planes = np.array([30, 31, 32])
    detection = predict.Detection(True, 0.99, np.array([0.99, 0.99, 0.99]), planes)
    result = predict.classify(model, manifest, volume, detection, planes)
    direct = []
    for k in planes:
        picture = Image.fromarray(to_grey(volume[k])).convert("RGB")
        x = np.asarray(picture.resize((RESNET_SIDE, RESNET_SIDE), Image.BILINEAR), np.float32)
        x = ((x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]
        with torch.no_grad():
            direct.append(softmax(resnet["module"](torch.from_numpy(x)).numpy())[0])
    mean = np.mean(direct, axis=0)
    mean[LABELS.index("notumor")] = 0  # a tumour was detected: p(type | tumour)
    mean /= mean.sum()
    got = np.array([result.probabilities[label] for label in LABELS])
    np.testing.assert_allclose(got, mean, atol=TOLERANCE)
    assert picture_batch(volume[planes], manifest).shape == (3, 3, RESNET_SIDE, RESNET_SIDE)
    heatmap = predict.grad_cam(model, manifest, volume[result.plane], result.index)
    assert heatmap.shape == volume.shape[1:] and heatmap.max() == pytest.approx(1)


# --- Mistakes, found at load with the field to fix ------------------------------------------


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small Keras classifiers: one emits logits, one ends in softmax."""
    import keras

    folder = tmp_path_factory.mktemp("small")
    paths = {}
    for activation in ("linear", "softmax"):
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(len(LABELS), activation=activation)(x)
        paths[activation] = folder / f"small_{activation}.keras"
        keras.Model(inputs, outputs).save(paths[activation])
    return paths


def check_fails(manifest: Path, field: str) -> str:
    with pytest.raises(ManifestError) as caught:
        load(ModelManifest.from_toml(manifest))
    assert caught.value.field == field, str(caught.value)
    return str(caught.value)


def test_logits_declared_as_probabilities_are_refused_at_load(small_keras: dict[str, Path]) -> None:
    path = small_keras["linear"]
    manifest = write_manifest(
        path.parent, path, framework="keras", input_shape=[32, 32, 3], preprocessing="unit"
    )
    assert "declare output = 'softmax'" in check_fails(manifest, "output")


def test_softmax_declared_on_a_model_that_ends_in_softmax_is_refused(
    small_keras: dict[str, Path],
) -> None:
    path = small_keras["softmax"]
    manifest = write_manifest(
        path.parent,
        path,
        framework="keras",
        input_shape=[32, 32, 3],
        preprocessing="unit",
        output="softmax",
    )
    assert "declare output = 'none'" in check_fails(manifest, "output")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_shape": [48, 48, 1]}, "input_shape"),  # the model takes 32 x 32 x 3
        ({"labels": ["tumour", "none"]}, "labels"),  # four outputs
        ({"gradcam_layer": "block5_conv3"}, "gradcam_layer"),
    ],
)
def test_a_model_that_cannot_do_its_task_fails_its_start_up_check(
    small_keras: dict[str, Path], fields: dict[str, Any], field: str
) -> None:
    path = small_keras["softmax"]
    values = {"input_shape": [32, 32, 3], "preprocessing": "unit"} | fields
    manifest = write_manifest(path.parent, path, framework="keras", **values)
    check_fails(manifest, field)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"preprocessing": "imagenet-ish"}, "preprocessing"),
        ({"preprocessing": "caffe", "input_shape": [32, 32, 1]}, "preprocessing"),
        ({"channels": "grey"}, "channels"),
        ({"output": "logits"}, "output"),
        ({"resize": "antialias"}, "resize"),
        ({"layout": "nhwc"}, "layout"),
        ({"sha256": "abc"}, "sha256"),
        ({"framework": "onnx"}, "file"),
        ({"labels": ["a", "a", "b", "c"]}, "labels"),
        ({"location": "yes"}, "location"),
        ({"location": True, "task": "detection"}, "location"),  # a classifier's option
        ({"location": True, "labels": ["a", "b", "c", "d"]}, "location"),  # no tumour types
    ],
)
def test_manifest_fields_are_validated_when_read(
    small_keras: dict[str, Path], fields: dict[str, Any], field: str
) -> None:
    path = small_keras["softmax"]
    values = {"framework": "keras", "input_shape": [32, 32, 3], "preprocessing": "unit"} | fields
    manifest = write_manifest(path.parent, path, **values)
    with pytest.raises(ManifestError) as caught:
        ModelManifest.from_toml(manifest)
    assert caught.value.field == field
    assert f"field {field!r}" in str(caught.value)


def test_health_reports_the_classifier_state_and_why(
    small_keras: dict[str, Path], client: TestClient, staff: dict[str, str]
) -> None:
    path = small_keras["linear"]
    manifest = write_manifest(
        path.parent, path, framework="keras", input_shape=[32, 32, 3], preprocessing="unit"
    )
    classifier = Classifier(manifest)
    with pytest.raises(ClassifierUnavailable, match="field 'output'"):
        classifier.load()
    client.app.state.context.classifier = classifier  # type: ignore[attr-defined]
    body = client.get("/api/health/details", headers=admin_headers(client)).json()
    models = body["checks"]["models"]
    assert models["status"] == "degraded"
    assert models["detail"]["classification"]["state"] == "failed"
    assert "field 'output'" in models["detail"]["classification"]["why"]
    assert client.get("/api/health").json()["status"] == "degraded"

    good = write_manifest(
        path.parent,
        path,
        framework="keras",
        input_shape=[32, 32, 3],
        preprocessing="unit",
        output="softmax",
    )
    serve(client, good)
    detail = client.get("/api/health/details", headers=admin_headers(client)).json()
    state = detail["checks"]["models"]["detail"]["classification"]
    assert state["state"] == "ready" and state["gradcam_layer"].startswith("conv2d")
    assert state["check_seconds"] > 0


# --- neurogate models add | check ------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from neurogate.settings import get_settings

    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    return tmp_path


def test_models_add_writes_a_manifest_that_answers_as_the_model_does(
    xception: dict[str, Any],
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    pictures: list[np.ndarray],
) -> None:
    from neurogate import cli

    weights = ModelManifest.from_toml(xception["manifests"]["h5"]).file
    out = cli_env / "site.toml"
    labels = ",".join(LABELS)
    argv = ["models", "add", str(weights), "--task", "classification", "--labels", labels]
    assert cli.main([*argv, "--preprocessing", "tf", "--out", str(out)]) == 0
    manifest = ModelManifest.from_toml(out)
    assert manifest.sha256 == sha256_of(weights)
    assert manifest.input_shape == (XCEPTION_SIDE, XCEPTION_SIDE, 3)
    assert manifest.output.value == "softmax"  # the Dense head emits logits
    assert manifest.gradcam_layer == "block14_sepconv2"
    assert manifest.labels == tuple(LABELS)
    assert "start-up check passed" in capsys.readouterr().err

    sample = cli_env / "sample.png"
    sample.write_bytes(png(pictures[0]))
    assert cli.main(["models", "check", str(out), "--image", str(sample)]) == 0
    printed = capsys.readouterr().out
    direct = xception_directly(xception["model"], sample.read_bytes())
    best = LABELS[int(np.argmax(direct))]
    assert printed.startswith("ok: ") and f"sample.png: {best} {direct.max():.4f}" in printed


def test_models_add_infers_an_onnx_export_and_refuses_a_wrong_label_count(
    resnet: dict[str, Any], cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neurogate import cli

    weights = ModelManifest.from_toml(resnet["manifests"]["onnx"]).file
    out = cli_env / "resnet.toml"
    argv = ["models", "add", str(weights), "--task", "classification", "--preprocessing", "torch"]
    assert cli.main([*argv, "--labels", "a,b", "--out", str(out)]) == cli.EX_FAILURE
    assert "the model has 4 outputs: give as many --labels" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([*argv, "--labels", ",".join(LABELS), "--out", str(out)]) == 0
    manifest = ModelManifest.from_toml(out)
    assert manifest.input_shape == (3, RESNET_SIDE, RESNET_SIDE)
    assert manifest.layout.value == "channels_first" and manifest.output.value == "softmax"


def test_models_check_names_the_field_to_fix(
    small_keras: dict[str, Path], cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neurogate import cli

    path = small_keras["linear"]
    manifest = write_manifest(
        path.parent, path, framework="keras", input_shape=[32, 32, 3], preprocessing="unit"
    )
    assert cli.main(["models", "check", str(manifest)]) == cli.EX_FAILURE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "field 'output'" in err


def test_the_api_service_does_not_start_with_a_classifier_that_fails_its_check(
    small_keras: dict[str, Path], tmp_path: Path
) -> None:
    from api.server import ApiService
    from neurogate.bus import open_bus
    from neurogate.db import create_db_engine, session_factory, upgrade_to_head
    from neurogate.settings import ModelSettings

    path = small_keras["linear"]
    manifest = write_manifest(
        path.parent, path, framework="keras", input_shape=[32, 32, 3], preprocessing="unit"
    )
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path / 'neurogate.sqlite'}")
    settings = settings.model_copy(update={"models": ModelSettings(classification=manifest)})
    upgrade_to_head(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    try:
        with pytest.raises(SystemExit) as caught:
            ApiService(settings, session_factory(engine), bus)
    finally:
        bus.close()
        engine.dispose()
    message = str(caught.value)
    assert message.startswith("neurogate api: classification model: model manifest")
    assert "field 'output'" in message and "\n" not in message


def test_a_3d_segmenter_in_onnx_segments_as_the_pytorch_module_does(tmp_path: Path) -> None:
    """The node's own 3D U-Net exported to ONNX, plugged in by manifest for segmentation."""
    import torch

    from models.segmentation.unet3d import UNet3D

    torch.manual_seed(0)
    net = UNet3D(in_channels=4, out_channels=4, base=4).eval()
    path = tmp_path / "unet.onnx"
    axes = {2: "k", 3: "j", 4: "i"}
    torch.onnx.export(
        net,
        (torch.zeros(1, 4, 32, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
    )
    manifest = write_manifest(
        tmp_path,
        path,
        task="segmentation",
        framework="onnx",
        input_shape=[4, 48, 48, 48],
        preprocessing="canonical",
        labels=["brain", "WT", "TC", "ET"],
        architecture={"window": [32, 32, 32]},
    )
    loaded = ModelManifest.from_toml(manifest)
    onnx_net = load(loaded)
    image = np.random.default_rng(1).normal(size=(4, 48, 48, 48)).astype(np.float32)
    x = torch.from_numpy(image[None, :, :32, :32, :32].copy())
    with torch.no_grad():
        np.testing.assert_allclose(onnx_net(x).numpy(), net(x).numpy(), atol=1e-4)
    ours = predict.segment(onnx_net, image, loaded.window)
    theirs = predict.segment(net, image, loaded.window)
    for region in ("brain", "WT", "TC", "ET"):
        assert (ours[region] != theirs[region]).mean() < 1e-4, region
    assert ours["WT"].any()


def test_a_monai_bundle_segments_with_its_label_convention_mapped_to_ours(tmp_path: Path) -> None:
    """A BraTS-style bundle (the Model Zoo layout: configs/metadata.json, models/model.ts; a
    MONAI SegResNet, sigmoid TC/WT/ET, its own channel order), against MONAI run directly."""
    import json

    import torch
    from monai.networks.nets import SegResNet
    from monai.transforms import NormalizeIntensity

    torch.manual_seed(0)
    net = SegResNet(
        in_channels=4, out_channels=3, init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1)
    ).eval()
    bundle = tmp_path / "brats_segresnet"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    model_file = bundle / "models" / "model.ts"
    torch.jit.script(net).save(str(model_file))
    bundle_channels = ["T1c", "T1", "T2", "FLAIR"]  # not the node's T1, T1CE, T2, FLAIR
    metadata = {
        "name": "BraTS MRI segmentation (test)",
        "network_data_format": {
            "inputs": {
                "image": {"num_channels": 4, "channel_def": dict(enumerate(bundle_channels))}
            },
            "outputs": {
                "pred": {"num_channels": 3, "channel_def": {"0": "TC", "1": "WT", "2": "ET"}}
            },
        },
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, default=str))
    manifest = write_manifest(
        tmp_path,
        model_file,
        task="segmentation",
        framework="monai",
        file="brats_segresnet/models/model.ts",
        input_shape=[4, 32, 32, 32],
        preprocessing="canonical",
        labels=["brain", "WT", "TC", "ET"],
    )
    loaded = load(ModelManifest.from_toml(manifest))

    ours = np.random.default_rng(2).uniform(0.1, 1.5, (4, 32, 32, 32)).astype(np.float32)
    ours[:, :4] = 0  # outside the head
    masks = predict.segment(loaded, ours)

    theirs = ours[[1, 0, 2, 3]]  # the node's T1, T1CE, T2, FLAIR as the bundle's T1c, T1, T2, FLAIR
    theirs = NormalizeIntensity(nonzero=True, channel_wise=True)(theirs)
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.as_tensor(np.asarray(theirs))[None]))[0].numpy() > 0.5
    tc, wt_expected, et = prob  # the bundle's order; the node nests ET in TC in WT
    tc_expected = tc & wt_expected
    et_expected = et & tc_expected
    assert wt_expected.any() and (~wt_expected).any()
    for region, expected in (("WT", wt_expected), ("TC", tc_expected), ("ET", et_expected)):
        assert (masks[region] != expected).mean() < 1e-4, region
    # brain: the non-zero voxels (the bundle has no brain output), and the tumour
    np.testing.assert_array_equal(masks["brain"], (ours != 0).any(axis=0) | masks["WT"])
