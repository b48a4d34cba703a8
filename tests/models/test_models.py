"""Every registered model: output shapes, finite values, one gradient step on CPU; registry behaviour."""

from __future__ import annotations

import pytest
import torch

from rsna_aneurysm.constants import N_LABELS
from rsna_aneurysm.models import create_model, list_models, register_model
from rsna_aneurysm.models.registry import UnknownModelError

# Small settings per model so the whole parametrised suite stays a few seconds on a CPU.
SMALL = {"cnn3d": {"channels": (4, 8, 8)}, "unet3d_tiny": {"channels": (4, 8, 8)},
         "timm25d": {"backbone": "resnet10t", "in_chans": 3, "slice_stride": 4}}


def test_builtin_models_registered():
    assert {"cnn3d", "unet3d_tiny", "timm25d"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_shapes_finite_and_gradient_step(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {}))
    x = torch.randn(2, 1, 18, 20, 22)  # odd, non-cubic sizes on purpose
    out = model(x)
    assert out["logits"].shape == (2, N_LABELS)
    assert torch.isfinite(out["logits"]).all()
    if "heatmap" in out:
        assert out["heatmap"].shape == (2, 1, 18, 20, 22)
        assert torch.isfinite(out["heatmap"]).all()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], torch.ones(2, N_LABELS))
    if "heatmap" in out:
        loss = loss + out["heatmap"].sigmoid().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    opt.step()
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    # Most parameters move (timm zero-initialises some residual-branch norms, whose inputs then get no gradient).
    assert changed >= 0.6 * len(before)
    assert not torch.equal(before[-1], list(model.parameters())[-1].detach())  # the label head moved
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)["logits"]).all()


def test_unet_heatmap_follows_input_size():
    model = create_model("unet3d_tiny", channels=(2, 4, 4)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 32))["heatmap"].shape == (1, 1, 32, 32, 32)
        assert model(torch.zeros(1, 1, 13, 7, 9))["heatmap"].shape == (1, 1, 13, 7, 9)


def test_none_kwargs_dropped_and_unknown_rejected():
    model = create_model("cnn3d", channels=None, dropout=None)  # None keeps the model's defaults
    assert model.head.in_features == 2 * 64
    with pytest.raises(TypeError, match="bogus"):
        create_model("cnn3d", bogus=1)
    with pytest.raises(UnknownModelError, match="no_such_model"):
        create_model("no_such_model")


def test_register_model_rejects_a_clash():
    @register_model("_test_dummy")
    class Dummy(torch.nn.Module):
        def forward(self, x):
            return {"logits": x.flatten(1)[:, :N_LABELS]}

    assert "_test_dummy" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_dummy")(torch.nn.Identity)


def test_timm_pretrained_needs_local_file(tmp_path):
    with pytest.raises(ValueError, match="weights_path"):
        create_model("timm25d", backbone="resnet10t", pretrained=True)
    import timm

    src = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    path = tmp_path / "resnet10t.pth"
    torch.save(src.state_dict(), path)
    model = create_model("timm25d", backbone="resnet10t", weights_path=str(path), in_chans=3)
    a = src.state_dict()["conv1.0.weight"]
    assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], a)  # loaded from the file, no download
    with pytest.raises(FileNotFoundError):
        create_model("timm25d", backbone="resnet10t", weights_path=str(tmp_path / "missing.pth"))
