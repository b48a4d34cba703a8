"""Time-budget planner: keep the whole hidden-test run inside the competition's run-time limit.

Before each series the planner picks the most expensive cost level (TTA passes x folds x spacing) whose estimated
time per series, times the series still expected, fits in the time left (the limit minus a safety reserve). It
learns the time per series as it goes (a fixed overhead plus model time proportional to the level's relative
cost), so every level is priced from what was measured at any of them. When no level fits every remaining series
it still runs the cheapest one while a single slow run of it leaves room for fallback rows for all the rest, and
only then answers fallback rows (the training prevalence). Stepping back up needs 15 % of slack, so the level
does not flicker.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class BudgetConfig:
    """Run-time settings of the submission (see shared/docs/competition.md)."""

    total_seconds: float = 12 * 3600.0  # the notebook's run-time limit on the competition page
    expected_series: int = 2500  # size of the hidden test set (approximate)
    series_margin: float = 0.05  # plan for this fraction more series than expected
    safety_seconds: float = 1800.0  # reserve kept at the end: notebook start-up, writing, timing noise
    elapsed_at_start: float = 0.0  # seconds of the limit already spent when the predictor is built
    fallback_seconds: float = 0.5  # time a fallback row costs (deleting the share folder, logging)
    estimate_margin: float = 0.1  # a level's estimate is its mean time times (1 + this)
    max_series_seconds: float = 1500.0  # never plan a level slower than this per series (30 min gateway limit)
    step_up_slack: float = 1.15  # a more expensive level is taken back only when it fits this many times over
    spacing_steps: tuple[float, ...] = (1.5, 2.0)  # coarser spacing factors tried after one fold without TTA


@dataclass(frozen=True)
class CostLevel:
    """One way of predicting a series; ``spacing_scale`` multiplies the preprocessing spacing."""

    name: str
    tta: bool
    n_folds: int
    spacing_scale: float = 1.0

    @property
    def relative_cost(self) -> float:
        """Model cost relative to one fold, no TTA, native spacing (voxels scale with 1 / spacing^3)."""
        return (2 if self.tta else 1) * self.n_folds / self.spacing_scale ** 3


def build_ladder(tta: bool, n_folds: int, spacing_steps: tuple[float, ...] = (1.5, 2.0)) -> list[CostLevel]:
    """Cost levels from the configured (most expensive) one down: drop TTA, halve the folds, coarsen spacing."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    levels: list[CostLevel] = []

    def add(t: bool, f: int, s: float) -> None:
        name = f"{'tta' if t else 'notta'}-{f}fold{'s' if f > 1 else ''}" + (f"-x{s:g}" if s != 1.0 else "")
        level = CostLevel(name, t, f, s)
        if level not in levels:
            levels.append(level)

    add(tta, n_folds, 1.0)
    folds = n_folds
    add(False, folds, 1.0)
    while folds > 1:
        folds = max(folds // 2, 1)
        add(False, folds, 1.0)
    for s in sorted(x for x in spacing_steps if x > 1.0):
        add(False, 1, s)
    return levels


class _TimeModel:
    """Seconds per series = overhead + unit * relative cost, both followed by exponential averages.

    One model for all levels, so a slow-down seen at one level moves every estimate at once and a cheaper or dearer
    level is priced without having been run.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha
        self.count = 0
        self.overhead = 0.0
        self.unit = 0.0
        self.ratios: deque[float] = deque(maxlen=100)  # actual / predicted of recent series (for worst cases)

    def predict(self, level: CostLevel) -> float | None:
        return None if not self.count else self.overhead + self.unit * level.relative_cost

    def add(self, level: CostLevel, seconds: float, model_seconds: float | None) -> None:
        predicted = self.predict(level)
        if predicted:
            self.ratios.append(seconds / predicted)
        model = seconds if model_seconds is None else min(model_seconds, seconds)
        self.count += 1
        # A plain mean for the first samples, then an exponential average that follows drift.
        a = max(1.0 / self.count, self.alpha)
        self.overhead += a * (seconds - model - self.overhead)
        self.unit += a * (model / level.relative_cost - self.unit)


class BudgetPlanner:
    """Chooses a :class:`CostLevel` (or None: answer a fallback row) before each series; see the module docstring."""

    def __init__(self, cfg: BudgetConfig, levels: list[CostLevel],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not levels:
            raise ValueError("the budget planner needs at least one cost level")
        self.cfg = cfg
        self.levels = list(levels)
        self.clock = clock
        self.start = clock()
        self.times = _TimeModel()
        self.current = 0  # index into levels of the last choice
        self.n_done = 0
        self.n_fallback = 0
        self.n_by_level: dict[str, int] = {lvl.name: 0 for lvl in self.levels}
        self.steps: list[tuple[int, str, str]] = []  # (series index, from, to) whenever the level changes

    # -- time accounting ---------------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds of the limit spent so far (including ``elapsed_at_start``)."""
        return self.cfg.elapsed_at_start + (self.clock() - self.start)

    @property
    def time_left(self) -> float:
        """Seconds still usable before the safety reserve."""
        return self.cfg.total_seconds - self.cfg.safety_seconds - self.elapsed

    @property
    def remaining_series(self) -> int:
        """Series still expected, counting the next one (never less than 1)."""
        planned = math.ceil(self.cfg.expected_series * (1.0 + self.cfg.series_margin))
        return max(planned - self.n_done, 1)

    # -- estimates ---------------------------------------------------------------------------------------------
    def estimate(self, level: CostLevel) -> float | None:
        """Expected seconds per series at ``level``, with the margin (None while nothing has been measured)."""
        raw = self.times.predict(level)
        return None if raw is None else raw * (1.0 + self.cfg.estimate_margin)

    def worst_case(self, level: CostLevel) -> float | None:
        """A pessimistic time for one series at ``level``: the estimate times the worst recent surprise."""
        est = self.estimate(level)
        if est is None:
            return None
        return est * max([1.0, *self.times.ratios]) if self.times.ratios else 2.0 * est

    # -- decisions ---------------------------------------------------------------------------------------------
    def choose(self) -> CostLevel | None:
        """The level for the next series, or None when only a fallback row fits."""
        left = self.time_left
        remaining = self.remaining_series
        choice: int | None = None
        current = self.current if self.current >= 0 else len(self.levels)  # fallback ranks below every level
        for idx, level in enumerate(self.levels):
            est = self.estimate(level)
            if est is None:  # nothing measured yet: start at the top, the first run will tell
                choice = idx
                break
            if est > self.cfg.max_series_seconds:
                continue
            slack = self.cfg.step_up_slack if idx < current else 1.0
            if est * remaining * slack <= left:
                choice = idx
                break
        if choice is None:
            # Nothing fits every remaining series: run the cheapest while one slow run of it still leaves room for
            # fallback rows for all the others.
            cheapest = len(self.levels) - 1
            worst = self.worst_case(self.levels[cheapest])
            if worst is not None and worst + self.cfg.fallback_seconds * (remaining - 1) <= left:
                choice = cheapest
        if choice is None:
            if self.current != -1:
                self.steps.append((self.n_done, self._name(self.current), "fallback"))
                log.warning("time budget: %.0f s left for about %d series; answering fallback rows from now",
                            left, remaining)
            self.current = -1
            return None
        if choice != self.current:
            self.steps.append((self.n_done, self._name(self.current), self.levels[choice].name))
            if self.n_done:
                log.info("time budget: %s -> %s (%.0f s left for about %d series)", self._name(self.current),
                         self.levels[choice].name, left, remaining)
        self.current = choice
        return self.levels[choice]

    def record(self, level: CostLevel, seconds: float, model_seconds: float | None = None) -> None:
        """Report that a series took ``seconds`` at ``level`` (``model_seconds`` of it in the model)."""
        self.times.add(level, float(seconds), None if model_seconds is None else float(model_seconds))
        self.n_by_level[level.name] += 1
        self.n_done += 1

    def record_fallback(self) -> None:
        """Report that a series got a fallback row (by choice or because it failed)."""
        self.n_fallback += 1
        self.n_done += 1

    def _name(self, idx: int) -> str:
        return "fallback" if idx == -1 else self.levels[idx].name

    def summary(self) -> dict:
        """Counts, time spent and the level changes so far (logged at the end of a run)."""
        return {
            "series": self.n_done, "fallback": self.n_fallback, "by_level": dict(self.n_by_level),
            "elapsed_s": round(self.elapsed, 1), "time_left_s": round(self.time_left, 1),
            "steps": [{"at_series": i, "from": a, "to": b} for i, a, b in self.steps],
            "estimates_s": {lvl.name: (None if (e := self.estimate(lvl)) is None else round(e, 3))
                            for lvl in self.levels},
        }
