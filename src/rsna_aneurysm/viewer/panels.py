"""The streamlit parts of the viewer: cached loaders, the series picker, the 2D slicer, the 3D view and the
predictions panel. Each ``*_panel`` function lays out one part; ``app.py`` calls them in order.

Widget keys (what the tests drive): ``search``, ``modalities``, ``series``, ``k``/``j``/``i`` (the cursor),
``preset``, ``overlay``, ``opacity``, ``threshold``, ``context``, ``goto_gt_<n>``/``goto_spot_<n>``, ``run_predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import streamlit as st

from ..constants import ANEURYSM_PRESENT, ID_COL, LOCATION_COLS
from . import figures
from .data import DataSource, SeriesData, ViewerDataError, open_data
from .hotspots import Hotspot, find_hotspots
from .predictions import (
    HeatmapError,
    PredictionSet,
    column_aucs,
    load_heatmap_file,
    open_predictions,
    summarize_metrics,
)
from .state import ViewerSettings, filter_series, initial_cursor, prediction_rows, series_label

PLOT_CONFIG = {"displayModeBar": False, "scrollZoom": False}


# -- cached loaders ------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def get_source(data: str, cache: str) -> DataSource:
    return open_data(data, cache)


@st.cache_resource(show_spinner="Loading the series…", max_entries=4)
def get_series(data: str, cache: str, uid: str) -> SeriesData:
    return get_source(data, cache).load(uid)


@st.cache_resource(show_spinner=False, max_entries=4)
def get_heatmap(path: str, mtime: float, data: str, cache: str, uid: str) -> np.ndarray:
    """The heatmap of ``path`` on the series' grid; ``mtime`` in the key so a rewritten file is read again."""
    return load_heatmap_file(path, get_series(data, cache, uid).volume)


@st.cache_data(show_spinner=False, max_entries=32)
def get_hotspots(path: str, mtime: float, data: str, cache: str, uid: str, threshold: float) -> list[Hotspot]:
    """Hot spots of a heatmap at a threshold (cached: cursor and display changes do not recompute them)."""
    return find_hotspots(get_heatmap(path, mtime, data, cache, uid), threshold)


@st.cache_resource(show_spinner="Finding vessel-bright voxels…", max_entries=4)
def get_context_points(data: str, cache: str, uid: str) -> np.ndarray:
    s = get_series(data, cache, uid)
    bone = figures.bone_level(s.modality, get_source(data, cache).ct_window)
    return figures.context_points(s.volume.array, s.volume.spacing, None if s.mask is None else s.mask.array,
                                  s.modality, bone_level=bone)


@st.cache_resource(show_spinner=False)
def get_predictor(weights: str) -> Any:
    from .live import load_predictor

    return load_predictor(weights)


def load_prediction_sets(settings: ViewerSettings) -> tuple[PredictionSet, PredictionSet]:
    """(live runs of this app, the ``--pred`` / ``--weights`` folder); both read fresh on every run."""
    live = open_predictions(settings.live_dir) if settings.live_dir and settings.live_dir.is_dir() else PredictionSet()
    live.problems.clear()  # an empty live folder is normal
    return live, open_predictions(*settings.pred_folders) if settings.pred_folders else PredictionSet()


# -- series picker -------------------------------------------------------------------------------------------------
def reset_cursor(uid: str, series: SeriesData) -> None:
    if st.session_state.get("cursor_uid") != uid:
        k, j, i = initial_cursor(series)
        st.session_state.update(k=k, j=j, i=i, cursor_uid=uid)
    shape = series.volume.array.shape
    for key, n in zip("kji", shape):  # keep a stale value inside the slider's range
        st.session_state[key] = int(min(max(int(st.session_state.get(key, 0)), 0), n - 1))


def picker_panel(table: pl.DataFrame) -> str | None:
    """Sidebar: search by uid, modality filter, the series list and the picker; returns the selected uid."""
    sb = st.sidebar
    sb.header("Series")
    search = sb.text_input("Search by SeriesInstanceUID", key="search", placeholder="any part of the uid")
    modalities = sorted(m for m in table["Modality"].unique().to_list() if m)
    chosen = sb.multiselect("Modality", modalities, key="modalities")
    shown = filter_series(table, search or "", chosen)
    sb.caption(f"{shown.height} of {table.height} series")
    if shown.height == 0:
        st.warning(f"No series matches the search {search!r}" + (f" in {', '.join(chosen)}" if chosen else "") + ".")
        return None
    labels = {r[ID_COL]: series_label(r) for r in shown.iter_rows(named=True)}
    if "series" not in st.session_state and st.query_params.get("series") in labels:
        st.session_state["series"] = st.query_params["series"]  # a shared link: ?series=<uid>
    uid = sb.selectbox("Series", list(labels), key="series", format_func=labels.get)
    if uid is not None and st.query_params.get("series") != uid:
        st.query_params["series"] = uid
    view = shown.select(pl.col(ID_COL).str.slice(-12).alias("uid (end)"), "Modality", "status",
                        pl.col(ANEURYSM_PRESENT).alias("present"), pl.col("n_localizers").alias("localizers"),
                        "score")
    sb.dataframe(view, hide_index=True, height=min(35 * (view.height + 1) + 3, 260), key="series_table")
    return uid


def series_header(series: SeriesData, row: dict[str, Any]) -> None:
    labels = series.labels
    positives = [c for c in LOCATION_COLS if labels and labels.get(c)]
    truth = "unknown labels" if labels is None else (
        ("aneurysm: " + ", ".join(positives)) if labels.get(ANEURYSM_PRESENT) else "no aneurysm")
    st.subheader(f"{series.uid}")
    shape = series.volume.array.shape
    st.caption(f"{series.modality or 'modality unknown'} · {row.get('split', '')} · {truth} · "
               f"grid {shape[2]}×{shape[1]}×{shape[0]} (i×j×k) at {series.volume.spacing[0]:g} mm · "
               f"{len(series.gt_points())} localizer(s)")
    for w in series.warnings:
        st.caption(f"loader warning: {w}")


# -- display settings ----------------------------------------------------------------------------------------------
def display_panel(series: SeriesData, ct_window: tuple[float, float], has_heat: bool) -> dict[str, Any]:
    """Sidebar: window preset, overlay toggle, opacity and threshold; returns the chosen values."""
    sb = st.sidebar
    sb.header("Display")
    presets = figures.window_presets(series.modality, ct_window)
    if st.session_state.get("preset") not in presets:
        st.session_state["preset"] = next(iter(presets))
    preset = sb.selectbox("Window preset", list(presets), key="preset")
    if "overlay" not in st.session_state:
        st.session_state["overlay"] = True
    overlay = sb.toggle("Probability overlay", key="overlay", disabled=not has_heat,
                        help=None if has_heat else "no heatmap for this series")
    if "threshold" not in st.session_state:  # a shared link may set it: ?threshold=0.3
        try:
            st.session_state["threshold"] = min(max(float(st.query_params.get("threshold", 0.5)), 0.0), 1.0)
        except ValueError:
            st.session_state["threshold"] = 0.5
    opacity = sb.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
    threshold = sb.slider("Overlay threshold (probability)", 0.0, 1.0, step=0.01, key="threshold",
                          help="voxels below are transparent; regions above are the hot spots")
    return {"window": presets[preset], "overlay": bool(overlay and has_heat), "opacity": opacity,
            "threshold": threshold}


def _goto(k: float, j: float, i: float) -> None:
    st.session_state.update(k=int(round(k)), j=int(round(j)), i=int(round(i)))


def jump_panel(gt: list[dict[str, Any]], spots: list[Hotspot]) -> None:
    """Sidebar buttons that move the cross-hair to a ground-truth point or a hot spot."""
    if not gt and not spots:
        return
    sb = st.sidebar
    sb.header("Jump to")
    for n, p in enumerate(gt):
        sb.button(f"truth: {p['location']}", key=f"goto_gt_{n}", on_click=_goto, args=(p["k"], p["j"], p["i"]))
    for n, h in enumerate(spots[:5]):
        sb.button(f"hot spot {n + 1}: p={h.prob:.2f}", key=f"goto_spot_{n}", on_click=_goto, args=(h.k, h.j, h.i))


# -- views ---------------------------------------------------------------------------------------------------------
def slicer_panel(series: SeriesData, heat: np.ndarray | None, shown: dict[str, Any], gt: list[dict[str, Any]],
                 spots: list[Hotspot]) -> None:
    """Axial, coronal and sagittal views side by side; each slider moves the cross-hair in the other two."""
    shape = series.volume.array.shape
    cols = st.columns(3)
    cursor = (st.session_state["k"], st.session_state["j"], st.session_state["i"])
    for col, plane in zip(cols, figures.PLANES):
        key = figures.PLANE_KEY[plane]
        with col:
            fig = figures.slice_figure(series.volume.array, plane, cursor, shown["window"], series.volume.spacing,
                                       heat=heat if shown["overlay"] else None, threshold=shown["threshold"],
                                       opacity=shown["opacity"], gt_points=gt, hotspots=spots)
            st.plotly_chart(fig, key=f"view_{plane}", config=PLOT_CONFIG, theme=None)
            st.slider(f"{plane} slice ({key})", 0, shape[figures.PLANE_AXIS[plane]] - 1, key=key)


def volume_panel(settings: ViewerSettings, series: SeriesData, gt: list[dict[str, Any]],
                 spots: list[Hotspot]) -> None:
    st.markdown("**3D view**")
    context = st.radio("Context", ["vessels", "surface", "none"], horizontal=True, key="context",
                       label_visibility="collapsed")
    pts = get_context_points(settings.data, str(settings.cache_dir), series.uid) if context == "vessels" else None
    fig = figures.volume_figure(series.volume.array, series.volume.spacing,
                                None if series.mask is None else series.mask.array, series.modality, context,
                                gt_points=gt, hotspots=spots, points_kji=pts)
    st.plotly_chart(fig, key="view_3d", config={"displaylogo": False})


def predictions_panel(settings: ViewerSettings, series: SeriesData, live: PredictionSet,
                      pred: PredictionSet) -> None:
    """The 14 probabilities beside the labels and thresholds, the run's metrics, and the run button."""
    st.markdown("**Predictions**")
    probs, source = live.row(series.uid), "live run in this viewer"
    if probs is None:
        probs, source = pred.row(series.uid), str(pred.table_source)
    thresholds = pred.thresholds
    report = pred.metrics or {}
    if probs is None:
        st.info("No prediction for this series" + (f" in {pred.root}." if pred.root else " (no --pred folder).")
                + (" Run the predictor below." if settings.weights else ""))
    else:
        st.caption(f"source: {source}" + ("" if thresholds else " · no thresholds.json: calls not shown"))
    table = prediction_rows(probs, thresholds, series.labels, column_aucs(report))
    st.dataframe(table, hide_index=True, key="prediction_table",
                 column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0,
                                                                               max_value=1.0, format="%.3f")})
    head = summarize_metrics(report) if report else {}
    if head:
        cols = st.columns(len(head))
        for c, (name, value) in zip(cols, head.items()):
            c.metric(name, f"{value:.4f}")
        st.caption(f"metrics: {pred.metrics_source}")
    if pred.fold_summary:
        rows = [{"fold": str(f), "best epoch": v.get("best_epoch"), "score": (v.get("best") or {}).get("score")}
                for f, v in pred.fold_summary.items() if isinstance(v, dict)]
        if rows:
            st.dataframe(pl.DataFrame(rows, schema={"fold": pl.Utf8, "best epoch": pl.Int64, "score": pl.Float64}),
                         hide_index=True, key="fold_table")
    run_panel(settings, series)


def run_panel(settings: ViewerSettings, series: SeriesData) -> None:
    """The button that runs the predictor of ``--weights`` on this series, with a progress bar."""
    note = st.session_state.pop("live_note", None)
    if note:
        st.success(note)
    if not settings.weights:
        st.caption("Start the viewer with --weights weights/<run> to run the predictor here.")
        return
    if not st.button("Run the predictor on this series", key="run_predict", type="primary"):
        return
    from .live import run_prediction

    bar = st.progress(0.0, text="starting")
    try:
        predictor = get_predictor(settings.weights)
        res = run_prediction(predictor, series, settings.live_dir, lambda f, t: bar.progress(min(f, 1.0), text=t))
    except Exception as e:  # noqa: BLE001 - shown to the user, who can fix the weights folder and retry
        bar.empty()
        st.error(f"The predictor failed on this series: {type(e).__name__}: {e}")
        return
    st.session_state["live_note"] = (f"Predicted in {res.seconds:.1f} s ({res.n_passes} pass(es), {res.n_windows} "
                                     f"windows each): Aneurysm Present p = {res.probs[ANEURYSM_PRESENT]:.3f}")
    st.rerun()


def heatmap_for(settings: ViewerSettings, series: SeriesData, live: PredictionSet,
                pred: PredictionSet) -> HeatmapView:
    """The series' heatmap (live run first), or why there is none or it cannot be shown."""
    path = live.heatmap_path(series.uid) or pred.heatmap_path(series.uid)
    if path is None:
        return HeatmapView(note="no heatmap for this series" + (f" in {pred.root}" if pred.root else ""))
    key = (str(path), path.stat().st_mtime, settings.data, str(settings.cache_dir), series.uid)
    try:
        heat = get_heatmap(*key)
    except (HeatmapError, ViewerDataError) as e:
        return HeatmapView(problem=f"The heatmap cannot be shown: {e}")
    return HeatmapView(heat, None, f"overlay: {path} (max p = {float(heat.max()):.3f})", key)


@dataclass
class HeatmapView:
    """A heatmap ready to show (``heat``, its cache ``key``), or an error ``problem``; ``note`` is the caption."""

    heat: np.ndarray | None = None
    problem: str | None = None
    note: str = ""
    key: tuple | None = None

    def hotspots(self, threshold: float) -> list[Hotspot]:
        return [] if self.key is None else get_hotspots(*self.key, threshold)
