"""``rsna-aneurysm view``: argument checks, and a real server start that answers its health check."""

from __future__ import annotations

import argparse
import urllib.request

import pytest

pytest.importorskip("streamlit")

from rsna_aneurysm.cli import main  # noqa: E402
from rsna_aneurysm.viewer.cli import add_view_parser  # noqa: E402
from rsna_aneurysm.viewer.server import free_port, start_viewer, streamlit_command  # noqa: E402
from rsna_aneurysm.viewer.state import ViewerSettings  # noqa: E402


def test_view_is_registered_with_its_options():
    parser = argparse.ArgumentParser()
    add_view_parser(parser.add_subparsers())
    args = parser.parse_args(["view", "--data", "D", "--pred", "P", "--weights", "W", "--port", "9000"])
    assert (args.data, args.pred, args.weights, args.port, args.host) == ("D", "P", "W", 9000, "127.0.0.1")
    cmd = streamlit_command("127.0.0.1", 9000)
    assert cmd[cmd.index("--server.port") + 1] == "9000" and cmd[cmd.index("--server.headless") + 1] == "true"


def test_view_rejects_missing_folders(tmp_path, capsys):
    assert main(["view", "--data", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip() == f"rsna-aneurysm view: error: --data {tmp_path / 'nope'}: no such folder"
    assert main(["view", "--data", str(tmp_path), "--pred", str(tmp_path / "nope")]) == 1
    assert main(["view", "--data", str(tmp_path), "--weights", str(tmp_path / "nope")]) == 1
    assert "--weights" in capsys.readouterr().err


def test_view_check_starts_the_server_and_prints_its_address(tmp_path, capsys, viewer_data):
    port = free_port()
    rc = main(["view", "--data", str(viewer_data.pre), "--pred", str(viewer_data.pred), "--cache",
               str(tmp_path / "cache"), "--port", str(port), "--check"])
    out = capsys.readouterr().out
    assert rc == 0 and f"viewer running at http://127.0.0.1:{port}" in out


def test_server_serves_the_app_page_until_stopped(tmp_path, viewer_data):
    settings = ViewerSettings(str(viewer_data.pre), str(viewer_data.pred), None, str(tmp_path / "cache"))
    with start_viewer(settings, port=free_port()) as server:
        with urllib.request.urlopen(server.url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    assert server.process.poll() is not None
