"""Voxels of a synthetic head on an acquisition grid, per modality, evaluated analytically and vectorised.

Each voxel's head-frame coordinates are an affine function of its index, so a block of slices gets them from three
broadcast sums. Shapes are painted outermost first with a soft (partial-volume) edge one voxel wide; small shapes
(vessels, aneurysms, ventricles) are evaluated only on the index block their bounding box covers. Work goes in
blocks of slices, so memory stays bounded for 512 x 512 x 400 grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import Aneurysm, Ellipsoid, Pose, Segment, Tissues
from .geometry import Grid

BLOCK_VOXELS = 4_000_000


@dataclass(frozen=True)
class Style:
    """Tissue intensities of one series in its modality's units (HU for CTA, arbitrary units for MR)."""

    air: float
    neck: float
    scalp: float
    bone: float
    csf: float
    grey: float
    white: float
    vessel: float
    aneurysm: float
    noise: float  # standard deviation of the noise
    rician: bool  # magnitude MR noise rather than additive Gaussian
    bias: float  # amplitude of the smooth multiplicative bias field (0 = none)
    texture: float = 0.04  # amplitude of the smooth brain texture


def draw_style(modality: str, rng: np.random.Generator) -> Style:
    """Random but plausible tissue intensities for ``modality``."""
    if modality == "CTA":
        vessel = rng.uniform(300.0, 500.0)
        return Style(air=-1000.0, neck=40.0, scalp=30.0, bone=rng.uniform(900.0, 1400.0), csf=8.0, grey=38.0,
                     white=28.0, vessel=vessel, aneurysm=vessel * rng.uniform(0.85, 1.0), noise=rng.uniform(4.0, 12.0),
                     rician=False, bias=0.0)
    g = rng.uniform(0.7, 1.5)  # MR units are arbitrary: a per-series gain
    if modality == "MRA":  # time of flight: bright inflowing blood, fat bright, the rest suppressed
        vessel = rng.uniform(600.0, 800.0)
        v = dict(neck=110.0, scalp=180.0, bone=15.0, csf=30.0, grey=100.0, white=125.0, vessel=vessel,
                 aneurysm=vessel * rng.uniform(0.65, 0.85))
    elif modality == "MRI T2":  # bright CSF, flow voids in arteries, turbulent (greyer) flow in the sac
        v = dict(neck=180.0, scalp=250.0, bone=20.0, csf=950.0, grey=480.0, white=380.0, vessel=40.0,
                 aneurysm=rng.uniform(60.0, 200.0))
    elif modality == "MRI T1post":  # enhancing vessels, moderately bright
        v = dict(neck=350.0, scalp=550.0, bone=30.0, csf=80.0, grey=330.0, white=420.0, vessel=650.0,
                 aneurysm=rng.uniform(560.0, 640.0))
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return Style(air=0.0, **{k: float(x * g) for k, x in v.items()}, noise=float(rng.uniform(6.0, 14.0) * g),
                 rician=True, bias=float(rng.uniform(0.08, 0.2)))


@dataclass
class Scene:
    """Everything the renderer paints: tissues, vessels and aneurysms in the head frame, and the head's pose."""

    pose: Pose
    tissues: Tissues
    vessels: list[Segment]
    aneurysms: list[Aneurysm]
    vessel_scale: float = 1.0
    # ``bench`` only (empty otherwise): unlabelled shapes with their values, painted after the tissues and before
    # the vessels (skull base, veins), and after the aneurysms (small dots).
    under: list[tuple[Ellipsoid | Segment, float]] = field(default_factory=list)
    over: list[tuple[Ellipsoid | Segment, float]] = field(default_factory=list)


def _separable_field(shape_kji: tuple[int, int, int], k0: int, k1: int, params: np.ndarray) -> np.ndarray:
    """Sum of products of 1D cosines over index axes: a cheap smooth 3D field (block ``k0:k1``)."""
    _, nj, ni = shape_kji
    k = np.arange(k0, k1, dtype=np.float64)
    j = np.arange(nj, dtype=np.float64)
    i = np.arange(ni, dtype=np.float64)
    out = np.zeros((k1 - k0, nj, ni), dtype=np.float32)
    for amp, wk, pk, wj, pj, wi, pi in params:
        plane = np.multiply.outer(np.cos(wj * j + pj), np.cos(wi * i + pi)).astype(np.float32)
        for kk, c in enumerate(amp * np.cos(wk * k + pk)):
            out[kk] += np.float32(c) * plane
    return out


def _field_params(grid: Grid, rng: np.random.Generator, n: int, period_mm: tuple[float, float]) -> np.ndarray:
    """Random amplitudes (sum 1), wave numbers per index step and phases for ``_separable_field``."""
    amps = rng.uniform(0.5, 1.0, size=n)
    amps /= amps.sum()
    rows = []
    for a in amps:
        row = [a]
        for spacing in (grid.slice_spacing, grid.row_spacing, grid.col_spacing):
            row += [2 * np.pi * spacing / rng.uniform(*period_mm), rng.uniform(0, 2 * np.pi)]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


class _Block:
    """Slices ``k0:k1`` of a grid: head-frame coordinates and ellipsoid radii on index windows, computed from the
    affine index -> head map (separable, so a window costs a few broadcast passes)."""

    def __init__(self, grid: Grid, pose: Pose, k0: int, k1: int, edge_mm: float):
        self.m = (pose.rotation.T @ (grid.direction * np.asarray(grid.spacing_ijk)[None, :])) / pose.scale
        self.b = pose.rotation.T @ (np.asarray(grid.origin) - pose.translation) / pose.scale
        self.m_inv = np.linalg.inv(self.m)
        self.k0, self.k1, self.edge = k0, k1, edge_mm
        self.shape = (k1 - k0, grid.rows, grid.cols)
        self.full = (slice(0, k1 - k0), slice(0, grid.rows), slice(0, grid.cols))

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices (k, j, i) of this block covering the head-frame box ``lo..hi`` (plus one edge), or None."""
        lo, hi = lo - self.edge, hi + self.edge
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = (corners - self.b) @ self.m_inv.T
        imin = np.floor(ijk.min(axis=0)).astype(int)
        imax = np.ceil(ijk.max(axis=0)).astype(int) + 1
        ks = (max(imin[2], self.k0) - self.k0, min(imax[2], self.k1) - self.k0)
        js = (max(imin[1], 0), min(imax[1], self.shape[1]))
        i_s = (max(imin[0], 0), min(imax[0], self.shape[2]))
        if ks[0] >= ks[1] or js[0] >= js[1] or i_s[0] >= i_s[1]:
            return None
        return slice(*ks), slice(*js), slice(*i_s)

    def _axes(self, win: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = np.arange(win[0].start + self.k0, win[0].stop + self.k0, dtype=np.float64)
        j = np.arange(win[1].start, win[1].stop, dtype=np.float64)
        i = np.arange(win[2].start, win[2].stop, dtype=np.float64)
        return k, j, i

    def coords(self, win: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame x, y, z (float32) of the voxels in ``win``."""
        k, j, i = self._axes(win)
        m, b = self.m, self.b
        return tuple(((b[a] + m[a, 2] * k)[:, None, None] + (m[a, 1] * j)[None, :, None]
                      + (m[a, 0] * i)[None, None, :]).astype(np.float32) for a in range(3))

    def ellipsoid_sdf(self, e: Ellipsoid, win: tuple[slice, slice, slice]) -> np.ndarray:
        """``e.sdf`` on ``win``, from the quadratic form of the normalised radius in (i, j, k)."""
        a = np.asarray(e.semi_axes)
        w = self.m / a[:, None]
        u = (self.b - np.asarray(e.center)) / a
        g, gm = w.T @ u, w.T @ w
        k, j, i = self._axes(win)
        kj = (u @ u + 2 * g[1] * j[None, :] + 2 * g[2] * k[:, None] + gm[1, 1] * j[None, :] ** 2
              + gm[2, 2] * k[:, None] ** 2 + 2 * gm[1, 2] * np.multiply.outer(k, j))
        ki = 2 * g[0] * i[None, :] + gm[0, 0] * i[None, :] ** 2 + 2 * gm[0, 2] * np.multiply.outer(k, i)
        ji = 2 * gm[0, 1] * np.multiply.outer(j, i)
        q = kj.astype(np.float32)[:, :, None] + ki.astype(np.float32)[:, None, :]
        q += ji.astype(np.float32)[None, :, :]
        np.maximum(q, 0.0, out=q)
        np.sqrt(q, out=q)
        q -= 1.0
        q *= np.float32(a.mean())
        return q

    def occupancy(self, d: np.ndarray) -> np.ndarray:
        """Partial-volume fraction from a signed distance: 1 inside, 0 outside, linear over one voxel."""
        d *= np.float32(-1.0 / self.edge)
        d += 0.5
        return np.clip(d, 0.0, 1.0, out=d)


def _paint(values: np.ndarray, block: _Block, shape: Ellipsoid | Aneurysm | Segment, value: float) -> None:
    win = block.window(*shape.bbox())
    if win is None:
        return
    d = block.ellipsoid_sdf(shape, win) if isinstance(shape, Ellipsoid) else shape.sdf(*block.coords(win))
    o = block.occupancy(d)
    sub = values[win]
    sub += o * (np.float32(value) - sub)


def render(grid: Grid, scene: Scene, style: Style, rng: np.random.Generator, with_labels: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Render ``scene`` on ``grid``: float32 values ``[k, j, i]`` in the modality's units, and vessel labels.

    Labels (uint8, constants.SEG_LABELS values) mark the voxels a vessel segment passes through: centre inside the
    tube, or within half a voxel diagonal of a thinner tube's centre line (so thin vessels on coarse grids keep
    their label). Higher labels win where segments meet; aneurysm sacs are not labelled.
    """
    shape = grid.shape_kji
    values = np.empty(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8) if with_labels else None
    in_plane = float(np.sqrt(grid.row_spacing * grid.col_spacing))
    edge = float(np.cbrt(in_plane**2 * min(grid.slice_spacing, 3 * in_plane))) / scene.pose.scale
    half_diag = 0.5 * float(np.linalg.norm(grid.spacing_ijk)) / scene.pose.scale
    bias_params = _field_params(grid, rng, 3, (250.0, 500.0))
    texture_params = _field_params(grid, rng, 4, (15.0, 40.0))
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    t = scene.tissues
    step = max(1, BLOCK_VOXELS // (grid.rows * grid.cols))
    for k0 in range(0, shape[0], step):
        k1 = min(shape[0], k0 + step)
        block = _Block(grid, scene.pose, k0, k1, edge)
        v = values[k0:k1]
        v.fill(style.air)
        for shp, val in ((t.neck, style.neck), (t.scalp, style.scalp), (t.skull, style.bone), (t.csf, style.csf)):
            _paint(v, block, shp, val)
        win = block.window(*t.brain.bbox())
        if win is not None:
            brain = block.occupancy(block.ellipsoid_sdf(t.brain, win))
            white = block.occupancy(block.ellipsoid_sdf(t.white_matter, win))
            tissue = style.grey + white * (style.white - style.grey)
            if style.texture:
                tissue *= 1.0 + style.texture * _separable_field(shape, k0, k1, texture_params)[win]
            sub = v[win]
            sub += brain * (tissue - sub)
        for shp in (*t.ventricles, t.cistern):
            _paint(v, block, shp, style.csf)
        for shp, val in scene.under:
            _paint(v, block, shp, val)
        for seg in scene.vessels:
            win = block.window(*seg.bbox(scene.vessel_scale))
            if win is None:
                continue
            d = seg.sdf(*block.coords(win), radius_scale=scene.vessel_scale)
            if labels is not None:  # conservative: every voxel a vessel passes through, however thin
                labels[k0:k1][win][d <= max(0.0, half_diag - min(seg.r0, seg.r1) * scene.vessel_scale)] = seg.label
            sub = v[win]
            sub += block.occupancy(d) * (np.float32(style.vessel) - sub)
        for an in scene.aneurysms:
            _paint(v, block, an, style.aneurysm)
        for shp, val in scene.over:
            _paint(v, block, shp, val)
        if style.bias:
            field = _separable_field(shape, k0, k1, bias_params)
            field *= np.float32(style.bias)
            field += 1.0
            v *= field
        _add_noise(v, style, noise_rng)
    return values, labels


def _add_noise(v: np.ndarray, style: Style, rng: np.random.Generator) -> None:
    """In place: additive Gaussian noise, or the magnitude of a complex signal with Gaussian noise (Rician)."""
    if not style.noise:
        return
    n = rng.standard_normal(v.shape, dtype=np.float32)
    n *= np.float32(style.noise)
    v += n
    if style.rician:
        np.square(v, out=v)
        rng.standard_normal(n.shape, dtype=np.float32, out=n)
        n *= np.float32(style.noise)
        np.square(n, out=n)
        v += n
        np.sqrt(v, out=v)
