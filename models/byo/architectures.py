"""Architectures a PyTorch state dict (``.pth``) may declare in its manifest's ``[architecture]``.

- ``name = "unet3d"``: the node's own 3D U-Net (``in_channels``, ``out_channels``, ``base``).
- ``name = "resnet18"`` / ``"resnet34"``: torchvision's ResNet, the same parameter names, so a
  ``torchvision.models.resnet18(num_classes=...)`` state dict loads unchanged (``num_classes``,
  ``in_channels``); torchvision itself is not needed.
- ``name = "package.module:Class"``: any importable ``torch.nn.Module``, built with the table's
  other keys as keyword arguments.
"""

from __future__ import annotations

import importlib
from typing import Any

_RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def build(spec: dict[str, Any]) -> Any:
    """The module ``spec`` declares, with fresh parameters."""
    name = str(spec.get("name"))
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "window")}
    if name == "unet3d":
        from models.segmentation.unet3d import UNet3D

        return UNet3D(
            in_channels=int(spec.get("in_channels", 4)),
            out_channels=int(spec.get("out_channels", 4)),
            base=int(spec.get("base", 12)),
        )
    if name in _RESNET_BLOCKS:
        return resnet(_RESNET_BLOCKS[name], **kwargs)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"architecture {name!r}: {exc}") from exc
        return cls(**kwargs)
    raise ValueError(
        f"unknown architecture {name!r}: unet3d, resnet18, resnet34 or 'module:Class'; "
        "or ship a TorchScript file (.pt) instead"
    )


def resnet(blocks: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3) -> Any:
    """torchvision's ResNet with basic blocks (ResNet18/34), with its parameter names."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample: nn.Module | None = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
                stride = 1 if index == 0 else 2
                layers = []
                for b in range(count):
                    layers.append(BasicBlock(inplanes, planes, stride if b == 0 else 1))
                    inplanes = planes
                setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for index in range(1, 5):
                x = getattr(self, f"layer{index}")(x)
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet()
