"""Sliding-window inference: window grid, blending, padding, masks, model preparation, NIfTI heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from rsna_aneurysm.models.sliding_window import (
    SlidingWindowConfig,
    SlidingWindowInferer,
    axis_starts,
    fold_batchnorm,
    prepare_model,
    save_heatmap,
    weight_map,
    window_grid,
)
from rsna_aneurysm.volume import Volume


class VoxelModel(nn.Module):
    """Heatmap = 2x - 1 voxel by voxel (so blending must reproduce it exactly); logits = window mean and max."""

    def __init__(self, coarse: bool = False) -> None:
        super().__init__()
        self.coarse = coarse

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heat = 2 * x - 1
        if self.coarse:
            heat = nn.functional.avg_pool3d(heat, 2)
        flat = x.flatten(1)
        logits = torch.stack([flat.mean(1), flat.amax(1)], dim=1).repeat(1, 7)
        return {"logits": logits, "heatmap": heat}


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-a))


def test_axis_starts_cover_the_axis_and_end_at_the_border() -> None:
    assert axis_starts(100, 64, 0.25) == [0, 36]
    assert axis_starts(120, 64, 0.25) == [0, 48, 56]
    assert axis_starts(64, 64, 0.5) == [0]
    assert axis_starts(200, 64, 0.5) == [0, 32, 64, 96, 128, 136]
    with pytest.raises(ValueError, match="smaller than the window"):
        axis_starts(10, 16, 0.25)
    with pytest.raises(ValueError, match="overlap"):
        axis_starts(100, 16, 1.0)
    assert len(window_grid((100, 120, 64), (64, 64, 64), 0.25)) == 2 * 3 * 1


def test_gaussian_weight_map_is_symmetric_normalised_and_cached() -> None:
    w = weight_map((16, 20, 12), "gaussian", 0.125)
    assert w.shape == (16, 20, 12)
    assert float(w.max()) == pytest.approx(1.0)
    assert float(w.min()) >= 1e-3
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(2))
    assert w[8, 10, 6] > w[0, 10, 6]
    assert weight_map((16, 20, 12), "gaussian", 0.125) is w  # built once per setting
    assert torch.equal(weight_map((4, 4, 4), "constant"), torch.ones(4, 4, 4))
    with pytest.raises(ValueError, match="unknown blend"):
        weight_map((4, 4, 4), "cosine")


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blended_heatmap_reproduces_a_voxelwise_model(blend: str) -> None:
    rng = np.random.default_rng(0)
    vol = rng.random((37, 45, 29), dtype=np.float32)
    cfg = SlidingWindowConfig(roi_size=(16, 16, 16), overlap=0.5, blend=blend, batch_size=3, device="cpu")
    res = SlidingWindowInferer(cfg)(VoxelModel(), vol)
    assert res.heatmap.shape == vol.shape
    np.testing.assert_allclose(res.heatmap, _sigmoid(2 * vol - 1), atol=1e-6)
    assert res.window_logits.shape == (res.n_windows_total, 14)
    # Each window's logits are computed from exactly the voxels at its recorded start.
    for (k, j, i), logits in zip(res.window_starts, res.window_logits):
        patch = vol[k:k + 16, j:j + 16, i:i + 16]
        assert patch.shape == (16, 16, 16)
        assert logits[0] == pytest.approx(patch.mean(), abs=1e-5)
        assert logits[1] == pytest.approx(patch.max(), abs=1e-6)
    assert res.window_heat_max.shape == (res.n_windows_total,)


def test_volume_smaller_than_the_window_is_padded_and_cropped_back() -> None:
    vol = np.random.default_rng(1).random((10, 30, 7), dtype=np.float32)
    cfg = SlidingWindowConfig(roi_size=(16, 16, 16), overlap=0.25, device="cpu", pad_value=0.0)
    res = SlidingWindowInferer(cfg)(VoxelModel(), vol)
    assert res.heatmap.shape == vol.shape
    np.testing.assert_allclose(res.heatmap, _sigmoid(2 * vol - 1), atol=1e-6)
    assert res.window_starts[:, 0].min() == -3 and res.window_starts[:, 2].min() == -4  # symmetric padding


def test_coarse_heatmap_head_is_upsampled_to_the_window() -> None:
    vol = np.full((20, 20, 20), 0.75, dtype=np.float32)
    cfg = SlidingWindowConfig(roi_size=(8, 8, 8), overlap=0.25, device="cpu")
    res = SlidingWindowInferer(cfg)(VoxelModel(coarse=True), vol)
    np.testing.assert_allclose(res.heatmap, _sigmoid(np.float32(0.5)), atol=1e-6)


def test_mask_skips_empty_windows() -> None:
    vol = np.random.default_rng(2).random((32, 32, 64), dtype=np.float32)
    mask = np.zeros(vol.shape, np.uint8)
    mask[4:10, 4:10, 2:6] = 1  # only the first window along i sees the head
    cfg = SlidingWindowConfig(roi_size=(32, 32, 16), overlap=0.0, device="cpu")
    inferer = SlidingWindowInferer(cfg)
    res = inferer(VoxelModel(), vol, mask=mask)
    assert res.n_windows_total == 4 and len(res.window_starts) == 1
    np.testing.assert_allclose(res.heatmap[:, :, :16], _sigmoid(2 * vol[:, :, :16] - 1), atol=1e-6)
    assert np.all(res.heatmap[:, :, 16:] == 0)
    # An empty mask never drops every window.
    assert len(inferer(VoxelModel(), vol, mask=np.zeros_like(mask)).window_starts) == 4


def test_prepare_model_folds_batchnorm_without_changing_the_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(),
                          nn.Conv3d(4, 1, 1))
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_model(model, "cpu")
    assert isinstance(fast[1], nn.Identity) and isinstance(model[1], nn.BatchNorm3d)  # the original is untouched
    with torch.no_grad():
        out = fast(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(out, ref, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fold_batchnorm(model).modules())


def test_prepared_unet_matches_monai_sliding_window() -> None:
    monai_inferers = pytest.importorskip("monai.inferers")
    from rsna_aneurysm.models import create_model

    torch.manual_seed(0)
    model = create_model("unet3d_tiny", channels=(4, 8, 8)).eval()
    vol = np.random.default_rng(3).random((30, 26, 21), dtype=np.float32)
    cfg = SlidingWindowConfig(roi_size=(16, 16, 16), overlap=0.25, batch_size=2, device="cpu")
    mine = SlidingWindowInferer(cfg)(prepare_model(model, "cpu"), vol).heatmap
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(
            torch.from_numpy(vol)[None, None], (16, 16, 16), 2, lambda a: torch.sigmoid(model(a)["heatmap"]),
            overlap=0.25, mode="gaussian", roi_weight_map=weight_map((16, 16, 16), "gaussian", 0.125))
    assert np.abs(ref[0, 0].numpy() - mine).max() <= 1e-4


def test_save_heatmap_keeps_the_geometry(tmp_path) -> None:
    from rsna_aneurysm.io.nifti import read_volume

    like = Volume(np.zeros((5, 6, 7), np.float32), spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0))
    heat = np.random.default_rng(4).random((5, 6, 7)).astype(np.float32)
    save_heatmap(heat, like, str(tmp_path / "h.nii.gz"))
    back = read_volume(tmp_path / "h.nii.gz")
    np.testing.assert_allclose(back.array, heat)
    np.testing.assert_allclose(back.spacing, like.spacing)
    np.testing.assert_allclose(back.origin, like.origin)
    with pytest.raises(ValueError, match="does not match"):
        save_heatmap(heat[:4], like, str(tmp_path / "bad.nii.gz"))


def test_bfloat16_on_cpu_stays_close_to_float32() -> None:
    from rsna_aneurysm.runtime import resolve_precision

    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    if resolve_precision("auto", torch.device("cpu")) != "bf16":
        pytest.skip("this CPU has no native bfloat16")
    from rsna_aneurysm.models import create_model

    torch.manual_seed(0)
    model = create_model("unet3d_tiny", channels=(4, 8, 8)).eval()
    vol = np.random.default_rng(5).random((24, 20, 20), dtype=np.float32)
    inferer = SlidingWindowInferer(SlidingWindowConfig(roi_size=(16, 16, 16), device="cpu"))
    ref = inferer(prepare_model(model, "cpu", precision="fp32"), vol)
    fast = prepare_model(model, "cpu", precision="auto")
    assert next(fast.parameters()).dtype == torch.bfloat16
    out = inferer(fast, vol)
    assert out.heatmap.dtype == np.float32 and out.window_logits.dtype == np.float32
    assert np.abs(out.heatmap - ref.heatmap).max() < 5e-3
    assert np.abs(out.window_logits - ref.window_logits).max() < 5e-2
