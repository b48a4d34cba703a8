"""Sliding-window inference over a whole preprocessed volume.

Windows of ``roi_size`` voxels tile the volume with a given fractional overlap (the last window on each axis is
pulled back to end at the border, so every voxel is covered and no window reads outside). The model's voxel
heatmap of every window is turned into probabilities and blended into one volume with a constant or Gaussian
weight map (the Gaussian trusts window centres more than borders, where the model saw less context). The model's
14 window logits are kept per window for scan-level aggregation (``infer.aggregate``).

Speed without changing the output: :func:`prepare_model` folds batch norm into the preceding convolutions and
switches to channels-last memory (about 2x on CPU for the 3D U-Net); the weight map is built once per setting and
cached; windows are gathered into one preallocated batch; windows outside the head mask can be skipped. With a
small change of the output (about 1e-3 in probability): the precision ``rsna_aneurysm.runtime.resolve_precision``
picks, as in training: on a CPU bfloat16 weights, on CUDA bfloat16 or float16 autocast.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import require
from ..runtime import PRECISIONS, autocast, is_device_name, resolve_device, resolve_precision
from ..volume import Volume

log = logging.getLogger(__name__)

# Voxels per forward pass when batch_size is 0 (auto): 4 windows of 64^3, the speed plateau on CPU.
AUTO_BATCH_VOXELS = 4 * 64**3


@dataclass
class SlidingWindowConfig:
    """Settings of :class:`SlidingWindowInferer`."""

    # Window size in voxels along (k, j, i) = array axes; null: the patch size the model was trained on (the
    # predictor fills it in from the checkpoint).
    roi_size: tuple[int, int, int] | None = (64, 64, 64)
    overlap: float = 0.25  # fraction of a window shared with its neighbour along each axis, in [0, 1)
    blend: Literal["gaussian", "constant"] = "gaussian"  # weight map used to average overlapping windows
    sigma_scale: float = 0.125  # Gaussian sigma as a fraction of the window size along each axis
    batch_size: int = 0  # windows per forward pass; 0: auto, about 4 windows of 64^3 voxels (32 of 32^3)
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...
    pad_value: float = 0.0  # value of padding when the volume is smaller than a window
    heatmap_activation: Literal["sigmoid", "none"] = "sigmoid"  # applied per window before blending
    # Arithmetic of the model (``rsna_aneurysm.runtime``, the same rule as training): auto = bfloat16 on GPUs and
    # CPUs that compute it natively (on a CPU as bfloat16 weights: 2-3x faster, probabilities within ~1e-3), else
    # float16 on CUDA and float32 on a CPU; fp16 is CUDA only (float32 elsewhere). fp32 gives MONAI-equal outputs.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    skip_empty: bool = True  # skip windows holding no voxel of the mask passed to the inferer

    def __post_init__(self) -> None:
        """The device and precision names (``rsna_aneurysm.runtime``); ConfigError naming the field."""
        require(is_device_name(self.device), "device", f"auto, cpu or cuda[:N], got {self.device!r}")
        require(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}, got {self.precision!r}")


@dataclass
class SlidingWindowResult:
    """What one sliding-window pass returns.

    ``heatmap``: blended probabilities on the input grid, ``(D, H, W)`` (or ``(C, D, H, W)`` for several heatmap
    channels), None when the model has no heatmap head; voxels no processed window covered are 0.
    ``window_logits``: ``(N, n_labels)`` label logits of each processed window (empty when the model has none).
    ``window_starts``: ``(N, 3)`` first voxel of each window along (k, j, i) in input coordinates (negative when
    the input was padded). ``window_heat_max``: ``(N,)`` highest heatmap probability inside each window.
    """

    heatmap: np.ndarray | None
    window_logits: np.ndarray
    window_starts: np.ndarray
    window_heat_max: np.ndarray | None
    n_windows_total: int


def axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis: steps of ``roi * (1 - overlap)`` (at least 1), the last one ending at the border.

    ``size`` must be at least ``roi`` (pad first). The same grid as MONAI's ``dense_patch_slices``.
    """
    if size < roi:
        raise ValueError(f"axis of size {size} is smaller than the window {roi}; pad it first")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(int(roi * (1.0 - overlap)), 1)
    starts = []
    start = 0
    while True:
        starts.append(min(start, size - roi))
        if start + roi >= size:
            break
        start += step
    return starts


def window_grid(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> list[tuple[int, int, int]]:
    """All window starts (k, j, i) over a (padded) volume of ``shape``, in C order."""
    per_axis = [axis_starts(s, r, overlap) for s, r in zip(shape, roi)]
    return [tuple(p) for p in itertools.product(*per_axis)]


@lru_cache(maxsize=16)
def _weight_map_cached(roi: tuple[int, int, int], blend: str, sigma_scale: float, device: str) -> torch.Tensor:
    if blend == "constant":
        return torch.ones(roi, dtype=torch.float32, device=device)
    if blend != "gaussian":
        raise ValueError(f"unknown blend {blend!r}; use 'gaussian' or 'constant'")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = torch.ones((), dtype=torch.float64)
    for n in roi:
        # Centred on the middle of the window (symmetric, so a flipped window gets the flipped weights).
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
        weights = weights[..., None] * g
    weights = weights / weights.max()
    # Floor the borders so a voxel seen only by window borders still gets a finite, well-defined average.
    weights = weights.clamp_min(max(float(weights.min()), 1e-3))
    return weights.to(dtype=torch.float32, device=device)


def weight_map(roi: tuple[int, int, int], blend: str = "gaussian", sigma_scale: float = 0.125,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """The blending weights of one window (max 1, min 1e-3), built once per setting and cached. Do not modify it."""
    return _weight_map_cached(tuple(int(r) for r in roi), blend, float(sigma_scale), str(device))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution in an ``nn.Sequential`` into that conv.

    Changes the output by float rounding only (about 1e-7) and removes one memory pass per block.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for idx in range(len(module) - 1):
            conv, bn = module[idx], module[idx + 1]
            if isinstance(conv, conv_types) and type(bn) in bn_types and bn.track_running_stats:
                module[idx] = fuse_conv_bn_eval(conv, bn)
                module[idx + 1] = nn.Identity()
    return model


def prepare_model(model: nn.Module, device: str | torch.device = "cpu", fold_bn: bool = True,
                  channels_last: bool = True, copy_model: bool = True, precision: str = "fp32") -> nn.Module:
    """An inference copy of ``model``: eval mode, on ``device``, batch norm folded, channels-last 3D memory, and
    its precision (``SlidingWindowConfig.precision``) recorded for the inferer. ``bf16`` on a CPU casts the weights
    (oneDNN's fast path); on CUDA the weights stay float32 and the inferer autocasts (bf16 or fp16)."""
    if copy_model:
        model = copy.deepcopy(model)
    dev = resolve_device(str(device))
    model = model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    resolved = resolve_precision(precision, dev)
    if resolved == "bf16" and dev.type == "cpu":
        model = model.to(torch.bfloat16)
    model._rsna_channels_last = channels_last  # read by the inferer to lay out its batches the same way
    model._rsna_precision = resolved
    return model


def _as_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(D, H, W), (C, D, H, W) or (1, C, D, H, W) -> float32 (1, C, D, H, W)."""
    t = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if t.ndim == 3:
        t = t[None, None]
    elif t.ndim == 4:
        t = t[None]
    elif t.ndim != 5 or t.shape[0] != 1:
        raise ValueError(f"sliding-window input must be (D,H,W), (C,D,H,W) or (1,C,D,H,W); got {tuple(t.shape)}")
    return t.float()


def _split_output(out: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A model output (dict with ``logits``/``heatmap``, or a bare heatmap tensor) -> (logits, heatmap)."""
    if isinstance(out, torch.Tensor):
        return None, out
    if isinstance(out, dict):
        return out.get("logits"), out.get("heatmap")
    raise TypeError(f"model output must be a tensor or a dict with 'logits'/'heatmap', got {type(out).__name__}")


class SlidingWindowInferer:
    """Runs a model over a whole volume window by window; see the module docstring."""

    def __init__(self, cfg: SlidingWindowConfig | None = None) -> None:
        self.cfg = cfg or SlidingWindowConfig()
        if self.cfg.roi_size is None or len(self.cfg.roi_size) != 3 or min(self.cfg.roi_size) < 1:
            raise ValueError(f"roi_size must be three positive ints, got {self.cfg.roi_size}")
        if self.cfg.batch_size < 0:
            raise ValueError(f"batch_size must be at least 1 (or 0 for auto), got {self.cfg.batch_size}")
        self.batch_size = self.cfg.batch_size or max(1, round(AUTO_BATCH_VOXELS / float(np.prod(self.cfg.roi_size))))
        self.device = resolve_device(self.cfg.device)

    @torch.inference_mode()
    def __call__(self, model: nn.Module, image: np.ndarray | torch.Tensor, mask: np.ndarray | None = None,
                 on_batch: Callable[[int], None] | None = None) -> SlidingWindowResult:
        """Run ``model`` over ``image``; with ``mask`` (same D, H, W) and ``skip_empty``, windows outside it are
        skipped. ``on_batch`` is called with the window count after every forward pass (progress bars)."""
        cfg = self.cfg
        roi = tuple(int(r) for r in cfg.roi_size)
        x = _as_input(image).to(self.device)
        spatial = tuple(x.shape[2:])
        # Pad axes shorter than the window, symmetrically (the extra voxel after), like MONAI does.
        pad_before = [max(r - s, 0) // 2 for s, r in zip(spatial, roi)]
        pad_after = [max(r - s, 0) - b for s, r, b in zip(spatial, roi, pad_before)]
        if any(pad_before) or any(pad_after):
            pads = [p for b, a in zip(reversed(pad_before), reversed(pad_after)) for p in (b, a)]
            x = F.pad(x, pads, mode="constant", value=cfg.pad_value)
        padded = tuple(x.shape[2:])
        starts = window_grid(padded, roi, cfg.overlap)
        n_total = len(starts)
        if mask is not None and cfg.skip_empty:
            starts = self._keep_masked(starts, mask, roi, pad_before)

        channels_last = bool(getattr(model, "_rsna_channels_last", False))
        # The model's own precision when prepared with one, else this config's. bfloat16 weights (a CPU-prepared
        # model) take bfloat16 input and no autocast; float32 weights run under autocast of that precision.
        precision = getattr(model, "_rsna_precision", None) or resolve_precision(cfg.precision, self.device)
        weights = next((p for p in model.parameters() if p.is_floating_point()), None)
        in_dtype = torch.bfloat16 if weights is not None and weights.dtype == torch.bfloat16 else torch.float32
        amp_precision = "fp32" if in_dtype == torch.bfloat16 else precision
        w = weight_map(roi, cfg.blend, cfg.sigma_scale, self.device)
        heat_sum: torch.Tensor | None = None
        weight_sum = torch.zeros(padded, dtype=torch.float32, device=self.device)
        logits_out: list[torch.Tensor] = []
        heat_max: list[torch.Tensor] = []
        bs = min(self.batch_size, max(len(starts), 1))
        batch = torch.empty((bs, x.shape[1], *roi), dtype=torch.float32, device=self.device)
        for b0 in range(0, len(starts), bs):
            chunk = starts[b0:b0 + bs]
            for n, (k, j, i) in enumerate(chunk):
                batch[n] = x[0, :, k:k + roi[0], j:j + roi[1], i:i + roi[2]]
            inp = batch[: len(chunk)]
            if in_dtype != torch.float32:
                inp = inp.to(in_dtype)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last_3d)
            with autocast(self.device, amp_precision):
                logits, heat = _split_output(model(inp))
            if on_batch is not None:
                on_batch(len(chunk))
            if logits is not None:
                logits_out.append(logits.float().reshape(len(chunk), -1))
            if heat is None:
                continue
            heat = heat.float()
            if tuple(heat.shape[2:]) != roi:  # a coarser heatmap head: bring it to the window grid
                heat = F.interpolate(heat, size=roi, mode="trilinear", align_corners=False)
            if cfg.heatmap_activation == "sigmoid":
                heat = torch.sigmoid(heat)
            heat_max.append(heat.flatten(1).amax(dim=1))
            if heat_sum is None:
                heat_sum = torch.zeros((heat.shape[1], *padded), dtype=torch.float32, device=self.device)
            heat = heat * w
            for n, (k, j, i) in enumerate(chunk):
                heat_sum[:, k:k + roi[0], j:j + roi[1], i:i + roi[2]] += heat[n]
        if heat_sum is not None:
            # The weight sum is only needed for blending; accumulate it once per processed window.
            for k, j, i in starts:
                weight_sum[k:k + roi[0], j:j + roi[1], i:i + roi[2]] += w

        heatmap = None
        if heat_sum is not None:
            blended = heat_sum / weight_sum.clamp_min(1e-12)
            crop = tuple(slice(b, b + s) for b, s in zip(pad_before, spatial))
            blended = blended[(slice(None), *crop)]
            heatmap = blended.cpu().numpy()
            if heatmap.shape[0] == 1:
                heatmap = heatmap[0]
        n_labels = logits_out[0].shape[1] if logits_out else 0
        return SlidingWindowResult(
            heatmap=heatmap,
            window_logits=(torch.cat(logits_out).cpu().numpy() if logits_out
                           else np.zeros((len(starts), n_labels), np.float32)),
            window_starts=np.asarray(starts, dtype=np.int64).reshape(-1, 3) - np.asarray(pad_before, np.int64),
            window_heat_max=torch.cat(heat_max).cpu().numpy() if heat_max else None,
            n_windows_total=n_total,
        )

    @staticmethod
    def _keep_masked(starts: list[tuple[int, int, int]], mask: np.ndarray, roi: tuple[int, ...],
                     pad_before: list[int]) -> list[tuple[int, int, int]]:
        """Windows holding at least one mask voxel (an empty mask keeps every window: never skip them all)."""
        m = np.asarray(mask) > 0
        if not m.any():
            return starts
        # A summed-area table answers "any voxel inside this box" in O(1) per window.
        sat = np.pad(m.astype(np.int64), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
        kept = []
        for s in starts:
            lo = [min(max(a - p, 0), n) for a, p, n in zip(s, pad_before, m.shape)]
            hi = [min(max(a - p + r, 0), n) for a, p, r, n in zip(s, pad_before, roi, m.shape)]
            (k0, j0, i0), (k1, j1, i1) = lo, hi
            total = (sat[k1, j1, i1] - sat[k0, j1, i1] - sat[k1, j0, i1] - sat[k1, j1, i0]
                     + sat[k0, j0, i1] + sat[k0, j1, i0] + sat[k1, j0, i0] - sat[k0, j0, i0])
            if total > 0:
                kept.append(s)
        return kept or starts


def heatmap_volume(heatmap: np.ndarray, like: Volume) -> Volume:
    """The heatmap as a Volume on the grid of ``like`` (the preprocessed input), ready for ``io.nifti``."""
    if heatmap.ndim != 3 or heatmap.shape != like.array.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match the volume's {like.array.shape}")
    out = like.with_array(heatmap.astype(np.float32, copy=False))
    out.meta["kind"] = "heatmap"
    return out


def save_heatmap(heatmap: np.ndarray, like: Volume, path: str) -> None:
    """Write the heatmap as NIfTI (float32) with the geometry of ``like``, for the viewer."""
    from ..io.nifti import write_volume

    write_volume(heatmap_volume(heatmap, like), path, dtype=np.float32)
