"""``rsna-aneurysm view``: start the viewer (a streamlit app) on a local port and print its address."""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path

from ..cli_common import CommandError, add_command, add_weights_argument


def add_view_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "view", cmd_view,
                    help="start the viewer: slices, heatmap overlay, 3D view, predictions (streamlit)",
                    description="Start the viewer on a local port and print its address. --data is a "
                                "preprocessed folder or a competition folder (series preprocessed on first view).")
    p.add_argument("--data", required=True, help="preprocessed folder (manifest.parquet) or competition folder")
    p.add_argument("--pred", help="prediction folder: predictions.parquet|oof.parquet, heatmaps/<uid>.nii.gz, "
                                  "thresholds.json, metrics.json (default: the --weights folder)")
    add_weights_argument(p, "weights folder, enables 'Run the predictor on this series'", required=False)
    p.add_argument("--cache", help="cache folder for on-the-fly preprocessing and live predictions "
                                   "(default ~/.cache/rsna-aneurysm/viewer/<hash of --data>)")
    p.add_argument("--series", help="SeriesInstanceUID to open first (the address gets ?series=UID)")
    p.add_argument("--threshold", type=float, help="initial overlay threshold (default 0.5; ?threshold=P)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to reach it from elsewhere)")
    p.add_argument("--port", type=int, help="port (default 8501 when free, else any free port)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the server (and the browser)")
    p.add_argument("--check", action="store_true", help="start, confirm the server answers, print the address, stop")
    p.add_argument("--screenshot", metavar="PNG", help="load the app in headless Chromium, save a screenshot, "
                                                        "report browser console errors, stop")
    return p


def _check_folder(path: str | None, what: str) -> str | None:
    if path is not None and not Path(path).is_dir():
        raise FileNotFoundError(f"{what} {path}: no such folder")
    return path


def cmd_view(args: argparse.Namespace) -> int:
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError as e:
        raise CommandError(f"the viewer needs the 'viewer' extra (pip install 'rsna-aneurysm[viewer]'): {e}") from e
    from .server import start_viewer
    from .state import ViewerSettings

    settings = ViewerSettings(data=str(Path(_check_folder(args.data, "--data")).resolve()),
                              pred=_check_folder(args.pred, "--pred"),
                              weights=_check_folder(args.weights, "--weights"), cache=args.cache)
    server = start_viewer(settings, host=args.host, port=args.port, timeout_s=args.timeout)
    query = {k: v for k, v in (("series", args.series), ("threshold", args.threshold)) if v is not None}
    url = server.url + (f"/?{urllib.parse.urlencode(query)}" if query else "")
    print(f"viewer running at {url}  (log: {server.log_path}; Ctrl-C stops it)", flush=True)
    try:
        if args.screenshot:
            return _screenshot(url, args.screenshot, args.timeout)
        if args.check:
            return 0
        return int(server.process.wait() or 0)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _screenshot(url: str, path: str, timeout: float) -> int:
    """Load the app in headless Chromium, save the screenshot; browser-side errors go to stderr, exit 1."""
    import sys

    from .browser import inspect_app

    report = inspect_app(url, screenshot=path, timeout_s=timeout)
    print(f"screenshot {report.screenshot}: {report.n_plots} plots ({report.n_scenes} 3D) in {report.seconds:.1f} s")
    for kind, items in (("console error", report.console_errors), ("page error", report.page_errors),
                        ("app exception", report.app_exceptions)):
        for item in items:
            print(f"{kind}: {item}", file=sys.stderr)
    return 0 if report.ok else 1
