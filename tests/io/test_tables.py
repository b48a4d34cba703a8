"""Input tables are validated once, on reading: TableError names the file, the row and the column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.cli import main
from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, SOP_COL
from rsna_aneurysm.io.tables import (
    MAX_COORDINATES_CHARS,
    TableError,
    parse_coordinates_text,
    read_labels_table,
    read_localizers_table,
    read_train_table,
)
from rsna_aneurysm.preprocess.annotations import map_localizers
from rsna_aneurysm.volume import Volume

LOC_HEADER = f"{ID_COL},{SOP_COL},coordinates,location"


def _train(path: Path, rows: list[dict] | None = None, n: int = 3, drop: str | None = None) -> Path:
    """A train.csv of ``n`` series (1.2.1, 1.2.2, ...), with ``rows`` overriding cells by index."""
    recs = []
    for i in range(n):
        r = {ID_COL: f"1.2.{i + 1}", "PatientAge": 50, "PatientSex": "F", "Modality": "CTA",
             **{c: 0 for c in LABEL_COLS}}
        recs.append(r)
    for i, over in enumerate(rows or []):
        recs[i].update(over)
    df = pl.DataFrame(recs, schema_overrides={c: pl.String for c in ("Modality", *LABEL_COLS, ID_COL)}
                      ).with_columns(pl.all().cast(pl.String))
    if drop:
        df = df.drop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path)
    return path


def _locs(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([LOC_HEADER, *lines]) + "\n")
    return path


def _names(msg: str, path: Path, row: int, column: str) -> None:
    assert str(path) in msg and f"row {row}" in msg and repr(column) in msg, msg


def test_a_valid_train_table_reads_with_types(tmp_path):
    df = read_train_table(_train(tmp_path / "train.csv", [{ANEURYSM_PRESENT: "1", LOCATION_COLS[0]: "1"}]))
    assert df[ID_COL].dtype == pl.String and df[ANEURYSM_PRESENT].dtype == pl.Int64
    assert df[ANEURYSM_PRESENT].to_list() == [1, 0, 0] and df["PatientAge"].dtype.is_integer()


def test_missing_label_column(tmp_path):
    p = _train(tmp_path / "train.csv", drop=ANEURYSM_PRESENT)
    with pytest.raises(TableError, match="missing required column") as e:
        read_train_table(p)
    assert str(p) in str(e.value) and repr(ANEURYSM_PRESENT) in str(e.value)


@pytest.mark.parametrize("value", ["yes", "2", "", "-1", "0.5"])
def test_label_not_0_or_1(tmp_path, value):
    p = _train(tmp_path / "train.csv", [{}, {LOCATION_COLS[3]: value}])
    with pytest.raises(TableError, match="is not 0 or 1") as e:
        read_train_table(p)
    _names(str(e.value), p, 2, LOCATION_COLS[3])


def test_duplicate_uid(tmp_path):
    p = _train(tmp_path / "train.csv", [{}, {}, {ID_COL: "1.2.1"}])
    with pytest.raises(TableError, match="duplicated") as e:
        read_labels_table(p)
    _names(str(e.value), p, 3, ID_COL)
    assert "first at row 1" in str(e.value)


@pytest.mark.parametrize("uid", ["../../x", "/abs", "a/b", ".."])
def test_unsafe_uid(tmp_path, uid):
    p = _train(tmp_path / "train.csv", [{}, {ID_COL: uid}])
    with pytest.raises(TableError, match="not a safe file name") as e:
        read_train_table(p)
    _names(str(e.value), p, 2, ID_COL)


def test_unknown_modality(tmp_path):
    p = _train(tmp_path / "train.csv", [{}, {}, {"Modality": "PET"}])
    with pytest.raises(TableError, match="unknown modality") as e:
        read_train_table(p)
    _names(str(e.value), p, 3, "Modality")


def test_localizers_valid_and_unknown_series_warns(tmp_path, caplog):
    p = _locs(tmp_path / "loc.csv", [f"1.2.1,9.9.1,\"{{'x': 258.4, 'y': 261.0}}\",{LOCATION_COLS[0]}",
                                     f"1.2.7,9.9.2,\"{{'x': 1, 'y': 2, 'f': 3}}\",{LOCATION_COLS[1]}"])
    with caplog.at_level("WARNING"):
        df = read_localizers_table(p, series=["1.2.1"])
    assert df.height == 2 and "1.2.7" in caplog.text and "not in the series table" in caplog.text


def test_localizers_missing_location_column(tmp_path):
    p = tmp_path / "loc.csv"
    p.write_text(f"{ID_COL},{SOP_COL},coordinates\n1.2.1,9.9.1,\"{{'x': 1, 'y': 2}}\"\n")
    with pytest.raises(TableError, match="missing required column") as e:
        read_localizers_table(p)
    assert str(p) in str(e.value) and "'location'" in str(e.value)


@pytest.mark.parametrize("coords", [
    "{'x': 1e999, 'y': 2}", "{'x': float('nan'), 'y': 2}", "{'x': 1}", "{'x': 1, 'y': 2, 'z': 3}",
    "{'x': 1, 'y': 2, 'f': -1}", "{'x': 1, 'y': 2, 'f': 1.5}", "{'x': 'a', 'y': 2}", "[1, 2]", "{'x': True, 'y': 2}",
    "__import__('os')", "{'x': " + "9" * 100_000 + ", 'y': 1}", "{'x': 1, 'y': 2",
    # an int too big for a float (OverflowError), a frame too big for Int64 (a polars error in map_localizers)
    "{'x': 1" + "0" * 900 + ", 'y': 2}", f"{{'x': 1, 'y': 2, 'f': {2 ** 70}}}",
])
def test_bad_localizer_coordinates(tmp_path, coords):
    p = _locs(tmp_path / "loc.csv", [f"1.2.1,9.9.1,\"{{'x': 1, 'y': 2}}\",{LOCATION_COLS[0]}",
                                     f"1.2.1,9.9.2,\"{coords}\",{LOCATION_COLS[0]}"])
    with pytest.raises(TableError) as e:
        read_localizers_table(p)
    _names(str(e.value), p, 2, "coordinates")
    assert len(str(e.value)) < 1000


def test_long_coordinates_are_refused_before_parsing():
    with pytest.raises(ValueError, match="characters"):
        parse_coordinates_text("{'x': " + "[" * (MAX_COORDINATES_CHARS + 1))
    assert parse_coordinates_text("{'x': 258.36, 'y': 261, 'f': 12}") == (258.36, 261.0, 12)


def test_unknown_location_and_unsafe_localizer_uid(tmp_path):
    p = _locs(tmp_path / "loc.csv", ["1.2.1,9.9.1,\"{'x': 1, 'y': 2}\",Left Nowhere"])
    with pytest.raises(TableError, match="unknown location") as e:
        read_localizers_table(p)
    _names(str(e.value), p, 1, "location")
    p = _locs(tmp_path / "loc2.csv", [f"../../x,9.9.1,\"{{'x': 1, 'y': 2}}\",{LOCATION_COLS[0]}"])
    with pytest.raises(TableError, match="not a safe file name") as e:
        read_localizers_table(p)
    _names(str(e.value), p, 1, ID_COL)


def test_point_outside_the_image_is_an_unmapped_localizer():
    vol = Volume(np.zeros((3, 4, 5), np.float32), spacing=(1, 1, 1), origin=(0, 0, 0),
                 meta={"sop_uids": ["s0", "s1", "s2"], "frames": [None] * 3, "series_uid": "1.2.1"})
    rows = pl.DataFrame({ID_COL: ["1.2.1"] * 4, SOP_COL: ["s1"] * 4, "location": [LOCATION_COLS[0]] * 4,
                         "coordinates": ["{'x': 2, 'y': 3}", "{'x': 5, 'y': 1}", "{'x': 1, 'y': -0.5}",
                                         "{'x': 1e999, 'y': 1}"]})
    out = map_localizers(vol, rows)
    assert out["status"][0] == "ok" and out["k"][0] == 1.0
    for s in out["status"][1:]:
        assert s != "ok" and ("outside" in s or "finite" in s), s
    assert out["i"][1:].null_count() == 3 and out["world_x"][1:].null_count() == 3


def test_folds_cli_with_a_yes_label_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "data"
    p = _train(data / "train.csv", [{}, {ANEURYSM_PRESENT: "yes"}])
    rc = main(["folds", "--data", str(data), "--out", str(tmp_path / "folds.csv")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("rsna-aneurysm folds: error: ") and "Traceback" not in err
    _names(err, p, 2, ANEURYSM_PRESENT)
    assert not (tmp_path / "folds.csv").exists() and not (tmp_path / "folds.parquet").exists()


def test_score_cli_with_a_yes_label_is_one_line_exit_2(tmp_path, capsys):
    p = _train(tmp_path / "labels.csv", [{}, {}, {LOCATION_COLS[0]: "yes"}])
    pred = tmp_path / "pred.csv"
    _train(pred)
    rc = main(["score", "--pred", str(pred), "--labels", str(p), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    _names(err, p, 3, LOCATION_COLS[0])


def test_preprocess_with_a_duplicate_uid_writes_nothing(tmp_path):
    from rsna_aneurysm.data.synth import generate_dataset
    from rsna_aneurysm.preprocess.dataset import preprocess_dataset
    from rsna_aneurysm.preprocess.pipeline import PreprocessConfig

    data = tmp_path / "data"
    generate_dataset(data, n_series=2, preset="tiny", seed=1, n_test=1)
    train = pl.read_csv(data / "train.csv", schema_overrides={ID_COL: pl.String})
    pl.concat([train, train.head(1)]).write_csv(data / "train.csv")
    out = tmp_path / "pre"
    with pytest.raises(TableError, match="duplicated") as e:
        preprocess_dataset(data, out, PreprocessConfig(spacing=(2.0, 2.0, 2.0)), progress=False)
    _names(str(e.value), data / "train.csv", 3, ID_COL)
    assert not (out / "manifest.parquet").exists() and not (out / "records").exists()
    assert not out.exists() or not any(out.iterdir())


def test_preprocess_with_a_bad_localizer_writes_nothing(tmp_path):
    from rsna_aneurysm.data.synth import generate_dataset
    from rsna_aneurysm.preprocess.dataset import preprocess_dataset

    data = tmp_path / "data"
    generate_dataset(data, n_series=2, preset="tiny", seed=1, n_test=1)
    loc = data / "train_localizers.csv"
    if not loc.exists():
        pytest.skip("synthetic dataset has no localizers")
    lines = loc.read_text().splitlines()
    lines.append(re.sub(r"\"\{.*\}\"", "\"{'x': 1e999, 'y': 1}\"", lines[1]))
    loc.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pre"
    with pytest.raises(TableError, match="finite") as e:
        preprocess_dataset(data, out, progress=False)
    _names(str(e.value), loc, len(lines) - 1, "coordinates")
    assert not out.exists() or not any(out.iterdir())
    json.dumps(str(e.value))  # a plain one-line message


def test_cache_plan_with_a_yes_label_raises_table_error(tmp_path):
    from rsna_aneurysm.data.cache import plan_cache
    from rsna_aneurysm.data.cache_config import CacheConfig
    from rsna_aneurysm.layout import PreDir

    pre = PreDir(tmp_path / "pre")
    pre.root.mkdir()
    pl.DataFrame({ID_COL: ["1.2.1", "1.2.2"], "status": ["ok", "ok"], "volume": ["v1", "v2"]}).write_parquet(
        pre.manifest)
    p = _train(pre.train_csv, [{}, {ANEURYSM_PRESENT: "yes"}], n=2)
    with pytest.raises(TableError) as e:
        plan_cache(pre.root, CacheConfig())
    _names(str(e.value), p, 2, ANEURYSM_PRESENT)
    assert e.value.exit_code == 2


def test_cache_plan_ignores_a_mapped_point_outside_the_preprocessed_volume(tmp_path, caplog):
    from rsna_aneurysm.data.cache import plan_cache
    from rsna_aneurysm.data.cache_config import CacheConfig
    from rsna_aneurysm.layout import PreDir

    pre = PreDir(tmp_path / "pre")
    pre.root.mkdir()
    for v in ("v1", "v2"):
        (pre.root / v).write_bytes(b"")
    pl.DataFrame({ID_COL: ["1.2.1", "1.2.2"], "status": ["ok", "ok"], "volume": ["v1", "v2"],
                  "shape_kji": [[10, 20, 30], [10, 20, 30]]}).write_parquet(pre.manifest)
    _train(pre.train_csv, [{ANEURYSM_PRESENT: "1", LOCATION_COLS[0]: "1"}, {ANEURYSM_PRESENT: "1"}], n=2)
    # 1.2.1: one point inside, one cropped away (i = -5); 1.2.2: its only point is beyond the last slice.
    pl.DataFrame({ID_COL: ["1.2.1", "1.2.1", "1.2.2"], "location": [LOCATION_COLS[0]] * 3, "status": ["ok"] * 3,
                  "i": [5.0, -5.0, 5.0], "j": [5.0, 5.0, 5.0], "k": [5.0, 5.0, 12.0]}).write_parquet(pre.localizers)
    tasks, skipped, _ = plan_cache(pre.root, CacheConfig())
    by_uid = {t.uid: t for t in tasks}
    assert by_uid["1.2.1"].points == [[5.0, 5.0, 5.0]] and by_uid["1.2.1"].n_negatives == 0  # positives only
    assert "1.2.2" not in by_uid and "without a mapped aneurysm" in skipped["1.2.2"]
    assert "outside the preprocessed volume" in caplog.text


def test_a_column_named_twice_in_the_header(tmp_path):
    p = _train(tmp_path / "train.csv")
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0] + f",{ANEURYSM_PRESENT}", *(line + ",1" for line in lines[1:])]) + "\n")
    with pytest.raises(TableError, match="more than once") as e:
        read_train_table(p)
    assert str(p) in str(e.value) and repr(ANEURYSM_PRESENT) in str(e.value)


def test_cache_cli_with_a_yes_label_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    from rsna_aneurysm.layout import PreDir

    pre = PreDir(tmp_path / "pre")
    pre.root.mkdir()
    pl.DataFrame({ID_COL: ["1.2.1", "1.2.2"], "status": ["ok", "ok"], "volume": ["v1", "v2"]}).write_parquet(
        pre.manifest)
    p = _train(pre.train_csv, [{}, {ANEURYSM_PRESENT: "yes"}], n=2)
    rc = main(["cache", "--data", str(pre.root), "--out", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("rsna-aneurysm cache: error: "), err
    _names(err, p, 2, ANEURYSM_PRESENT)
    assert not (tmp_path / "cache").exists()


def test_an_exactly_repeated_localizer_row_is_kept_once(tmp_path, caplog):
    row = f"1.2.1,9.9.1,\"{{'x': 1, 'y': 2}}\",{LOCATION_COLS[0]}"
    p = _locs(tmp_path / "loc.csv", [row, f"1.2.1,9.9.1,\"{{'x': 3, 'y': 2}}\",{LOCATION_COLS[0]}", row])
    df = read_localizers_table(p, series=["1.2.1"])
    assert df.height == 2 and "row(s) 3" in caplog.text and str(p) in caplog.text


def test_the_gateway_prevalence_reader_names_a_bad_label(tmp_path) -> None:
    from rsna_aneurysm.infer.predictors import PredictorSpecError, label_prevalence

    path = tmp_path / "train.csv"
    pl.DataFrame({ID_COL: ["1.2.3", "1.2.4"], **{c: ["0", "yes" if c == LABEL_COLS[-1] else "0"]
                                                 for c in LABEL_COLS}}).write_csv(path)
    with pytest.raises(PredictorSpecError, match=r"row 2.*Aneurysm Present.*yes"):
        label_prevalence(path)
