"""Torch datasets of training patches: from the memory-mapped cache, or (the baseline) cut afresh from the volumes.

Both yield the same dict per patch: ``image`` float32 (1, D, H, W), ``labels`` float32 (14,), ``mask`` float32
(1, D, H, W) (the aneurysm spheres) and ``index`` (the row of the index table), so the training loop and the
benchmark can swap one for the other.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from ..constants import ID_COL, LABEL_COLS
from ..layout import PreDir
from .cache import CacheConfig
from .cache_entry import entry_paths
from .patches import crop_patch, sphere_mask, to_patch_coords


class PatchDataset(Dataset):
    """Patches of ``index`` rows read from the cache by memory mapping (opened lazily in each worker).

    At most ``max_open`` entries stay mapped (least recently used closed first): each map holds a file
    descriptor, and a full dataset has thousands of entries.
    """

    def __init__(self, cache_dir: str | Path, index: pl.DataFrame, with_mask: bool = True, max_open: int = 128
                 ) -> None:
        self.entries_dir = Path(cache_dir) / "entries"
        self.entry = index["entry"].to_list()
        self.row = index["row"].to_numpy()
        self.labels = index.select(LABEL_COLS).to_numpy().astype(np.float32)
        self.with_mask = with_mask
        self.max_open = max_open
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entry)

    def _arrays(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key in self._open:
            self._open.move_to_end(key)
        else:
            paths = entry_paths(self.entries_dir, key)
            self._open[key] = (np.load(paths["patches"], mmap_mode="r"), np.load(paths["mask"], mmap_mode="r"))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[key]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        patches, masks = self._arrays(self.entry[i])
        r = int(self.row[i])
        image = torch.from_numpy(np.asarray(patches[r], dtype=np.float32))[None]
        out = {"image": image, "labels": torch.from_numpy(self.labels[i]), "index": torch.tensor(i)}
        if self.with_mask:
            n = int(np.prod(patches.shape[1:]))
            bits = np.unpackbits(np.asarray(masks[r]), count=n).reshape(patches.shape[1:])
            out["mask"] = torch.from_numpy(bits.astype(np.float32))[None]
        return out

    def __getstate__(self) -> dict:  # never pickle open memory maps into DataLoader workers
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


class VolumePatchDataset(Dataset):
    """The no-cache baseline: every item reads its series' volume and cuts the patch again.

    Same centres and labels as the cache (taken from its index), so only the cost differs.
    """

    def __init__(self, pre_dir: str | Path, index: pl.DataFrame, cfg: CacheConfig, with_mask: bool = True) -> None:
        pre = Path(pre_dir)
        manifest = pl.read_parquet(PreDir(pre).manifest)
        vol_of = dict(zip(manifest[ID_COL].cast(pl.Utf8), manifest["volume"]))
        self.volume = [str(pre / vol_of[u]) for u in index[ID_COL]]
        self.centers = index.select("center_k", "center_j", "center_i").to_numpy()
        self.labels = index.select(LABEL_COLS).to_numpy().astype(np.float32)
        self.cfg = cfg
        self.with_mask = with_mask
        points: dict[str, list[list[float]]] = {}
        loc_path = PreDir(pre).localizers
        if loc_path.exists():
            locs = pl.read_parquet(loc_path)
            if {"i", "j", "k"} <= set(locs.columns):
                for r in locs.drop_nulls(["i", "j", "k"]).iter_rows(named=True):
                    points.setdefault(str(r[ID_COL]), []).append([r["k"], r["j"], r["i"]])
        self.points = [np.asarray(points.get(u, []), dtype=np.float64).reshape(-1, 3) for u in index[ID_COL]]

    def __len__(self) -> int:
        return len(self.volume)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from ..io.nifti import read_volume

        vol = read_volume(self.volume[i])
        spacing_kji = np.asarray(vol.spacing[::-1])
        size = tuple(int(s) for s in self.cfg.patch_size)
        scale = self.cfg.spacing_mm / spacing_kji
        patch = crop_patch(np.asarray(vol.array, dtype=np.float32), self.centers[i], size, scale)
        out = {"image": torch.from_numpy(patch.astype(np.float16).astype(np.float32))[None],
               "labels": torch.from_numpy(self.labels[i]), "index": torch.tensor(i)}
        if self.with_mask:
            p_in = to_patch_coords(self.points[i], self.centers[i], size, scale)
            radius = np.full(3, self.cfg.sphere_radius_mm / self.cfg.spacing_mm)
            out["mask"] = torch.from_numpy(sphere_mask(size, p_in, radius).astype(np.float32))[None]
        return out

