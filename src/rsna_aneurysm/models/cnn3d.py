"""Baseline 3D CNN: three convolution blocks, global pooling, a linear head on the 14 labels."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..constants import N_LABELS
from .blocks import ConvBlock3d, global_pool
from .registry import register_model


@register_model("cnn3d")
class CNN3D(nn.Module):
    """Patch classifier: ``channels[i]``-wide blocks, each halving the resolution, then avg+max pooling."""

    def __init__(self, in_chans: int = 1, channels: tuple[int, int, int] | list[int] = (16, 32, 64),
                 num_classes: int = N_LABELS, dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"cnn3d needs three channel widths, got {channels}")
        c1, c2, c3 = (int(c) for c in channels)
        self.features = nn.Sequential(
            ConvBlock3d(in_chans, c1), nn.MaxPool3d(2),
            ConvBlock3d(c1, c2), nn.MaxPool3d(2),
            ConvBlock3d(c2, c3),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c3, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.dropout(global_pool(self.features(x))))}
