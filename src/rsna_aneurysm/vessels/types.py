"""What every vessel segmenter answers, so the locator and the ROI classifier do not care which one ran."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..constants import SEG_LABELS
from ..region.geometry import Grid
from ..volume import Volume

# Channel c of the probabilities is vessel class c of constants.SEG_LABELS (0: background).
N_VESSEL_CLASSES = len(SEG_LABELS) + 1


def _seg_lr_permutation() -> np.ndarray:
    """Vessel class -> its mirror class under a left-right flip (identity for midline classes)."""
    perm = np.arange(N_VESSEL_CLASSES)
    of = {name: v for v, name in SEG_LABELS.items()}
    for v, name in SEG_LABELS.items():
        for a, b in (("Left ", "Right "), ("Right ", "Left ")):
            if name.startswith(a):
                perm[v] = of[b + name[len(a):]]
    return perm


SEG_LR_PERMUTATION = _seg_lr_permutation()


@dataclass
class VesselProbs:
    """Per-class vessel probabilities on an axis-aligned world grid: ``probs[c, k, j, i]``, channel 0 background,
    channel ``v`` the vessel class ``SEG_LABELS[v]``; channels sum to 1 per voxel."""

    probs: np.ndarray  # (N_VESSEL_CLASSES, k, j, i) float32 or float16
    grid: Grid
    source: str = "kit"  # kit (the kit's own segmenter) | nnunet (a trained nnU-Net v2 model folder)

    def __post_init__(self) -> None:
        if self.probs.ndim != 4 or self.probs.shape[0] != N_VESSEL_CLASSES:
            raise ValueError(f"vessel probabilities need shape ({N_VESSEL_CLASSES}, k, j, i), got {self.probs.shape}")
        if tuple(self.probs.shape[1:]) != tuple(self.grid.shape):
            raise ValueError(f"vessel probabilities {self.probs.shape[1:]} are not on their grid {self.grid.shape}")

    def labels(self) -> np.ndarray:
        """Hard labels (uint8, argmax over the classes)."""
        return np.argmax(self.probs, axis=0).astype(np.uint8)

    def foreground(self) -> np.ndarray:
        """Probability of any vessel (1 - background), float32."""
        return 1.0 - np.asarray(self.probs[0], dtype=np.float32)


class Segmenter(Protocol):
    """A vessel segmenter: one canonical (identity-direction) volume in, class probabilities on a grid out."""

    spacing_mm: float  # the isotropic spacing it segments at

    def segment(self, vol: Volume) -> VesselProbs: ...
