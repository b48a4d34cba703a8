"""The training config: a dataclass tree set from a JSON file and ``--key value`` overrides.

Everything that can be checked before any work starts (unknown keys, wrong types, an unknown model name or model
argument, label-vector lengths, cache settings) fails when the config is built, naming the offending key: each
class checks its own fields in ``__post_init__`` (the convention of ``rsna_aneurysm.config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, load_config, require
from ..constants import N_LABELS
from ..data.cache_config import CacheConfig
from ..runtime import is_device_name


@dataclass
class DataConfig:
    """Where patches come from."""

    # Preprocessed folder (docs/layout.md); the cache is built from it when missing or stale.
    preprocessed: str = ""
    # Patch cache folder; empty means <preprocessed>/patch_cache.
    cache_dir: str = ""
    # Folds table (SeriesInstanceUID, fold) from `rsna-aneurysm folds`; null: deterministic stratified split.
    folds: str | None = None
    # Used only without a folds table.
    n_folds: int = 5
    fold_seed: int = 42
    # DataLoader worker processes per training process (0 = load in the main process).
    workers: int = 2
    # Processes that build the cache.
    cache_workers: int = 2

    def __post_init__(self) -> None:
        require(self.n_folds >= 1, "n_folds", f"must be at least 1, got {self.n_folds}")
        for key in ("workers", "cache_workers"):
            require(getattr(self, key) >= 0, key, f"must not be negative, got {getattr(self, key)}")


@dataclass
class ModelConfig:
    """A registered model name and its keyword arguments (``rsna_aneurysm.models.list_models()``)."""

    name: str = "unet3d_tiny"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """The name is registered and takes every kwarg (imports the model registry)."""
        from ..models.registry import UnknownModelError, model_kwarg_names

        try:
            accepted = model_kwarg_names(self.name)
        except UnknownModelError as e:
            raise ConfigError(str(e), "name") from None
        for k in self.kwargs if accepted is not None else ():
            require(k in accepted, f"kwargs.{k}",
                    f"model {self.name!r} takes no argument {k!r}; it takes {', '.join(sorted(accepted))}")


@dataclass
class LossConfig:
    """Classification loss on the 14 labels, plus an optional voxel heatmap loss."""

    # bce | focal
    name: Literal["bce", "focal"] = "focal"
    # Focal loss: weight of the positive class (null: none) and focusing exponent.
    alpha: float | None = 0.25
    gamma: float = 2.0
    # Per-label weight of positive examples (14 values, label order), or null.
    pos_weight: list[float] | None = None
    # Per-label weight of each column in the mean (14 values), or null for equal weights.
    label_weights: list[float] | None = None
    # Weight of the heatmap loss (models with a heatmap head only; 0 switches it off).
    heatmap_weight: float = 0.0
    # Voxel loss against the sphere masks: focal (same alpha/gamma), bce, or bce + soft Dice.
    heatmap_loss: Literal["focal", "bce", "bce_dice"] = "bce_dice"
    # Weight of a multiple-instance term: BCE between each patch's highest heatmap logit and whether the patch
    # holds an aneurysm. It punishes the single strongest false voxel, which is what a scan-level maximum sees
    # (0 switches it off).
    heatmap_max_weight: float = 0.0

    def __post_init__(self) -> None:
        for key in ("pos_weight", "label_weights"):
            v = getattr(self, key)
            require(v is None or len(v) == N_LABELS, key, f"needs {N_LABELS} values (label order), got "
                                                          f"{None if v is None else len(v)}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (per step)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    # The learning rate decays to lr * min_lr_ratio at the last epoch.
    min_lr_ratio: float = 0.01
    # Gradient-norm clip (0: off).
    grad_clip: float = 5.0


@dataclass
class AugmentConfig:
    """Batch augmentation on the device; the left-right flip swaps the Left/Right labels."""

    enabled: bool = True
    # Probability of a left-right flip (the i axis, last array axis in the canonical orientation).
    flip_lr: float = 0.5
    # Probability of flipping each of the other two axes (anatomically unrealistic; off by default).
    flip_other: float = 0.0
    # Probability of a random rotation/scaling, the largest angle per axis (degrees) and scale change.
    affine_prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    # Intensity: multiply by 1 +- intensity_scale, add +- intensity_shift, add Gaussian noise.
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.02


@dataclass
class TrainConfig:
    """One training run: all folds share it; ``weights/<run_name>/config.json`` records it resolved."""

    run_name: str = "run"
    out_dir: str = "weights"
    seed: int = 0
    epochs: int = 20
    # Patches per step per process (the global batch under torchrun is this times the number of processes).
    batch_size: int = 16
    val_batch_size: int = 32
    # Steps per epoch; null: one pass over the training patches.
    steps_per_epoch: int | None = None
    # auto: bf16 on CUDA when supported, else fp16 with a scaler; on CPU bf16 where the CPU has native bf16, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto | cpu | cuda
    device: str = "auto"
    # Torch CPU threads per process (null: torch's default).
    threads: int | None = None
    # Early stopping: the validation score watched, and epochs without improvement before stopping (0: never).
    monitor: Literal["score", "auc", "f2", "loss"] = "score"
    patience: int = 5
    # Also save last.pt every this many steps inside an epoch (0: at epoch ends only).
    save_every_steps: int = 0
    # Decision threshold for the patch-level accuracy/sensitivity/specificity/F2.
    threshold: float = 0.5
    # Progress bars (only on a terminal, only on rank 0).
    progress: bool = True
    # Start from these weights instead of a random init (fine-tuning, e.g. after hard-negative mining): a
    # checkpoint file, or a run folder whose fold_<k>/best.pt matches the fold being trained.
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        """This class's own fields; the nested configs check theirs."""
        for key in ("epochs", "batch_size", "val_batch_size"):
            require(getattr(self, key) >= 1, key, f"must be at least 1, got {getattr(self, key)}")
        require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
                f"must be at least 1 or null, got {self.steps_per_epoch}")
        require(is_device_name(self.device), "device", f"auto, cpu or cuda[:N], got {self.device!r}")

    def cache_path(self) -> Path:
        """The patch cache folder this run reads."""
        if self.data.cache_dir:
            return Path(self.data.cache_dir)
        if not self.data.preprocessed:
            raise ConfigError("config key 'data.preprocessed' (or 'data.cache_dir') must be set")
        return Path(self.data.preprocessed) / "patch_cache"


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the JSON file, then overrides; every class checks itself as it is built."""
    return load_config(TrainConfig, path, overrides)
