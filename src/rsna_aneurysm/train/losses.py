"""Losses: BCE or focal loss on the 14 labels (per-label positive weights), plus an optional heatmap loss.

``build_loss(cfg)`` returns a callable ``(outputs, batch) -> (total, parts)`` where ``outputs`` is the model's dict
and ``batch`` the dataset's; ``parts`` holds detached floats for logging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.patches import AP_INDEX
from .config import LossConfig


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017) on logits: ``alpha_t * (1 - p_t)^gamma * BCE``; not reduced."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = (1 - p_t).pow(gamma) * bce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over each sample's voxels, averaged over the batch (empty targets score via ``eps``)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = targets.float().flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


class PatchLoss:
    """Classification loss (+ weighted heatmap loss when the model returns a heatmap and the batch a mask)."""

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.pos_weight = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight, dtype=torch.float32)
        self.label_weights = None if cfg.label_weights is None else torch.tensor(cfg.label_weights,
                                                                                 dtype=torch.float32)

    def classification(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        if self.cfg.name == "focal":
            per = focal_loss(logits, labels, self.cfg.alpha, self.cfg.gamma, pw)
        else:
            per = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pw, reduction="none")
        if self.label_weights is not None:
            w = self.label_weights.to(logits.device)
            return (per * w).sum(1).mean() / w.sum()
        return per.mean()

    def heatmap(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.heatmap_loss == "focal":
            return focal_loss(logits, mask, self.cfg.alpha, self.cfg.gamma).mean()
        bce = F.binary_cross_entropy_with_logits(logits.float(), mask)
        if self.cfg.heatmap_loss == "bce":
            return bce
        return bce + soft_dice_loss(logits, mask)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        cls = self.classification(outputs["logits"], batch["labels"])
        parts = {"cls": float(cls.detach())}
        total = cls
        hm = outputs.get("heatmap")
        if hm is not None and "mask" in batch:
            # Always in the graph (weight 0 included) so every parameter gets a gradient under DDP.
            h = self.heatmap(hm, batch["mask"])
            total = total + self.cfg.heatmap_weight * h
            parts["heatmap"] = float(h.detach())
            if self.cfg.heatmap_max_weight > 0:
                m = self.heatmap_max(hm, batch["labels"])
                total = total + self.cfg.heatmap_max_weight * m
                parts["heatmap_max"] = float(m.detach())
        return total, parts

    @staticmethod
    def heatmap_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE of each patch's highest heatmap logit against its Aneurysm Present label."""
        top = logits.float().flatten(1).max(dim=1).values
        return F.binary_cross_entropy_with_logits(top, labels[:, AP_INDEX].float())


def build_loss(cfg: LossConfig) -> Callable[[dict, dict], tuple[torch.Tensor, dict[str, float]]]:
    """The configured loss callable."""
    return PatchLoss(cfg)
