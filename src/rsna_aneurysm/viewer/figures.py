"""Pure figure builders of the viewer: slices as images, plotly figures of the three planes and of the 3D view.

Nothing here imports streamlit, so every picture the app shows can be built and checked in a plain test.

Display conventions (canonical preprocessed volumes: ``array[k, j, i]``, i -> patient left, j -> posterior,
k -> superior): axial and coronal slices are shown radiologically (patient's right on the image's left), axial
with anterior at the top, coronal and sagittal with superior at the top, sagittal with anterior on the left.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .hotspots import Hotspot

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
# The voxel coordinate each plane holds fixed, and the array axis it indexes.
PLANE_KEY = {"axial": "k", "coronal": "j", "sagittal": "i"}
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
# Patient direction at the (left, right, top, bottom) edge of each plane's image.
PLANE_EDGES = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
HEAT_COLORMAP = "turbo"  # matplotlib name of the overlay colours; plotly's "Turbo" colours the hot spots alike
GT_COLOR = "#39ff14"
CROSS_COLOR = "rgba(0, 200, 255, 0.7)"


# -- intensity windows ---------------------------------------------------------------------------------------------
def hu_window(level: float, width: float, ct_window: Sequence[float]) -> tuple[float, float]:
    """A CT window (level, width in HU) in the units of a volume normalised by ``ct_window`` (HU -> [0, 1])."""
    lo_hu, hi_hu = float(ct_window[0]), float(ct_window[1])
    scale = hi_hu - lo_hu
    return ((level - width / 2 - lo_hu) / scale, (level + width / 2 - lo_hu) / scale)


def window_presets(modality: str | None,
                   ct_window: Sequence[float] = (-100.0, 700.0)) -> dict[str, tuple[float, float]]:
    """Named (low, high) display windows for a modality, in normalised volume units; the first is the default."""
    if modality == "CTA":
        return {
            "angio (W600 L200)": hu_window(200, 600, ct_window),
            "brain (W80 L40)": hu_window(40, 80, ct_window),
            "soft tissue (W400 L60)": hu_window(60, 400, ct_window),
            "full range": (0.0, 1.0),
        }
    if modality == "MRI T2":
        return {"full range": (0.0, 1.0), "fluid (0.3-1)": (0.3, 1.0), "tissue (0-0.6)": (0.0, 0.6)}
    return {"full range": (0.0, 1.0), "vessels (0.4-1)": (0.4, 1.0), "tissue (0-0.6)": (0.0, 0.6)}


def bone_level(modality: str | None, ct_window: Sequence[float] = (-100.0, 700.0), bone_hu: float = 650.0
               ) -> float | None:
    """The normalised intensity above which a CTA voxel is bone rather than contrast (None for MR)."""
    if modality != "CTA":
        return None
    return (bone_hu - float(ct_window[0])) / (float(ct_window[1]) - float(ct_window[0]))


# -- slices --------------------------------------------------------------------------------------------------------
def extract_slice(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D image of ``plane`` at voxel ``index`` (of k, j or i), in display orientation (rows top to bottom)."""
    if plane == "axial":
        return array[index]
    if plane == "coronal":
        return array[:, index, :][::-1]
    if plane == "sagittal":
        return array[:, :, index][::-1]
    raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")


def to_display(plane: str, k: float, j: float, i: float, shape_kji: Sequence[int]) -> tuple[float, float, float]:
    """Voxel ``(k, j, i)`` -> ``(column, row, depth)`` in the image of ``plane`` (depth: the fixed coordinate)."""
    top = shape_kji[0] - 1
    if plane == "axial":
        return i, j, k
    if plane == "coronal":
        return i, top - k, j
    if plane == "sagittal":
        return j, top - k, i
    raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")


def pixel_mm(plane: str, spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    """Millimetres per image column, per image row and per slice step of ``plane``."""
    si, sj, sk = (float(s) for s in spacing_ijk)
    return {"axial": (si, sj, sk), "coronal": (si, sk, sj), "sagittal": (sj, sk, si)}[plane]


def gray_rgb(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``image`` windowed to [low, high] as an 8-bit grey RGB array (H, W, 3)."""
    span = max(float(high) - float(low), 1e-6)
    g = np.clip((np.asarray(image, dtype=np.float32) - low) / span, 0.0, 1.0)
    g8 = np.round(g * 255).astype(np.uint8)
    return np.repeat(g8[..., None], 3, axis=2)


def overlay_rgba(heat: np.ndarray, threshold: float, colormap: str = HEAT_COLORMAP) -> np.ndarray:
    """Probabilities as RGBA (H, W, 4): colour by value, opaque where ``heat >= threshold``, clear elsewhere."""
    from matplotlib import colormaps

    lut = (colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgba = np.zeros(h.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = lut[np.round(h * 255).astype(np.int64)]
    rgba[..., 3] = np.where(h >= threshold, 255, 0).astype(np.uint8)
    return rgba


def png_uri(image: np.ndarray) -> str:
    """An 8-bit grey, RGB or RGBA array as a ``data:image/png`` URI (what plotly's Image trace shows)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _on_slice(points: Sequence[Any], plane: str, depth: float, shape: Sequence[int], step_mm: float,
              tolerance_mm: float) -> list[tuple[float, float, Any]]:
    """(column, row, point) of the points within ``tolerance_mm`` of the slice at ``depth``."""
    out = []
    for p in points:
        k, j, i = (p["k"], p["j"], p["i"]) if isinstance(p, dict) else (p.k, p.j, p.i)
        col, row, d = to_display(plane, k, j, i, shape)
        if abs(d - depth) * step_mm <= tolerance_mm:
            out.append((col, row, p))
    return out


def slice_figure(array: np.ndarray, plane: str, cursor: Sequence[int], window: Sequence[float],
                 spacing_ijk: Sequence[float], heat: np.ndarray | None = None, threshold: float = 0.5,
                 opacity: float = 0.5, gt_points: Sequence[dict[str, Any]] = (), hotspots: Sequence[Hotspot] = (),
                 tolerance_mm: float = 3.0, height: int = 420) -> go.Figure:
    """One plane through ``cursor`` (k, j, i) with cross-hair, optional overlay, ground truth and hot spots.

    Traces, by name: ``image``, ``probability`` (only when ``heat`` is given), ``cross-hair``, ``ground truth`` and
    ``hot spots`` (only when some fall within ``tolerance_mm`` of the slice). The title names the slice.
    """
    shape = array.shape
    k, j, i = (int(c) for c in cursor)
    depth = {"axial": k, "coronal": j, "sagittal": i}[plane]
    img = extract_slice(array, plane, depth)
    h, w = img.shape
    col_mm, row_mm, step_mm = pixel_mm(plane, spacing_ijk)
    fig = go.Figure()
    fig.add_trace(go.Image(source=png_uri(gray_rgb(img, window[0], window[1])), name="image", hoverinfo="skip"))
    if heat is not None:
        fig.add_trace(go.Image(source=png_uri(overlay_rgba(extract_slice(heat, plane, depth), threshold)),
                               name="probability", opacity=float(opacity), hoverinfo="skip"))
    cx, cy, _ = to_display(plane, k, j, i, shape)
    fig.add_trace(go.Scatter(x=[cx, cx, None, -0.5, w - 0.5], y=[-0.5, h - 0.5, None, cy, cy], mode="lines",
                             name="cross-hair", line={"color": CROSS_COLOR, "width": 1}, hoverinfo="skip"))
    gts = _on_slice(gt_points, plane, depth, shape, step_mm, tolerance_mm)
    if gts:
        fig.add_trace(go.Scatter(x=[g[0] for g in gts], y=[g[1] for g in gts], mode="markers", name="ground truth",
                                 marker={"symbol": "circle-open", "size": 22, "color": GT_COLOR,
                                         "line": {"width": 2.5, "color": GT_COLOR}},
                                 text=[g[2]["location"] for g in gts], hovertemplate="%{text}<extra>truth</extra>"))
    spots = _on_slice(hotspots, plane, depth, shape, step_mm, tolerance_mm)
    if spots:
        probs = [s[2].prob for s in spots]
        fig.add_trace(go.Scatter(x=[s[0] for s in spots], y=[s[1] for s in spots], mode="markers", name="hot spots",
                                 marker={"symbol": "x-thin-open", "size": 16, "line": {"width": 3},
                                         "color": probs, "colorscale": "Turbo", "cmin": 0.0, "cmax": 1.0},
                                 text=[f"p={p:.2f}" for p in probs], hovertemplate="%{text}<extra>hot spot</extra>"))
    left, right, top, bottom = PLANE_EDGES[plane]
    font = {"color": "yellow", "size": 13}
    notes = [dict(x=0.01, y=0.5, text=left, xanchor="left"), dict(x=0.99, y=0.5, text=right, xanchor="right"),
             dict(x=0.5, y=0.99, text=top, yanchor="top"), dict(x=0.5, y=0.01, text=bottom, yanchor="bottom")]
    fig.update_layout(
        title={"text": f"{plane} {PLANE_KEY[plane]} = {depth} / {shape[PLANE_AXIS[plane]] - 1}", "x": 0.5,
               "font": {"size": 14, "color": "#d8d8d8"}},
        height=height, margin={"l": 4, "r": 4, "t": 32, "b": 4}, showlegend=False, dragmode=False,
        plot_bgcolor="black", paper_bgcolor="rgba(0,0,0,0)",
        annotations=[{**n, "xref": "paper", "yref": "paper", "showarrow": False, "font": font} for n in notes],
        meta={"plane": plane, "index": depth},
    )
    fig.update_xaxes(range=[-0.5, w - 0.5], visible=False, constrain="domain")
    fig.update_yaxes(range=[h - 0.5, -0.5], visible=False, scaleanchor="x", scaleratio=row_mm / col_mm,
                     constrain="domain")
    return fig


# -- 3D ------------------------------------------------------------------------------------------------------------
def _inner_region(mask: np.ndarray, spacing_kji: np.ndarray, erosion_mm: float) -> np.ndarray:
    """The mask eroded by ``erosion_mm`` (past scalp and skull), or the mask itself when erosion empties it."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask, sampling=spacing_kji)
    inner = dist > erosion_mm
    return inner if inner.any() else mask


def context_points(array: np.ndarray, spacing_ijk: Sequence[float], mask: np.ndarray | None = None,
                   modality: str | None = None, quantile: float = 0.985, erosion_mm: float = 8.0,
                   bone_level: float | None = None, bone_margin_mm: float = 4.0, max_points: int = 12000,
                   max_dim: int = 128, seed: int = 0) -> np.ndarray:
    """Voxel indices ``(n, 3)`` as ``(k, j, i)`` of the vessel-bright voxels inside the head, for 3D context.

    Brightest ``1 - quantile`` of the voxels inside the head mask eroded by ``erosion_mm``; on T2 the vessels are
    dark flow voids, so the darkest are taken instead. On CT the skull is brighter than contrast: voxels at or above
    ``bone_level`` and within ``bone_margin_mm`` of them are left out first. The volume is strided to at most
    ``max_dim`` voxels per axis and the result subsampled to ``max_points`` (fixed seed).
    """
    stride = max(1, int(np.ceil(max(array.shape) / max_dim)))
    sub = np.asarray(array[::stride, ::stride, ::stride], dtype=np.float32)
    sp = np.asarray([spacing_ijk[2], spacing_ijk[1], spacing_ijk[0]], dtype=np.float64) * stride
    region = (np.asarray(mask[::stride, ::stride, ::stride]) > 0) if mask is not None else np.ones(sub.shape, bool)
    if region.any():
        region = _inner_region(region, sp, erosion_mm)
    if bone_level is not None:
        from scipy import ndimage

        bone = sub >= bone_level
        if bone.any():
            region &= ndimage.distance_transform_edt(~bone, sampling=sp) > bone_margin_mm
    values = sub[region]
    if values.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    median = np.median(values)  # strictly brighter (darker) than typical tissue, so ties never flood the cloud
    if modality == "MRI T2":
        pick = region & (sub <= np.quantile(values, 1.0 - quantile)) & (sub < median)
    else:
        pick = region & (sub >= np.quantile(values, quantile)) & (sub > median)
    idx = np.argwhere(pick).astype(np.float64) * stride
    if len(idx) > max_points:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
    return idx


def _mm(kji: np.ndarray, spacing_ijk: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, z) millimetre coordinates of the plot for voxel indices ``(n, 3)`` in (k, j, i) order."""
    kji = np.asarray(kji, dtype=np.float64).reshape(-1, 3)
    return kji[:, 2] * spacing_ijk[0], kji[:, 1] * spacing_ijk[1], kji[:, 0] * spacing_ijk[2]


def _surface_trace(mask: np.ndarray, spacing_ijk: Sequence[float], max_dim: int = 40) -> go.Isosurface:
    stride = max(1, int(np.ceil(max(mask.shape) / max_dim)))
    sub = (np.asarray(mask[::stride, ::stride, ::stride]) > 0).astype(np.float32)
    kk, jj, ii = np.meshgrid(*[np.arange(n) * stride for n in sub.shape], indexing="ij")
    x, y, z = _mm(np.stack([kk.ravel(), jj.ravel(), ii.ravel()], axis=1), spacing_ijk)
    return go.Isosurface(x=x, y=y, z=z, value=sub.ravel(), isomin=0.5, isomax=1.0, surface_count=1,
                         opacity=0.12, colorscale=[[0, "#c8b4a0"], [1, "#c8b4a0"]], showscale=False,
                         caps={"x_show": False, "y_show": False, "z_show": False}, name="head surface",
                         hoverinfo="skip")


def volume_figure(array: np.ndarray, spacing_ijk: Sequence[float], mask: np.ndarray | None = None,
                  modality: str | None = None, context: str = "vessels", gt_points: Sequence[dict[str, Any]] = (),
                  hotspots: Sequence[Hotspot] = (), height: int = 560, max_points: int = 12000,
                  points_kji: np.ndarray | None = None) -> go.Figure:
    """3D scene in millimetres: context (``vessels``, ``surface`` or ``none``), ground truth and hot spots.

    Axes follow the canonical grid (x = i towards the patient's left, y = j towards posterior, z = k towards
    superior) and the six faces carry the letters L/R, A/P, S/I. Hot spots are sized and coloured by probability.
    Traces, by name: ``vessels`` or ``head surface``, ``ground truth``, ``hot spots``, ``orientation``.
    ``points_kji``: precomputed :func:`context_points` (the app caches them per series).
    """
    if context not in ("vessels", "surface", "none"):
        raise ValueError(f"unknown 3D context {context!r}; expected vessels, surface or none")
    fig = go.Figure()
    if context == "vessels":
        pts = points_kji if points_kji is not None else context_points(array, spacing_ijk, mask, modality,
                                                                        max_points=max_points)
        x, y, z = _mm(pts, spacing_ijk)
        fig.add_trace(go.Scatter3d(x=x, y=y, z=z, mode="markers", name="vessels", hoverinfo="skip",
                                   marker={"size": 1.6, "color": "rgba(220, 60, 60, 0.35)"}))
    elif context == "surface":
        fig.add_trace(_surface_trace(mask if mask is not None else (array > np.quantile(array, 0.5)), spacing_ijk))
    if gt_points:
        x, y, z = _mm(np.asarray([[p["k"], p["j"], p["i"]] for p in gt_points]), spacing_ijk)
        fig.add_trace(go.Scatter3d(x=x, y=y, z=z, mode="markers", name="ground truth",
                                   text=[p["location"] for p in gt_points],
                                   hovertemplate="%{text}<extra>truth</extra>",
                                   marker={"symbol": "diamond", "size": 9, "color": GT_COLOR,
                                           "line": {"color": "black", "width": 1}}))
    if hotspots:
        x, y, z = _mm(np.asarray([[h.k, h.j, h.i] for h in hotspots]), spacing_ijk)
        probs = [h.prob for h in hotspots]
        fig.add_trace(go.Scatter3d(x=x, y=y, z=z, mode="markers", name="hot spots",
                                   text=[f"p={p:.2f}, {h.voxels} voxels" for p, h in zip(probs, hotspots)],
                                   hovertemplate="%{text}<extra>hot spot</extra>",
                                   marker={"size": [5 + 15 * p for p in probs], "color": probs,
                                           "colorscale": "Turbo", "cmin": 0.0, "cmax": 1.0, "opacity": 0.85,
                                           "colorbar": {"title": {"text": "p"}, "len": 0.5}}))
    ext = [(n - 1) * s for n, s in zip((array.shape[2], array.shape[1], array.shape[0]), spacing_ijk)]
    cx, cy, cz = (e / 2 for e in ext)
    pad = 0.08 * max(ext)
    labels = [("R", -pad, cy, cz), ("L", ext[0] + pad, cy, cz), ("A", cx, -pad, cz), ("P", cx, ext[1] + pad, cz),
              ("I", cx, cy, -pad), ("S", cx, cy, ext[2] + pad)]
    fig.add_trace(go.Scatter3d(x=[t[1] for t in labels], y=[t[2] for t in labels], z=[t[3] for t in labels],
                               mode="text", text=[t[0] for t in labels], name="orientation", hoverinfo="skip",
                               textfont={"size": 18, "color": "#f0c000"}))
    axis = {"showbackground": False, "gridcolor": "rgba(128,128,128,0.3)"}
    fig.update_layout(
        height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=True,
        legend={"orientation": "h", "y": 0.02},
        scene={"aspectmode": "data",
               "xaxis": {**axis, "title": {"text": "x: R → L (mm)"}, "range": [-2 * pad, ext[0] + 2 * pad]},
               "yaxis": {**axis, "title": {"text": "y: A → P (mm)"}, "range": [-2 * pad, ext[1] + 2 * pad]},
               "zaxis": {**axis, "title": {"text": "z: I → S (mm)"}, "range": [-2 * pad, ext[2] + 2 * pad]},
               "camera": {"eye": {"x": -1.3, "y": -1.5, "z": 0.8}}},
    )
    return fig
