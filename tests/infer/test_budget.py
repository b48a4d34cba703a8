"""The time-budget planner under a simulated clock: it steps down when series get slow and never overruns."""

from __future__ import annotations

import numpy as np
import pytest

from rsna_aneurysm.infer.budget import BudgetConfig, BudgetPlanner, CostLevel, build_ladder


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _simulate(cfg: BudgetConfig, n_series: int, cost, seed: int = 0) -> tuple[BudgetPlanner, FakeClock]:
    """Run ``n_series`` predictions; ``cost(i, level, rng)`` -> (seconds, model seconds) of series i."""
    clock = FakeClock()
    planner = BudgetPlanner(cfg, build_ladder(True, 4, cfg.spacing_steps), clock=clock)
    rng = np.random.default_rng(seed)
    for i in range(n_series):
        level = planner.choose()
        if level is None:
            clock.t += cfg.fallback_seconds
            planner.record_fallback()
            continue
        seconds, model_seconds = cost(i, level, rng)
        clock.t += seconds
        planner.record(level, seconds, model_seconds)
    return planner, clock


def _cost(slow: float = 1.0, slow_after: int = 0, overhead: float = 2.0, unit: float = 2.5):
    """Overhead plus model time proportional to the level's cost, lognormal noise, 1 % of series 4x slower."""

    def cost(i: int, level: CostLevel, rng: np.random.Generator) -> tuple[float, float]:
        factor = slow if i >= slow_after else 1.0
        noise = float(np.clip(rng.lognormal(0.0, 0.25), 0.5, 2.5)) * (4.0 if rng.random() < 0.01 else 1.0)
        model = unit * level.relative_cost * factor * noise
        return overhead * factor + model, model

    return cost


def test_ladder_goes_from_configured_to_cheapest() -> None:
    ladder = build_ladder(True, 4, (1.5, 2.0))
    assert [lvl.name for lvl in ladder] == ["tta-4folds", "notta-4folds", "notta-2folds", "notta-1fold",
                                            "notta-1fold-x1.5", "notta-1fold-x2"]
    costs = [lvl.relative_cost for lvl in ladder]
    assert costs == sorted(costs, reverse=True)
    assert [lvl.name for lvl in build_ladder(False, 1, ())] == ["notta-1fold"]


@pytest.mark.parametrize("n_series", [2500, 2700])  # the hidden set's size is approximate: also run over it
def test_simulated_full_run_never_exceeds_budget(n_series: int) -> None:
    cfg = BudgetConfig()
    planner, clock = _simulate(cfg, n_series, _cost())
    assert planner.elapsed <= cfg.total_seconds
    assert planner.n_done == n_series
    # 41,400 usable seconds for ~2,625 planned series (15.8 s each): the 4-fold no-TTA level (about 12.6 s) fits,
    # TTA (about 23 s) does not until time has been saved; one fold (about 5 s) would waste the budget.
    assert planner.n_by_level["notta-4folds"] > 0.6 * n_series
    assert planner.n_by_level["notta-1fold"] == 0
    assert planner.n_fallback == 0


def test_steps_down_when_the_clock_slows() -> None:
    cfg = BudgetConfig()
    planner, _ = _simulate(cfg, 2500, _cost(slow=3.0, slow_after=800))
    names = [to for _, _, to in planner.steps]
    assert "notta-4folds" in names
    # After the slow-down only a coarse level fits; it steps down before the budget is at risk, no fallbacks.
    assert any(planner.n_by_level[n] > 1000 for n in ("notta-1fold-x1.5", "notta-1fold-x2", "notta-1fold"))
    cheap = {"notta-1fold", "notta-1fold-x1.5", "notta-1fold-x2"}
    assert min(i for i, _, to in planner.steps if to in cheap) >= 800  # not before the clock slowed
    assert planner.n_fallback == 0
    assert planner.elapsed <= cfg.total_seconds


def test_hopelessly_slow_run_uses_cheapest_then_fallbacks_and_stays_in_budget() -> None:
    cfg = BudgetConfig()
    planner, _ = _simulate(cfg, 2500, _cost(slow=12.0))
    assert planner.elapsed <= cfg.total_seconds
    assert planner.n_by_level["notta-1fold-x2"] > 500  # the cheapest level runs as long as it can...
    assert 0 < planner.n_fallback < 2500  # ...and fallback rows only come after
    first_fallback = next(i for i, _, to in planner.steps if to == "fallback")
    assert first_fallback > 1000


def test_time_already_spent_counts() -> None:
    clock = FakeClock()
    cfg = BudgetConfig(total_seconds=100.0, safety_seconds=10.0, elapsed_at_start=95.0, expected_series=5)
    planner = BudgetPlanner(cfg, build_ladder(False, 1, ()), clock=clock)
    assert planner.time_left == pytest.approx(-5.0)
    first = planner.choose()  # nothing measured yet: the first run is the measurement
    planner.record(first, 1.0)
    assert planner.choose() is None  # no time left: fallback rows only


def test_unmeasured_level_is_estimated_from_relative_cost() -> None:
    clock = FakeClock()
    planner = BudgetPlanner(BudgetConfig(estimate_margin=0.0), build_ladder(True, 2, ()), clock=clock)
    top = planner.choose()
    assert top.name == "tta-2folds"
    planner.record(top, 10.0, model_seconds=8.0)  # 2 s overhead + 8 s for 4 passes
    one_fold = next(lvl for lvl in planner.levels if lvl.name == "notta-1fold")
    assert planner.estimate(one_fold) == pytest.approx(2.0 + 8.0 / 4)
