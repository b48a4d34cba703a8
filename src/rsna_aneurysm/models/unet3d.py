"""Tiny 3D U-Net: the seed project's best model, with a voxel heatmap head and a pooled 14-label head.

Two encoder blocks, a bottleneck, two decoder blocks with skip connections. The heatmap (one logit per voxel)
is trained against a sphere around each aneurysm; the label head pools the last decoder features and the
bottleneck. Being fully convolutional, the model runs on any input size (padded internally to a multiple of 4),
which suits sliding-window inference over a whole scan.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import N_LABELS
from .blocks import ConvBlock3d, global_pool
from .registry import register_model


@register_model("unet3d_tiny")
class TinyUNet3D(nn.Module):
    """``channels`` = widths of encoder block 1, encoder block 2 and the bottleneck."""

    def __init__(self, in_chans: int = 1, channels: tuple[int, int, int] | list[int] = (16, 32, 64),
                 num_classes: int = N_LABELS, dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"unet3d_tiny needs three channel widths, got {channels}")
        c1, c2, c3 = (int(c) for c in channels)
        self.enc1 = ConvBlock3d(in_chans, c1)
        self.enc2 = ConvBlock3d(c1, c2)
        self.bottleneck = ConvBlock3d(c2, c3)
        self.up2 = nn.ConvTranspose3d(c3, c2, 2, stride=2)
        self.dec2 = ConvBlock3d(2 * c2, c2)
        self.up1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = ConvBlock3d(2 * c1, c1)
        self.heatmap_head = nn.Conv3d(c1, 1, 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c1 + 2 * c3, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        pad = [(-s) % 4 for s in size]
        if any(pad):  # F.pad takes (last dim first) pairs
            x = F.pad(x, [p for s in reversed(pad) for p in (0, s)])
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        b = self.bottleneck(F.max_pool3d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        heatmap = self.heatmap_head(d1)[:, :, : size[0], : size[1], : size[2]]
        d1 = d1[:, :, : size[0], : size[1], : size[2]]
        logits = self.head(self.dropout(torch.cat([global_pool(d1), global_pool(b)], dim=1)))
        return {"logits": logits, "heatmap": heatmap}
