"""ONNX models through onnxruntime, and Grad-CAM without a gradient engine.

onnxruntime runs graphs forward only. For Grad-CAM the graph is split at the target layer's
output A (the last ``Conv`` node's, unless the manifest names a node or tensor): a probe model
returns A with the score, and the tail (every node that depends on A, fed with the other
tensors it reads, taken from the probe) gives the gradient of the score with respect to each
feature map by central differences, d score / d A_c summed over the map = (s(A + e 1_c) -
s(A - e 1_c)) / 2e: exact when the score is linear in A (pooling and a dense head), and the
first-order gradient otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.byo.slice_model import channels_last
from models.registry import Layout

_CONV_OPS = ("Conv", "ConvTranspose")
_STEP = 1e-3  # of the mean absolute feature value
_CHUNK = 64  # perturbed copies per tail run


def _session(model_bytes: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    def __init__(self, model_bytes: bytes, layer: str | None) -> None:
        import onnx

        self._model = onnx.load_from_string(model_bytes)
        self.session = _session(model_bytes)
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self._wanted = layer
        self.target = self._target_tensor(layer)
        self.layer = self.target
        self._split: tuple[Any, Any, list[str]] | None = None

    @classmethod
    def from_file(cls, path: Path, layer: str | None) -> OnnxBackend:
        return cls(path.read_bytes(), layer)

    @classmethod
    def from_bytes(cls, model_bytes: bytes, layer: str | None) -> OnnxBackend:
        return cls(model_bytes, layer)

    def _target_tensor(self, layer: str | None) -> str | None:
        nodes = list(self._model.graph.node)
        if layer is None:
            convs = [n for n in nodes if n.op_type in _CONV_OPS]
            return str(convs[-1].output[0]) if convs else None
        for node in nodes:
            if node.name == layer or layer in node.output:
                return str(node.output[0]) if node.name == layer else layer
        return None

    def forward(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        outputs = []
        fixed = self.session.get_inputs()[0].shape[0]
        step = 1 if isinstance(fixed, int) else batch_size
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start : start + step], np.float32)
            outputs.append(self.session.run([self._output], {self._input: chunk})[0])
        return np.concatenate(outputs).reshape(len(batch), -1) if outputs else np.zeros((0, 0))

    def _build_split(self) -> tuple[Any, Any, list[str]]:
        """The probe session (output, A and the tail's other inputs) and the tail session."""
        import onnx
        from onnx import helper, shape_inference

        graph = self._model.graph
        target = self.target
        assert target is not None
        descendants, tail_nodes = {target}, []
        for node in graph.node:  # ONNX graphs are topologically sorted
            if any(name in descendants for name in node.input):
                descendants.update(node.output)
                tail_nodes.append(node)
        needed = {self._output}
        kept = []
        for node in reversed(tail_nodes):  # only what the output depends on
            if any(out in needed for out in node.output):
                kept.append(node)
                needed.update(node.input)
        kept.reverse()
        initializers = {init.name: init for init in graph.initializer}
        produced = {out for node in kept for out in node.output}
        extra = sorted(
            name
            for name in {i for node in kept for i in node.input}
            if name and name not in produced and name not in initializers and name != target
        )
        inferred = shape_inference.infer_shapes(self._model)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
        types.update({v.name: v.type.tensor_type.elem_type for v in graph.input})

        def info(name: str) -> Any:
            return helper.make_tensor_value_info(
                name, types.get(name, onnx.TensorProto.FLOAT), None
            )

        probe = onnx.ModelProto()
        probe.CopyFrom(self._model)
        for name in [target, *extra]:
            if name not in {o.name for o in probe.graph.output} and name != self._input:
                probe.graph.output.append(info(name))
        tail_graph = helper.make_graph(
            kept,
            "gradcam_tail",
            [info(name) for name in [target, *extra]],
            [info(self._output)],
            [initializers[i] for i in sorted(needed & initializers.keys())],
        )
        tail = helper.make_model(
            tail_graph,
            opset_imports=list(self._model.opset_import),
            ir_version=self._model.ir_version,
        )
        return (
            _session(probe.SerializeToString()),
            _session(tail.SerializeToString()),
            extra,
        )

    def features_and_weights(
        self, batch: np.ndarray, class_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.target is None:
            raise LookupError(
                f"no node or tensor {self._wanted!r} in the graph"
                if self._wanted
                else "the graph has no Conv node"
            )
        if self._split is None:
            self._split = self._build_split()
        probe, tail, extra = self._split
        x = np.ascontiguousarray(batch[:1], np.float32)
        names = [self.target, *[e for e in extra if e != self._input]]
        values = dict(zip(names, probe.run(names, {self._input: x}), strict=True))
        values[self._input] = x
        features = values[self.target]
        if features.ndim != 4:
            raise LookupError(f"tensor {self.target!r} is not a batch of feature maps")
        channels = features.shape[1]
        step = _STEP * (float(np.abs(features).mean()) or 1.0)
        scores = np.empty((2, channels), np.float64)
        for sign_index, sign in enumerate((1.0, -1.0)):
            for start in range(0, channels, _CHUNK):
                stop = min(start + _CHUNK, channels)
                shifted = np.repeat(features, stop - start, axis=0)
                shifted[np.arange(stop - start), np.arange(start, stop)] += sign * step
                scores[sign_index, start:stop] = self._tail_scores(
                    tail, shifted, values, extra, class_index
                )
        gradient_sums = (scores[0] - scores[1]) / (2 * step)
        weights = gradient_sums / (features.shape[2] * features.shape[3])
        return channels_last(features[0], Layout.CHANNELS_FIRST), weights.astype(np.float32)

    def _tail_scores(
        self, tail: Any, shifted: np.ndarray, values: dict[str, Any], extra: list[str], index: int
    ) -> np.ndarray:
        try:
            feeds = {self.target: shifted}
            feeds |= {e: np.repeat(values[e], len(shifted), axis=0) for e in extra}
            out = tail.run([self._output], feeds)[0]
            return np.asarray(out).reshape(len(shifted), -1)[:, index]
        except Exception:  # noqa: BLE001 - a tail with a fixed batch of one: one copy at a time
            scores = []
            for row in shifted:
                feeds = {self.target: row[None]} | {e: values[e] for e in extra}
                scores.append(np.asarray(tail.run([self._output], feeds)[0]).reshape(-1)[index])
            return np.asarray(scores)


class OnnxVolumeNet:
    """A 3D segmenter in ONNX, called as the PyTorch module :func:`models.predict.segment`
    expects: a (1, C, k, j, i) tensor in, logits out."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path.read_bytes())
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {self._input: np.ascontiguousarray(x.numpy(), np.float32)})
        return torch.from_numpy(np.asarray(out[0]))

    def eval(self) -> OnnxVolumeNet:
        return self
