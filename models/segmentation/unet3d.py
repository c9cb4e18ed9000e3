"""A compact 3D U-Net: four MR contrasts in, four sigmoid maps out (brain, WT, TC, ET).

The regions are nested (ET within TC within WT within brain), so each output is a separate
binary map, as in the BraTS challenge's region-based training.
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUTS = ("brain", "WT", "TC", "ET")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet3D(nn.Module):
    """Input (N, 4, D, H, W) with D, H, W divisible by 8; output logits (N, 4, D, H, W)."""

    def __init__(
        self, in_channels: int = 4, out_channels: int = len(OUTPUTS), base: int = 12
    ) -> None:
        super().__init__()
        widths = [base, base * 2, base * 4, base * 8]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_block(c, w))
            c = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose3d(c, w, 2, stride=2))
            self.merge.append(_block(w * 2, w))
            c = w
        self.head = nn.Conv3d(c, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
