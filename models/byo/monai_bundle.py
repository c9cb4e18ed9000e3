"""MONAI bundles (the Model Zoo's layout) as the node's 3D segmenter.

A bundle directory holds ``configs/metadata.json`` and ``models/model.ts`` (TorchScript). Its
``network_data_format`` says the input channels (``inputs.image.channel_def``, else the
manifest's ``[architecture] channels``) and the output channels (``outputs.pred.channel_def``:
BraTS bundles give sigmoid TC, WT, ET). :class:`BundleNet` maps both to the node's convention:
the four contrasts arrive as T1, T1CE, T2, FLAIR and are reordered for the bundle, each scaled
to zero mean and unit variance over its non-zero voxels (MONAI's ``NormalizeIntensityd(
nonzero=True, channel_wise=True)``, the Model Zoo BraTS preprocessing), and the outputs leave as
brain (non-zero voxels), WT, TC, ET logits. Leave ``window`` unset: the normalisation is over the
whole volume, as MONAI's inference does it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.registry import ManifestError, ModelManifest

OUR_CHANNELS = ("t1", "t1ce", "t2", "flair")  # inference_worker.pipeline.CHANNELS
_CHANNEL_NAMES = {
    "t1": "t1", "t1w": "t1", "t1c": "t1ce", "t1ce": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce",
    "t2": "t2", "t2w": "t2", "flair": "flair", "t2-flair": "flair",
}  # fmt: skip
_REGION_NAMES = {
    "tc": "TC", "tumor core": "TC", "tumour core": "TC",
    "wt": "WT", "whole tumor": "WT", "whole tumour": "WT",
    "et": "ET", "enhancing tumor": "ET", "enhancing tumour": "ET",
}  # fmt: skip
_BRAIN_LOGIT = 20.0


def bundle_root(manifest: ModelManifest) -> Path:
    """The bundle directory: ``file`` is its ``models/model.ts``."""
    return manifest.file.parent.parent


def _names(defs: Any, known: dict[str, str]) -> list[str | None]:
    ordered = [str(defs[k]) for k in sorted(defs, key=int)] if isinstance(defs, dict) else []
    return [known.get(name.strip().lower()) for name in ordered]


def channel_maps(manifest: ModelManifest) -> tuple[list[int], dict[str, int]]:
    """For each bundle input channel, the index of our contrast; for WT/TC/ET, the output's."""
    source = manifest.source or manifest.name
    metadata_path = bundle_root(manifest) / "configs" / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
        formats = metadata["network_data_format"]
    except (OSError, ValueError, KeyError) as exc:
        raise ManifestError(source, "file", f"not a MONAI bundle's models/model.ts: {exc}") from exc
    inputs = formats.get("inputs", {}).get("image", {}).get("channel_def")
    declared = manifest.architecture.get("channels")
    channels = (
        _names(inputs, _CHANNEL_NAMES)
        if declared is None
        else [_CHANNEL_NAMES.get(str(c).lower()) for c in declared]
    )
    if len(channels) != 4 or None in channels or len(set(channels)) != 4:
        raise ManifestError(
            source,
            "architecture",
            f"the bundle's input channels ({inputs or declared}) are not T1, T1CE, T2, FLAIR in "
            "some order: give [architecture] channels = [...] in the bundle's order",
        )
    regions = _names(formats.get("outputs", {}).get("pred", {}).get("channel_def"), _REGION_NAMES)
    if sorted(r for r in regions if r) != ["ET", "TC", "WT"]:
        raise ManifestError(source, "file", f"the bundle's outputs {regions} are not TC, WT and ET")
    order = [OUR_CHANNELS.index(str(c)) for c in channels]
    return order, {str(r): i for i, r in enumerate(regions) if r}


def load_bundle(manifest: ModelManifest) -> Any:
    import torch

    order, outputs = channel_maps(manifest)
    net = torch.jit.load(str(manifest.file), map_location="cpu").eval()
    return BundleNet(net, order, outputs).eval()


def _module_base() -> Any:
    import torch

    return torch.nn.Module


class BundleNet(_module_base()):  # type: ignore[misc]
    """A bundle's network behind the node's input and output convention (module docstring)."""

    def __init__(self, net: Any, order: list[int], outputs: dict[str, int]) -> None:
        super().__init__()
        self.net = net
        self.order = order
        self.outputs = outputs

    def forward(self, x: Any) -> Any:
        import torch

        x = x[:, self.order]
        nonzero = x != 0
        scaled = torch.zeros_like(x)
        for c in range(x.shape[1]):
            values = x[:, c][nonzero[:, c]]
            if values.numel():
                std = values.std(unbiased=False)
                std = std if float(std) > 0 else torch.ones_like(std)
                scaled[:, c] = torch.where(nonzero[:, c], (x[:, c] - values.mean()) / std, 0.0)
        logits = self.net(scaled)
        brain = torch.where(nonzero.any(1, keepdim=True), _BRAIN_LOGIT, -_BRAIN_LOGIT)
        pick = [logits[:, self.outputs[r] : self.outputs[r] + 1] for r in ("WT", "TC", "ET")]
        return torch.cat([brain.to(logits.dtype), *pick], dim=1)
