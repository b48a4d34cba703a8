"""The kit's vessel segmenter at inference: a trained :func:`~.model.build_unet` network run by sliding windows.

``KitSegmenter.load(path)`` reads ``vessels/segmenter.pt`` (written by :mod:`.train`, loaded with
``weights_only=True``); ``segment(vol)`` resamples a canonical volume to the segmenter's spacing (linear), runs
Gaussian-blended sliding windows of its training patch size with a softmax per window, and answers
:class:`~.types.VesselProbs` on that grid.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..config import from_dict
from ..region.geometry import Grid
from ..runtime import resolve_precision
from ..volume import Volume
from .model import IN_CHANNELS, UNetConfig, build_unet, position_channels
from .types import N_VESSEL_CLASSES, VesselProbs

log = logging.getLogger(__name__)

FORMAT = "rsna-aneurysm/vessels-v1"


class SegmenterError(RuntimeError):
    """A segmenter checkpoint is missing, unreadable or not the kit's."""


class _Softmax(nn.Module):
    """The segmenter as the sliding-window inferer wants it: class probabilities as the window's heatmap."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": torch.softmax(self.net(x).float(), dim=1)}


def read_segmenter(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A segmenter checkpoint dict (``weights_only=True``); SegmenterError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"{path}: no such segmenter checkpoint (rsna-aneurysm vessels train)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for torn or foreign files
        raise SegmenterError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SegmenterError(f"{path}: not a {FORMAT} checkpoint")
    return ckpt


def image_to_grid(vol: Volume, spacing_mm: float) -> tuple[np.ndarray, Grid]:
    """A canonical volume as a float32 array on the isotropic grid at ``spacing_mm`` (unchanged when already
    there), with that grid."""
    if not np.allclose(vol.direction, np.eye(3), atol=1e-6):
        raise ValueError("vessel segmentation needs a canonical (identity-direction) volume; preprocess it first")
    if not np.allclose(vol.spacing, spacing_mm, atol=1e-3):
        from ..preprocess.geometry import resample

        vol = resample(vol, (spacing_mm,) * 3, "linear")
    grid = Grid(tuple(float(v) for v in vol.origin), tuple(float(v) for v in vol.spacing),
                tuple(int(s) for s in vol.array.shape))
    return np.asarray(vol.array, dtype=np.float32), grid


class KitSegmenter:
    """The kit's trained vessel segmenter (see the module docstring)."""

    source = "kit"

    def __init__(self, net: nn.Module, spacing_mm: float, patch: tuple[int, int, int], unet: UNetConfig,
                 device: str = "auto", precision: str = "auto", overlap: float = 0.25,
                 meta: dict[str, Any] | None = None, copy_model: bool = False) -> None:
        from ..models.sliding_window import SlidingWindowConfig, SlidingWindowInferer, prepare_model

        self.spacing_mm = float(spacing_mm)
        self.patch = tuple(int(p) for p in patch)
        self.unet = unet
        self.meta = meta or {}
        self.inferer = SlidingWindowInferer(SlidingWindowConfig(
            roi_size=self.patch, overlap=overlap, device=device, precision=precision, heatmap_activation="none",
            skip_empty=False))
        # Float32 weights under autocast: nnU-Net's residual blocks pool on their skip path, which a CPU cannot do
        # with bfloat16 weights; autocast runs the convolutions in bfloat16 and the pooling in float32.
        self.model = prepare_model(_Softmax(net), self.inferer.device, copy_model=copy_model, precision="fp32")
        self.model._rsna_precision = resolve_precision(precision, self.inferer.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", precision: str = "auto",
             overlap: float = 0.25) -> KitSegmenter:
        ckpt = read_segmenter(path)
        unet = from_dict(UNetConfig, ckpt["unet"])
        net = build_unet(IN_CHANNELS, N_VESSEL_CLASSES, unet)
        net.load_state_dict(ckpt["state_dict"])
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"} | {"path": str(path)}
        return cls(net, ckpt["spacing_mm"], tuple(ckpt["patch"]), unet, device, precision, overlap, meta)

    def segment(self, vol: Volume) -> VesselProbs:
        image, grid = image_to_grid(vol, self.spacing_mm)
        x = np.concatenate([image[None], position_channels(image.shape, self.spacing_mm)])
        out = self.inferer(self.model, x)
        probs = np.asarray(out.heatmap, dtype=np.float32)
        probs /= np.clip(probs.sum(axis=0, keepdims=True), 1e-6, None)
        return VesselProbs(probs=probs, grid=grid, source=self.source)


def checkpoint_payload(net: nn.Module, unet: UNetConfig, spacing_mm: float, patch: tuple[int, int, int],
                       config: dict[str, Any], metrics: dict[str, Any], epoch: int,
                       preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``vessels/segmenter.pt`` holds (plain types and tensors only, so ``weights_only`` loading works)."""
    from ..constants import SEG_LABELS
    from ..train.checkpoint import _plain

    return {
        "format": FORMAT,
        "unet": _plain(dataclasses.asdict(unet)),
        "spacing_mm": float(spacing_mm),
        "patch": [int(p) for p in patch],
        "classes": {str(k): v for k, v in SEG_LABELS.items()},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": _plain(config),
        "metrics": _plain(metrics),
        "epoch": int(epoch),
        "preprocessing": _plain(preprocessing or {}),
        "torch_version": str(torch.__version__),
    }
