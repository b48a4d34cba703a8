"""Batch augmentation on the training device: flips, small rotations and scaling, intensity jitter.

A left-right flip mirrors the last array axis (``i``, patient left in the canonical orientation), so it also swaps
each Left/Right label pair (``constants.LR_PERMUTATION``); the other flips keep the labels. Masks follow every
geometric change. All random numbers come from the ``torch.Generator`` passed in (CPU), so a run is reproducible
and resumable from the generator's saved state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..constants import LR_PERMUTATION
from .config import AugmentConfig


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles (radians) about the three axes -> (B, 3, 3) rotation matrices."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    rx = torch.stack([one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def flip_lr(batch: dict[str, torch.Tensor], which: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mirror samples ``which`` (bool (B,)) along the last axis and swap their Left/Right labels."""
    out = dict(batch)
    sel = which.to(batch["image"].device).view(-1, 1, 1, 1, 1)
    for key in ("image", "mask"):
        if key in batch:
            out[key] = torch.where(sel, batch[key].flip(-1), batch[key])
    perm = torch.tensor(LR_PERMUTATION, device=batch["labels"].device)
    out["labels"] = torch.where(sel.view(-1, 1), batch["labels"][:, perm], batch["labels"])
    return out


class BatchAugment:
    """Callable ``(batch, generator) -> batch`` applying the configured augmentations per sample."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if not cfg.enabled:
            return batch
        image = batch["image"]
        b, dev = image.shape[0], image.device
        batch = flip_lr(batch, torch.rand(b, generator=gen) < cfg.flip_lr)
        for dim in (-2, -3):
            which = (torch.rand(b, generator=gen) < cfg.flip_other).to(dev).view(-1, 1, 1, 1, 1)
            for key in ("image", "mask"):
                if key in batch:
                    batch[key] = torch.where(which, batch[key].flip(dim), batch[key])
        do_affine = torch.rand(b, generator=gen) < cfg.affine_prob
        angles = _uniform(3 * b, -1.0, 1.0, gen).view(b, 3) * math.radians(cfg.rotate_deg)
        scales = 1.0 + _uniform(b, -cfg.scale, cfg.scale, gen)
        if do_affine.any() and (cfg.rotate_deg > 0 or cfg.scale > 0):
            idx = torch.nonzero(do_affine).flatten().to(dev)
            theta = torch.zeros(len(idx), 3, 4)
            theta[:, :, :3] = rotation_matrices(angles[do_affine]) / scales[do_affine].view(-1, 1, 1)
            theta = theta.to(dev, dtype=torch.float32)
            sub = batch["image"][idx].float()
            grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
            image = batch["image"].clone()
            image[idx] = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros",
                                       align_corners=False).to(image.dtype)
            batch["image"] = image
            if "mask" in batch:
                mask = batch["mask"].clone()
                warped = F.grid_sample(batch["mask"][idx].float(), grid, mode="bilinear", padding_mode="zeros",
                                       align_corners=False)
                mask[idx] = (warped > 0.5).to(mask.dtype)
                batch["mask"] = mask
        gain = (1.0 + _uniform(b, -cfg.intensity_scale, cfg.intensity_scale, gen)).to(dev).view(-1, 1, 1, 1, 1)
        shift = _uniform(b, -cfg.intensity_shift, cfg.intensity_shift, gen).to(dev).view(-1, 1, 1, 1, 1)
        image = batch["image"] * gain + shift
        if cfg.noise_std > 0:
            image = image + cfg.noise_std * torch.randn(image.shape, generator=gen).to(dev)
        batch["image"] = image
        return batch
