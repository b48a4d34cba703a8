"""RSNA Intracranial Aneurysm Detection: the submission kernel of the rsna-aneurysm kit.

Thin on purpose: install the attached wheels offline, import the kit from the attached code dataset, build the
predictor from the attached weights dataset, and hand a plain ``predict(series_path)`` function (some releases of
the relay refuse a bound method) to the competition's ``RSNAInferenceServer`` (``serve()`` in the scored rerun,
``run_local_gateway()`` in an interactive run). Without ``kaggle_evaluation`` (run here, off Kaggle) the kit's local
gateway plays the server over a test folder. The predictor's summary is logged every RSNA_SUMMARY_EVERY series
(default 100): in the scored rerun ``serve()`` never returns.

The datasets are found by their manifest files, not by slug, under the input root. Environment settings (all
optional on Kaggle): RSNA_INPUT_ROOT (default /kaggle/input), RSNA_WORK_DIR (/kaggle/working), RSNA_TEST_DATA
(local gateway: a DATA folder with test/, or a test folder), RSNA_SUBMISSION (local gateway output),
RSNA_SHARE_ROOT (share folder of the local gateway and the predictor; ignored, with a warning, when
kaggle_evaluation is present: then only the gateway's /kaggle/shared is ever deleted), RSNA_PREDICTOR_OVERRIDES
(JSON object of predictor settings, e.g. '{"budget.total_seconds": 32400}'), RSNA_SUMMARY_EVERY (0: only at the
end), RSNA_SKIP_INSTALL=1 (use the kit already installed).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

START = time.time()
INPUT = Path(os.environ.get("RSNA_INPUT_ROOT", "/kaggle/input"))
WORK = Path(os.environ.get("RSNA_WORK_DIR", "/kaggle/working"))
log = logging.getLogger("submit")


def find(name_pattern: str, parent: str | None = None) -> list[Path]:
    """Files matching ``name_pattern`` (in a folder named ``parent``, if given) up to four folders below the input
    root (mount layouts differ). Folders of more than 500 entries (the competition's series) are not entered."""
    found = []
    for root, dirs, files in os.walk(INPUT, followlinks=True):
        here = Path(root)
        if parent is None or here.name == parent:
            found += [here / f for f in fnmatch.filter(files, name_pattern)]
        if len(here.relative_to(INPUT).parts) >= 4 or len(dirs) + len(files) > 500:
            dirs[:] = []
    return sorted(found)


def pip_install(wheels: list[Path], find_links: list[Path]) -> int:
    """Install wheel files into the working site folder, offline; returns the exit code."""
    site = WORK / "rsna_site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade",
           "--target", str(site)]
    for d in find_links:
        cmd += ["--find-links", str(d)]
    rc = subprocess.run(cmd + [str(w) for w in wheels]).returncode
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    return rc


def install() -> None:
    kit = find("rsna_aneurysm-*.whl")
    if not kit:
        raise SystemExit(f"no rsna_aneurysm-*.whl under {INPUT}: attach the code dataset")
    extra_dirs = [m.parent for m in find("rsna_wheels.json")]
    extra = [w for d in extra_dirs for w in sorted(d.glob("*.whl"))]
    if extra and pip_install(extra, extra_dirs) != 0:
        log.warning("installing %d extra wheel(s) failed; compressed DICOM may not decode", len(extra))
    if pip_install(kit[-1:], [kit[-1].parent]) != 0:
        raise SystemExit(f"installing {kit[-1]} failed")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("RSNA_SKIP_INSTALL") != "1":
        install()
    import rsna_aneurysm
    from rsna_aneurysm.infer.predictor import Predictor

    manifests = find("rsna_weights.json")
    if not manifests:
        raise SystemExit(f"no rsna_weights.json under {INPUT}: attach the weights dataset")

    for comp in find("__init__.py", parent="kaggle_evaluation"):
        sys.path.append(str(comp.parent.parent))
    try:
        import kaggle_evaluation.rsna_inference_server as rsna_server
    except ImportError:
        rsna_server = None

    from rsna_aneurysm.infer.gateway import kernel_share_root

    overrides = json.loads(os.environ.get("RSNA_PREDICTOR_OVERRIDES", "{}"))
    share, warnings = kernel_share_root(rsna_server is not None, os.environ.get("RSNA_SHARE_ROOT"),
                                        overrides.get("share_root"), WORK)
    for w in warnings:
        log.warning("%s", w)
    overrides["share_root"] = share
    # Time already spent (start-up, installs) counts against the run-time limit.
    overrides.setdefault("budget.elapsed_at_start", time.time() - START)
    predictor = Predictor.from_weights(manifests[0].parent, overrides=overrides)  # models load in the first predict
    log.info("rsna_aneurysm %s from %s; weights %s; share folder %s", rsna_aneurysm.__version__,
             rsna_aneurysm.__file__, manifests[0].parent, share)
    every = int(os.environ.get("RSNA_SUMMARY_EVERY", "100"))

    def predict(series_path: str):
        """The server's endpoint: a plain function (not a bound method); logs the summary every ``every`` series."""
        row = predictor.predict(series_path)
        try:
            predictor.log_summary(every)
        except Exception as e:  # noqa: BLE001 - reporting must never cost a row
            log.warning("summary failed: %s", e)
        return row

    if rsna_server is not None:
        server = rsna_server.RSNAInferenceServer(predict)
        if os.getenv("KAGGLE_IS_COMPETITION_RERUN"):
            server.serve()
        else:
            server.run_local_gateway()
    else:
        from rsna_aneurysm.infer.gateway import run_gateway

        test_data = os.environ.get("RSNA_TEST_DATA")
        if not test_data:
            raise SystemExit("no kaggle_evaluation here: set RSNA_TEST_DATA to a test folder for the local gateway")
        result = run_gateway(predict, test_data, share_root=share,
                             out_path=os.environ.get("RSNA_SUBMISSION", str(WORK / "submission.parquet")))
        print(result.summary())
    print("predictor summary: " + json.dumps({k: v for k, v in predictor.summary().items() if k != "config"},
                                             default=str))

if __name__ == "__main__":
    main()
