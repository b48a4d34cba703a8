"""Self-describing checkpoints: ``weights/<run>/fold_<k>/{best,last}.pt`` rebuild their model from the folder alone.

A checkpoint is a plain dict of tensors and Python values (loadable with ``torch.load(weights_only=True)``):
``format``, ``model`` (registry name and kwargs), ``state_dict``, ``config`` (the resolved training config),
``label_cols``, ``preprocessing`` (the preprocessed folder's config), ``patch`` (size and spacing the model saw),
``metrics``, ``epoch``, ``fold``. ``last.pt`` adds the optimizer, scheduler, scaler and random states for resuming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..constants import LABEL_COLS
from ..io.atomic import atomic_path
from ..layout import PreDir, RunDir

FORMAT = "rsna-aneurysm/checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of the kit's."""


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    return RunDir(run_dir).fold_dir(fold)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` atomically (temporary file, then rename): an interrupted save never leaves a torn file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict, loaded with ``weights_only=True`` (no arbitrary code runs)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return ckpt


def read_preprocessing(pre_dir: str | Path) -> dict[str, Any]:
    """The preprocessed folder's resolved config (``config.json``), or {} when it has none."""
    p = PreDir(pre_dir).config if pre_dir else None
    if p is None or not p.exists():
        return {}
    return json.loads(p.read_text())


def model_payload(model: torch.nn.Module, cfg_dict: dict[str, Any], fold: int, epoch: int,
                  metrics: dict[str, Any], preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The self-describing part shared by best.pt and last.pt."""
    model_cfg = cfg_dict["model"]
    cache = cfg_dict["cache"]
    return {
        "format": FORMAT,
        "model": {"name": model_cfg["name"], "kwargs": dict(model_cfg["kwargs"])},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg_dict,
        "label_cols": list(LABEL_COLS),
        "preprocessing": preprocessing,
        "patch": {"size": list(cache["patch_size"]), "spacing_mm": float(cache["spacing_mm"])},
        "metrics": _plain(metrics),
        "epoch": int(epoch),
        "fold": int(fold),
        "torch_version": str(torch.__version__),
    }


def _plain(obj: Any) -> Any:
    """Numpy scalars and arrays to Python values (weights_only loading accepts only plain types and tensors)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def build_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The model described by ``ckpt`` with its weights, in eval mode."""
    from ..models.registry import create_model

    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_model(run_dir: str | Path, fold: int, which: str = "best", device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild fold ``fold`` of the run in ``run_dir`` from its checkpoint alone: (model in eval mode, metadata).

    The metadata is the checkpoint without ``state_dict`` and training state: model name and kwargs, config,
    label order, preprocessing settings, patch geometry, metrics, epoch.
    """
    path = fold_dir(run_dir, fold) / f"{which}.pt"
    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt).to(device)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler", "scaler", "rng")}
    meta["path"] = str(path)
    return model, meta


# Config keys whose change makes resuming a fold from its last.pt meaningless.
RESUME_KEYS = (("model",), ("cache",), ("seed",), ("batch_size",), ("steps_per_epoch",), ("optim",), ("loss",),
               ("data", "folds"), ("data", "n_folds"), ("data", "fold_seed"))


def config_mismatch(saved: dict[str, Any], cfg_dict: dict[str, Any]) -> list[str]:
    """The ``RESUME_KEYS`` (dotted) where a checkpoint's config and ``cfg_dict`` differ."""
    bad = []
    for k in RESUME_KEYS:
        a, b = saved, cfg_dict
        for part in k:
            a, b = a.get(part), b.get(part)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            bad.append(".".join(k))
    return bad


def load_init_weights(model: torch.nn.Module, init_from: str | Path, fold: int) -> Path:
    """Load ``init_from`` (a checkpoint file, or a run folder whose ``fold_<fold>/best.pt`` is used) into ``model``;
    returns the file. Raises CheckpointError when it is missing or of another architecture."""
    init = Path(init_from)
    init = init if init.is_file() else RunDir(init).checkpoint(fold, "best")
    if not init.is_file():
        raise CheckpointError(f"init_from: no checkpoint at {init}")
    missing = model.load_state_dict(load_checkpoint(init)["state_dict"], strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise CheckpointError(f"init_from {init}: another architecture (missing {missing.missing_keys[:3]}, "
                              f"unexpected {missing.unexpected_keys[:3]})")
    return init
