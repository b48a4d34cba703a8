"""A fake trained nnU-Net v2 results folder (plans.json, dataset.json, fold checkpoints of a tiny PlainConvUNet),
for the tests of ``vessels/nnunet_model.py`` and of the vessel-ROI pipeline with an nnU-Net segmenter."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from rsna_aneurysm.preprocess.nnunet_export import nnunet_labels
from rsna_aneurysm.vessels.types import N_VESSEL_CLASSES

PATCH = [32, 32, 32]
ARCH_KWARGS = {
    "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
    "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def tiny_unet(num_classes: int = N_VESSEL_CLASSES) -> nn.Module:
    kw = dict(ARCH_KWARGS, conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU)
    return PlainConvUNet(input_channels=1, num_classes=num_classes, deep_supervision=False, **kw)


def write_folder(root, spacing=(1.5, 1.5, 1.5), transpose_forward=(0, 1, 2), labels=None, folds=(0,), net=None,
                 ckpt_extra=None, network_class="dynamic_network_architectures.architectures.unet.PlainConvUNet",
                 arch_kwargs=None, configuration="3d_fullres", prefix=""):
    """A results folder like nnUNet_results/Dataset501_RSNAVessels/nnUNetTrainer__nnUNetPlans__3d_fullres."""
    folder = root / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    labels = nnunet_labels() if labels is None else labels
    tf = list(transpose_forward)
    plans = {
        "dataset_name": "Dataset501_RSNAVessels", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": tf, "transpose_backward": [int(a) for a in np.argsort(tf)],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [100, 120, 110],
                "spacing": list(spacing), "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "architecture": {"network_class_name": network_class, "arch_kwargs": arch_kwargs or ARCH_KWARGS,
                                 "_kw_requires_import": REQUIRES_IMPORT},
                "batch_dice": False,
            },
            "3d_lowres": {"inherits_from": "3d_fullres", "spacing": [3.0, 3.0, 3.0],
                          "data_identifier": "nnUNetPlans_3d_lowres"},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.5, "std": 1.0, "min": -1.0, "max": 3.0,
                                                              "percentile_00_5": -1.0, "percentile_99_5": 3.0}},
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    dataset = {"channel_names": {"0": "normalized"}, "labels": labels, "numTraining": 3, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "dataset_fingerprint.json").write_text("{}")
    n_out = len([k for k in labels if k != "ignore"])
    for f in folds:
        (folder / f"fold_{f}").mkdir(exist_ok=True)
        weights = (net or tiny_unet(n_out)).state_dict()
        ckpt = {"network_weights": {prefix + k: v for k, v in weights.items()},
                "init_args": {"configuration": configuration, "fold": f, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "current_epoch": 1000,
                "logging": {"ema_fg_dice": [np.float64(0.5)]}, "inference_allowed_mirroring_axes": (0, 1, 2)}
        ckpt.update(ckpt_extra or {})
        torch.save(ckpt, folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder
