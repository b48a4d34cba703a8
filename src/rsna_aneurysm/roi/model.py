"""The vessel-guided ROI classifier: the segmenter's U-Net, fed the image and the vessel probabilities of one region,
with heads for Aneurysm Present and the 13 locations and an auxiliary sphere map.

Input ``x``: ``(B, 4 + 13, D, H, W)``: channel 0 the image, channels 1-3 the position channels the segmenter
reads (x, y, z from the head's centre, in 100 mm), channel ``3 + v`` the probability of vessel class ``v``
(``constants.SEG_LABELS``). The U-Net's full-resolution decoder features ``F`` (``C`` channels) are pooled over
each location's vessel region (its probability, grown by a max-filter of ``dilate_vox`` voxels so the sac beside
the vessel counts): the weighted mean and the weighted maximum of ``F``, and the maximum of the sphere probability
inside the region. Location ``l``'s logit is its own linear function of its pooled vector only, so what happens in
one vessel region moves that location's logit and no other (tested). Aneurysm Present reads the pool over all
vessels, the bottleneck's global average and the largest sphere probability. The sphere map (one output channel
of the U-Net's segmentation layer) is trained against balls around each aneurysm (``losses.sphere_loss``).

Segmentation pretraining: :func:`rsna_aneurysm.vessels.model.transfer_weights` copies a trained segmenter into
``self.unet`` (the stem widened with zero weights for the vessel channels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import LOCATION_COLS, LR_PERMUTATION, N_LABELS, SEG_LABEL_OF
from ..vessels.model import IN_CHANNELS, UNetConfig, build_unet, decoder_features
from ..vessels.types import N_VESSEL_CLASSES, SEG_LR_PERMUTATION

N_VESSELS = N_VESSEL_CLASSES - 1
IN_TOTAL = IN_CHANNELS + N_VESSELS
# Vessel class of each location, in LOCATION_COLS order (its channel among the vessel channels is class - 1).
LOCATION_CHANNEL: tuple[int, ...] = tuple(SEG_LABEL_OF[name] for name in LOCATION_COLS)
# Input channel permutation of a left-right flip: image and positions stay, Left/Right vessel channels swap.
INPUT_LR_PERMUTATION: tuple[int, ...] = (*range(IN_CHANNELS), *(IN_CHANNELS - 1 + int(SEG_LR_PERMUTATION[v])
                                                                for v in range(1, N_VESSEL_CLASSES)))


def region_weights(vessels: torch.Tensor, dilate_vox: int) -> torch.Tensor:
    """``(B, 13, D, H, W)`` vessel probabilities (channel v-1 = class v) -> location regions ``(B, 13, D, H, W)`` in
    LOCATION_COLS order, each grown by a ``2 * dilate_vox + 1`` max-filter."""
    r = vessels[:, [c - 1 for c in LOCATION_CHANNEL]]
    if dilate_vox > 0:  # a cube max-filter as three 1-D passes (same result, a fraction of the time)
        k, d = 2 * dilate_vox + 1, dilate_vox
        with torch.no_grad():
            for kernel, pad in (((k, 1, 1), (d, 0, 0)), ((1, k, 1), (0, d, 0)), ((1, 1, k), (0, 0, d))):
                r = F.max_pool3d(r, kernel_size=kernel, stride=1, padding=pad)
    return r


def pool_regions(feats: torch.Tensor, sphere: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Per-region pooled features ``(B, R, 2C + 1)``: weighted mean of ``feats`` (B, C, ...), weighted maximum of
    ``feats``, maximum of the sphere probability ``sphere`` (B, 1, ...) over each region of ``regions`` (B, R, ...)."""
    b, c = feats.shape[:2]
    f = feats.flatten(2).float()  # (B, C, N)
    w = regions.flatten(2).float()  # (B, R, N)
    s = sphere.flatten(2).float()  # (B, 1, N)
    mass = w.sum(-1, keepdim=True).clamp_min(1e-3)
    mean = torch.einsum("bcn,brn->brc", f, w) / mass
    maxes, smax = [], []
    for r in range(w.shape[1]):
        wr = w[:, r : r + 1]
        maxes.append((f * wr).amax(-1))
        smax.append((s * wr).amax(-1))
    return torch.cat([mean, torch.stack(maxes, 1), torch.stack(smax, 1)], dim=-1)


class LocationHeads(nn.Module):
    """One linear head per location: logit ``l`` = ``w_l . pooled[:, l] + b_l`` (no mixing between locations)."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dim) * (1.0 / dim) ** 0.5)
        self.bias = nn.Parameter(torch.full((n,), -2.0))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled * self.weight).sum(-1) + self.bias


class RoiClassifier(nn.Module):
    """See the module docstring. ``forward`` answers ``{"logits": (B, 14) in LABEL_COLS order, "heatmap": the
    sphere logit map (B, 1, D, H, W)}``."""

    def __init__(self, features: tuple[int, ...] = (8, 16, 32, 64), blocks: tuple[int, ...] = (1, 1, 2, 2),
                 decoder_convs: int = 1, dilate_vox: int = 3) -> None:
        super().__init__()
        self.unet_cfg = UNetConfig(tuple(features), tuple(blocks), int(decoder_convs))
        self.dilate_vox = int(dilate_vox)
        self.unet = build_unet(IN_TOTAL, 1, self.unet_cfg)
        c0, cb = self.unet_cfg.features[0], self.unet_cfg.features[-1]
        dim = 2 * c0 + 1
        self.locations = LocationHeads(len(LOCATION_COLS), dim)
        self.present = nn.Sequential(nn.Linear(dim + cb + 1, 32), nn.LeakyReLU(inplace=True), nn.Linear(32, 1))
        nn.init.constant_(self.present[-1].bias, -1.0)

    @property
    def divisor(self) -> int:
        return self.unet_cfg.divisor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottleneck, feats = decoder_features(self.unet, x)
        sphere = self.unet.decoder.seg_layers[-1](feats)
        sprob = torch.sigmoid(sphere.float())
        vessels = x[:, IN_CHANNELS:].float()
        regions = region_weights(vessels, self.dilate_vox)
        pooled = pool_regions(feats, sprob, regions)  # (B, 13, 2C+1)
        loc = self.locations(pooled)
        every = region_weights(vessels.sum(1, keepdim=True).clamp(0, 1).expand(-1, N_VESSELS, -1, -1, -1),
                               self.dilate_vox)[:, :1]
        pooled_all = pool_regions(feats, sprob, every)[:, 0]
        glob = bottleneck.float().mean((2, 3, 4))
        peak = sprob.flatten(1).amax(1, keepdim=True)
        present = self.present(torch.cat([pooled_all, glob, peak], 1))
        logits = torch.cat([loc, present], 1)
        assert logits.shape[1] == N_LABELS
        return {"logits": logits, "heatmap": sphere}


def flip_input(x: torch.Tensor) -> torch.Tensor:
    """The left-right mirror of a batch of ROI inputs: the x axis (last) reversed, the x position negated and the
    Left/Right vessel channels swapped, so a mirrored right MCA lies in the Left MCA channel, where a left MCA
    would."""
    y = x.flip(-1)[:, list(INPUT_LR_PERMUTATION)]
    y[:, 1] = -y[:, 1]
    return y


def flip_array(x: np.ndarray) -> np.ndarray:
    """:func:`flip_input` for one input ``(C, k, j, i)`` as a numpy array (training augmentation)."""
    y = x[..., ::-1][list(INPUT_LR_PERMUTATION)].copy()
    y[1] = -y[1]
    return y


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Probabilities ``(B, 14)`` of ``model`` on ``x``; with ``tta`` the mean with the mirrored pass, whose Left and
    Right outputs are swapped back (``LR_PERMUTATION``)."""
    p = torch.sigmoid(model(x)["logits"].float())
    if tta:
        q = torch.sigmoid(model(flip_input(x))["logits"].float())[:, list(LR_PERMUTATION)]
        p = 0.5 * (p + q)
    return p

