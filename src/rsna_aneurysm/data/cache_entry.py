"""One patch-cache entry: sample the centres of a series, cut and label its patches, write and verify its files.

Files go to temporary names first and are renamed into place, the JSON record last, so an entry is either complete
or absent; the record holds each file's size and CRC-32, so a truncated or altered file is detected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..constants import ID_COL, N_LABELS
from ..io.atomic import atomic_path, atomic_write_text
from .patches import (
    box_distance_mm,
    crop_patch,
    deep_mask,
    jittered_centers,
    patch_labels,
    random_voxels,
    sample_far_centers,
    sphere_mask,
    to_patch_coords,
)

if TYPE_CHECKING:
    from .cache import CacheConfig, SeriesTask

log = logging.getLogger(__name__)

# Bump when the entry format or the sampling changes: every key changes with it.
CACHE_VERSION = 1


class CacheEntryError(RuntimeError):
    """A series' inputs cannot make an entry (e.g. mask and volume shapes differ)."""


def _seeded_rng(seed: int, uid: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha1(uid.encode()).hexdigest()[:12], 16)])


def sample_centers(arr: np.ndarray, head: np.ndarray, task: SeriesTask, spacing_kji: np.ndarray, cfg: CacheConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Patch centres (N, 3) and their kinds ("pos", "hard", "mined", "neg") for one series; mined false positives
    come on top of the series' negative quota."""
    size = np.asarray(cfg.patch_size, dtype=np.float64)
    half_mm = size / 2.0 * cfg.spacing_mm
    # Jitter no further than keeps the whole target sphere inside the patch.
    max_jit_mm = np.maximum(half_mm - cfg.sphere_radius_mm - cfg.spacing_mm, 0.0)
    jitter_vox = np.minimum(cfg.jitter_mm, max_jit_mm) / spacing_kji
    pts = np.asarray(task.points, dtype=np.float64).reshape(-1, 3)
    centers = [jittered_centers(p, cfg.positives_per_aneurysm, jitter_vox, rng) for p in pts]
    kinds = ["pos"] * (len(pts) * cfg.positives_per_aneurysm)
    region = region_mask(head.shape, task.region_center, cfg.region_box_mm, spacing_kji)
    n_hard = int(round(task.n_negatives * cfg.hard_negative_fraction))
    if n_hard:
        deep = deep_mask(head, spacing_kji, cfg.hard_negative_depth_mm)
        if region is not None:
            deep &= region
        probe = random_voxels(deep, 20000, rng)
        if len(probe):
            values = arr[probe[:, 0], probe[:, 1], probe[:, 2]]
            if task.modality in cfg.hard_negative_dark_modalities:  # dark arteries: the darkest deep voxels
                vessel_like = deep & (arr <= np.percentile(values, 100.0 - cfg.hard_negative_percentile))
            else:
                vessel_like = deep & (arr >= np.percentile(values, cfg.hard_negative_percentile))
            del deep
            cand = random_voxels(vessel_like, 30 * n_hard, rng)
            cand = cand + np.rint(rng.uniform(-1, 1, size=cand.shape) * jitter_vox).astype(np.int64)
            hard = sample_far_centers(cand, n_hard, pts, half_mm, spacing_kji, cfg.safety_radius_mm, rng)
            centers.append(hard)
            kinds += ["hard"] * len(hard)
    if task.mined and cfg.mined_per_point > 0:
        cand = np.concatenate([jittered_centers(p, cfg.mined_per_point, jitter_vox / 2.0, rng) for p in task.mined])
        mined = sample_far_centers(cand, len(cand), pts, half_mm, spacing_kji, cfg.safety_radius_mm, rng)
        centers.append(mined)
        kinds += ["mined"] * len(mined)
    n_rand = task.n_negatives - sum(k == "hard" for k in kinds)
    if n_rand > 0:
        cand = random_voxels(head if region is None else head & region, 30 * n_rand, rng)
        neg = sample_far_centers(cand, n_rand, pts, half_mm, spacing_kji, cfg.safety_radius_mm, rng)
        centers.append(neg)
        kinds += ["neg"] * len(neg)
    out = np.concatenate(centers, axis=0) if centers else np.zeros((0, 3), dtype=np.int64)
    return out.astype(np.int64), kinds


def region_mask(shape: tuple[int, ...], center_kji: list[float] | None, box_mm: tuple | None,
                spacing_kji: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the region box (``box_mm`` along x, y, z) around ``center_kji``; None when either is unset."""
    if center_kji is None or box_mm is None:
        return None
    half = np.asarray(box_mm[::-1], dtype=np.float64) / 2.0 / np.asarray(spacing_kji, dtype=np.float64)
    c = np.asarray(center_kji, dtype=np.float64)
    lo = np.clip(np.ceil(c - half - 1e-6).astype(int), 0, shape)  # voxels within half the box of the centre
    hi = np.clip(np.floor(c + half + 1e-6).astype(int) + 1, 0, shape)
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def entry_paths(entries_dir: Path, key: str) -> dict[str, Path]:
    """The files of entry ``key``: patches, labels, mask and the JSON record."""
    return {"patches": entries_dir / f"{key}.npy", "labels": entries_dir / f"{key}.labels.npy",
            "mask": entries_dir / f"{key}.mask.npy", "meta": entries_dir / f"{key}.json"}


def build_entry(task: SeriesTask, cfg: CacheConfig, entries_dir: str | Path) -> dict:
    """Cut, label and write one series' patch set; returns its record (also the entry's JSON)."""
    from ..io.nifti import read_volume

    entries_dir = Path(entries_dir)
    paths = entry_paths(entries_dir, task.key)
    vol = read_volume(task.volume)
    arr = np.asarray(vol.array, dtype=np.float32)
    spacing_kji = np.asarray(vol.spacing[::-1], dtype=np.float64)
    if task.mask:
        head = np.asarray(read_volume(task.mask).array) > 0
        if head.shape != arr.shape:
            raise CacheEntryError(f"{task.mask}: mask shape {head.shape} differs from volume shape {arr.shape}")
    else:
        head = np.ones(arr.shape, dtype=bool)
    if not head.any():
        log.warning("%s: empty head mask, negatives drawn from the whole volume", task.uid)
        head = np.ones(arr.shape, dtype=bool)
    rng = _seeded_rng(cfg.seed, task.uid)
    centers, kinds = sample_centers(arr, head, task, spacing_kji, cfg, rng)
    size = tuple(int(s) for s in cfg.patch_size)
    scale = cfg.spacing_mm / spacing_kji
    radius_vox = np.full(3, cfg.sphere_radius_mm / cfg.spacing_mm)
    n = len(centers)
    n_bits = int(np.prod(size))
    pts = np.asarray(task.points, dtype=np.float64).reshape(-1, 3)
    # The arrays first (each renamed into place once written), the JSON record last: it marks the entry complete,
    # so an interrupted build leaves no record and the entry is rebuilt.
    with atomic_path(paths["patches"]) as tmp_patches, atomic_path(paths["labels"]) as tmp_labels, \
            atomic_path(paths["mask"]) as tmp_mask:
        patches = np.lib.format.open_memmap(tmp_patches, mode="w+", dtype=np.float16, shape=(n, *size))
        masks = np.lib.format.open_memmap(tmp_mask, mode="w+", dtype=np.uint8, shape=(n, (n_bits + 7) // 8))
        labels = np.zeros((n, N_LABELS), dtype=np.uint8)
        for r, c in enumerate(centers):
            patches[r] = crop_patch(arr, c, size, scale)
            p_in = to_patch_coords(pts, c, size, scale)
            labels[r] = patch_labels(p_in, np.asarray(task.locations), size)
            masks[r] = np.packbits(sphere_mask(size, p_in, radius_vox).ravel())
        patches.flush()
        masks.flush()
        del patches, masks
        np.save(tmp_labels, labels)  # the temporary name ends in ".npy": np.save appends nothing
    files = {name: {"size": paths[name].stat().st_size, "crc32": _crc32(paths[name])}
             for name in ("patches", "labels", "mask")}
    meta = {"version": CACHE_VERSION, "key": task.key, ID_COL: task.uid, "n": n, "patch_size": list(size),
            "centers": centers.tolist(), "kinds": kinds, "labels": labels.tolist(), "files": files,
            "volume_spacing_kji": spacing_kji.tolist(),
            "min_negative_box_distance_mm": float(box_distance_mm(
                centers[[k != "pos" for k in kinds]], pts, np.asarray(size) / 2 * cfg.spacing_mm,
                spacing_kji).min()) if any(k != "pos" for k in kinds) and len(pts) else None}
    atomic_write_text(paths["meta"], json.dumps(meta))
    return meta


def check_entry(entries_dir: str | Path, key: str, verify: bool = True) -> tuple[dict | None, str]:
    """(record, "") for a complete, intact entry; (None, why) when it is missing or damaged."""
    paths = entry_paths(Path(entries_dir), key)
    if not paths["meta"].exists():
        return None, "missing"
    try:
        meta = json.loads(paths["meta"].read_text())
    except (json.JSONDecodeError, OSError) as e:
        return None, f"unreadable record {paths['meta']}: {e}"
    if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
        return None, f"record {paths['meta']} is from another cache version"
    for name, info in meta.get("files", {}).items():
        p = paths[name]
        if not p.exists():
            return None, f"{p} is missing"
        if p.stat().st_size != info["size"]:
            return None, f"{p} has {p.stat().st_size} bytes, expected {info['size']} (truncated?)"
        if verify and _crc32(p) != info["crc32"]:
            return None, f"{p} fails its CRC-32 check (corrupt)"
    return meta, ""
