"""A trained nnU-Net v2 model folder as the kit's vessel segmenter, without nnunetv2 installed.

``NnunetSegmenter.from_folder(FOLDER)`` reads an nnU-Net v2 results folder (e.g.
``nnUNet_results/Dataset501_RSNAVessels/nnUNetTrainer__nnUNetPlans__3d_fullres``: ``plans.json``, ``dataset.json``,
``fold_K/checkpoint_final.pth``), rebuilds the network with ``dynamic_network_architectures`` from the plans and
loads each fold's weights with ``weights_only=True``. ``segment(vol)`` follows nnU-Net's own inference: resample to
the configuration's spacing (linear here, where nnU-Net uses splines), crop to the nonzero box, normalise as the
plans say (z-scoring for the kit's export), ``transpose_forward``, Gaussian-weighted sliding windows of the patch
size, logits averaged over folds (and mirrorings when asked), softmax, transpose back, background outside the
crop. It answers :class:`~.types.VesselProbs` on the resampled grid, channels mapped to ``constants.SEG_LABELS`` by
label name. The dataset the kit exports (:mod:`..preprocess.nnunet_export`) is the one such a folder is trained on.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import pickle
import pkgutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..constants import SEG_LABEL_OF
from ..region.geometry import Grid
from ..volume import Volume
from .types import N_VESSEL_CLASSES, VesselProbs

log = logging.getLogger(__name__)

DEFAULT_CONFIGURATION = "3d_fullres"
# Modules a plans file may name classes from (the network, its conv/norm/dropout/nonlinearity ops).
ALLOWED_IMPORT_PREFIXES = ("torch.nn.", "dynamic_network_architectures.")
NETWORK_PACKAGE = "dynamic_network_architectures"
SUPPORTED_NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization")


class NnunetFolderError(FileNotFoundError):
    """A file the nnU-Net model folder needs (plans.json, dataset.json, a fold checkpoint) is missing."""


class NnunetModelError(ValueError):
    """The nnU-Net model folder is there but cannot serve as the kit's segmenter (and says why)."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NnunetFolderError(f"{path}: not found (an nnU-Net v2 results folder holds plans.json and dataset.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NnunetModelError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise NnunetModelError(f"{path}: not a JSON object")
    return data


def configuration_plans(plans: dict[str, Any], name: str, path: Path | str = "plans.json") -> dict[str, Any]:
    """``plans["configurations"][name]`` with its ``inherits_from`` chain resolved (the child's keys win)."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict):
        raise NnunetModelError(f"{path}: no 'configurations' (not an nnU-Net v2 plans file)")
    chain: list[str] = []
    while name is not None:
        if name not in configs:
            raise NnunetModelError(f"{path}: no configuration {name!r} (has {sorted(configs)})")
        if name in chain:
            raise NnunetModelError(f"{path}: configuration {name!r} inherits from itself")
        chain.append(name)
        name = configs[name].get("inherits_from")
    merged: dict[str, Any] = {}
    for n in reversed(chain):
        merged.update({k: v for k, v in configs[n].items() if k != "inherits_from"})
    return merged


def resolve_import(name: str, path: Path | str = "plans.json") -> Any:
    """The object a plans file names (``torch.nn.modules.conv.Conv3d``), only from torch.nn and
    dynamic_network_architectures: a plans file must not make the kit import arbitrary code."""
    if not isinstance(name, str) or not name.startswith(ALLOWED_IMPORT_PREFIXES):
        raise NnunetModelError(f"{path}: refusing to import {name!r}; only names under "
                               f"{', '.join(p.rstrip('.') for p in ALLOWED_IMPORT_PREFIXES)} are allowed")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise NnunetModelError(f"{path}: cannot import {name!r} ({e})") from e


def _network_class(name: str, path: Path | str) -> type:
    """A dotted name under dynamic_network_architectures, or a bare class name found in one of its modules (as
    nnU-Net itself falls back to)."""
    if "." in name:
        if not name.startswith(NETWORK_PACKAGE + "."):
            raise NnunetModelError(f"{path}: network class {name!r} is not from {NETWORK_PACKAGE}; only its "
                                   "architectures can be rebuilt without nnunetv2")
        cls = resolve_import(name, path)
    else:
        package = importlib.import_module(NETWORK_PACKAGE + ".architectures")
        # nnU-Net's own U-Nets first, so the usual name does not import every other architecture's dependencies
        modules = [f"{package.__name__}.unet", f"{package.__name__}.resnet"]
        modules += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                    if m.name not in modules]
        cls = None
        for module in modules:
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except ImportError:
                continue
            if cls is not None:
                break
        if cls is None:
            raise NnunetModelError(f"{path}: network class {name!r} not found in {NETWORK_PACKAGE}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise NnunetModelError(f"{path}: {name!r} is not a torch module class")
    return cls


def build_network(config: dict[str, Any], input_channels: int, num_classes: int,
                  path: Path | str = "plans.json") -> nn.Module:
    """The configuration's network (``architecture``: class name, kwargs, kwargs to import), no deep supervision."""
    arch = config.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise NnunetModelError(f"{path}: configuration has no 'architecture' with a 'network_class_name' (plans "
                               "written by nnU-Net v2 before 2.4 are not supported; re-plan with a newer nnunetv2)")
    kwargs = dict(arch.get("arch_kwargs") or {})
    for key in arch.get("_kw_requires_import") or ():
        if kwargs.get(key) is not None:
            kwargs[key] = resolve_import(kwargs[key], path)
    cls = _network_class(arch["network_class_name"], path)
    try:
        return cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=False, **kwargs)
    except TypeError as e:
        raise NnunetModelError(f"{path}: cannot build {arch['network_class_name']} from its arch_kwargs ({e})") from e


def label_channels(dataset: dict[str, Any], path: Path | str = "dataset.json") -> tuple[np.ndarray, int]:
    """(``src``, number of network outputs): kit channel ``c`` is network channel ``src[c]`` (-1: not predicted).

    nnU-Net's output channel ``v`` is label value ``v`` (values consecutive from background 0; an ``ignore`` label
    is not predicted). Names are matched to ``constants.SEG_LABELS``; an unknown name raises, a missing one warns."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnunetModelError(f"{path}: no 'labels'")
    labels = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise NnunetModelError(f"{path}: region-based labels (lists of values) are not the kit's vessel classes")
    if labels.get("background") != 0:
        raise NnunetModelError(f"{path}: labels need 'background': 0")
    values = sorted(int(v) for v in labels.values())
    if values != list(range(len(values))):
        raise NnunetModelError(f"{path}: label values {values} are not consecutive from 0")
    unknown = sorted(n for n in labels if n != "background" and n not in SEG_LABEL_OF)
    if unknown:
        raise NnunetModelError(f"{path}: label names {unknown} are not vessel classes of constants.SEG_LABELS")
    src = np.full(N_VESSEL_CLASSES, -1, dtype=np.int64)
    for name, v in labels.items():
        src[0 if name == "background" else SEG_LABEL_OF[name]] = int(v)
    missing = [n for n, c in SEG_LABEL_OF.items() if src[c] < 0]
    if missing:
        warnings.warn(f"{path}: the model does not predict {missing}; they get probability 0", stacklevel=2)
    return src, len(values)


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes: nnU-Net's checkpoints hold numpy floats in their training log, plain data that
    ``weights_only=True`` refuses unless allowed."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """An nnU-Net checkpoint dict, loaded with ``weights_only=True`` (numpy scalars allowed, nothing executable)."""
    if not path.is_file():
        raise NnunetFolderError(f"{path}: no such checkpoint")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise NnunetModelError(f"{path}: refused by torch.load(weights_only=True); it holds objects other than "
                               f"tensors and plain data, which the kit never unpickles ({str(e).splitlines()[-1]})"
                               ) from e
    except Exception as e:  # noqa: BLE001 - torch raises several types for torn or foreign files
        raise NnunetModelError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise NnunetModelError(f"{path}: no 'network_weights' (not an nnU-Net v2 checkpoint)")
    return ckpt


def sliding_window_starts(size: int, patch: int, step: float) -> list[int]:
    """Tile starts along one axis: as few tiles as keep neighbours ``step * patch`` apart at most, spread evenly
    from 0 to ``size - patch`` (``size >= patch``)."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    return [int(round((size - patch) * t / (n - 1))) for t in range(n)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Per-voxel tile weights: a Gaussian (sigma = patch / 8) centred on the tile, maximum 1, strictly positive."""
    g = np.ones((), dtype=np.float64)
    for p in patch:
        x = np.arange(p, dtype=np.float64) - p // 2
        g = np.multiply.outer(g, np.exp(-0.5 * (x / max(p * sigma_scale, 1e-6)) ** 2))
    g = g / g.max()
    return np.maximum(g, g[g > 0].min()).astype(np.float32)


def _nonzero_box(arr: np.ndarray) -> tuple[slice, ...]:
    """nnU-Net's crop: the bounding box of the nonzero voxels (the whole array when there are none)."""
    nz = np.nonzero(arr)
    if not nz[0].size:
        return tuple(slice(0, s) for s in arr.shape)
    return tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)


class NnunetSegmenter:
    """A trained nnU-Net v2 model (one or more folds) as a :class:`~.types.Segmenter` (see the module docstring)."""

    source = "nnunet"

    def __init__(self, nets: Sequence[nn.Module], plans: dict[str, Any], config: dict[str, Any],
                 channel_src: np.ndarray, device: str | torch.device = "cpu", tile_step: float = 0.5,
                 mirror: bool = False, mirror_axes: Sequence[int] | None = None, batch_size: int = 2,
                 name: str = "nnunet") -> None:
        from ..runtime import resolve_device

        if not 0 < tile_step <= 1:
            raise ValueError(f"tile_step must be in (0, 1], got {tile_step}")
        self.device = resolve_device(device)
        self.nets = [n.to(self.device).eval() for n in nets]
        self.name = name
        self.tile_step, self.mirror, self.batch_size = float(tile_step), bool(mirror), int(batch_size)
        self.transpose_forward = [int(a) for a in plans.get("transpose_forward", (0, 1, 2))]
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise NnunetModelError(f"{name}: transpose_forward {self.transpose_forward} is not a 3D axis permutation")
        self.transpose_backward = [int(a) for a in np.argsort(self.transpose_forward)]
        spacing, patch = config.get("spacing"), config.get("patch_size")
        if not (isinstance(spacing, list) and len(spacing) == 3 and isinstance(patch, list) and len(patch) == 3):
            raise NnunetModelError(f"{name}: needs a 3D configuration (spacing and patch_size of 3 values), got "
                                   f"spacing {spacing}, patch_size {patch}")
        self.patch = tuple(int(p) for p in patch)  # in the transposed array order, as nnU-Net plans them
        # plans spacing is per transposed array axis: axis a of the transposed array is array axis tf[a] ([k, j, i])
        spacing_kji = np.empty(3)
        spacing_kji[self.transpose_forward] = np.asarray(spacing, dtype=np.float64)
        self.spacing_ijk = tuple(float(s) for s in spacing_kji[::-1])
        self.spacing_mm = float(min(self.spacing_ijk))  # the Segmenter field; isotropic for the kit's own exports
        self.channel_src = np.asarray(channel_src, dtype=np.int64)
        self.mirror_axes = tuple(range(3)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
        self._norm = self._normalization(plans, config)
        self._gauss = torch.from_numpy(gaussian_importance(self.patch)).to(self.device)

    @classmethod
    def from_folder(cls, path: str | Path, folds: Sequence[int | str] = (0,), checkpoint: str = "checkpoint_final.pth",
                    configuration: str | None = None, device: str | torch.device = "cpu", tile_step: float = 0.5,
                    mirror: bool = False) -> NnunetSegmenter:
        """The model of an nnU-Net v2 results folder, averaged over ``folds`` (``fold_<k>/<checkpoint>``; ``"all"``
        for ``fold_all``). The configuration is the one the checkpoints were trained with, else ``configuration``,
        else 3d_fullres."""
        folder = Path(path)
        if not folder.is_dir():
            raise NnunetFolderError(f"{folder}: no such nnU-Net model folder")
        plans = _read_json(folder / "plans.json")
        dataset = _read_json(folder / "dataset.json")
        if not folds:
            raise ValueError("folds: give at least one fold")
        ckpts = []
        for f in folds:
            p = folder / f"fold_{f}" / checkpoint
            if not p.is_file():
                have = sorted(str(q.relative_to(folder)) for q in folder.glob("fold_*/checkpoint_*.pth"))
                raise NnunetFolderError(f"{p}: no such checkpoint (the folder has {have or 'no fold checkpoints'})")
            ckpts.append((p, load_checkpoint(p)))
        names = {(c.get("init_args") or {}).get("configuration") for _, c in ckpts} - {None}
        if len(names) > 1:
            raise NnunetModelError(f"{folder}: folds {list(folds)} were trained with different configurations "
                                   f"{sorted(names)}")
        name = names.pop() if names else (configuration or DEFAULT_CONFIGURATION)
        if configuration is not None and configuration != name:
            log.warning("%s: the checkpoints were trained with configuration %r, not %r; using %r",
                        folder, name, configuration, name)
        config = configuration_plans(plans, name, folder / "plans.json")
        src, n_out = label_channels(dataset, folder / "dataset.json")
        channels = dataset.get("channel_names") or dataset.get("modality")
        if not isinstance(channels, dict) or len(channels) != 1:
            raise NnunetModelError(f"{folder / 'dataset.json'}: the kit feeds one image channel, the model wants "
                                   f"channel_names {channels}")
        nets = []
        for p, ckpt in ckpts:
            net = build_network(config, len(channels), n_out, folder / "plans.json")
            weights = {k.removeprefix("_orig_mod."): v for k, v in ckpt["network_weights"].items()}
            try:
                net.load_state_dict(weights)
            except RuntimeError as e:
                raise NnunetModelError(f"{p}: weights do not fit the network of plans.json configuration {name!r} "
                                       f"({str(e).splitlines()[0]})") from e
            nets.append(net)
        mirror_axes = ckpts[0][1].get("inference_allowed_mirroring_axes")
        log.info("nnU-Net model %s: configuration %s, folds %s, spacing %s, patch %s", folder, name, list(folds),
                 config.get("spacing"), config.get("patch_size"))
        return cls(nets, plans, config, src, device=device, tile_step=tile_step, mirror=mirror,
                   mirror_axes=None if mirror_axes is None else list(mirror_axes), name=str(folder))

    def _normalization(self, plans: dict[str, Any], config: dict[str, Any]):
        scheme = (config.get("normalization_schemes") or ["ZScoreNormalization"])[0]
        use_mask = bool((config.get("use_mask_for_norm") or [False])[0])
        if scheme not in SUPPORTED_NORMALIZATIONS:
            raise NnunetModelError(f"{self.name}: normalization {scheme!r} is not supported (only "
                                   f"{', '.join(SUPPORTED_NORMALIZATIONS)})")
        props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        if scheme == "CTNormalization" and not props:
            raise NnunetModelError(f"{self.name}: CTNormalization without foreground_intensity_properties_per_channel")
        return scheme, use_mask, props

    def _normalize(self, arr: np.ndarray) -> np.ndarray:
        """nnU-Net's normalisation of one channel (ZScore: the image's own mean/std, over the nonzero mask when
        ``use_mask_for_norm``; CT: the dataset's foreground percentiles and mean/std)."""
        from scipy.ndimage import binary_fill_holes

        scheme, use_mask, props = self._norm
        arr = arr.astype(np.float32, copy=True)
        if scheme == "NoNormalization":
            return arr
        if scheme == "CTNormalization":
            arr = np.clip(arr, props["percentile_00_5"], props["percentile_99_5"])
            return (arr - props["mean"]) / max(props["std"], 1e-8)
        if use_mask:
            mask = binary_fill_holes(arr != 0)
            values = arr[mask] if mask.any() else arr
            arr = (arr - values.mean()) / max(float(values.std()), 1e-8)
            arr[~mask] = 0
            return arr
        return (arr - arr.mean()) / max(float(arr.std()), 1e-8)

    def _predict_tiles(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Gaussian-blended logits of one network over a (1, C, *patch-or-larger) tensor, mirrorings averaged."""
        shape = x.shape[2:]
        logits = torch.zeros((self.n_out, *shape), dtype=torch.float32, device=self.device)
        weight = torch.zeros(shape, dtype=torch.float32, device=self.device)
        starts = [sliding_window_starts(s, p, self.tile_step) for s, p in zip(shape, self.patch)]
        boxes = [tuple(slice(a, a + p) for a, p in zip(s, self.patch)) for s in itertools.product(*starts)]
        flips = [()]
        if self.mirror:
            axes = [a for a in self.mirror_axes if 0 <= a < 3]
            flips = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i:i + self.batch_size]
            batch = torch.cat([x[(slice(None), slice(None), *b)] for b in chunk])
            out = None
            for axes in flips:
                dims = [a + 2 for a in axes]
                y = net(torch.flip(batch, dims) if dims else batch).float()
                y = torch.flip(y, dims) if dims else y
                out = y if out is None else out + y
            out = out / len(flips)
            for b, y in zip(chunk, out):
                logits[(slice(None), *b)] += y * self._gauss
                weight[b] += self._gauss
        return logits / weight

    @property
    def n_out(self) -> int:
        return int(self.channel_src.max()) + 1

    @torch.inference_mode()
    def predict_logits(self, data: np.ndarray) -> np.ndarray:
        """Logits (C, *shape) of the fold-averaged model for a normalised array in the transposed order, padded
        (with zeros, centred) to at least the patch size while predicting, as nnU-Net does."""
        shape = np.asarray(data.shape)
        pad = np.maximum(np.asarray(self.patch) - shape, 0)
        before = pad // 2
        padded = np.pad(data, [(int(b), int(p - b)) for b, p in zip(before, pad)])
        x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None].to(self.device)
        total = None
        for net in self.nets:
            y = self._predict_tiles(net, x)
            total = y if total is None else total + y
        total = total / len(self.nets)
        crop = tuple(slice(int(b), int(b + s)) for b, s in zip(before, shape))
        return total[(slice(None), *crop)].cpu().numpy()

    def segment(self, vol: Volume) -> VesselProbs:
        """Class probabilities of a canonical volume on the model's grid (see the module docstring)."""
        if not np.allclose(vol.direction, np.eye(3), atol=1e-6):
            raise ValueError("vessel segmentation needs a canonical (identity-direction) volume; preprocess it first")
        if not np.allclose(vol.spacing, self.spacing_ijk, rtol=0, atol=1e-4):
            from ..preprocess.geometry import resample

            vol = resample(vol, self.spacing_ijk, "linear")
        raw = np.asarray(vol.array, dtype=np.float32)
        grid = Grid(tuple(float(v) for v in vol.origin), tuple(float(v) for v in vol.spacing),
                    tuple(int(s) for s in raw.shape))
        box = _nonzero_box(raw)
        data = np.transpose(self._normalize(raw[box]), self.transpose_forward)
        logits = self.predict_logits(data)
        logits = np.transpose(logits, [0] + [a + 1 for a in self.transpose_backward])
        probs_box = torch.softmax(torch.from_numpy(np.ascontiguousarray(logits)), dim=0).numpy()
        probs = np.zeros((N_VESSEL_CLASSES, *raw.shape), dtype=np.float32)
        probs[0] = 1.0  # outside the nonzero box: background, as nnU-Net reverts its crop
        probs[(slice(None), *box)] = 0.0
        for c, s in enumerate(self.channel_src):
            if s >= 0:
                probs[(c, *box)] = probs_box[s]
        return VesselProbs(probs=probs, grid=grid, source=self.source)
