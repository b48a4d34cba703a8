"""Loading the running viewer in headless Chromium (through Playwright): console errors, rendered plots, screenshot.

Uses the system Chromium (``RSNA_CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on the
PATH), never a browser Playwright downloads. Used by the browser test and by ``rsna-aneurysm view --screenshot``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

# No network beyond the local server, no first-run or background traffic, no GPU.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
# How the page shows a rendered plotly figure: a 2D plot's SVG, a 3D scene's WebGL container.
SLICE_SELECTOR = ".js-plotly-plot .main-svg"
SCENE_SELECTOR = ".js-plotly-plot .gl-container canvas"
RUNNING_SELECTOR = '[data-testid="stStatusWidget"]'
EXCEPTION_SELECTOR = '[data-testid="stException"]'


class BrowserUnavailable(RuntimeError):
    """Playwright or a Chromium executable is missing (the reason says which)."""


def find_chromium() -> str | None:
    """Path of the system Chromium, or None."""
    env = os.environ.get("RSNA_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_unavailable_reason() -> str | None:
    """Why the browser check cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed (pip install playwright; no browser download needed)"
    if find_chromium() is None:
        return "no Chromium executable (apt-get install chromium, or set RSNA_CHROMIUM)"
    return None


@dataclass
class BrowserReport:
    """What the page showed: console and page errors, plot counts, app exceptions, the screenshot path."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    app_exceptions: list[str] = field(default_factory=list)
    n_plots: int = 0
    n_scenes: int = 0
    screenshot: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.page_errors or self.app_exceptions)


def inspect_app(url: str, screenshot: str | Path | None = None, timeout_s: float = 90.0,
                viewport: tuple[int, int] = (1680, 1800), min_plots: int = 4) -> BrowserReport:
    """Open ``url``, wait for ``min_plots`` plotly figures (one a 3D scene) and the app to go idle, collect errors.

    Raises BrowserUnavailable when Playwright or Chromium is missing, TimeoutError when the plots never appear.
    """
    reason = browser_unavailable_reason()
    if reason:
        raise BrowserUnavailable(reason)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    report = BrowserReport()
    t0 = time.perf_counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda m: report.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: report.page_errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
            try:
                page.wait_for_function(
                    "([s, g, n]) => document.querySelectorAll(s).length >= n && document.querySelectorAll(g).length",
                    arg=[".js-plotly-plot", SCENE_SELECTOR, min_plots], timeout=timeout_s * 1000)
                page.wait_for_selector(RUNNING_SELECTOR, state="detached", timeout=timeout_s * 1000)
            except PlaywrightTimeout as e:
                raise TimeoutError(f"{url}: fewer than {min_plots} plots (with a 3D scene) after {timeout_s:.0f} s: "
                                   f"{page.locator('.js-plotly-plot').count()} plot(s)") from e
            page.wait_for_timeout(1500)  # let plotly finish drawing (the WebGL scene draws asynchronously)
            report.n_plots = page.locator(".js-plotly-plot").count()
            report.n_scenes = page.locator(SCENE_SELECTOR).count()
            report.app_exceptions = [t.strip() for t in page.locator(EXCEPTION_SELECTOR).all_inner_texts()]
            if screenshot is not None:
                report.screenshot = Path(screenshot)
                report.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(report.screenshot), full_page=True)
        finally:
            browser.close()
    report.seconds = time.perf_counter() - t0
    return report
