"""The viewer in headless Chromium: the three slice views and the 3D plot render without browser console errors.

Needs the ``playwright`` package and a system Chromium (``apt-get install chromium``); skipped with the reason
otherwise. Playwright drives the system browser: no browser is downloaded.
"""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")

from rsna_aneurysm.viewer.browser import browser_unavailable_reason, inspect_app  # noqa: E402
from rsna_aneurysm.viewer.server import free_port, start_viewer  # noqa: E402
from rsna_aneurysm.viewer.state import ViewerSettings  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_views_and_3d_plot_render_without_console_errors(browser_ready, tmp_path, viewer_data):
    settings = ViewerSettings(str(viewer_data.pre), str(viewer_data.pred), None, str(tmp_path / "cache"))
    with start_viewer(settings, port=free_port()) as server:
        report = inspect_app(server.url, screenshot=tmp_path / "viewer.png", timeout_s=120)
    assert report.console_errors == [] and report.page_errors == [] and report.app_exceptions == []
    assert report.n_plots >= 4 and report.n_scenes >= 1  # axial, coronal, sagittal + the 3D scene
    assert report.screenshot.stat().st_size > 10_000
