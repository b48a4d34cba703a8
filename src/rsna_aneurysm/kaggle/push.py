"""``rsna-aneurysm push``: upload the packaged datasets and push the kernel through the real ``kaggle`` CLI.

Every metadata file is checked before anything is uploaded (slug and title lengths, one license, the code file,
internet off, no unfilled placeholder), so a bad folder costs no upload. Each dataset is created when Kaggle does
not know it yet (``kaggle datasets status`` answers 404) and versioned otherwise. The CLI exits 0 on some
server-side errors, so its output is read too: a missing success line or an error line fails the step.
Credentials stay with the kaggle CLI (``KAGGLE_CONFIG_DIR`` / ``~/.kaggle``); this module never reads them, and it
refuses to upload a folder holding a credential-like file (``kaggle.json``, ``*.pem``, ``.env``, ``id_rsa``..., JSON
with ``key`` and ``username``, also inside a wheel), ``--dry-run`` included.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .safety import find_credentials

log = logging.getLogger(__name__)

DATASET_META = "dataset-metadata.json"
KERNEL_META = "kernel-metadata.json"
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Lines the CLI prints (with exit code 0) when the server refused something.
# HTTP failures read "404 Client Error: ..." and are caught by "error".
_ERROR_LINE = re.compile(r"error|not valid|could not|invalid|already in use|unsuccessful|failed", re.IGNORECASE)


class PushError(RuntimeError):
    """A metadata check, or a kaggle CLI step, failed; the message names the folder or the command."""


@dataclass
class Step:
    """One kaggle CLI call: what it is for, the command, and (once run) its exit code and output."""

    what: str
    cmd: list[str]
    rc: int | None = None
    output: str = ""


def _load(path: Path) -> dict:
    if not path.is_file():
        raise PushError(f"{path.parent}: no {path.name}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PushError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PushError(f"{path}: expected a JSON object")
    return data


def _check_ref(ref: object, kind: str, where: Path, min_len: int) -> list[str]:
    if not isinstance(ref, str) or ref.count("/") != 1:
        return [f"{where}: {kind} {ref!r} must be 'owner/slug'"]
    owner, slug = ref.split("/")
    problems = []
    if not _OWNER.fullmatch(owner):
        problems.append(f"{where}: owner {owner!r} of {ref!r} is not a Kaggle user name")
    if not min_len <= len(slug) <= 50:
        problems.append(f"{where}: slug {slug!r} of {ref!r} must be {min_len} to 50 characters, it has {len(slug)}")
    if not _SLUG.fullmatch(slug):
        problems.append(f"{where}: slug {slug!r} may hold only lower-case letters, digits and inner hyphens")
    return problems


def _placeholders(data: dict, where: Path) -> list[str]:
    left = sorted(set(re.findall(r"\{\{(\w+)\}\}", json.dumps(data))))
    return [f"{where}: unfilled placeholder(s) {left}: run `rsna-aneurysm package` first"] if left else []


def check_dataset(folder: Path) -> dict:
    """The dataset's metadata, after every check the CLI and the server would make; raises PushError listing all."""
    path = folder / DATASET_META
    meta = _load(path)
    problems = _placeholders(meta, path) + _check_ref(meta.get("id"), "id", path, 6)
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(f"{path}: title must be 6 to 50 characters, got {title!r}")
    subtitle = meta.get("subtitle")
    if subtitle is not None and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"{path}: subtitle must be 20 to 80 characters, got {subtitle!r}")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1 or not isinstance(licenses[0], dict) \
            or not licenses[0].get("name"):
        problems.append(f"{path}: licenses must hold exactly one {{\"name\": ...}}, got {licenses!r}")
    files = [p for p in folder.iterdir() if p.name != DATASET_META and not p.name.startswith(".")]
    dirs = [p.name for p in files if p.is_dir()]
    if dirs:
        problems.append(f"{folder}: sub-folders {dirs} would be skipped by the upload; keep files at the top")
    if not [p for p in files if p.is_file()]:
        problems.append(f"{folder}: no file to upload besides {DATASET_META}")
    problems += _credential_problems(folder)
    if problems:
        raise PushError("refusing to upload:\n  " + "\n  ".join(problems))
    return meta


def _credential_problems(folder: Path) -> list[str]:
    return [f"{folder}: {rel} looks like a credentials file; it must never be uploaded"
            for rel in find_credentials(folder)]


def check_kernel(folder: Path, datasets: list[str] | None = None) -> dict:
    """The kernel's metadata after the competition's rules (internet off, a competition source, the code file)."""
    path = folder / KERNEL_META
    meta = _load(path)
    problems = _placeholders(meta, path) + _check_ref(meta.get("id"), "id", path, 5)
    title = meta.get("title")
    if title is not None and (not isinstance(title, str) or len(title) < 5):
        problems.append(f"{path}: title must be at least 5 characters, got {title!r}")
    code = meta.get("code_file")
    if not isinstance(code, str) or not code:
        problems.append(f"{path}: code_file is not set")
    elif not (folder / code).is_file():
        problems.append(f"{path}: code_file {code!r} does not exist in {folder}")
    if meta.get("language") != "python":
        problems.append(f"{path}: language must be 'python', got {meta.get('language')!r}")
    if meta.get("kernel_type") not in ("script", "notebook"):
        problems.append(f"{path}: kernel_type must be 'script' or 'notebook', got {meta.get('kernel_type')!r}")
    if meta.get("enable_internet", True) is not False:
        problems.append(f"{path}: enable_internet must be false (code competitions run without internet; the "
                        "kaggle CLI turns it on when the key is missing)")
    if not meta.get("competition_sources"):
        problems.append(f"{path}: competition_sources is empty: the kernel would not see the competition data")
    sources = meta.get("dataset_sources") or []
    for ref in sources:
        problems += _check_ref(ref, "dataset source", path, 6)
    for ref in datasets or []:
        if ref not in sources:
            problems.append(f"{path}: dataset_sources lacks {ref!r}, which this push uploads")
    if not meta.get("enable_gpu"):
        log.warning("%s: enable_gpu is off; the kernel will run on CPU", path)
    problems += _credential_problems(folder)
    if problems:
        raise PushError("refusing to push the kernel:\n  " + "\n  ".join(problems))
    return meta


def kaggle_command() -> list[str]:
    """The kaggle CLI: the ``kaggle`` script beside this Python (a venv), else on PATH, else ``python -m kaggle``."""
    here = Path(sys.executable).parent / "kaggle"
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here)]
    found = shutil.which("kaggle")
    return [found] if found else [sys.executable, "-m", "kaggle"]


def run_kaggle(args: list[str], timeout: float = 3600.0) -> tuple[int, str]:
    """Run the kaggle CLI; (exit code, stdout + stderr)."""
    cmd = kaggle_command() + args
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise PushError(f"kaggle CLI not found ({e}); install the 'kaggle' extra") from None
    except subprocess.TimeoutExpired:
        raise PushError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from None
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


def output_error(rc: int, output: str, success: str) -> str | None:
    """Why a CLI step failed (exit code, an error line, or no ``success`` line), or None when it worked."""
    bad = [ln.strip() for ln in output.splitlines() if _ERROR_LINE.search(ln)]
    if rc != 0:
        return f"exit code {rc}: " + ("; ".join(bad) or output.strip()[-500:])
    if bad:
        return "; ".join(bad)
    if success.lower() not in output.lower():
        return f"no '{success}' in the output: {output.strip()[-500:]}"
    return None


def dataset_exists(ref: str) -> bool:
    """Whether Kaggle knows the dataset (``kaggle datasets status``: a status means yes, a 404 no)."""
    rc, out = run_kaggle(["datasets", "status", ref], timeout=120)
    if rc == 0 and not _ERROR_LINE.search(out):
        return True
    if "404" in out or "not found" in out.lower():
        return False
    raise PushError(f"`kaggle datasets status {ref}` failed: {out.strip()[-500:]}")


def wait_ready(ref: str, timeout_s: float, poll_s: float = 10.0) -> str:
    """Poll the dataset's status until it is ``ready`` (Kaggle processes uploads) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    status = ""
    while True:
        rc, out = run_kaggle(["datasets", "status", ref], timeout=120)
        status = out.strip().splitlines()[-1].strip().lower() if out.strip() else ""
        if rc == 0 and status == "ready":
            return status
        if rc != 0 or "failed" in status:
            raise PushError(f"dataset {ref} is not usable: {out.strip()[-500:]}")
        if time.monotonic() >= deadline:
            log.warning("dataset %s still %r after %.0f s; pushing the kernel anyway", ref, status, timeout_s)
            return status
        time.sleep(poll_s)


def push(staging: str | Path, message: str = "rsna-aneurysm package", dry_run: bool = False,
         only: list[str] | None = None, public: bool = False, wait_s: float = 600.0) -> list[Step]:
    """Check everything under ``staging`` (``datasets/*``, ``kernels/*``), then upload; returns the steps run."""
    staging = Path(staging)
    dataset_dirs = sorted(p for p in (staging / "datasets").glob("*") if (p / DATASET_META).exists())
    kernel_dirs = sorted(p for p in (staging / "kernels").glob("*") if (p / KERNEL_META).exists())
    if not dataset_dirs and not kernel_dirs:
        raise PushError(f"{staging}: no datasets/*/{DATASET_META} nor kernels/*/{KERNEL_META}; run "
                        "`rsna-aneurysm package` first")
    metas = {d: check_dataset(d) for d in dataset_dirs}
    refs = [m["id"] for m in metas.values()]
    kernels = {k: check_kernel(k, refs) for k in kernel_dirs}
    wanted = set(only or ["datasets", "kernel"])

    steps: list[Step] = []
    if "datasets" in wanted:
        for folder, meta in metas.items():
            ref = meta["id"]
            create = dry_run or not dataset_exists(ref)
            if create:
                cmd = ["datasets", "create", "-q", "-p", str(folder)] + (["--public"] if public else [])
                steps.append(Step(f"create dataset {ref}" + (" (or version it, if it exists)" if dry_run else ""),
                                  cmd))
            else:
                steps.append(Step(f"new version of dataset {ref}", ["datasets", "version", "-q", "-p", str(folder),
                                                                     "-m", message]))
            if not dry_run:
                _run_step(steps[-1], "is being created")
                wait_ready(ref, wait_s)
    if "kernel" in wanted:
        for folder, meta in kernels.items():
            steps.append(Step(f"push kernel {meta['id']}", ["kernels", "push", "-p", str(folder)]))
            if not dry_run:
                _run_step(steps[-1], "successfully")
    return steps


def _run_step(step: Step, success: str) -> None:
    step.rc, step.output = run_kaggle(step.cmd)
    problem = output_error(step.rc, step.output, success)
    if problem:
        raise PushError(f"{step.what} failed: `kaggle {' '.join(step.cmd)}`: {problem}")
    log.info("%s: done", step.what)
