"""Built-in simple predictors and the ``--predictor SPEC`` loader used by the local gateway command.

SPEC is one of:
- ``constant``: every series gets the training prevalence of each label (read from a train.csv when given, else
  0.5). It scores exactly 0.5: the floor any model must beat, and a check that the plumbing works.
- ``module.path:name`` or ``path/to/file.py:name``: ``name`` is looked up in that module. When it is a class, or its
  name ends with ``factory``, it is called with no arguments to build the predictor (so heavy loading happens
  once, before the first series). The predictor is then the built object's ``predict`` method if it has one,
  else the object itself; it must be callable as ``predict(series_path) -> one-row DataFrame``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from ..constants import LABEL_COLS
from ..io.tables import TableError, read_labels_table

BUILTIN_PREDICTORS = ("constant",)


class PredictorSpecError(ValueError):
    """A ``--predictor`` spec names no built-in, module, file or callable that can be loaded."""


def label_prevalence(train_csv: str | Path) -> dict[str, float]:
    """Mean of each label column of a train.csv (the fraction of positive series)."""
    path = Path(train_csv)
    try:  # validated like every input table: a label 'yes' is one error naming file, row and column
        df = read_labels_table(path)
    except TableError as e:
        raise PredictorSpecError(str(e)) from e
    except (pl.exceptions.PolarsError, OSError) as e:
        raise PredictorSpecError(f"{path}: cannot read the label columns: {e}") from e
    if df.height == 0:
        raise PredictorSpecError(f"{path}: no rows")
    return {c: float(df[c].cast(pl.Float64).mean()) for c in LABEL_COLS}


class ConstantPredictor:
    """Answers the same 14 probabilities for every series; checks the series folder holds ``*.dcm`` files."""

    def __init__(self, values: Mapping[str, float] | Sequence[float] | None = None) -> None:
        if values is None:
            values = [0.5] * len(LABEL_COLS)
        elif isinstance(values, Mapping):
            values = [float(values[c]) for c in LABEL_COLS]
        values = [float(v) for v in values]
        if len(values) != len(LABEL_COLS) or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"ConstantPredictor needs {len(LABEL_COLS)} probabilities in [0, 1], got {values}")
        self.values = values

    def __call__(self, series_path: str) -> pl.DataFrame:
        if not any(Path(series_path).glob("*.dcm")):
            raise FileNotFoundError(f"{series_path}: no *.dcm files")
        return pl.DataFrame({c: [v] for c, v in zip(LABEL_COLS, self.values)})


def constant_predictor(train_csv: str | Path | None = None) -> ConstantPredictor:
    """The ``constant`` built-in: label prevalence from ``train_csv`` when given, else 0.5 everywhere."""
    return ConstantPredictor(label_prevalence(train_csv) if train_csv is not None else None)


def _load_module(where: str) -> Any:
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).resolve()
        if not path.is_file():
            raise PredictorSpecError(f"predictor file {where} does not exist")
        # Sibling imports in the file work as they would in a kernel folder.
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        name = f"_rsna_predictor_{path.stem}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PredictorSpecError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise PredictorSpecError(f"cannot import module {where!r}: {e}") from e


def load_predictor(spec: str, train_csv: str | Path | None = None) -> Callable[[str], Any]:
    """A ``predict(series_path)`` callable from a SPEC (see the module docstring)."""
    if spec == "constant":
        return constant_predictor(train_csv)
    if ":" not in spec:
        raise PredictorSpecError(f"unknown predictor {spec!r}: use one of {BUILTIN_PREDICTORS}, "
                                 "'module.path:callable' or 'path/to/file.py:callable'")
    where, name = spec.rsplit(":", 1)
    module = _load_module(where)
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise PredictorSpecError(f"{where} has no attribute {name!r}") from None
    if inspect.isclass(obj) or name.lower().endswith("factory"):
        obj = obj()
    predict = getattr(obj, "predict", obj) if not inspect.isfunction(obj) else obj
    if not callable(predict):
        raise PredictorSpecError(f"{spec}: {type(predict).__name__} object is not callable")
    return predict
