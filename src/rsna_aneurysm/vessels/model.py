"""The 3D U-Net the vessel stage and the ROI classifier share: nnU-Net's residual-encoder U-Net from
``dynamic-network-architectures`` (nnU-Net's own network library), built from a small typed config.

The segmenter is this network with one input channel (the image) and 14 output classes (background and the 13
vessel classes of ``constants.SEG_LABELS``). The ROI classifier (:mod:`rsna_aneurysm.roi.model`) is the same
network with the vessel probabilities as extra input channels; :func:`transfer_weights` copies a trained
segmenter's weights into it (segmentation pretraining), widening the stem's first convolution with zero weights for
the extra channels, so at the start the classifier's features are exactly the segmenter's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..config import require

# Segmenter input: the image and three position channels (see position_channels).
IN_CHANNELS = 4
POSITION_SCALE_MM = 100.0


def position_channels(shape: tuple[int, int, int], spacing_mm: float, start: np.ndarray | None = None,
                      size: tuple[int, int, int] | None = None) -> np.ndarray:
    """``(3, *size)`` float32: x, y, z in units of 100 mm from the centre of a volume of ``shape`` voxels (k, j, i)
    at ``spacing_mm``, for the window of ``size`` voxels starting at ``start`` (default: the whole volume).

    The volumes the kit segments are cropped to the head, so the centre is the head's and these channels tell the
    network where in the head a voxel is: which artery a vessel is follows mostly from where it runs (left or
    right, anterior or posterior), which a 48-voxel window cannot see (CoordConv)."""
    start = np.zeros(3, np.int64) if start is None else np.asarray(start)
    size = tuple(shape) if size is None else tuple(size)
    axes = [((start[a] + np.arange(size[a])) - (shape[a] - 1) / 2.0) * spacing_mm / POSITION_SCALE_MM
            for a in range(3)]
    z = np.broadcast_to(axes[0][:, None, None], size)
    y = np.broadcast_to(axes[1][None, :, None], size)
    x = np.broadcast_to(axes[2][None, None, :], size)
    return np.stack([x, y, z]).astype(np.float32)


@dataclass
class UNetConfig:
    """Shape of the residual-encoder U-Net (nnU-Net's ResEnc, scaled down to fit a CPU by default)."""

    features: tuple[int, ...] = (8, 16, 32, 64)  # channels per stage (the first at full resolution)
    blocks: tuple[int, ...] = (1, 1, 2, 2)  # residual blocks per encoder stage
    decoder_convs: int = 1  # convolutions per decoder stage

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        self.blocks = tuple(int(b) for b in self.blocks)
        require(len(self.features) >= 2 and min(self.features) >= 1, "features",
                f"needs at least two positive stage widths, got {list(self.features)}")
        require(len(self.blocks) == len(self.features) and min(self.blocks) >= 1, "blocks",
                f"needs one positive block count per stage ({len(self.features)}), got {list(self.blocks)}")
        require(self.decoder_convs >= 1, "decoder_convs", f"must be at least 1, got {self.decoder_convs}")

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (one halving per stage after the first)."""
        return 2 ** (len(self.features) - 1)


def build_unet(in_channels: int, num_classes: int, cfg: UNetConfig) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` (3D convolutions, instance norm, leaky ReLU, no deep supervision)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    n = len(cfg.features)
    return ResidualEncoderUNet(
        input_channels=in_channels, n_stages=n, features_per_stage=list(cfg.features), conv_op=nn.Conv3d,
        kernel_sizes=[3] * n, strides=[1] + [2] * (n - 1), n_blocks_per_stage=list(cfg.blocks),
        num_classes=num_classes, n_conv_per_stage_decoder=[cfg.decoder_convs] * (n - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False)


def decoder_features(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bottleneck features, full-resolution decoder features before the segmentation layer) of ``build_unet``'s
    network for input ``x``: the decoder's own stages, run without its last 1x1 convolution."""
    skips = net.encoder(x)
    dec = net.decoder
    y = skips[-1]
    for s in range(len(dec.stages)):
        y = dec.transpconvs[s](y)
        y = dec.stages[s](torch.cat((y, skips[-(s + 2)]), 1))
    return skips[-1], y


def stem_key(state: dict[str, torch.Tensor]) -> str:
    """The state-dict key of the network's first convolution weight (the one that sees the input channels)."""
    for k, v in state.items():
        if k.endswith("weight") and v.ndim == 5 and k.startswith("encoder."):
            return k
    raise KeyError("no 3D convolution weight in the encoder")


def transfer_weights(target: nn.Module, source_state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy a segmenter's weights into ``target`` (same U-Net shape, maybe more input channels, other heads).

    Every tensor whose name and shape match is copied; the stem convolution, when the target has more input
    channels, gets the source's weights for the first channels and zeros for the rest; the segmentation layer
    (other class count) and heads the source lacks are left as initialised. Returns what was copied, widened and
    left out; raises ValueError when no encoder weight matched (another architecture)."""
    own = target.state_dict()
    copied, widened, skipped = [], [], []
    src_stem = stem_key(source_state)
    for k, v in source_state.items():
        tk = k if k in own else f"unet.{k}" if f"unet.{k}" in own else None
        if tk is None:
            skipped.append(k)
            continue
        if own[tk].shape == v.shape:
            own[tk] = v.detach().clone()
            copied.append(k)
        elif k == src_stem and own[tk].shape[0] == v.shape[0] and own[tk].shape[2:] == v.shape[2:] \
                and own[tk].shape[1] > v.shape[1]:
            w = torch.zeros_like(own[tk])
            w[:, : v.shape[1]] = v
            own[tk] = w
            widened.append(k)
        else:
            skipped.append(k)
    if not any(k.startswith("encoder.") for k in copied):
        raise ValueError("segmenter weights do not fit this network (no encoder weight matched): another U-Net "
                         "config?")
    target.load_state_dict(own)
    return {"copied": copied, "widened": widened, "skipped": skipped}
