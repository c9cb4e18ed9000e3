"""The model registry: a manifest per model says what it is and how to feed it.

Swapping a model is a configuration change: point the node at another manifest (settings
``NEUROGATE_MODELS__BRAIN_EXTRACTION`` / ``__DETECTION`` / ``__CLASSIFICATION`` /
``__SEGMENTATION``). Manifests name the framework and weights file (``.keras``/``.h5`` for Keras;
``.pth`` state dict of a declared architecture, or TorchScript ``.pt``, for PyTorch; ``.onnx``
for onnxruntime), the input (size, channels, layout, resize method, preprocessing convention),
the output (activation, class names in order), the Grad-CAM layer, the version and the SHA-256
of the weights, which is checked before loading. Every field is validated when the manifest is
read, and a 2D model is run once at load (:mod:`models.byo.check`): an error names the field to
fix. ``models/MODEL_CARD.md`` ("Bring your own model") is the reference.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from models.classification.location import TUMOUR_LABELS as LOCATION_LABELS

MANIFESTS = Path(__file__).with_name("manifests")
_CHUNK = 1 << 20

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Task(StrEnum):
    BRAIN_EXTRACTION = "brain_extraction"
    DETECTION = "detection"
    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"


SLICE_TASKS = (Task.DETECTION, Task.CLASSIFICATION)  # 2D models: one picture in, scores out


class Framework(StrEnum):
    KERAS = "keras"
    TORCH = "torch"
    ONNX = "onnx"
    MONAI = "monai"  # a MONAI bundle: file = its models/model.ts (models.byo.monai_bundle)


class Preprocessing(StrEnum):
    """How a plane becomes the model's input.

    Grid conventions (the node's own models): planes of the canonical 2 mm grid, not resized.
    Picture conventions (models trained on 8-bit pictures, as nearly every published one is):
    the picture is resized to the input size, then scaled by the named convention.
    """

    CANONICAL = "canonical"  # models.preprocessing: 2 mm grid, robust-max normalisation
    # The same planes, only their intracranial part, scaled by its own robust maximum
    # (models.preprocessing.brain_normalise): a model trained on brain-extracted planes.
    BRAIN = "brain"
    # Resized, scaled by the plane's own 99th percentile (x / (1.5 p99), clipped to 0..1), and
    # for PERCENTILE_255 times 255: what "unit" and "imagenet" did before 0.3.
    PERCENTILE = "percentile"
    PERCENTILE_255 = "percentile_255"
    RAW = "raw"  # 0..255 as decoded (models whose preprocessing is a layer of their own)
    UNIT = "unit"  # x / 255
    TF = "tf"  # x / 127.5 - 1: Xception, Inception, MobileNet (keras.applications "tf" mode)
    CAFFE = "caffe"  # RGB -> BGR, minus the ImageNet BGR means: ResNet50/VGG in keras.applications
    TORCH = "torch"  # x / 255, minus the ImageNet means, over their standard deviations


# Names that meant something else before 0.3: "imagenet" was the percentile scaling times 255.
_RENAMED = {"imagenet": Preprocessing.PERCENTILE_255}
PICTURE_PREPROCESSING = (
    Preprocessing.RAW,
    Preprocessing.UNIT,
    Preprocessing.TF,
    Preprocessing.CAFFE,
    Preprocessing.TORCH,
)


class Channels(StrEnum):
    GREY = "grey"
    RGB = "rgb"


class Layout(StrEnum):
    CHANNELS_LAST = "channels_last"  # (H, W, C): Keras
    CHANNELS_FIRST = "channels_first"  # (C, H, W): PyTorch, most ONNX exports


class Resize(StrEnum):
    """PIL's resampling filters (what ``keras.utils.load_img`` and torchvision's PIL path use)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    BOX = "box"


class Activation(StrEnum):
    """What turns the model's output into probabilities."""

    SOFTMAX = "softmax"  # logits of mutually exclusive classes
    SIGMOID = "sigmoid"  # a logit per label
    NONE = "none"  # the model's outputs are already probabilities (checked at load)


class ChecksumMismatch(ValueError):
    """The weights file is not the one the manifest describes."""


class ManifestError(ValueError):
    """A manifest field is missing or wrong; the message names the field."""

    def __init__(self, path: Path | str, name: str, why: str) -> None:
        super().__init__(f"model manifest {path}: field {name!r}: {why}")
        self.path = str(path)
        self.field = name
        self.why = why


def _choice(enum: type[_T], value: Any) -> _T:
    try:
        return enum(value)  # type: ignore[call-arg]
    except ValueError:
        names = ", ".join(str(e.value) for e in enum)  # type: ignore[attr-defined]
        raise ValueError(f"{value!r} is not one of {names}") from None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r}: give true or false")
    return value


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    task: Task
    framework: Framework
    file: Path
    sha256: str
    input_shape: tuple[int, ...]  # without the batch axis, in the model's own layout
    preprocessing: Preprocessing
    labels: tuple[str, ...]  # in the order of the model's outputs
    architecture: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    channels: Channels = Channels.GREY
    layout: Layout = Layout.CHANNELS_LAST
    resize: Resize = Resize.BILINEAR
    output: Activation = Activation.NONE
    gradcam_layer: str | None = None  # None: the last convolutional layer, found at load
    # A classifier's class combined with the location model's (models.classification.location),
    # for a study that was segmented; a site's classifier is used as it is unless it asks.
    location: bool = False
    source: Path | None = None  # the manifest file

    @classmethod
    def from_toml(cls, path: Path) -> ModelManifest:
        """Read and validate a manifest; relative ``file`` paths are relative to it.

        Raises
        ------
        ManifestError
            Naming the field that is missing or wrong (a ``ValueError``).
        """
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"model manifest {path}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> ModelManifest:
        def get(name: str, convert: Callable[[Any], _T], default: Any = ...) -> _T:
            if name not in data:
                if default is ...:
                    raise ManifestError(path, name, "missing")
                return default
            try:
                return convert(data[name])
            except (ValueError, TypeError) as exc:
                raise ManifestError(path, name, str(exc)) from None

        task = get("task", lambda v: _choice(Task, v))
        framework = get("framework", lambda v: _choice(Framework, v))
        file = get("file", lambda v: (path.parent / str(v)).resolve())
        _check_file_kind(path, framework, file, data.get("architecture"))
        shape = get("input_shape", lambda v: tuple(int(x) for x in v))
        raw_pre = get("preprocessing", str)
        if raw_pre in _RENAMED:
            log.warning(
                "model manifest: preprocessing %r is deprecated, read as %r",
                raw_pre,
                _RENAMED[raw_pre].value,
                extra={"manifest": str(path)},
            )
        preprocessing = get("preprocessing", lambda v: _RENAMED.get(v) or _choice(Preprocessing, v))
        default_layout = (
            Layout.CHANNELS_LAST if framework is Framework.KERAS else (Layout.CHANNELS_FIRST)
        )
        layout = get("layout", lambda v: _choice(Layout, v), default_layout)
        slice_task = task in SLICE_TASKS
        if framework is Framework.MONAI and task is not Task.SEGMENTATION:
            raise ManifestError(path, "framework", "a MONAI bundle serves segmentation only")
        if slice_task and (len(shape) != 3 or min(shape) < 1):
            raise ManifestError(path, "input_shape", f"{list(shape)}: give [H, W, C] or [C, H, W]")
        count = (shape[-1] if layout is Layout.CHANNELS_LAST else shape[0]) if slice_task else 1
        if slice_task and count not in (1, 3):
            raise ManifestError(path, "input_shape", f"{count} channels: 1 (grey) or 3 (RGB)")
        channels = get(
            "channels",
            lambda v: _choice(Channels, v),
            Channels.GREY if count == 1 else Channels.RGB,
        )
        if slice_task and (channels is Channels.GREY) != (count == 1):
            raise ManifestError(
                path, "channels", f"{channels.value!r} but input_shape has {count} channels"
            )
        if preprocessing in (Preprocessing.CAFFE, Preprocessing.TORCH) and count != 3:
            raise ManifestError(path, "preprocessing", f"{preprocessing.value!r} needs RGB input")
        if not slice_task and preprocessing is not Preprocessing.CANONICAL:
            raise ManifestError(path, "preprocessing", f"a {task.value} model takes 'canonical'")
        labels = get("labels", lambda v: tuple(str(x) for x in v))
        if not labels or len(set(labels)) != len(labels):
            raise ManifestError(path, "labels", "give each output's name once, in output order")
        sha256 = get("sha256", lambda v: str(v).lower())
        location = get("location", _boolean, False)
        if location and not set(LOCATION_LABELS) <= set(labels):
            raise ManifestError(
                path, "location", f"the location model needs the labels {list(LOCATION_LABELS)}"
            )
        if location and task is not Task.CLASSIFICATION:
            raise ManifestError(path, "location", "only a classification model takes it")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ManifestError(path, "sha256", "must be 64 hex digits (`neurogate models add`)")
        return cls(
            name=get("name", str),
            version=get("version", str),
            task=task,
            framework=framework,
            file=file,
            sha256=sha256,
            input_shape=shape,
            preprocessing=preprocessing,
            labels=labels,
            architecture=get("architecture", dict, {}),
            description=get("description", str, ""),
            channels=channels,
            layout=layout,
            resize=get("resize", lambda v: _choice(Resize, v), Resize.BILINEAR),
            output=get("output", lambda v: _choice(Activation, v), Activation.NONE),
            gradcam_layer=get("gradcam_layer", str, None),
            location=location,
            source=path,
        )

    @property
    def on_canonical_grid(self) -> bool:
        """Whether the model takes planes of the canonical grid as they are (no resizing)."""
        return self.preprocessing in (Preprocessing.CANONICAL, Preprocessing.BRAIN)

    @property
    def takes_pictures(self) -> bool:
        """Whether the model takes 8-bit pictures scaled by a named convention."""
        return self.preprocessing in PICTURE_PREPROCESSING

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of a 2D model's input."""
        if self.layout is Layout.CHANNELS_LAST:
            return self.input_shape[0], self.input_shape[1]
        return self.input_shape[1], self.input_shape[2]

    @property
    def channel_count(self) -> int:
        return 1 if self.channels is Channels.GREY else 3

    @property
    def window(self) -> tuple[int, int, int] | None:
        """The crop a segmentation network was trained on; inference slides it over the grid."""
        window = self.architecture.get("window")
        if window is None:
            return None
        k, j, i = (int(v) for v in window)
        return k, j, i

    @property
    def version_info(self) -> dict[str, str]:
        """What a result records about the model that produced it."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


_SUFFIXES = {
    Framework.KERAS: (".keras", ".h5", ".hdf5"),
    Framework.TORCH: (".pth", ".pt", ".ts"),
    Framework.ONNX: (".onnx",),
    Framework.MONAI: (".ts", ".pt"),
}


def _check_file_kind(path: Path, framework: Framework, file: Path, architecture: Any) -> None:
    if file.suffix.lower() not in _SUFFIXES[framework]:
        kinds = ", ".join(_SUFFIXES[framework])
        raise ManifestError(
            path, "file", f"{file.name}: a {framework.value} model is one of {kinds}"
        )
    state_dict = framework is Framework.TORCH and file.suffix == ".pth"
    if state_dict and (not isinstance(architecture, dict) or "name" not in architecture):
        raise ManifestError(
            path, "architecture", "a state dict (.pth) needs [architecture] name = ..."
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(manifest: ModelManifest) -> None:
    actual = sha256_of(manifest.file)
    if actual != manifest.sha256:
        raise ChecksumMismatch(
            f"{manifest.file.name}: sha256 {actual} differs from the manifest's {manifest.sha256}"
        )


def load(manifest: ModelManifest, check: bool = True) -> Any:
    """The model object, checked.

    A 3D network is a PyTorch module in eval mode (or an ONNX graph called as one). A 2D
    model (detection, classification) is a :class:`models.byo.slice_model.SliceModel` over
    the framework's model: with ``check``, one dummy input has gone through it and (for a
    classifier) through Grad-CAM (:func:`models.byo.check.startup_check`), so that a model
    that cannot do its task fails here, with the manifest field to fix, not at the first
    request.
    """
    verify(manifest)
    if manifest.task in SLICE_TASKS:
        from models.byo.check import startup_check
        from models.byo.slice_model import SliceModel

        model = SliceModel.open(manifest)
        if check:
            startup_check(model)
        return model
    if manifest.framework is Framework.MONAI:
        from models.byo.monai_bundle import load_bundle

        return load_bundle(manifest)
    if manifest.framework is Framework.ONNX:
        from models.byo.onnx_backend import OnnxVolumeNet

        return OnnxVolumeNet(manifest.file)
    return load_torch(manifest)


def load_torch(manifest: ModelManifest) -> Any:
    """A PyTorch module in eval mode: a state dict of the declared architecture, or TorchScript."""
    import torch

    if manifest.file.suffix == ".pth":
        from models.byo.architectures import build

        module = build(manifest.architecture)
        module.load_state_dict(torch.load(manifest.file, map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(manifest.file, map_location="cpu")
    return module.eval()


def default_manifest(task: Task) -> Path:
    return MANIFESTS / f"{task.value}.toml"


def manifest_for(task: Task, configured: Path | None = None) -> ModelManifest:
    """The manifest configured for ``task`` (``Settings.models``), else the shipped one."""
    manifest = ModelManifest.from_toml(configured or default_manifest(task))
    if manifest.task is not task:
        raise ManifestError(
            manifest.source or "", "task", f"{manifest.task.value!r}, configured for {task.value}"
        )
    return manifest
