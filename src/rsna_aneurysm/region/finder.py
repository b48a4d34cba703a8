"""Stage one: the region finder, a light 3D CNN on a coarse view of the whole head.

Input: the head at ``view_spacing_mm`` (4.5 mm by default) in a fixed ``view_shape`` grid centred on the head mask.
Output: a heatmap over a 4x coarser grid whose soft-argmax is the region centre, its spread (a standard deviation
in mm, the model's own uncertainty), and the region's half-extent. Trained on the region targets
(:mod:`.targets`) with a soft-argmax distance loss plus a cross-entropy on the heatmap.

When the finder is unsure (spread above ``max_spread_mm``), or its centre falls outside the head, or it is missing,
the classical fallback answers instead: the head mask's box, with the region centre at the median offset from the
top of the head (and from the box centre across) measured on the training targets. The reason is logged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..volume import Volume
from .geometry import Grid, head_box, sample, view_grid

log = logging.getLogger(__name__)


@dataclass
class FinderConfig:
    """The region finder's view, model and training."""

    view_shape: tuple[int, int, int] = (48, 48, 48)  # coarse view (k, j, i) voxels: 216 mm at 4.5 mm
    view_spacing_mm: float = 4.5
    channels: tuple[int, int, int] = (8, 16, 32)
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    shift_mm: float = 20.0  # augmentation: the view centre moves by up to this much along each axis
    flip_lr: float = 0.5
    intensity_jitter: float = 0.1
    heatmap_sigma_mm: float = 7.0  # target distribution of the heatmap cross-entropy
    seed: int = 0
    threads: int | None = None


@dataclass
class RegionConfig:
    """How the region is found and cropped (``region.json`` of a two-stage run)."""

    box_mm: tuple[float, float, float] = (128.0, 96.0, 96.0)  # crop size along (x, y, z) (the least, with fit_box)
    # `region train` widens box_mm so that every training aneurysm (localizer) lies inside the box around the
    # finder's centre for its series, with box_margin_mm to spare (up to max_box_mm).
    fit_box: bool = True
    box_margin_mm: float = 8.0
    max_box_mm: tuple[float, float, float] = (160.0, 128.0, 128.0)  # the box grows with the predicted extent
    extent_margin_mm: float = 12.0  # box >= 2 * (predicted extent + margin) along each axis
    max_spread_mm: float = 15.0  # finder spread above this: fallback
    # Classical fallback: region centre relative to the head mask box (x, y from its centre, z down from its top);
    # fitted on the training targets by `region train`.
    fallback_offset_mm: tuple[float, float, float] = (0.0, 0.0, -95.0)
    finder: FinderConfig = field(default_factory=FinderConfig)


class RegionFinder(nn.Module):
    """Four conv stages (three 2x poolings) to a heatmap on the view / 4 grid, plus a pooled extent head."""

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32)) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout),
                                 nn.ReLU(inplace=True))

        self.stem = block(1, c1)
        self.s2 = block(c1, c2)
        self.s3 = nn.Sequential(block(c2, c3), block(c3, c3))
        self.heat = nn.Conv3d(c3, 1, 1)
        self.extent = nn.Linear(c3, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.max_pool3d(self.stem(x), 2)
        x = F.max_pool3d(self.s2(x), 2)
        x = self.s3(x)
        return {"heatmap": self.heat(x)[:, 0], "extent": self.extent(x.mean(dim=(2, 3, 4)))}


def soft_argmax(heat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, D, H, W) logits -> expected index (B, 3) in (k, j, i) of the heat grid, its std (B, 3), probabilities."""
    b = heat.shape[0]
    prob = torch.softmax(heat.reshape(b, -1).float(), dim=1).reshape(heat.shape)
    axes = [torch.arange(n, dtype=torch.float32, device=heat.device) for n in heat.shape[1:]]
    mean, std = [], []
    for d, a in enumerate(axes):
        marg = prob.sum(dim=tuple(x for x in (1, 2, 3) if x != d + 1))
        m = (marg * a).sum(dim=1)
        mean.append(m)
        std.append(((marg * (a[None, :] - m[:, None]) ** 2).sum(dim=1)).clamp_min(1e-8).sqrt())
    return torch.stack(mean, 1), torch.stack(std, 1), prob


def heat_to_view(idx_heat: np.ndarray, factor: int = 4) -> np.ndarray:
    """Heat-grid index -> view index: heat cell c covers view voxels factor*c .. factor*c + factor - 1."""
    return np.asarray(idx_heat, dtype=np.float64) * factor + (factor - 1) / 2.0


def view_to_heat(idx_view: np.ndarray, factor: int = 4) -> np.ndarray:
    return (np.asarray(idx_view, dtype=np.float64) - (factor - 1) / 2.0) / factor


def extract_view(vol: Volume, box: tuple[np.ndarray, np.ndarray], cfg: FinderConfig,
                 shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, Grid]:
    """The coarse view (float32) of a normalised volume, centred on the head box ``box`` (:func:`head_box`), and
    its grid (``shape`` overrides the view shape)."""
    grid = view_grid(box, shape or cfg.view_shape, cfg.view_spacing_mm)
    return sample(vol, grid), grid


@dataclass
class RegionBox:
    """Where stage two looks: a box (world centre, size in mm along x, y, z), how it was found and why."""

    center: np.ndarray
    size_mm: np.ndarray
    source: str  # finder | fallback
    spread_mm: float = float("nan")
    reason: str = ""

    def grid(self, spacing_mm: float) -> Grid:
        shape = tuple(int(math.ceil(s / spacing_mm - 1e-6)) for s in self.size_mm[::-1])
        return Grid.centred(self.center, shape, spacing_mm)


def fallback_center(box: tuple[np.ndarray, np.ndarray], offset_mm: tuple[float, float, float]) -> np.ndarray:
    """Classical region centre from the head box: its centre plus offset across (x, y), top plus offset in z."""
    lo, hi = box
    c = (lo + hi) / 2.0
    return np.array([c[0] + offset_mm[0], c[1] + offset_mm[1], hi[2] + offset_mm[2]])


def box_size(cfg: RegionConfig, extent: np.ndarray | None) -> np.ndarray:
    size = np.asarray(cfg.box_mm, dtype=np.float64)
    if extent is not None and np.all(np.isfinite(extent)):
        size = np.maximum(size, 2.0 * (np.asarray(extent) + cfg.extent_margin_mm))
    return np.minimum(size, np.asarray(cfg.max_box_mm, dtype=np.float64))


class RegionLocator:
    """Stage one at inference: finder (when loaded) with the classical fallback. ``model=None``: fallback only."""

    def __init__(self, cfg: RegionConfig, model: RegionFinder | None, device: str = "cpu") -> None:
        self.cfg = cfg
        self.model = model.eval().to(device) if model is not None else None
        self.device = device

    @torch.no_grad()
    def run_finder(self, view: np.ndarray, grid: Grid) -> tuple[np.ndarray, float, np.ndarray]:
        """The finder on one coarse view: world centre, spread (mm) and half-extent (mm)."""
        x = torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32))[None, None].to(self.device)
        out = self.model(x)
        idx, std, _ = soft_argmax(out["heatmap"])
        center = grid.index_to_world(heat_to_view(idx[0].cpu().numpy()))[0]
        spread = float(np.sqrt(((std[0].cpu().numpy() * 4 * self.cfg.finder.view_spacing_mm) ** 2).mean()))
        extent = np.exp(out["extent"][0].float().cpu().numpy()) * 10.0
        return center, spread, extent

    def decide(self, center: np.ndarray | None, spread: float, extent: np.ndarray | None,
               box: tuple[np.ndarray, np.ndarray]) -> RegionBox:
        """The finder's answer when it is sure and inside the head, else the fallback's (with the reason)."""
        if center is None:
            reason = "no region finder in the weights"
        elif not np.all(np.isfinite(center)) or not spread <= self.cfg.max_spread_mm:
            reason = f"finder unsure (spread {spread:.1f} mm > {self.cfg.max_spread_mm:g})"
        elif not (np.all(center >= box[0] - 5.0) and np.all(center <= box[1] + 5.0)):
            reason = "finder centre outside the head"
        else:
            return RegionBox(center=center, size_mm=box_size(self.cfg, extent), source="finder", spread_mm=spread)
        return RegionBox(center=fallback_center(box, self.cfg.fallback_offset_mm), size_mm=box_size(self.cfg, None),
                         source="fallback", spread_mm=spread, reason=reason)

    def locate(self, vol: Volume, mask: np.ndarray | None) -> RegionBox:
        box = head_box(vol, mask)
        if self.model is None:
            out = self.decide(None, float("nan"), None, box)
        else:
            view, grid = extract_view(vol, box, self.cfg.finder)
            out = self.decide(*self.run_finder(view, grid), box)
        if out.source == "fallback":
            log.info("%s: region from the head-geometry fallback: %s", vol.meta.get("series_uid") or "series",
                     out.reason)
        return out
