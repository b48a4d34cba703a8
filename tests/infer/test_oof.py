"""``rsna-aneurysm oof``: each fold's model predicts its own validation series; the table feeds ``score``."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import weights_helper as _helper

from rsna_aneurysm.cli import main
from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.folds import resolve_folds
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oof")
    generate_dataset(root / "data", n_series=8, preset="tiny", seed=3, n_test=0)
    preprocess_dataset(root / "data", root / "pre", PreprocessConfig(spacing=(2.0, 2.0, 2.0)))
    return root / "pre"


def test_oof_table_matches_the_training_folds_and_scores(tmp_path: Path, preprocessed: Path) -> None:
    run = _helper.make_weights(tmp_path / "run", folds=(0, 1))
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = {"preprocessed": str(preprocessed), "folds": None, "n_folds": 2, "fold_seed": 7}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "prevalence.json").unlink()

    rc = main(["oof", "--weights", str(run), "--score", "--bootstrap", "0", "--tta_flip", "false"])
    assert rc == 0
    oof = pl.read_parquet(run / "oof.parquet")
    assert oof.columns == [ID_COL, "fold", *LABEL_COLS]
    manifest = pl.read_parquet(preprocessed / "manifest.parquet").filter(pl.col("status") == "ok")
    assert sorted(oof[ID_COL].to_list()) == sorted(manifest[ID_COL].to_list())  # every series exactly once
    # Without a patch cache the folds are the deterministic split of the preprocessed series.
    labels = pl.read_csv(preprocessed / "train.csv", schema_overrides={ID_COL: pl.Utf8})
    labels = labels.filter(pl.col(ID_COL).is_in(manifest[ID_COL].to_list())).sort(ID_COL)
    expected = resolve_folds(labels.select(ID_COL, *LABEL_COLS), None, 2, 7)
    got = oof.select(ID_COL, "fold").sort(ID_COL)
    assert got.equals(expected.sort(ID_COL))
    values = oof.select(LABEL_COLS).to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    # Scoring wrote the thresholds and the run got its fallback prevalence.
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert list(thresholds) == list(LABEL_COLS)
    prevalence = json.loads((run / "prevalence.json").read_text())
    assert prevalence["Aneurysm Present"] == pytest.approx(labels["Aneurysm Present"].mean(), abs=0.2)


def test_oof_errors_name_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _helper.make_weights(tmp_path / "run")
    assert main(["oof", "--weights", str(run)]) == 1
    assert "manifest.parquet" in capsys.readouterr().err
    assert main(["oof", "--weights", str(tmp_path / "nope")]) == 1
    assert "config.json" in capsys.readouterr().err
