"""Small building blocks shared by the 3D models."""

from __future__ import annotations

import torch
import torch.nn as nn


class ConvBlock3d(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by batch norm and ReLU (the U-Net's basic unit)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
        )


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Concatenated global average and max pooling over the spatial dims: (B, C, ...) -> (B, 2C).

    The max keeps a small bright finding visible that an average over a large patch would dilute.
    """
    flat = x.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.amax(dim=2)], dim=1)
