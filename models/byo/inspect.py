"""What ``neurogate models add`` learns from a model file, and the manifest it writes.

From the file: the framework, the input shape (and layout), the number of outputs, the last
convolutional layer, and whether the model already ends in softmax or sigmoid. What no file
says (the class names, the preprocessing its authors used) comes from the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry import (
    Activation,
    Framework,
    Layout,
    ModelManifest,
    Preprocessing,
    Task,
    sha256_of,
)


@dataclass(frozen=True)
class Inferred:
    framework: Framework
    input_shape: tuple[int, ...] | None  # without the batch axis
    layout: Layout
    outputs: int | None
    gradcam_layer: str | None
    ends_in: Activation  # NONE: the outputs are raw (logits or already scores)


def framework_of(path: Path) -> Framework:
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return Framework.KERAS
    if suffix == ".onnx":
        return Framework.ONNX
    if suffix in (".pt", ".pth", ".ts"):
        return Framework.TORCH
    raise ValueError(f"{path.name}: not a model file this node reads (.keras .h5 .pt .pth .onnx)")


def inspect(
    path: Path, input_shape: tuple[int, ...] | None, architecture: dict[str, Any] | None
) -> Inferred:
    """Inspect ``path``; ``input_shape`` (needed for PyTorch files, which do not record it)
    overrides what the file says."""
    framework = framework_of(path)
    if framework is Framework.TORCH:
        return _torch(path, input_shape, architecture)
    inferred = _keras(path) if framework is Framework.KERAS else _onnx(path)
    if input_shape is not None:
        inferred = dataclasses.replace(inferred, input_shape=input_shape)
    return inferred


def _activation_named(name: str) -> Activation:
    lowered = name.lower()
    if "softmax" in lowered:
        return Activation.SOFTMAX
    if "sigmoid" in lowered:
        return Activation.SIGMOID
    return Activation.NONE


def _keras(path: Path) -> Inferred:
    import keras

    from models.byo.keras_backend import last_conv, walk

    model = keras.saving.load_model(path, compile=False)
    shape = tuple(int(v) for v in model.inputs[0].shape[1:])
    final = list(walk(model))[-1]
    activation = getattr(getattr(final, "activation", None), "__name__", type(final).__name__)
    conv = last_conv(model)
    return Inferred(
        Framework.KERAS,
        shape,
        Layout.CHANNELS_LAST,
        int(model.outputs[0].shape[-1]),
        None if conv is None else str(conv.name),
        _activation_named(str(activation)),
    )


def _onnx(path: Path) -> Inferred:
    import onnx

    from models.byo.onnx_backend import OnnxBackend

    backend = OnnxBackend.from_file(path, None)
    dims = backend.session.get_inputs()[0].shape[1:]
    shape = tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
    out = backend.session.get_outputs()[0].shape
    graph = onnx.load(str(path)).graph
    ends_in = _activation_named(graph.node[-1].op_type) if graph.node else Activation.NONE
    layout = Layout.CHANNELS_LAST if shape and shape[-1] in (1, 3) else Layout.CHANNELS_FIRST
    return Inferred(
        Framework.ONNX,
        shape,
        layout,
        out[-1] if isinstance(out[-1], int) else None,
        backend.layer,
        ends_in,
    )


def _torch(
    path: Path, input_shape: tuple[int, ...] | None, architecture: dict[str, Any] | None
) -> Inferred:
    import torch

    if path.suffix == ".pth":
        from models.byo.architectures import build

        if not architecture:
            raise ValueError(
                f"{path.name} is a state dict: give its --architecture (e.g. resnet18)"
            )
        module = build(architecture)
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    outputs = None
    if input_shape is not None:
        with torch.no_grad():
            outputs = int(module(torch.zeros((1, *input_shape))).reshape(1, -1).shape[1])
    last = None
    if not isinstance(module, torch.jit.ScriptModule):
        convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
        last = convs[-1] if convs else None
    return Inferred(
        Framework.TORCH, input_shape, Layout.CHANNELS_FIRST, outputs, last, Activation.NONE
    )


def manifest_data(
    path: Path,
    inferred: Inferred,
    *,
    task: Task,
    labels: list[str],
    preprocessing: Preprocessing,
    name: str,
    version: str,
    output: Activation | None,
    architecture: dict[str, Any] | None,
    manifest_dir: Path,
) -> dict[str, Any]:
    """The manifest's fields, as :meth:`ModelManifest.from_dict` reads them."""
    if inferred.input_shape is None:
        raise ValueError("the file does not record its input shape: give --input-shape")
    if inferred.outputs is not None and inferred.outputs != len(labels):
        raise ValueError(f"the model has {inferred.outputs} outputs: give as many --labels")
    if output is None:  # a model that ends in softmax or sigmoid emits probabilities
        if inferred.ends_in is not Activation.NONE:
            output = Activation.NONE
        else:
            output = Activation.SOFTMAX if len(labels) > 1 else Activation.SIGMOID
    try:
        file = str(path.resolve().relative_to(manifest_dir.resolve()))
    except ValueError:
        file = str(path.resolve())
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": task.value,
        "framework": inferred.framework.value,
        "file": file,
        "sha256": sha256_of(path),
        "input_shape": list(inferred.input_shape),
        "layout": inferred.layout.value,
        "preprocessing": preprocessing.value,
        "output": output.value,
        "labels": labels,
    }
    if inferred.gradcam_layer is not None:
        data["gradcam_layer"] = inferred.gradcam_layer
    if architecture:
        data["architecture"] = architecture
    return data


def to_toml(data: dict[str, Any]) -> str:
    """A flat manifest (scalars, lists, one level of tables) as TOML."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        text = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    lines = [
        "# Written by `neurogate models add`; see models/MODEL_CARD.md (Bring your own model)."
    ]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {value(v)}" for k, v in data.items() if k not in tables]
    for key, table in tables.items():
        lines += ["", f"[{key}]"] + [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def written_manifest(data: dict[str, Any], path: Path) -> ModelManifest:
    """Validate ``data`` as the manifest at ``path`` would be read (nothing is written)."""
    return ModelManifest.from_dict(data, path)
