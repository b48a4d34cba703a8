"""The ROI classifier's heads: pooled location features come from their own vessel region, flip TTA swaps Left and
Right, and segmentation pretraining copies the segmenter's encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsna_aneurysm.constants import LABEL_COLS, LOCATION_COLS, SEG_LABEL_OF
from rsna_aneurysm.roi.model import (
    IN_TOTAL,
    LocationHeads,
    RoiClassifier,
    flip_array,
    flip_input,
    pool_regions,
    predict_logits,
    region_weights,
)
from rsna_aneurysm.vessels.model import IN_CHANNELS, UNetConfig, build_unet, transfer_weights
from rsna_aneurysm.vessels.types import N_VESSEL_CLASSES

SMALL = dict(features=(4, 8, 16), blocks=(1, 1, 1), decoder_convs=1, dilate_vox=1)


def _boxes(shape=(16, 16, 16)) -> torch.Tensor:
    """13 disjoint vessel boxes (channel v-1 = vessel class v), one per location."""
    v = torch.zeros(1, N_VESSEL_CLASSES - 1, *shape)
    for c in range(N_VESSEL_CLASSES - 1):
        k, j = divmod(c, 4)
        v[0, c, 4 * k : 4 * k + 2, 4 * j : 4 * j + 2, 2:6] = 1.0
    return v


def test_a_planted_feature_in_one_region_moves_only_that_locations_logit() -> None:
    torch.manual_seed(0)
    vessels = _boxes()
    regions = region_weights(vessels, dilate_vox=0)
    feats = torch.randn(1, 6, 16, 16, 16)
    sphere = torch.rand(1, 1, 16, 16, 16)
    heads = LocationHeads(len(LOCATION_COLS), 2 * 6 + 1)
    base = heads(pool_regions(feats, sphere, regions))
    name = "Left Middle Cerebral Artery"
    c = SEG_LABEL_OF[name] - 1  # its vessel channel
    planted = feats.clone()
    planted[:, :, vessels[0, c] > 0] += 5.0  # a strong feature inside that vessel's region only
    moved = heads(pool_regions(planted, sphere, regions))
    changed = [LOCATION_COLS[i] for i in np.flatnonzero((moved - base).abs()[0].detach().numpy() > 1e-6)]
    assert changed == [name]


def test_pooling_reads_the_location_order_not_the_vessel_label_order() -> None:
    # Location 0 (Left infraclinoid ICA) is vessel class 6: its region must be vessel channel 5.
    vessels = _boxes()
    regions = region_weights(vessels, dilate_vox=0)
    for i, name in enumerate(LOCATION_COLS):
        assert torch.equal(regions[0, i], vessels[0, SEG_LABEL_OF[name] - 1])


def test_dilation_grows_each_region() -> None:
    vessels = _boxes()
    grown = region_weights(vessels, dilate_vox=1)
    assert (grown > 0).sum() > (region_weights(vessels, 0) > 0).sum()


def _input(shape=(16, 16, 16)) -> torch.Tensor:
    x = torch.zeros(1, IN_TOTAL, *shape)
    x[0, 0] = torch.rand(*shape)
    x[0, IN_CHANNELS:] = _boxes(shape)[0]
    return x


def test_flip_mirrors_the_image_and_swaps_left_right_vessel_channels() -> None:
    x = _input()
    y = flip_input(x)
    left = IN_CHANNELS + SEG_LABEL_OF["Left Middle Cerebral Artery"] - 1
    right = IN_CHANNELS + SEG_LABEL_OF["Right Middle Cerebral Artery"] - 1
    assert torch.equal(y[0, 0], x[0, 0].flip(-1))
    assert torch.equal(y[0, left], x[0, right].flip(-1))
    assert torch.equal(y[0, right], x[0, left].flip(-1))
    assert torch.equal(flip_input(y), x)  # an involution
    assert np.array_equal(flip_array(x[0].numpy()), y[0].numpy())


class _LeftHalf(torch.nn.Module):
    """Every Left column answers the mean image intensity of the left half (high x: the last axis' upper half),
    every other column 0 (logit)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[-1]
        left = x[:, 0, ..., n // 2 :].mean((1, 2, 3))
        logits = torch.zeros(x.shape[0], len(LABEL_COLS))
        for i, c in enumerate(LABEL_COLS):
            if c.startswith("Left "):
                logits[:, i] = 10.0 * left - 5.0
        return {"logits": logits, "heatmap": torch.zeros(x.shape[0], 1, *x.shape[2:])}


def test_flip_tta_swaps_left_and_right_back() -> None:
    x = torch.zeros(1, IN_TOTAL, 8, 8, 8)
    x[0, 0, ..., 4:] = 1.0  # bright on the left only
    plain = predict_logits(_LeftHalf(), x, tta=False)[0]
    tta = predict_logits(_LeftHalf(), x, tta=True)[0]
    li, ri = LABEL_COLS.index("Left Middle Cerebral Artery"), LABEL_COLS.index("Right Middle Cerebral Artery")
    assert plain[li] > 0.99 and plain[ri] == pytest.approx(0.5)
    mirrored = torch.sigmoid(_LeftHalf()(flip_input(x))["logits"])[0]
    assert mirrored[li] < 0.01  # the mirror is bright on the right, which the Left columns do not see
    # Swapped back, the mirrored pass' Right column (0.5) joins the plain Left column and its Left column (low)
    # joins the plain Right column; without the swap Left would drop to ~0.5.
    assert tta[li] == pytest.approx(0.5 * (plain[li] + mirrored[ri]))
    assert tta[ri] == pytest.approx(0.5 * (plain[ri] + mirrored[li]))
    assert tta[li] > 0.7 and tta[ri] < 0.3


def test_roi_classifier_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = RoiClassifier(**SMALL)
    out = model(_input())
    assert out["logits"].shape == (1, len(LABEL_COLS))
    assert out["heatmap"].shape == (1, 1, 16, 16, 16)
    out["logits"].sum().backward()
    assert model.unet.encoder.stem.convs[0].conv.weight.grad is not None


def test_segmentation_pretraining_copies_the_encoder_and_widens_the_stem() -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(SMALL["features"], SMALL["blocks"], 1)
    seg = build_unet(IN_CHANNELS, N_VESSEL_CLASSES, cfg)
    model = RoiClassifier(**SMALL)
    report = transfer_weights(model, seg.state_dict())
    assert report["widened"] and any(k.startswith("encoder.stages") for k in report["copied"])
    assert any("seg_layers" in k for k in report["skipped"])  # 14 classes vs the 1-channel sphere map
    stem = model.unet.encoder.stem.convs[0].conv.weight
    src = seg.encoder.stem.convs[0].conv.weight
    assert torch.equal(stem[:, :IN_CHANNELS], src) and torch.count_nonzero(stem[:, IN_CHANNELS:]) == 0
    for (k, a), (_, b) in zip(model.unet.encoder.stages.state_dict().items(),
                              seg.encoder.stages.state_dict().items()):
        assert torch.equal(a, b), k
    # With the vessel channels zero, the classifier's encoder computes exactly the segmenter's features.
    x = torch.rand(1, IN_CHANNELS, 16, 16, 16)
    full = torch.cat([x, torch.zeros(1, IN_TOTAL - IN_CHANNELS, 16, 16, 16)], 1)
    model.eval(), seg.eval()
    assert torch.allclose(model.unet.encoder(full)[-1], seg.encoder(x)[-1], atol=1e-5)


def test_transfer_refuses_another_architecture() -> None:
    other = build_unet(IN_CHANNELS, N_VESSEL_CLASSES, UNetConfig((3, 5), (1, 1), 1))
    with pytest.raises(ValueError, match="another U-Net"):
        transfer_weights(RoiClassifier(**SMALL), other.state_dict())
