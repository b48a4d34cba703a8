"""The ``folds``, ``score`` and ``gateway`` commands on tiny layouts (``gateway`` is registered by infer/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.cli import main
from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, MODALITIES, TRAIN_COLS


def write_train(root: Path, n: int = 60, seed: int = 0, patient: bool = True) -> pl.DataFrame:
    """A train.csv with every label positive in a few series; Left ACA only twice."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 14), dtype=int)
    for j in range(13):
        y[rng.choice(n, 2 if j == 7 else 6, replace=False), j] = 1
    y[:, 13] = y[:, :13].max(1)
    df = pl.DataFrame({ID_COL: [f"1.2.{i}" for i in range(n)], "PatientAge": [50] * n, "PatientSex": ["Male"] * n,
                       "Modality": [MODALITIES[i % 4] for i in range(n)],
                       **{c: y[:, j] for j, c in enumerate(LABEL_COLS)}}).select(TRAIN_COLS)
    if patient:
        df = df.with_columns(pl.Series("PatientID", [f"P{i // 2}" for i in range(n)]))
    root.mkdir(parents=True, exist_ok=True)
    df.write_csv(root / "train.csv")
    return df


def write_dicom(path: Path, patient_id: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientID = patient_id
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_folds_command_groups_prints_counts_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    train = write_train(data)
    assert main(["folds", "--data", str(data), "--k", "3", "--seed", "4", "--out", str(tmp_path / "f.csv")]) == 0
    out, err = capsys.readouterr()
    assert "grouped by PatientID (30 patients)" in out and "fold 2" in out and ANEURYSM_PRESENT in out
    folds = pl.read_parquet(tmp_path / "f.parquet")
    assert folds.columns == [ID_COL, "fold", "PatientID"] and folds.height == 60
    assert pl.read_csv(tmp_path / "f.csv")["fold"].to_list() == folds["fold"].to_list()
    assert folds.group_by("PatientID").agg(pl.col("fold").n_unique())["fold"].max() == 1
    # Left ACA has two positives: with k=3 one fold's validation part has none, and the command says so.
    assert "WARNING: fold" in err and LOCATION_COLS[7] in err and "undefined" in err and err.count("WARNING") == 1
    counted = folds.join(train, on=ID_COL).group_by("fold").agg(pl.col(LOCATION_COLS[7]).sum())
    assert (counted[LOCATION_COLS[7]] == 0).sum() == 1
    # Same seed, same folds; default output goes to DATA/folds.parquet.
    assert main(["folds", "--data", str(data), "--k", "3", "--seed", "4"]) == 0
    assert pl.read_parquet(data / "folds.parquet").equals(folds)


def test_folds_command_reads_patient_ids_from_dicom(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    train = write_train(data, n=12, patient=False)
    for i, uid in enumerate(train[ID_COL]):
        write_dicom(data / "series" / uid / "a.dcm", f"PAT{i // 3}")
    assert main(["folds", "--data", str(data), "--k", "2", "--read-patient-ids", "--workers", "2"]) == 0
    folds = pl.read_parquet(data / "folds.parquet")
    assert folds["PatientID"].n_unique() == 4
    assert folds.group_by("PatientID").agg(pl.col("fold").n_unique())["fold"].max() == 1
    # A --patient-ids table works the same way.
    pl.DataFrame({ID_COL: train[ID_COL], "PatientID": [f"Q{i // 4}" for i in range(12)]}).write_csv(tmp_path / "p.csv")
    assert main(["folds", "--data", str(data), "--k", "3", "--patient-ids", str(tmp_path / "p.csv")]) == 0
    assert "(3 patients)" in capsys.readouterr().out


def test_score_command_writes_report_plots_and_thresholds(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    train = write_train(data)
    rng = np.random.default_rng(0)
    pred = train.select(ID_COL, *[(pl.col(c) * 0.5 + pl.lit(rng.random(60) * 0.5)).alias(c) for c in LABEL_COLS])
    pred = pred.with_columns(pl.Series("fold", [i % 2 for i in range(60)])).sample(fraction=1.0, shuffle=True, seed=1)
    pred.write_parquet(tmp_path / "oof.parquet")
    assert main(["score", "--pred", str(tmp_path / "oof.parquet"), "--labels", str(data / "train.csv"),
                 "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "SCORE (60 series)" in out and "strict leaderboard metric: 1.0000" in out and "MRI T1post" in out
    rep_dir = tmp_path / "oof_report"
    report = json.loads((rep_dir / "report.json").read_text())
    assert report["score"] == pytest.approx(1.0) and report["strict_score"] == pytest.approx(1.0)
    assert set(report["by_modality"]) == set(MODALITIES) and set(report["by_fold"]) == {"0", "1"}
    for png in ("roc_curves.png", "score_by_modality.png", "score_by_fold.png"):
        assert (rep_dir / png).read_bytes()[:4] == b"\x89PNG"
    thr = json.loads((rep_dir / "thresholds.json").read_text())
    assert list(thr) == list(LABEL_COLS) and all(0.5 <= v <= 1.0 for v in thr.values())
    assert report["thresholds"]["columns"][ANEURYSM_PRESENT]["fbeta"] == pytest.approx(1.0)


def test_score_command_lists_mismatched_ids(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    train = write_train(data)
    pred = train.select(ID_COL, *LABEL_COLS).head(57).vstack(
        train.select(ID_COL, *LABEL_COLS).head(1).with_columns(pl.lit("9.9.9").alias(ID_COL)))
    pred.write_csv(tmp_path / "oof.csv")
    assert main(["score", "--pred", str(tmp_path / "oof.csv"), "--labels", str(data / "train.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rsna-aneurysm score: error: ") and err.count("\n") == 1
    assert "3 labelled series have no row" in err and "1.2.57, 1.2.58, 1.2.59" in err
    assert "1 series in the predictions are not in the labels: 9.9.9" in err


def test_score_command_partial_when_a_column_is_single_class(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    train = write_train(data).with_columns(pl.lit(0).alias(LOCATION_COLS[7]))
    train.write_csv(data / "train.csv")
    train.select(ID_COL, *[pl.lit(0.3).alias(c) for c in LABEL_COLS]).write_csv(tmp_path / "p.csv")
    args = ["score", "--pred", str(tmp_path / "p.csv"), "--labels", str(data / "train.csv"), "--bootstrap", "0"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "PARTIAL SCORE" in out and "0.5000" in out and "UNDEFINED" in out and LOCATION_COLS[7] in err
    assert main([*args, "--strict"]) == 1


def test_gateway_command_runs_and_scores_the_synthetic_test_layout(tmp_path: Path, capsys: pytest.CaptureFixture):
    data = tmp_path / "data"
    write_train(data)
    uids = [f"9.{i}" for i in range(4)]
    for u in uids:
        (data / "test" / "series" / u).mkdir(parents=True)
        (data / "test" / "series" / u / "1.dcm").write_bytes(b"x")
    pl.DataFrame({ID_COL: uids}).write_csv(data / "test" / "test.csv")
    sol = pl.DataFrame({ID_COL: uids, **{c: [1, 0, 0, 0] for c in LABEL_COLS}})
    sol.with_columns(pl.lit(0).alias(LOCATION_COLS[0])).write_csv(data / "test" / "solution.csv")
    out = tmp_path / "sub.parquet"
    assert main(["gateway", "--data", str(data), "--predictor", "constant", "--out", str(out), "--seed", "1",
                 "--share-root", str(tmp_path / "share")]) == 0
    stdout = capsys.readouterr().out
    assert "4 of 4 series called (seed 1)" in stdout and "PARTIAL SCORE (4 series)" in stdout
    assert "0.5000" in stdout and LOCATION_COLS[0] in stdout and "UNDEFINED" in stdout
    sub = pl.read_parquet(out)
    assert sub.columns == [ID_COL, *LABEL_COLS] and sub.height == 4
    assert sub[LOCATION_COLS[0]].to_list() == pytest.approx([6 / 60] * 4)  # prevalence from DATA/train.csv
    # A predictor that breaks a rule: exit 1 with the series and the rule.
    bad = tmp_path / "bad.py"
    bad.write_text("import polars as pl\ndef predict(path):\n    return pl.DataFrame({'a': [1.0]})\n")
    assert main(["gateway", "--data", str(data / "test"), "--predictor", f"{bad}:predict", "--out",
                 str(tmp_path / "bad.parquet"), "--share-root", str(tmp_path / "share")]) == 1
    err = capsys.readouterr().err
    assert "[columns]" in err and "--keep-going" in err and not (tmp_path / "bad.parquet").exists()
    assert err.count("\n") == 1 and err.startswith("rsna-aneurysm gateway: error: gateway stopped: ")
