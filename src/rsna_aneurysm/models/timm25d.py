"""2.5D models on any timm 2D backbone: groups of adjacent slices become the image channels.

A ``(B, 1, D, H, W)`` patch is cut along D into windows of ``in_chans`` consecutive slices (every
``slice_stride`` slices); the backbone embeds each window, the embeddings are pooled over windows (mean and
max) and a linear head gives the 14 labels. Weights never download at run time: ``pretrained=False`` (random
init) or ``weights_path``, a local file in the backbone's timm format (e.g. from an attached Kaggle dataset).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import N_LABELS
from .registry import register_model


def _make_backbone(backbone: str, in_chans: int, weights_path: str | None, pretrained: bool) -> nn.Module:
    import timm

    if pretrained and not weights_path:
        raise ValueError(f"timm25d: pretrained=True needs weights_path (a local file for {backbone!r}); "
                         "the kit never downloads weights at run time")
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"timm25d: weights file {path} does not exist")
        # timm loads (and adapts to in_chans) the file named by the pretrained-config overlay: no network.
        return timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 in_chans=in_chans, num_classes=0)
    return timm.create_model(backbone, pretrained=False, in_chans=in_chans, num_classes=0)


@register_model("timm25d")
class Timm25D(nn.Module):
    """``backbone`` is any timm model name; ``in_chans`` slices per window."""

    def __init__(self, backbone: str = "resnet18", in_chans: int = 3, slice_stride: int = 2,
                 num_classes: int = N_LABELS, pretrained: bool = False, weights_path: str | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if in_chans < 1 or slice_stride < 1:
            raise ValueError(f"timm25d: in_chans and slice_stride must be >= 1, got {in_chans}, {slice_stride}")
        self.in_chans = int(in_chans)
        self.slice_stride = int(slice_stride)
        self.backbone = _make_backbone(backbone, self.in_chans, weights_path, pretrained)
        n_feat = int(self.backbone.num_features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * n_feat, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"timm25d expects (B, 1, D, H, W) input, got {tuple(x.shape)}")
        vol = x[:, 0]
        if vol.shape[1] < self.in_chans:  # too few slices: pad the depth
            vol = F.pad(vol, (0, 0, 0, 0, 0, self.in_chans - vol.shape[1]))
        b = vol.shape[0]
        windows = vol.unfold(1, self.in_chans, self.slice_stride)  # (B, G, H, W, C)
        g = windows.shape[1]
        windows = windows.permute(0, 1, 4, 2, 3).reshape(b * g, self.in_chans, *vol.shape[2:])
        feats = self.backbone(windows).reshape(b, g, -1)
        pooled = torch.cat([feats.mean(dim=1), feats.amax(dim=1)], dim=1)
        return {"logits": self.head(self.dropout(pooled))}
