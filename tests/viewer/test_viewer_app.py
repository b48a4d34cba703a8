"""The streamlit app driven headlessly with streamlit's own testing API: what it shows after each interaction."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402
from toy import write_toy_preprocessed  # noqa: E402

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS  # noqa: E402
from rsna_aneurysm.viewer.server import APP_PATH  # noqa: E402
from rsna_aneurysm.viewer.state import ENV_CACHE, ENV_DATA, ENV_PRED, ENV_WEIGHTS  # noqa: E402

from .conftest import probs_for  # noqa: E402

APP = APP_PATH  # the script `rsna-aneurysm view` runs


def start(monkeypatch, tmp_path: Path, data: Path | None, pred: Path | None = None,
          weights: Path | None = None) -> AppTest:
    for var, value in ((ENV_DATA, data), (ENV_PRED, pred), (ENV_WEIGHTS, weights), (ENV_CACHE, tmp_path / "cache")):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, str(value))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """Plotly figures by element key (view_axial, view_coronal, view_sagittal, view_3d) as JSON dicts."""
    return {_key(el): json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def values(v) -> list[float]:
    """A plotly JSON array: a plain list, or numpy data as ``{"dtype", "bdata"}`` (base64)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _key(el) -> str:
    for name in ("view_axial", "view_coronal", "view_sagittal", "view_3d"):
        if name in el.proto.id:
            return name
    raise AssertionError(f"unexpected plotly element {el.proto.id}")


def traces(fig: dict) -> list[str]:
    return [t.get("name") for t in fig["data"]]


def title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def table_with(at: AppTest, column: str):
    return next(df.value for df in at.dataframe if column in df.value.columns)


def test_app_shows_views_truth_overlay_and_predictions(monkeypatch, tmp_path, viewer_data):
    at = start(monkeypatch, tmp_path, viewer_data.pre, viewer_data.pred)
    first = sorted(viewer_data.uids)[0]
    assert at.subheader[0].value == first
    loc = viewer_data.localizers.filter(viewer_data.localizers[ID_COL] == first).row(0, named=True)
    k, j, i = (int(round(loc[c])) for c in "kji")
    assert (at.slider(key="k").value, at.slider(key="j").value, at.slider(key="i").value) == (k, j, i)
    figs = figures(at)
    assert title(figs["view_axial"]) == f"axial k = {k} / 31"
    for plane in ("axial", "coronal", "sagittal"):
        assert traces(figs[f"view_{plane}"]) == ["image", "probability", "cross-hair", "ground truth", "hot spots"]
    assert traces(figs["view_3d"]) == ["vessels", "ground truth", "hot spots", "orientation"]
    table = table_with(at, "probability")
    assert table["label"].tolist() == list(LABEL_COLS)
    n = sorted(viewer_data.uids).index(first)
    assert table["probability"].tolist() == pytest.approx([probs_for(n)[c] for c in LABEL_COLS])
    assert table["threshold"].tolist() == [0.3] * 14 and table["run AUC"].tolist() == [0.7] * 14
    assert {m.label: m.value for m in at.metric}["score"] == "0.8125"
    series_list = table_with(at, "localizers")
    assert len(series_list) == 3 and series_list["score"].notna().all()


def test_series_selection_and_search_by_uid(monkeypatch, tmp_path, viewer_data):
    at = start(monkeypatch, tmp_path, viewer_data.pre, viewer_data.pred)
    second = sorted(viewer_data.uids)[1]
    at.selectbox(key="series").set_value(second).run()
    assert at.subheader[0].value == second
    loc = viewer_data.localizers.filter(viewer_data.localizers[ID_COL] == second).row(0, named=True)
    assert at.slider(key="k").value == int(round(loc["k"]))  # the cursor starts at the new series' aneurysm
    third = sorted(viewer_data.uids)[2]
    at.text_input(key="search").input(third[-3:]).run()
    assert len(at.selectbox(key="series").options) == 1 and third[-3:] in at.selectbox(key="series").options[0]
    assert at.subheader[0].value.endswith(third[-3:])
    at.text_input(key="search").input("no-such-uid").run()
    assert "No series matches" in at.warning[0].value and not at.exception


def test_slice_change_moves_the_cross_hair_in_the_other_views(monkeypatch, tmp_path, viewer_data):
    at = start(monkeypatch, tmp_path, viewer_data.pre, viewer_data.pred)
    at.slider(key="k").set_value(5).run()
    figs = figures(at)
    assert title(figs["view_axial"]) == "axial k = 5 / 31"
    cross = next(t for t in figs["view_coronal"]["data"] if t["name"] == "cross-hair")
    assert cross["y"][3:] == [31 - 5, 31 - 5]  # superior at the top: row = (n_k - 1) - k
    assert "ground truth" not in traces(figs["view_axial"])  # no aneurysm near k = 5


def test_overlay_toggle_threshold_and_jump(monkeypatch, tmp_path, viewer_data):
    at = start(monkeypatch, tmp_path, viewer_data.pre, viewer_data.pred)
    at.toggle(key="overlay").set_value(False).run()
    assert all("probability" not in traces(f) and "hot spots" not in traces(f) for f in figures(at).values())
    at.toggle(key="overlay").set_value(True).run()
    at.slider(key="threshold").set_value(0.95).run()  # the blobs peak at 0.9
    assert "hot spots" not in traces(figures(at)["view_3d"]) and not [b for b in at.button if "spot" in b.key]
    at.slider(key="threshold").set_value(0.5).run()
    at.slider(key="k").set_value(0).run()
    at.button(key="goto_spot_0").click().run()
    spot = next(t for t in figures(at)["view_3d"]["data"] if t["name"] == "hot spots")
    assert at.slider(key="k").value == pytest.approx(values(spot["z"])[0])  # 1 mm voxels: z (mm) = k


def test_corrupt_heatmap_shows_a_message_not_a_traceback(monkeypatch, tmp_path, viewer_data):
    pred = tmp_path / "pred"
    shutil.copytree(viewer_data.pred, pred)
    first = sorted(viewer_data.uids)[0]
    (pred / "heatmaps" / f"{first}.nii.gz").write_bytes(b"\x1f\x8b this is not gzip")
    at = start(monkeypatch, tmp_path, viewer_data.pre, pred)
    assert len(at.error) == 1 and "heatmap cannot be shown" in at.error[0].value
    assert f"{first}.nii.gz" in at.error[0].value
    assert at.toggle(key="overlay").disabled
    assert all("probability" not in traces(f) for f in figures(at).values())
    assert table_with(at, "probability")["probability"].notna().all()  # the rest of the app still works


def test_run_predictor_button_shows_progress_result_and_overlay(monkeypatch, tmp_path, viewer_data, tiny_weights):
    at = start(monkeypatch, tmp_path, viewer_data.pre, None, tiny_weights)
    assert "No prediction for this series" in at.info[0].value
    assert "probability" not in traces(figures(at)["view_axial"])
    at.button(key="run_predict").click().run()
    assert not at.exception and not at.error
    assert "Predicted in" in at.success[0].value
    table = table_with(at, "probability")
    assert table["probability"].notna().all() and table["probability"].between(0, 1).all()
    assert f"{table['probability'].iloc[-1]:.3f}" in at.success[0].value
    assert "probability" in traces(figures(at)["view_axial"])  # the live heatmap is the overlay now
    live = next((tmp_path / "cache").glob("live_*"))
    assert (live / "heatmaps" / f"{at.subheader[0].value}.nii.gz").is_file()
    assert table_with(at, "localizers")["score"].iloc[0] == pytest.approx(table.set_index("label")["probability"][
        ANEURYSM_PRESENT])


def test_no_data_folder_is_a_message(monkeypatch, tmp_path):
    at = start(monkeypatch, tmp_path, None)
    assert "No data folder" in at.error[0].value
    at = start(monkeypatch, tmp_path, tmp_path / "missing")
    assert "cannot be read" in at.error[0].value and "no such data folder" in at.error[0].value


def test_unreadable_series_is_a_message(monkeypatch, tmp_path):
    pre = write_toy_preprocessed(tmp_path / "pre", n_series=2, shape=(16, 16, 16), broken=1)
    at = start(monkeypatch, tmp_path, pre)
    broken = sorted(pl.read_parquet(pre / "manifest.parquet")[ID_COL].to_list())[-1]
    at.selectbox(key="series").set_value(broken).run()
    assert not at.exception and f"Series {broken} cannot be shown" in at.error[0].value
    assert "not a readable NIfTI" in at.error[0].value and not at.get("plotly_chart")


def test_link_opens_a_series_at_a_threshold(monkeypatch, tmp_path, viewer_data):
    for var, value in ((ENV_DATA, viewer_data.pre), (ENV_PRED, viewer_data.pred), (ENV_CACHE, tmp_path / "cache")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    third = sorted(viewer_data.uids)[2]
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(series=third, threshold="0.95")
    at.run()
    assert not at.exception and at.subheader[0].value == third and at.slider(key="threshold").value == 0.95
