"""The viewer's streamlit script: ``rsna-aneurysm view`` runs it with ``streamlit run``.

Settings come from environment variables (``RSNA_VIEWER_DATA``, ``RSNA_VIEWER_PRED``, ``RSNA_VIEWER_WEIGHTS``,
``RSNA_VIEWER_CACHE``; see ``viewer.state``), so streamlit's own testing API can drive the same file.
"""

from __future__ import annotations

import streamlit as st

from rsna_aneurysm.constants import ID_COL
from rsna_aneurysm.viewer import panels
from rsna_aneurysm.viewer.data import ViewerDataError
from rsna_aneurysm.viewer.state import ENV_DATA, ViewerSettings, score_table


def main() -> None:
    st.set_page_config(page_title="RSNA aneurysm viewer", layout="wide")
    settings = ViewerSettings.from_env()
    st.title("RSNA aneurysm viewer")
    if not settings.data:
        st.error(f"No data folder: start the app with `rsna-aneurysm view --data DIR` (or set {ENV_DATA}).")
        st.stop()
    st.caption(f"data: {settings.data}" + (f" · predictions: {', '.join(settings.pred_folders)}"
                                           if settings.pred_folders else "")
               + (f" · weights: {settings.weights}" if settings.weights else ""))
    cache = str(settings.cache_dir)
    try:
        source = panels.get_source(settings.data, cache)
        table = source.series_table()
    except ViewerDataError as e:
        st.error(f"The data folder cannot be read: {e}")
        st.stop()
    live, pred = panels.load_prediction_sets(settings)
    for problem in pred.problems:
        st.warning(problem)
    table = score_table(table, live, pred)

    uid = panels.picker_panel(table)
    if uid is None:
        st.stop()
    row = table.filter(table[ID_COL] == uid).row(0, named=True)
    try:
        series = panels.get_series(settings.data, cache, uid)
    except ViewerDataError as e:
        st.error(f"Series {uid} cannot be shown: {e}")
        st.stop()
    panels.reset_cursor(uid, series)
    panels.series_header(series, row)

    hv = panels.heatmap_for(settings, series, live, pred)
    if hv.problem:
        st.error(hv.problem)
    heat = hv.heat
    shown = panels.display_panel(series, source.ct_window, heat is not None)
    spots = hv.hotspots(shown["threshold"]) if shown["overlay"] else []
    gt = series.gt_points()
    panels.jump_panel(gt, spots)

    panels.slicer_panel(series, heat, shown, gt, spots)
    if hv.note:
        st.caption(hv.note + (f" · {len(spots)} hot spot(s) at p ≥ {shown['threshold']:.2f}" if heat is not None
                                else ""))
    left, right = st.columns([3, 2])
    with left:
        panels.volume_panel(settings, series, gt, spots)
    with right:
        panels.predictions_panel(settings, series, live, pred)


main()
