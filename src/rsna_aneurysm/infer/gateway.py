"""Local stand-in for the competition's inference gateway (``kaggle_evaluation``'s RSNA gateway).

What it does, as the real one does: read ``test.csv``, visit the unique series in shuffled order, share each series'
``*.dcm`` files as symlinks under a share folder that mirrors their absolute path
(``<share_root>/<absolute series folder>/<file>.dcm``), call ``predict(<that folder>)`` and collect one row per
series, then write ``submission.parquet`` with ``SeriesInstanceUID`` first. The share root must be empty when the
run starts (the real gateway refuses otherwise).

What it checks beyond the real one, so a kernel that passes here passes there: the answer must be a one-row
DataFrame (polars, or pandas when installed) with the 14 label columns in submission order (an extra
``SeriesInstanceUID`` column is tolerated; the gateway overwrites it), numeric, finite and within [0, 1]. Each call
is timed; every call after the first must finish within ``time_limit_s`` (30 minutes on Kaggle; the first call may
load models). After each call, whatever ``predict`` left in the share folder is removed and counted: on Kaggle
``predict`` must ``shutil.rmtree('/kaggle/shared', ignore_errors=True)`` itself.

Fail-fast by default, like the real gateway (one bad answer fails the whole submission): the first problem raises
``GatewayError`` naming the series and the rule, and no submission is written. With ``keep_going=True`` every
problem is collected and the submission holds the series that passed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..io.atomic import atomic_write_parquet

log = logging.getLogger(__name__)

DEFAULT_SHARE_ROOT = "/kaggle/shared"
TIME_LIMIT_S = 30 * 60.0
# Approximate size of the hidden test set, for the projected run time.
HIDDEN_TEST_SERIES = 2500

Predict = Callable[[str], Any]


class GatewayError(RuntimeError):
    """The run cannot go on: bad inputs, or (fail-fast) a predict answer that breaks a rule."""

    def __init__(self, message: str, result: GatewayResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Problem:
    """One broken rule: which series, which rule (exception, type, rows, columns, dtype, finite, range, time,
    series), and what happened."""

    series_uid: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"series {self.series_uid}: [{self.rule}] {self.message}"


@dataclass
class CallRecord:
    series_uid: str
    seconds: float
    n_files: int
    left_share: bool = False


@dataclass
class GatewayResult:
    """Submission frame (SeriesInstanceUID + 14 columns, visiting order), per-call records and problems."""

    submission: pl.DataFrame
    calls: list[CallRecord]
    problems: list[Problem]
    seed: int
    out_path: Path | None
    n_series: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.submission.height == self.n_series

    def timing(self) -> dict[str, float]:
        """First-call and later-call seconds, and the time projected for the hidden test set."""
        secs = [c.seconds for c in self.calls]
        if not secs:
            return {}
        rest = secs[1:] or secs
        return {"first_s": secs[0], "mean_after_first_s": float(np.mean(rest)), "max_after_first_s": max(rest),
                "total_s": float(sum(secs)),
                "projected_hidden_test_h": (secs[0] + float(np.mean(rest)) * (HIDDEN_TEST_SERIES - 1)) / 3600}

    def summary(self) -> str:
        lines = [f"gateway: {len(self.calls)} of {self.n_series} series called (seed {self.seed}), "
                 f"{self.submission.height} rows in the submission"]
        t = self.timing()
        if t:
            lines.append(f"  time per call: first {t['first_s']:.2f} s, then mean {t['mean_after_first_s']:.2f} s, "
                         f"max {t['max_after_first_s']:.2f} s; projected for ~{HIDDEN_TEST_SERIES} hidden series: "
                         f"{t['projected_hidden_test_h']:.2f} h")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  PROBLEM {p}" for p in self.problems]
        if self.out_path:
            lines.append(f"  wrote {self.out_path}")
        return "\n".join(lines)


def resolve_test_paths(data: str | Path, series_root: str | Path | None = None) -> tuple[Path, Path]:
    """(test.csv, series folder) from a test.csv path, a folder holding test.csv, or a DATA folder with test/."""
    data = Path(data)
    if data.is_file():
        test_csv = data
    elif (data / "test.csv").is_file():
        test_csv = data / "test.csv"
    elif (data / "test" / "test.csv").is_file():
        test_csv = data / "test" / "test.csv"
    else:
        raise GatewayError(f"{data}: no test.csv there nor in {data / 'test'}")
    root = Path(series_root) if series_root is not None else test_csv.parent / "series"
    if not root.is_dir():
        raise GatewayError(f"{root}: test series folder does not exist")
    return test_csv, root


def default_share_root() -> Path | None:
    """``$RSNA_SHARE_ROOT`` if set, else ``/kaggle/shared`` on a machine with ``/kaggle``, else None (a fresh
    temporary folder per run)."""
    env = os.environ.get("RSNA_SHARE_ROOT")
    if env:
        return Path(env)
    return Path(DEFAULT_SHARE_ROOT) if Path("/kaggle").is_dir() else None


def kernel_share_root(competition_server: bool, env_root: str | None = None, override: str | None = None,
                      work_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """The one share folder the kernel's predictor may delete, and warnings about settings it ignored.

    With the competition's server (``kaggle_evaluation`` present) that is the folder its gateway shares series
    under, ``/kaggle/shared``, whatever ``RSNA_SHARE_ROOT`` (``env_root``) or a ``share_root`` override say: a
    different folder would be deleted after every call while the gateway's filled the disk. Without it the kit's
    local gateway runs, and predictor and gateway get the same folder: ``env_root``, else ``override``, else a fresh
    folder under ``work_dir`` (never ``/kaggle/shared`` by default)."""
    warnings: list[str] = []
    if competition_server:
        for what, value in (("RSNA_SHARE_ROOT", env_root), ("the share_root override", override)):
            if value and os.path.abspath(value) != DEFAULT_SHARE_ROOT:
                warnings.append(f"ignoring {what} {value!r}: the competition gateway shares series under "
                                f"{DEFAULT_SHARE_ROOT}, the only folder the predictor deletes")
        return DEFAULT_SHARE_ROOT, warnings
    if override and env_root and os.path.abspath(override) != os.path.abspath(env_root):
        warnings.append(f"ignoring the share_root override {override!r}: the local gateway shares under "
                        f"RSNA_SHARE_ROOT {env_root!r}")
    if env_root or override:
        return str(env_root or override), warnings
    base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="rsna_shared_", dir=base), warnings


def shared_path(path: str | Path, share_root: str | Path) -> Path:
    """Where ``path`` appears under the share root: ``<share_root>/<absolute path without its anchor>``."""
    p = Path(os.path.abspath(path))
    return Path(share_root) / p.relative_to(p.anchor)


def share_series(series_dir: Path, share_root: Path) -> tuple[Path, int]:
    """Symlink each ``*.dcm`` of ``series_dir`` under the share root; returns (the shared folder, file count)."""
    files = sorted(series_dir.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"{series_dir}: no *.dcm files to share")
    for f in files:
        dst = shared_path(f, share_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(f), dst)
    return shared_path(series_dir, share_root), len(files)


def _clear_share(share_root: Path) -> bool:
    """Remove everything under the share root (symlinks, not their targets); True if anything was there."""
    if not share_root.exists():
        return False
    left = False
    for child in share_root.iterdir():
        left = True
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return left


def _as_polars(pred: Any) -> pl.DataFrame | None:
    if isinstance(pred, pl.DataFrame):
        return pred
    if type(pred).__module__.split(".")[0] == "pandas" and type(pred).__name__ == "DataFrame":
        try:
            return pl.from_pandas(pred)
        except Exception as e:  # noqa: BLE001 - any conversion failure is the predictor's problem to see
            raise TypeError(f"pandas DataFrame could not be converted: {e}") from e
    return None


def check_prediction(pred: Any, series_uid: str) -> tuple[list[float] | None, list[Problem]]:
    """The 14 values of a predict answer, or None with the rules it breaks."""

    def problem(rule: str, msg: str) -> tuple[None, list[Problem]]:
        return None, [Problem(series_uid, rule, msg)]

    try:
        df = _as_polars(pred)
    except TypeError as e:
        return problem("type", str(e))
    if df is None:
        return problem("type", f"predict must return a one-row DataFrame (polars, or pandas), got "
                               f"{type(pred).__module__}.{type(pred).__name__}")
    if df.height != 1:
        return problem("rows", f"predict must return exactly one row, got {df.height}")
    cols = [c for c in df.columns if c != ID_COL]
    if cols != list(LABEL_COLS):
        missing = [c for c in LABEL_COLS if c not in cols]
        extra = [c for c in cols if c not in LABEL_COLS]
        if not missing and not extra and len(cols) == len(LABEL_COLS):
            first = next(i for i, (a, b) in enumerate(zip(cols, LABEL_COLS)) if a != b)
            msg = (f"columns are in the wrong order (the leaderboard matches them by position): position {first} "
                   f"holds {cols[first]!r}, expected {LABEL_COLS[first]!r}")
        else:
            msg = f"expected the 14 label columns in submission order; missing {missing}, unexpected {extra}"
        return problem("columns", msg)
    problems = []
    bad_dtype = [f"{c} ({df.schema[c]})" for c in LABEL_COLS if not df.schema[c].is_numeric()]
    if bad_dtype:
        problems.append(Problem(series_uid, "dtype", f"non-numeric column(s): {', '.join(bad_dtype)}"))
        return None, problems
    values = np.array([np.nan if v is None else v for v in df.select(pl.col(LABEL_COLS).cast(pl.Float64)).row(0)],
                      dtype=np.float64)
    nonfinite = [c for c, v in zip(LABEL_COLS, values) if not np.isfinite(v)]
    if nonfinite:
        problems.append(Problem(series_uid, "finite", f"null/NaN/inf in {nonfinite}"))
    outside = [f"{c}={v:g}" for c, v in zip(LABEL_COLS, values) if np.isfinite(v) and not 0.0 <= v <= 1.0]
    if outside:
        problems.append(Problem(series_uid, "range", f"values outside [0, 1]: {', '.join(outside)}"))
    return (None, problems) if problems else (values.tolist(), [])


def write_submission(rows: dict[str, list[float]], out_path: str | Path | None) -> tuple[pl.DataFrame, Path | None]:
    """``SeriesInstanceUID`` then the 14 columns (Float64), one row per series in ``rows`` order; written atomically
    to ``out_path`` unless it is None."""
    uids = list(rows)
    data = np.array([rows[u] for u in uids], dtype=np.float64).reshape(len(uids), len(LABEL_COLS))
    sub = pl.DataFrame({ID_COL: pl.Series(uids, dtype=pl.String),
                        **{c: pl.Series(data[:, j], dtype=pl.Float64) for j, c in enumerate(LABEL_COLS)}})
    if out_path is None:
        return sub, None
    return sub, atomic_write_parquet(sub, out_path)


def run_gateway(predict: Predict, data: str | Path, *, series_root: str | Path | None = None,
                share_root: str | Path | None = None, seed: int | None = None,
                out_path: str | Path | None = "submission.parquet", time_limit_s: float = TIME_LIMIT_S,
                keep_going: bool = False, first_call_exempt: bool = True) -> GatewayResult:
    """Drive ``predict`` over the test series as the competition gateway does; see the module docstring.

    ``data``: a test.csv, a folder holding test.csv (+ ``series/``), or a DATA folder with ``test/``.
    ``share_root``: None picks ``default_share_root()`` or, off Kaggle, a fresh temporary folder (removed after).
    ``seed``: None draws one (like the real gateway's clock seed); the result records it for a rerun.
    ``out_path``: where ``submission.parquet`` goes (None: do not write).
    """
    test_csv, series_root = resolve_test_paths(data, series_root)
    try:
        test = pl.read_csv(test_csv, schema_overrides={ID_COL: pl.String})
    except (pl.exceptions.PolarsError, OSError) as e:
        raise GatewayError(f"{test_csv}: cannot read: {e}") from e
    if ID_COL not in test.columns:
        raise GatewayError(f"{test_csv}: no {ID_COL} column (columns: {test.columns})")
    uids = sorted(test[ID_COL].drop_nulls().unique().to_list())
    seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
    order = random.Random(seed).sample(uids, len(uids))

    share_root = share_root if share_root is not None else default_share_root()
    temp_share = share_root is None
    share = Path(tempfile.mkdtemp(prefix="rsna_shared_")) if temp_share else Path(share_root)
    if share.exists() and (not share.is_dir() or any(share.iterdir())):
        raise GatewayError(f"share root {share} must be an empty folder (the real gateway refuses otherwise); "
                           "remove what is in it or pick another --share-root")

    rows: dict[str, list[float]] = {}
    calls: list[CallRecord] = []
    problems: list[Problem] = []
    result = GatewayResult(pl.DataFrame(), calls, problems, seed, None, len(order))
    try:
        for i, uid in enumerate(order):
            values, call_problems = _one_call(predict, uid, series_root / uid, share, calls)
            if calls and calls[-1].series_uid == uid and calls[-1].seconds > time_limit_s \
                    and not (first_call_exempt and i == 0):
                call_problems.append(Problem(uid, "time", f"call took {calls[-1].seconds:.1f} s, over the limit "
                                                          f"of {time_limit_s:.0f} s"))
            if call_problems:
                problems.extend(call_problems)
                if not keep_going:
                    _add_share_note(result)
                    raise GatewayError("; ".join(map(str, call_problems)), result)
                continue
            rows[uid] = values
    finally:
        if temp_share:
            shutil.rmtree(share, ignore_errors=True)
        else:
            _clear_share(share)
    _add_share_note(result)
    if problems:
        result.notes.append(f"{len(problems)} problem(s); {len(order) - len(rows)} series missing from the "
                            "submission")
    if out_path is not None:
        result.submission, result.out_path = write_submission(rows, out_path)
    else:
        result.submission = write_submission(rows, None)[0]
    return result


def _one_call(predict: Predict, uid: str, series_dir: Path, share: Path, calls: list[CallRecord]
              ) -> tuple[list[float] | None, list[Problem]]:
    """Share one series, call predict, clean the share folder, record the call; returns (values, problems)."""
    try:
        shared_dir, n_files = share_series(series_dir, share)
    except OSError as e:
        _clear_share(share)
        return None, [Problem(uid, "series", f"cannot share the series: {e}")]
    t0 = time.perf_counter()
    try:
        pred = predict(str(shared_dir))
        error = None
    except Exception as e:  # noqa: BLE001 - a failing predict is reported, as the real gateway does
        pred, error = None, e
    seconds = time.perf_counter() - t0
    calls.append(CallRecord(uid, seconds, n_files, _clear_share(share)))
    if error is not None:
        where = traceback.extract_tb(error.__traceback__)[-1]
        return None, [Problem(uid, "exception", f"predict raised {type(error).__name__}: {error} "
                                                f"(at {where.filename}:{where.lineno} in {where.name})")]
    return check_prediction(pred, uid)


def _add_share_note(result: GatewayResult) -> None:
    n_left = sum(c.left_share for c in result.calls)
    if n_left:
        result.notes.append(f"predict left files in the share folder after {n_left} of {len(result.calls)} calls; "
                            "on Kaggle it must shutil.rmtree('/kaggle/shared', ignore_errors=True) or the disk "
                            "fills up")
