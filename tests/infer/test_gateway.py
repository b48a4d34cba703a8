"""Local gateway: a trivial predictor passes; predictors that break each rule are reported clearly."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.infer.gateway import GatewayError, run_gateway, shared_path
from rsna_aneurysm.infer.predictors import (
    ConstantPredictor,
    PredictorSpecError,
    label_prevalence,
    load_predictor,
)

UIDS = [f"1.2.3.{i}" for i in range(6)]


def make_test_layout(root: Path, uids: list[str] = UIDS, files_per_series: int = 3) -> Path:
    """DATA/test/{test.csv, series/<uid>/*.dcm (dummy bytes)} and a DATA/train.csv; returns DATA."""
    test = root / "test"
    for u in uids:
        d = test / "series" / u
        d.mkdir(parents=True)
        for k in range(files_per_series):
            (d / f"{u}.{k}.dcm").write_bytes(b"DICM" + bytes(k))
    pl.DataFrame({ID_COL: uids}).write_csv(test / "test.csv")
    train = pl.DataFrame({ID_COL: ["t1", "t2", "t3", "t4"], **{c: [1, 0, 0, 0] for c in LABEL_COLS}})
    train.write_csv(root / "train.csv")
    return root


def row(values: list[float] | None = None, columns: tuple[str, ...] = LABEL_COLS) -> pl.DataFrame:
    values = values if values is not None else [0.25] * len(columns)
    return pl.DataFrame({c: [v] for c, v in zip(columns, values)})


class Recorder:
    """Trivial predictor that records what it was given and cleans the share folder as Kaggle asks."""

    def __init__(self, share_root: Path, clean: bool = True) -> None:
        self.share_root, self.clean, self.seen = share_root, clean, []

    def __call__(self, series_path: str) -> pl.DataFrame:
        files = sorted(Path(series_path).glob("*.dcm"))
        self.seen.append((series_path, [(f.name, f.is_symlink(), f.read_bytes()[:4]) for f in files]))
        if self.clean:
            shutil.rmtree(self.share_root, ignore_errors=True)
        return row([0.1 * (len(self.seen) % 10)] * len(LABEL_COLS))


def test_trivial_predictor_end_to_end(tmp_path: Path):
    data = make_test_layout(tmp_path / "data")
    share = tmp_path / "shared"
    rec = Recorder(share)
    out = tmp_path / "sub" / "submission.parquet"
    result = run_gateway(rec, data, share_root=share, seed=3, out_path=out)
    assert result.ok and result.problems == [] and result.notes == []
    # Every series visited once, in a shuffled order that the seed reproduces.
    visited = [Path(p).name for p, _ in rec.seen]
    assert sorted(visited) == UIDS and visited != UIDS
    assert [c.series_uid for c in result.calls] == visited
    rec2 = Recorder(share)
    run_gateway(rec2, data / "test", share_root=share, seed=3, out_path=None)
    assert [Path(p).name for p, _ in rec2.seen] == visited
    # The folder predict gets mirrors the absolute series path under the share root and holds symlinks.
    for path, files in rec.seen:
        src = data / "test" / "series" / Path(path).name
        assert Path(path) == shared_path(src, share)
        assert str(Path(path)).startswith(str(share) + os.sep) and str(src.resolve()).lstrip("/") in path
        assert [f[0] for f in files] == sorted(p.name for p in src.glob("*.dcm"))
        assert all(f[1] and f[2] == b"DICM" for f in files)
    # Submission: id first, the 14 columns in order, one row per series in visiting order.
    sub = pl.read_parquet(out)
    assert sub.columns == [ID_COL, *LABEL_COLS]
    assert sub[ID_COL].to_list() == visited
    assert sub[LABEL_COLS[0]].to_list() == pytest.approx([0.1 * (i + 1) for i in range(6)])
    assert len(result.calls) == 6 and all(c.seconds >= 0 and c.n_files == 3 for c in result.calls)
    assert "projected" in result.summary()


def test_share_folder_left_behind_is_removed_and_noted(tmp_path: Path):
    data = make_test_layout(tmp_path / "data", UIDS[:3])
    share = tmp_path / "shared"
    rec = Recorder(share, clean=False)
    result = run_gateway(rec, data, share_root=share, seed=0, out_path=None)
    assert result.ok and all(c.left_share for c in result.calls)
    assert any("3 of 3 calls" in n and "rmtree" in n for n in result.notes)
    assert share.is_dir() and not any(share.iterdir())
    # Each call saw only its own series.
    assert all(len(files) == 3 for _, files in rec.seen)
    # The sources are untouched.
    assert len(list((data / "test" / "series").rglob("*.dcm"))) == 9


def test_share_root_must_start_empty(tmp_path: Path):
    data = make_test_layout(tmp_path / "data", UIDS[:2])
    share = tmp_path / "shared"
    (share / "leftover").mkdir(parents=True)
    with pytest.raises(GatewayError, match="must be an empty folder"):
        run_gateway(ConstantPredictor(), data, share_root=share, out_path=None)


def test_default_share_root_is_a_temporary_folder_off_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RSNA_SHARE_ROOT", raising=False)
    if Path("/kaggle").exists():
        pytest.skip("this machine has /kaggle")
    data = make_test_layout(tmp_path / "data", UIDS[:2])
    seen = []
    result = run_gateway(lambda p: seen.append(p) or row(), data, out_path=None)
    assert result.ok and len(seen) == 2 and not Path(seen[0]).exists()


def _broken_predictors() -> dict[str, object]:
    def two_rows(path: str) -> pl.DataFrame:
        return pl.concat([row(), row()])

    def wrong_order(path: str) -> pl.DataFrame:
        cols = list(LABEL_COLS)
        cols[0], cols[1] = cols[1], cols[0]
        return row(columns=tuple(cols))

    def string_column(path: str) -> pl.DataFrame:
        return row().with_columns(pl.lit("0.5").alias(LABEL_COLS[4]))

    def nan_value(path: str) -> pl.DataFrame:
        return row([0.5] * 13 + [math.nan])

    def out_of_range(path: str) -> pl.DataFrame:
        return row([1.5] + [0.5] * 13)

    def raises(path: str) -> pl.DataFrame:
        raise RuntimeError("model weights not found")

    def not_a_frame(path: str) -> dict:
        return {c: 0.5 for c in LABEL_COLS}

    def missing_column(path: str) -> pl.DataFrame:
        return row().drop(LABEL_COLS[-1])

    return {"rows": two_rows, "columns": wrong_order, "dtype": string_column, "finite": nan_value,
            "range": out_of_range, "exception": raises, "type": not_a_frame, "columns-missing": missing_column}


@pytest.mark.parametrize("rule", list(_broken_predictors()))
def test_each_broken_rule_stops_the_run_with_a_clear_message(tmp_path: Path, rule: str):
    data = make_test_layout(tmp_path / "data", UIDS[:3])
    out = tmp_path / "submission.parquet"
    predict = _broken_predictors()[rule]
    with pytest.raises(GatewayError) as e:
        run_gateway(predict, data, share_root=tmp_path / "shared", seed=1, out_path=out)
    msg = str(e.value)
    expected_rule = rule.split("-")[0]
    assert f"[{expected_rule}]" in msg
    first = e.value.result.calls[0].series_uid
    assert f"series {first}" in msg  # names the series
    assert {"rows": "exactly one row", "columns": "wrong order", "dtype": LABEL_COLS[4], "finite": "NaN",
            "range": "1.5", "exception": "model weights not found", "type": "dict",
            "columns-missing": "Aneurysm Present"}[rule] in msg
    assert len(e.value.result.calls) == 1  # fail-fast: stopped at the first series
    assert not out.exists()  # no submission from a failed run
    assert not any((tmp_path / "shared").iterdir())


def test_keep_going_collects_every_problem_and_writes_the_good_rows(tmp_path: Path):
    data = make_test_layout(tmp_path / "data")
    bad = {UIDS[1]: "nan", UIDS[4]: "raise"}

    def flaky(path: str) -> pl.DataFrame:
        uid = Path(path).name
        if bad.get(uid) == "raise":
            raise ValueError("cannot read series")
        return row([math.nan] * 14) if bad.get(uid) == "nan" else row()

    out = tmp_path / "submission.parquet"
    result = run_gateway(flaky, data, share_root=tmp_path / "shared", seed=0, out_path=out, keep_going=True)
    assert not result.ok
    assert sorted((p.series_uid, p.rule) for p in result.problems) == [(UIDS[1], "finite"), (UIDS[4], "exception")]
    sub = pl.read_parquet(out)
    assert sorted(sub[ID_COL].to_list()) == sorted(set(UIDS) - set(bad))
    assert "2 series missing" in result.summary()


def test_slow_calls_after_the_first_are_flagged(tmp_path: Path):
    data = make_test_layout(tmp_path / "data", UIDS[:3])
    with pytest.raises(GatewayError, match=r"\[time\].*over the limit"):
        run_gateway(lambda p: row(), data, share_root=tmp_path / "shared", out_path=None, time_limit_s=-1.0)
    # The first call may load models: exempt by default.
    calls = []

    def slow_first(path: str) -> pl.DataFrame:
        calls.append(path)
        return row()

    result = run_gateway(slow_first, data, share_root=tmp_path / "shared2", out_path=None, time_limit_s=-1.0,
                         keep_going=True)
    assert [p.rule for p in result.problems] == ["time", "time"]
    assert result.problems[0].series_uid == result.calls[1].series_uid


def test_missing_series_folder_and_missing_test_csv(tmp_path: Path):
    data = make_test_layout(tmp_path / "data", UIDS[:2])
    shutil.rmtree(data / "test" / "series" / UIDS[0])
    with pytest.raises(GatewayError, match=rf"series {UIDS[0]}: \[series\]"):
        run_gateway(ConstantPredictor(), data, share_root=tmp_path / "shared", out_path=None)
    with pytest.raises(GatewayError, match="no test.csv"):
        run_gateway(ConstantPredictor(), tmp_path / "nowhere", out_path=None)


def test_constant_predictor_and_spec_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = make_test_layout(tmp_path / "data", UIDS[:2])
    prev = label_prevalence(data / "train.csv")
    assert prev[LABEL_COLS[0]] == pytest.approx(0.25)
    pred = load_predictor("constant", data / "train.csv")
    result = run_gateway(pred, data, share_root=tmp_path / "s", out_path=None)
    assert result.submission[LABEL_COLS[0]].to_list() == [0.25, 0.25]
    assert load_predictor("constant").values == [0.5] * 14
    with pytest.raises(FileNotFoundError):
        ConstantPredictor()(str(tmp_path))
    # file.py:function, file.py:Class (built once), module:make_factory.
    mod = tmp_path / "my_kernel.py"
    mod.write_text(
        "import polars as pl\n"
        "from rsna_aneurysm.constants import LABEL_COLS\n"
        "def predict(path):\n    return pl.DataFrame({c: [0.3] for c in LABEL_COLS})\n"
        "class Model:\n    built = 0\n"
        "    def __init__(self):\n        Model.built += 1\n"
        "    def predict(self, path):\n        return pl.DataFrame({c: [0.7] for c in LABEL_COLS})\n"
        "def make_factory():\n    return lambda path: pl.DataFrame({c: [0.9] for c in LABEL_COLS})\n"
    )
    assert load_predictor(f"{mod}:predict")("x")[LABEL_COLS[0]][0] == 0.3
    assert load_predictor(f"{mod}:Model")("x")[LABEL_COLS[0]][0] == 0.7
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_predictor("my_kernel:make_factory")("x")[LABEL_COLS[0]][0] == 0.9
    for spec, msg in (("nope", "unknown predictor"), (f"{mod}:absent", "no attribute"),
                      ("no_such_module_xyz:f", "cannot import"), (f"{tmp_path}/missing.py:f", "does not exist")):
        with pytest.raises(PredictorSpecError, match=msg):
            load_predictor(spec)


def test_kernel_share_root_is_the_competition_gateways_folder(tmp_path: Path):
    from rsna_aneurysm.infer.gateway import DEFAULT_SHARE_ROOT, kernel_share_root

    # With kaggle_evaluation present, RSNA_SHARE_ROOT and an override are ignored, with a warning each.
    root, warnings = kernel_share_root(True, env_root=str(tmp_path / "mine"), override=str(tmp_path / "other"))
    assert root == DEFAULT_SHARE_ROOT == "/kaggle/shared"
    assert len(warnings) == 2 and all("ignoring" in w and "/kaggle/shared" in w for w in warnings)
    assert kernel_share_root(True, env_root="/kaggle/shared") == ("/kaggle/shared", [])
    # Off Kaggle the predictor and the local gateway share one folder: RSNA_SHARE_ROOT, else the override...
    assert kernel_share_root(False, env_root=str(tmp_path / "mine"))[0] == str(tmp_path / "mine")
    root, warnings = kernel_share_root(False, env_root=str(tmp_path / "mine"), override=str(tmp_path / "other"))
    assert root == str(tmp_path / "mine") and len(warnings) == 1
    assert kernel_share_root(False, override=str(tmp_path / "other"))[0] == str(tmp_path / "other")
    # ...else a fresh empty folder under the working folder, never /kaggle/shared.
    root, warnings = kernel_share_root(False, work_dir=tmp_path / "work")
    assert Path(root).parent == tmp_path / "work" and Path(root).is_dir() and not any(Path(root).iterdir())
    assert not warnings


def test_the_local_gateway_runs_with_the_kernels_share_folder(tmp_path: Path):
    from rsna_aneurysm.infer.gateway import kernel_share_root

    data = make_test_layout(tmp_path / "data")
    share, _ = kernel_share_root(False, work_dir=tmp_path / "work")
    rec = Recorder(Path(share))
    result = run_gateway(rec, data, share_root=share, seed=1, out_path=None)
    assert result.ok and not any(c.left_share for c in result.calls)
    assert all(p.startswith(share) for p, _ in rec.seen)
