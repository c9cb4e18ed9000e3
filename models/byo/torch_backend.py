"""PyTorch 2D models: a module of a declared architecture (Grad-CAM by forward hook) or
TorchScript (no hooks: Grad-CAM on an in-memory ONNX export of the same module)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from models.byo.slice_model import Backend, channels_last
from models.registry import Layout, ModelManifest


def torch_backend(module: Any, manifest: ModelManifest) -> Backend:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return ScriptBackend(module, manifest)
    return ModuleBackend(module, manifest)


def _forward(module: Any, batch: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    outputs = []
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + batch_size]))
            outputs.append(module(chunk).reshape(len(chunk), -1).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


class ModuleBackend:
    def __init__(self, module: Any, manifest: ModelManifest) -> None:
        self.module = module
        self._wanted = manifest.gradcam_layer
        self.layer: str | None = manifest.gradcam_layer
        self._shape = manifest.input_shape

    def forward(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return _forward(self.module, batch, batch_size)

    def _find_last_conv(self) -> str | None:
        """The last convolution that runs in a forward pass (execution order, not declaration)."""
        import torch

        ran: list[str] = []
        handles = [
            m.register_forward_hook(lambda *_, name=name: ran.append(name))
            for name, m in self.module.named_modules()
            if isinstance(m, torch.nn.modules.conv._ConvNd)
        ]
        try:
            with torch.no_grad():
                self.module(torch.zeros((1, *self._shape)))
        finally:
            for handle in handles:
                handle.remove()
        return ran[-1] if ran else None

    def features_and_weights(
        self, batch: np.ndarray, class_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if self.layer is None:
            self.layer = self._find_last_conv()
            if self.layer is None:
                raise LookupError("the model has no convolutional layer")
        modules = dict(self.module.named_modules())
        if self.layer not in modules:
            raise LookupError(
                f"no module {self.layer!r} in the model; its last convolution is "
                f"{self._find_last_conv()!r}"
            )
        captured: dict[str, Any] = {}

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            output.retain_grad()
            captured["features"] = output

        handle = modules[self.layer].register_forward_hook(keep)
        try:
            x = torch.from_numpy(np.ascontiguousarray(batch))
            with torch.enable_grad():
                score = self.module(x).reshape(len(x), -1)[:, class_index].sum()
                score.backward()
        finally:
            handle.remove()
            self.module.zero_grad(set_to_none=True)
        features = captured["features"]
        if features.dim() != 4 or features.grad is None:
            raise LookupError(f"module {self.layer!r} does not output feature maps")
        maps = features[0].detach().numpy()
        weights = features.grad[0].numpy().mean(axis=(1, 2))
        return channels_last(maps, Layout.CHANNELS_FIRST), weights  # torch maps are (c, h, w)


class ScriptBackend:
    """TorchScript: forward passes in torch; Grad-CAM on an ONNX export made on first use."""

    def __init__(self, module: Any, manifest: ModelManifest) -> None:
        self.module = module
        self._manifest = manifest
        self._onnx: Any = None
        self.layer: str | None = manifest.gradcam_layer

    def forward(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return _forward(self.module, batch, batch_size)

    def _exported(self) -> Any:
        import torch

        from models.byo.onnx_backend import OnnxBackend

        if self._onnx is None:
            buffer = io.BytesIO()
            torch.onnx.export(
                self.module,
                (torch.zeros((1, *self._manifest.input_shape)),),
                buffer,  # type: ignore[arg-type]  # a file object works, the hint says path
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
            )
            self._onnx = OnnxBackend.from_bytes(buffer.getvalue(), self._manifest.gradcam_layer)
            self.layer = self._onnx.layer
        return self._onnx

    def features_and_weights(
        self, batch: np.ndarray, class_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._exported().features_and_weights(batch, class_index)
