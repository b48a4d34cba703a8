"""Scan-level aggregation: pooling rules, flip TTA with the Left/Right label swap, ensembles, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from rsna_aneurysm.constants import LABEL_COLS, N_LABELS
from rsna_aneurysm.infer.aggregate import (
    AggregateConfig,
    apply_thresholds,
    combine,
    finalize,
    flip_lr,
    pool_windows,
    scan_probabilities,
    sigmoid,
    unflip_labels,
)
from rsna_aneurysm.models.sliding_window import SlidingWindowConfig, SlidingWindowInferer

LEFT_MCA = LABEL_COLS.index("Left Middle Cerebral Artery")
RIGHT_MCA = LABEL_COLS.index("Right Middle Cerebral Artery")


def test_pooling_rules() -> None:
    p = np.array([[0.1, 0.5], [0.9, 0.5], [0.3, 0.5]])
    np.testing.assert_allclose(pool_windows(p, "max"), [0.9, 0.5])
    np.testing.assert_allclose(pool_windows(p, "topk_mean", top_k=2), [0.6, 0.5])
    np.testing.assert_allclose(pool_windows(p, "topk_mean", top_k=10), [13 / 30, 0.5])
    np.testing.assert_allclose(pool_windows(p, "noisy_or"), [1 - 0.9 * 0.1 * 0.7, 1 - 0.5 ** 3])
    # Noisy-or over many small probabilities neither underflows nor exceeds 1.
    many = np.full((5000, 1), 1e-4)
    assert pool_windows(many, "noisy_or")[0] == pytest.approx(1 - (1 - 1e-4) ** 5000)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_windows(p, "mean")
    with pytest.raises(ValueError, match="N >= 1"):
        pool_windows(np.zeros((0, 14)), "max")


def test_unflip_swaps_every_left_right_pair_and_nothing_else() -> None:
    p = np.arange(N_LABELS, dtype=float)
    q = unflip_labels(p)
    for idx, name in enumerate(LABEL_COLS):
        if name.startswith("Left "):
            assert q[idx] == LABEL_COLS.index(name.replace("Left ", "Right ", 1))
        elif name.startswith("Right "):
            assert q[idx] == LABEL_COLS.index(name.replace("Right ", "Left ", 1))
        else:
            assert q[idx] == idx
    np.testing.assert_array_equal(unflip_labels(q), p)


class LateralModel(nn.Module):
    """Says 'Left MCA' when the bright spot lies at high i (the patient's left in canonical volumes), else Right."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        w = x.shape[-1]
        left = x[..., w // 2:].amax(dim=(1, 2, 3, 4))
        right = x[..., : w // 2].amax(dim=(1, 2, 3, 4))
        logits = torch.full((x.shape[0], N_LABELS), -5.0)
        logits[:, LEFT_MCA] = 10 * left - 5
        logits[:, RIGHT_MCA] = 10 * right - 5
        return {"logits": logits}


def test_flip_tta_gives_the_same_answer_as_the_original_pass() -> None:
    vol = np.zeros((16, 16, 32), np.float32)
    vol[8, 8, 28] = 1.0  # patient's left
    inferer = SlidingWindowInferer(SlidingWindowConfig(roi_size=(16, 16, 32), device="cpu"))
    plain = scan_probabilities(inferer(LateralModel(), vol).window_logits)
    flipped = scan_probabilities(inferer(LateralModel(), flip_lr(vol)).window_logits, flipped=True)
    assert plain[LEFT_MCA] > 0.99 and plain[RIGHT_MCA] < 0.01
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    # Without the swap the mirrored pass would point to the wrong side.
    wrong = scan_probabilities(inferer(LateralModel(), flip_lr(vol)).window_logits)
    assert wrong[RIGHT_MCA] > 0.99


def test_combine_and_finalize() -> None:
    a, b = np.full(N_LABELS, 0.2), np.full(N_LABELS, 0.6)
    np.testing.assert_allclose(combine([a, b]), 0.4)
    mid = combine([a, b], "logit_mean")[0]
    assert mid == pytest.approx(sigmoid((np.log(0.25) + np.log(1.5)) / 2))
    p = np.full(N_LABELS, 0.1)
    p[3] = 0.8
    assert finalize(p)[-1] == pytest.approx(0.1)
    assert finalize(p, AggregateConfig(present_from_locations=True))[-1] == pytest.approx(0.8)
    with pytest.raises(ValueError):
        combine([])


def test_thresholds_from_the_scorer_decide_labels(tmp_path) -> None:
    from rsna_aneurysm.evaluate.thresholds import load_thresholds, save_thresholds

    th = {c: 0.5 for c in LABEL_COLS}
    th["Aneurysm Present"] = 0.3
    th["Basilar Tip"] = 0.7
    th = load_thresholds(save_thresholds(th, tmp_path / "thresholds.json"))
    decided = apply_thresholds(np.full(N_LABELS, 0.4), th)
    assert decided[-1] == 1 and decided[LABEL_COLS.index("Basilar Tip")] == 0 and decided[0] == 0
    assert apply_thresholds(np.full((3, N_LABELS), 0.6), {}).sum() == 3 * N_LABELS  # default 0.5
