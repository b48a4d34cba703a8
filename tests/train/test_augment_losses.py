"""Augmentation (left-right flips swap labels, masks follow the image) and losses (focal, BCE, heatmap)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsna_aneurysm.constants import LABEL_COLS, LR_PERMUTATION
from rsna_aneurysm.train.augment import BatchAugment, flip_lr
from rsna_aneurysm.train.config import AugmentConfig, LossConfig
from rsna_aneurysm.train.losses import build_loss, focal_loss

LEFT_MCA = LABEL_COLS.index("Left Middle Cerebral Artery")
RIGHT_MCA = LABEL_COLS.index("Right Middle Cerebral Artery")
ACOM = LABEL_COLS.index("Anterior Communicating Artery")


def _batch(b: int = 4, size: int = 12) -> dict[str, torch.Tensor]:
    image = torch.zeros(b, 1, size, size, size)
    image[:, :, 6, 6, 2] = 1.0  # a bright voxel near the low-i side (patient right)
    mask = (image > 0).float()
    labels = torch.zeros(b, 14)
    labels[:, RIGHT_MCA] = 1
    labels[:, ACOM] = 1
    labels[:, -1] = 1
    return {"image": image, "mask": mask, "labels": labels}


def test_lr_flip_mirrors_last_axis_and_swaps_left_right_labels():
    batch = _batch()
    out = flip_lr(batch, torch.tensor([True, False, True, False]))
    assert out["image"][0, 0, 6, 6, 12 - 1 - 2] == 1 and out["image"][1, 0, 6, 6, 2] == 1
    assert torch.equal(out["mask"], (out["image"] > 0).float())
    assert out["labels"][0, LEFT_MCA] == 1 and out["labels"][0, RIGHT_MCA] == 0 and out["labels"][0, ACOM] == 1
    assert torch.equal(out["labels"][1], batch["labels"][1])
    assert torch.equal(out["labels"][0], batch["labels"][0][list(LR_PERMUTATION)])


def test_batch_augment_is_seeded_and_keeps_masks_binary():
    cfg = AugmentConfig(flip_lr=0.5, affine_prob=1.0, rotate_deg=15, scale=0.1, noise_std=0.01)
    aug = BatchAugment(cfg)
    a = aug(_batch(8), torch.Generator().manual_seed(1))
    b = aug(_batch(8), torch.Generator().manual_seed(1))
    c = aug(_batch(8), torch.Generator().manual_seed(2))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["image"], c["image"])
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}
    # Left/right labels follow the flip: every sample has exactly one of the MCA pair.
    assert torch.all(a["labels"][:, LEFT_MCA] + a["labels"][:, RIGHT_MCA] == 1)
    assert a["labels"][:, LEFT_MCA].sum() > 0 and a["labels"][:, RIGHT_MCA].sum() > 0
    off = BatchAugment(AugmentConfig(enabled=False))(_batch(), torch.Generator())
    assert torch.equal(off["image"], _batch()["image"])


def test_focal_loss_reduces_to_bce_and_down_weights_easy_examples():
    logits = torch.tensor([[3.0, -3.0, 0.2]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(focal_loss(logits, targets, alpha=None, gamma=0.0), bce)
    f = focal_loss(logits, targets, alpha=None, gamma=2.0)
    assert (f < bce).all() and f[0, 0] / bce[0, 0] < f[0, 2] / bce[0, 2]  # easy examples shrink most
    pw = torch.full((3,), 4.0)
    assert torch.allclose(focal_loss(logits, targets, None, 0.0, pw)[0, 2], 4 * bce[0, 2])


def test_patch_loss_adds_the_heatmap_term_and_label_weights():
    out = {"logits": torch.zeros(2, 14), "heatmap": torch.zeros(2, 1, 4, 4, 4)}
    batch = {"labels": torch.zeros(2, 14), "mask": torch.ones(2, 1, 4, 4, 4)}
    plain, parts = build_loss(LossConfig(name="bce", heatmap_weight=0.0))(out, batch)
    with_hm, parts_hm = build_loss(LossConfig(name="bce", heatmap_weight=2.0, heatmap_loss="bce"))(out, batch)
    assert abs(float(with_hm) - (float(plain) + 2 * parts_hm["heatmap"])) < 1e-6
    weights = [0.0] * 13 + [1.0]
    batch["labels"][:, -1] = 1
    w_loss, _ = build_loss(LossConfig(name="bce", label_weights=weights))(out, batch)
    assert abs(float(w_loss) - float(F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)))) < 1e-6


def test_heatmap_max_term_punishes_the_strongest_false_voxel():
    """The multiple-instance term sees each patch's hottest voxel: one hot voxel in a negative patch costs, the
    same voxel in a positive patch helps, and a cold negative patch costs least."""
    cold = torch.full((1, 1, 4, 4, 4), -4.0)
    hot = cold.clone()
    hot[0, 0, 1, 2, 3] = 4.0
    neg = {"labels": torch.zeros(1, 14), "mask": torch.zeros(1, 1, 4, 4, 4)}
    pos = {"labels": torch.zeros(1, 14), "mask": torch.zeros(1, 1, 4, 4, 4)}
    pos["labels"][0, -1] = 1
    loss = build_loss(LossConfig(name="bce", heatmap_weight=1.0, heatmap_loss="bce", heatmap_max_weight=1.0))
    logits = torch.zeros(1, 14)
    neg_cold = loss({"logits": logits, "heatmap": cold}, neg)[1]["heatmap_max"]
    neg_hot = loss({"logits": logits, "heatmap": hot}, neg)[1]["heatmap_max"]
    pos_hot = loss({"logits": logits, "heatmap": hot}, pos)[1]["heatmap_max"]
    assert neg_cold < pos_hot < neg_hot
    assert abs(neg_hot - float(F.softplus(torch.tensor(4.0)))) < 1e-5  # BCE of logit 4 against 0
    # The gradient reaches only the hottest voxel.
    h = hot.clone().requires_grad_(True)
    total, _ = build_loss(LossConfig(name="bce", heatmap_weight=0.0, heatmap_max_weight=1.0))(
        {"logits": logits, "heatmap": h}, neg)
    total.backward()
    assert int((h.grad != 0).sum()) == 1 and h.grad[0, 0, 1, 2, 3] > 0
