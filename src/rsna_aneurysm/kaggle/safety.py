"""What may leave this machine in an upload: no credentials, no absolute local paths, only allow-listed kit files.

- :func:`find_credentials`: files that look like secrets (``kaggle.json``, ``*.pem``, ``.env``, ``id_rsa`` ...,
  or a JSON object holding both ``key`` and ``username``), in a folder or inside the wheels it holds.
- :func:`strip_local_paths`: absolute paths (``/home/me/pre``, ``C:\\data``, ``~/x``) in a config reduced to their
  last component, so the weights dataset does not tell the training machine's layout.
- :func:`rewrite_checkpoint`: a checkpoint copied with its metadata stripped the same way (weights unchanged).
- :func:`wheel_problems`: entries of the kit's wheel outside the allow-list, and credentials inside it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# File names never uploaded, whatever their content.
CREDENTIAL_NAMES = ("kaggle.json", "*.pem", "*.key", "*.p12", "*.pfx", ".env", ".env.*", "*.env", "id_rsa*",
                    "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", "_netrc", ".pypirc", "credentials",
                    "credentials.json", ".git-credentials")
# What the kit's wheel may hold (besides its .dist-info metadata).
WHEEL_ALLOW = ("rsna_aneurysm/*.py", "rsna_aneurysm/configs/*.json")
_WIN_ABS = re.compile(r"^[A-Za-z]:[\\/]")
_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_JSON_SCAN_LIMIT = 5_000_000  # bytes: larger JSON files are data, not credentials


def credential_name(name: str) -> bool:
    """Whether a file name is one of :data:`CREDENTIAL_NAMES`."""
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, pat) for pat in CREDENTIAL_NAMES)


def credential_json(data: Any) -> bool:
    """A JSON object with both ``key`` and ``username`` (a Kaggle API token), at any depth."""
    if isinstance(data, dict):
        if "key" in data and "username" in data:
            return True
        return any(credential_json(v) for v in data.values())
    if isinstance(data, list):
        return any(credential_json(v) for v in data)
    return False


def _credential_bytes(name: str, data: bytes) -> bool:
    if credential_name(PurePosixPath(name).name):
        return True
    if name.lower().endswith(".json") and len(data) <= _JSON_SCAN_LIMIT:
        try:
            return credential_json(json.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
    return bool(_PEM.search(data[:65536]))


def find_credentials(folder: str | Path) -> list[str]:
    """Credential-like files under ``folder`` (recursively, hidden files included) and inside its ``*.whl`` files;
    each as a path relative to ``folder`` (``wheel.whl!member`` inside a wheel)."""
    root = Path(folder)
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if credential_name(path.name):
            found.append(rel)
            continue
        if path.suffix == ".json" and path.stat().st_size <= _JSON_SCAN_LIMIT:
            if _credential_bytes(path.name, path.read_bytes()):
                found.append(rel)
        elif path.suffix in (".whl", ".zip"):
            found += [f"{rel}!{m}" for m in _zip_credentials(path)]
        elif path.stat().st_size <= 64_000:
            if _PEM.search(path.read_bytes()):
                found.append(rel)
    return found


def _zip_credentials(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return [info.filename for info in z.infolist() if not info.is_dir()
                    and (credential_name(PurePosixPath(info.filename).name)
                         or (info.file_size <= _JSON_SCAN_LIMIT
                             and _credential_bytes(info.filename, z.read(info.filename))))]
    except zipfile.BadZipFile:
        return []


def wheel_problems(wheel: str | Path, allow: tuple[str, ...] = WHEEL_ALLOW) -> list[str]:
    """Entries of the kit's wheel outside ``allow`` (its ``*.dist-info/`` excepted) and credential-like entries."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith("/"):
                continue
            top = name.split("/", 1)[0]
            if top.endswith(".dist-info") and "/" in name:
                continue
            if not any(fnmatch.fnmatchcase(name, pat) for pat in allow):
                problems.append(f"{name}: not an allow-listed file of the kit")
    problems += [f"{m}: looks like a credential" for m in _zip_credentials(Path(wheel))]
    return problems


def is_local_path(value: str) -> bool:
    """An absolute path of some machine: ``/a/b``, ``~/a``, ``C:\\a`` (a bare ``/`` or ``~`` is not)."""
    if value.startswith("~/") or value.startswith("~\\"):
        return True
    if _WIN_ABS.match(value):
        return len(PureWindowsPath(value).parts) >= 2
    return value.startswith("/") and "\n" not in value and len(PurePosixPath(value).parts) >= 2


def strip_local_paths(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` (JSON-like) with every absolute path string replaced by its last component; and the paths found."""
    found: list[str] = []

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            out = [walk(v) for v in x]
            return type(x)(out) if isinstance(x, tuple) else out
        if isinstance(x, str) and is_local_path(x):
            found.append(x)
            parts = PureWindowsPath(x).parts if _WIN_ABS.match(x) else PurePosixPath(x.replace("\\", "/")).parts
            return parts[-1]
        return x

    return walk(obj), found


def copy_json_stripped(src: Path, dst: Path) -> list[str]:
    """Copy a JSON file with its absolute paths stripped (:func:`strip_local_paths`); returns the paths removed."""
    data, found = strip_local_paths(json.loads(src.read_text()))
    if found:
        dst.write_text(json.dumps(data, indent=2) + "\n")
    else:
        shutil.copy2(src, dst)
    return found


def rewrite_checkpoint(src: Path, dst: Path) -> list[str]:
    """Copy a checkpoint; when its metadata (everything but tensors) holds absolute paths, write it again with
    ``torch.save`` after ``torch.load(weights_only=True)``, the paths stripped and the tensors unchanged. Returns the
    paths removed (empty: a byte copy)."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        shutil.copy2(src, dst)
        return []
    meta = {k: v for k, v in ckpt.items() if not _holds_tensors(v)}
    clean, found = strip_local_paths(meta)
    if not found:
        shutil.copy2(src, dst)
        return []
    torch.save({k: (clean[k] if k in clean else v) for k, v in ckpt.items()}, dst)
    return found


def _holds_tensors(x: Any) -> bool:
    import torch

    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, dict):
        return any(_holds_tensors(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_holds_tensors(v) for v in x)
    return False
