"""Time-budget planner: keep the whole hidden-test run inside the competition's run-time limit.

Before each series the planner picks the most expensive cost level (TTA passes x folds x spacing) whose estimated
time per series, times the series still expected, fits in the time left (the limit minus a safety reserve). It
learns the time per series as it goes (a fixed overhead plus model time proportional to the level's relative
cost), so every level is priced from what was measured at any of them. When no level fits every remaining series
it still runs the cheapest one while a single slow run of it leaves room for fallback rows for all the rest, and
only then answers fallback rows (the training prevalence). Stepping back up needs 15 % of slack, so the level
does not flicker, and a dearer level is only taken back when even a bad run of it leaves time for the rest.

More series than expected: the planner always keeps time for ``surplus_fraction`` x ``expected_series`` more series
at the cheapest level (and, past that, for ``series_margin`` x ``expected_series`` more), so a test set twice the
expected size degrades the level early instead of ending in fallback rows. Per series it also gives the time one
series may take (:meth:`BudgetPlanner.series_limit`: ``max_series_seconds``, or less when the time left is short);
the predictor's :class:`Deadline` turns an overrun into a fallback row (:class:`SeriesTimeout`).
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
    max_series_seconds: float = 1500.0  # one series may take at most this (30 min gateway limit); then a fallback row
    surplus_fraction: float = 1.0  # keep time for this fraction of expected_series more series at the cheapest level
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


class SeriesTimeout(RuntimeError):
    """A series ran past its time limit (raised by :meth:`Deadline.check`; the predictor answers a fallback row)."""


class Deadline:
    """A cooperative per-series time limit: ``check(step)`` between steps raises :class:`SeriesTimeout` once the
    limit has passed (Python cannot stop a running thread, so a single long step is only cut after it ends)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def check(self, step: str) -> None:
        """Raise :class:`SeriesTimeout` when the limit has passed (``step``: what just finished, for the reason)."""
        spent = self.elapsed
        if spent > self.seconds:
            raise SeriesTimeout(f"series time limit {self.seconds:.1f} s passed after {step} ({spent:.1f} s)")


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
        self.n_timeouts = 0
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

    @property
    def surplus_series(self) -> int:
        """Series beyond the planned ones that the planner keeps cheapest-level time for: up to ``surplus_fraction``
        x expected more, and never fewer than ``series_margin`` x expected (the count is approximate)."""
        cfg = self.cfg
        planned = math.ceil(cfg.expected_series * (1.0 + cfg.series_margin))
        cap = math.ceil(cfg.expected_series * (1.0 + cfg.series_margin + max(cfg.surplus_fraction, 0.0)))
        floor = math.ceil(cfg.expected_series * max(cfg.series_margin, 0.0))
        return max(cap - max(self.n_done, planned), floor, 0)

    # -- estimates ---------------------------------------------------------------------------------------------
    def estimate(self, level: CostLevel) -> float | None:
        """Expected seconds per series at ``level``, with the margin (None while nothing has been measured)."""
        raw = self.times.predict(level)
        return None if raw is None else raw * (1.0 + self.cfg.estimate_margin)

    def worst_case(self, level: CostLevel) -> float | None:
        """A pessimistic time for one series at ``level``: the estimate times the worst recent surprise, at most the
        per-series limit (the deadline cuts a series there)."""
        est = self.estimate(level)
        if est is None:
            return None
        worst = est * max([1.0, *self.times.ratios]) if self.times.ratios else 2.0 * est
        return min(worst, max(self.cfg.max_series_seconds, est))

    def series_limit(self) -> float:
        """Seconds the next series may take: ``max_series_seconds``, or less when that would leave no time for a
        fallback row for it and each series still expected (planned and surplus)."""
        rows = self.remaining_series + self.surplus_series  # this one (if it is cut) and the others
        left = self.time_left + self.cfg.safety_seconds * 0.5  # a series may dip into half of the reserve
        return max(min(self.cfg.max_series_seconds, left - self.cfg.fallback_seconds * rows), 0.0)

    # -- decisions ---------------------------------------------------------------------------------------------
    def _fits(self, idx: int, current: int, left: float, remaining: int, surplus: int) -> bool:
        """Whether level ``idx`` for every planned series still expected (and the cheapest for the surplus) fits."""
        level = self.levels[idx]
        est = self.estimate(level)
        if est is None or est > self.cfg.max_series_seconds:
            return False
        cheapest = self.estimate(self.levels[-1]) or est
        reserve = cheapest * surplus
        slack = self.cfg.step_up_slack if idx < current else 1.0
        if est * remaining * slack + reserve > left:
            return False
        if idx < current:  # a step up: even a bad run of it must leave the cheapest level for the rest
            worst = self.worst_case(level) or est
            if worst + cheapest * (remaining - 1) + reserve > left:
                return False
        return True

    def choose(self) -> CostLevel | None:
        """The level for the next series, or None when only a fallback row fits."""
        left = self.time_left
        remaining = self.remaining_series
        surplus = self.surplus_series
        choice: int | None = None
        current = self.current if self.current >= 0 else len(self.levels)  # fallback ranks below every level
        if self.estimate(self.levels[0]) is None:  # nothing measured yet: start at the top, the first run will tell
            choice = 0
        else:
            choice = next((i for i in range(len(self.levels)) if self._fits(i, current, left, remaining, surplus)),
                          None)
        if choice is None and self.estimate(self.levels[-1]) is not None:
            # Nothing fits every remaining series: run the cheapest while one slow run of it still leaves room for
            # fallback rows for all the others.
            cheapest = len(self.levels) - 1
            worst = self.worst_case(self.levels[cheapest])
            if worst is not None and worst + self.cfg.fallback_seconds * (remaining - 1 + surplus) <= left:
                choice = cheapest
        if choice is None:
            if self.current != -1:
                self.steps.append((self.n_done, self._name(self.current), "fallback"))
                log.warning("time budget: %.0f s left for about %d series; answering fallback rows from now",
                            left, remaining + surplus)
            self.current = -1
            return None
        if choice != self.current:
            self.steps.append((self.n_done, self._name(self.current), self.levels[choice].name))
            if self.n_done:
                log.info("time budget: %s -> %s (%.0f s left for about %d series)", self._name(self.current),
                         self.levels[choice].name, left, remaining + surplus)
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

    def record_timeout(self, level: CostLevel, seconds: float) -> None:
        """Report that a series at ``level`` ran past its limit after ``seconds`` (a fallback row); the time model
        learns from it (a lower bound of what the level costs now)."""
        self.times.add(level, float(seconds), None)
        self.n_timeouts += 1
        self.record_fallback()

    def _name(self, idx: int) -> str:
        return "fallback" if idx == -1 else self.levels[idx].name

    def summary(self) -> dict:
        """Counts, time spent and the level changes so far (logged at the end of a run)."""
        return {
            "series": self.n_done, "fallback": self.n_fallback, "timeouts": self.n_timeouts,
            "by_level": dict(self.n_by_level),
            "elapsed_s": round(self.elapsed, 1), "time_left_s": round(self.time_left, 1),
            "steps": [{"at_series": i, "from": a, "to": b} for i, a, b in self.steps],
            "estimates_s": {lvl.name: (None if (e := self.estimate(lvl)) is None else round(e, 3))
                            for lvl in self.levels},
        }
