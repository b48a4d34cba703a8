"""A trained nnU-Net v2 model folder as the vessel segmenter: a tiny fake results folder built in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunet_folder import ARCH_KWARGS, PATCH, REQUIRES_IMPORT, tiny_unet, write_folder  # noqa: F401 - tests/helpers

from rsna_aneurysm.constants import SEG_LABELS
from rsna_aneurysm.preprocess.nnunet_export import nnunet_labels
from rsna_aneurysm.vessels.nnunet_model import (
    NnunetFolderError,
    NnunetModelError,
    NnunetSegmenter,
    gaussian_importance,
    sliding_window_starts,
)
from rsna_aneurysm.vessels.types import N_VESSEL_CLASSES
from rsna_aneurysm.volume import Volume


def permuted_labels() -> dict[str, int]:
    """The kit's label names with values permuted (kit value v -> network value (5 v mod 13) + 1)."""
    return {"background": 0, **{name: (5 * v) % 13 + 1 for v, name in SEG_LABELS.items()}}


def always(net: nn.Module, channel: int) -> nn.Module:
    """The network with its final 1x1 conv set to answer ``channel`` everywhere."""
    seg = net.decoder.seg_layers[-1]
    with torch.no_grad():
        seg.weight.zero_()
        seg.bias.fill_(-5.0)
        seg.bias[channel] = 5.0
    return net


def volume(shape_kji=(20, 24, 28), spacing=(1.0, 1.0, 1.0), origin=(-12.0, 4.0, 30.0), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = (1.0 + rng.random(shape_kji)).astype(np.float32)  # no zeros: nnU-Net's nonzero crop is the whole image
    return Volume(array=arr, spacing=spacing, origin=origin)


def test_output_shape_channels_and_grid(tmp_path):
    seg = NnunetSegmenter.from_folder(write_folder(tmp_path))
    vol = volume()
    out = seg.segment(vol)
    assert out.source == "nnunet"
    assert out.probs.shape[0] == N_VESSEL_CLASSES and out.probs.dtype == np.float32
    assert np.allclose(out.probs.sum(0), 1.0, atol=1e-5) and np.all(out.probs >= 0)
    assert out.grid.spacing == (1.5, 1.5, 1.5) and seg.spacing_mm == 1.5
    # the grid starts at the volume's first voxel and covers its extent to within one voxel
    lo = np.asarray(vol.origin)
    hi = vol.index_to_world(np.asarray(vol.shape_ijk) - 1)
    g_hi = out.grid.index_to_world(np.asarray(out.grid.shape) - 1)[0]
    assert np.allclose(out.grid.origin, lo)
    assert np.all(g_hi <= hi + 1e-6) and np.all(g_hi > hi - 1.5)
    assert out.grid.shape == (13, 16, 19)


def test_label_names_map_to_kit_values(tmp_path):
    labels = permuted_labels()
    name7 = SEG_LABELS[7]
    net = always(tiny_unet(), labels[name7])  # network channel of "Right Supraclinoid ICA" in the permuted labels
    seg = NnunetSegmenter.from_folder(write_folder(tmp_path, labels=labels, net=net))
    out = seg.segment(volume())
    assert labels[name7] != 7
    assert np.all(out.labels() == 7)
    assert np.allclose(out.probs.sum(0), 1.0, atol=1e-5)


def test_anisotropic_spacing_and_transpose_round_trip(tmp_path):
    net = always(tiny_unet(), 7)
    folder = write_folder(tmp_path, spacing=(3.0, 1.0, 2.0), transpose_forward=(2, 0, 1), net=net)
    seg = NnunetSegmenter.from_folder(folder)
    # transposed axis a is array axis tf[a]: i gets 3.0, k 1.0, j 2.0
    assert seg.spacing_ijk == (3.0, 2.0, 1.0)
    vol = volume(shape_kji=(20, 30, 40))
    out = seg.segment(vol)
    assert out.grid.spacing == (3.0, 2.0, 1.0)
    assert out.grid.shape == (20, 15, 14)
    assert np.all(out.labels() == 7)


class _Probe(nn.Module):
    """A pointwise 'network': channel 1 wins where the input is above its mean; records the tile shapes."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.n_out, self.shapes = n_out, set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.add(tuple(x.shape[2:]))
        out = torch.zeros((x.shape[0], self.n_out, *x.shape[2:]))
        out[:, 1] = 20.0 * x[:, 0]
        return out


def test_transpose_keeps_spatial_layout(tmp_path):
    """A pointwise probe on a volume bright in its upper k half: the answer is bright in the same voxels, the
    network saw tiles of the patch size in the transposed order."""
    folder = write_folder(tmp_path, spacing=(1.0, 1.0, 1.0), transpose_forward=(2, 0, 1),
                          labels=permuted_labels())
    seg = NnunetSegmenter.from_folder(folder)
    probe = _Probe(N_VESSEL_CLASSES)
    seg.nets = [probe]
    seg.patch = (32, 16, 8)
    from rsna_aneurysm.vessels.nnunet_model import gaussian_importance as g

    seg._gauss = torch.from_numpy(g(seg.patch))
    arr = np.ones((20, 24, 28), np.float32)
    arr[10:] = 3.0
    out = seg.segment(Volume(array=arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)))
    kit = next(v for v, n in SEG_LABELS.items() if permuted_labels()[n] == 1)
    expected = np.where(arr > 2, kit, 0)
    assert np.array_equal(out.labels(), expected)
    assert probe.shapes == {(32, 16, 8)}


def test_weights_only_refuses_pickled_objects(tmp_path):
    folder = write_folder(tmp_path, ckpt_extra={"extra": _Custom()})
    with pytest.raises(NnunetModelError, match=r"weights_only=True.*") as err:
        NnunetSegmenter.from_folder(folder)
    assert "checkpoint_final.pth" in str(err.value)


class _Custom:
    """A custom class pickled by reference: torch.load(weights_only=True) must refuse it."""

    value = 1


def test_compiled_prefix_numpy_scalars_folds_and_mirroring(tmp_path):
    net = always(tiny_unet(), 3)
    folder = write_folder(tmp_path, net=net, folds=(0, 1), prefix="_orig_mod.")
    one = NnunetSegmenter.from_folder(folder).segment(volume())
    two = NnunetSegmenter.from_folder(folder, folds=(0, 1), mirror=True).segment(volume())
    assert np.all(one.labels() == 3)
    assert np.allclose(one.probs, two.probs, atol=1e-5)


def test_configuration_from_checkpoint_then_argument(tmp_path):
    folder = write_folder(tmp_path, configuration="3d_lowres")
    assert NnunetSegmenter.from_folder(folder, configuration="3d_fullres").spacing_ijk == (3.0, 3.0, 3.0)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    del ckpt["init_args"]
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    assert NnunetSegmenter.from_folder(folder).spacing_ijk == (1.5, 1.5, 1.5)
    assert NnunetSegmenter.from_folder(folder, configuration="3d_lowres").spacing_ijk == (3.0, 3.0, 3.0)


def test_missing_class_warns_and_gets_zero(tmp_path):
    labels = {k: v for k, v in nnunet_labels().items() if v < 13}  # no Anterior Communicating Artery (13)
    with pytest.warns(UserWarning, match="Anterior Communicating Artery"):
        seg = NnunetSegmenter.from_folder(write_folder(tmp_path, labels=labels))
    out = seg.segment(volume())
    assert np.all(out.probs[13] == 0) and np.allclose(out.probs.sum(0), 1.0, atol=1e-5)


def test_missing_files(tmp_path):
    folder = write_folder(tmp_path)
    with pytest.raises(NnunetFolderError, match="fold_1"):
        NnunetSegmenter.from_folder(folder, folds=(1,))
    with pytest.raises(NnunetFolderError, match="checkpoint_best.pth"):
        NnunetSegmenter.from_folder(folder, checkpoint="checkpoint_best.pth")
    for name in ("dataset.json", "plans.json"):
        (folder / name).unlink()
        with pytest.raises(NnunetFolderError, match=name):
            NnunetSegmenter.from_folder(folder)
    assert issubclass(NnunetFolderError, FileNotFoundError) and issubclass(NnunetModelError, ValueError)
    with pytest.raises(NnunetFolderError):
        NnunetSegmenter.from_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("network_class", ["torch.nn.Conv3d", "os.system", "mypackage.unet.PlainConvUNet"])
def test_refuses_network_outside_dynamic_network_architectures(tmp_path, network_class):
    folder = write_folder(tmp_path, network_class=network_class)
    with pytest.raises(NnunetModelError, match="not from dynamic_network_architectures") as err:
        NnunetSegmenter.from_folder(folder)
    assert "plans.json" in str(err.value)


def test_refuses_imports_outside_torch_nn(tmp_path):
    folder = write_folder(tmp_path, arch_kwargs=dict(ARCH_KWARGS, nonlin="os.system"))
    with pytest.raises(NnunetModelError, match="refusing to import 'os.system'"):
        NnunetSegmenter.from_folder(folder)


def test_bare_network_class_name_is_found(tmp_path):
    seg = NnunetSegmenter.from_folder(write_folder(tmp_path, network_class="PlainConvUNet"))
    assert isinstance(seg.nets[0], PlainConvUNet)


@pytest.mark.parametrize("labels", [
    {**nnunet_labels(), "Pineal Gland": 14},
    {"background": 0, "vessel": 1},
    {k: v for k, v in nnunet_labels().items() if k != "background"},
])
def test_refuses_foreign_labels(tmp_path, labels):
    folder = write_folder(tmp_path, labels={"background": 0, "x": 1})  # weights irrelevant: labels fail first
    spec = json.loads((folder / "dataset.json").read_text())
    spec["labels"] = labels
    (folder / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(NnunetModelError, match="dataset.json"):
        NnunetSegmenter.from_folder(folder)


def test_sliding_window_and_gaussian():
    assert sliding_window_starts(20, 32, 0.5) == [0]
    assert sliding_window_starts(32, 32, 0.5) == [0]
    starts = sliding_window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68 and max(np.diff(starts)) <= 16
    g = gaussian_importance((8, 16, 32))
    assert g.shape == (8, 16, 32) and g.max() == 1.0 and g.min() > 0
    assert g[4, 8, 16] == 1.0 and g[0, 0, 0] < g[4, 8, 0] < 1.0


def _edit_config(folder, **changes):
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"].update(changes)
    (folder / "plans.json").write_text(json.dumps(plans))


def test_normalization_schemes(tmp_path):
    folder = write_folder(tmp_path)
    arr = np.zeros((6, 6, 6), np.float32)
    arr[1:5, 1:5, 1:5] = 1.0 + np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    arr[2, 2, 2] = 0.0  # a hole: nnU-Net's nonzero mask fills it
    z = NnunetSegmenter.from_folder(folder)._normalize(arr)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    _edit_config(folder, use_mask_for_norm=[True])
    zm = NnunetSegmenter.from_folder(folder)._normalize(arr)
    inside = arr != 0
    inside[2, 2, 2] = True
    assert np.all(zm[~inside] == 0) and abs(zm[inside].mean()) < 1e-5 and zm[2, 2, 2] < 0
    _edit_config(folder, normalization_schemes=["CTNormalization"], use_mask_for_norm=[False])
    ct = NnunetSegmenter.from_folder(folder)._normalize(arr)
    assert np.allclose(ct, (np.clip(arr, -1.0, 3.0) - 0.5) / 1.0)
    _edit_config(folder, normalization_schemes=["RescaleTo01Normalization"])
    with pytest.raises(NnunetModelError, match="RescaleTo01Normalization"):
        NnunetSegmenter.from_folder(folder)


def test_refuses_2d_configuration(tmp_path):
    folder = write_folder(tmp_path)
    _edit_config(folder, spacing=[1.0, 1.0], patch_size=[64, 64])
    with pytest.raises(NnunetModelError, match="3D configuration"):
        NnunetSegmenter.from_folder(folder)
