"""Starting and stopping the viewer's streamlit server as a child process.

``rsna-aneurysm view`` and the browser test both use :func:`start_viewer`: it runs ``streamlit run app.py`` headless
on a local port, with the folders passed through environment variables, and waits until the server answers its
health check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .state import ViewerSettings

APP_PATH = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501


class ViewerStartError(RuntimeError):
    """The streamlit server exited or did not answer its health check in time (the message holds its log's tail)."""


@dataclass
class ViewerServer:
    """A running viewer: its process, address and log file."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (kill it if it does not stop within ``timeout_s``)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process could still take it before streamlit binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def streamlit_command(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line of the viewer: headless, no usage statistics, no file watcher."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.address", host, "--server.port",
            str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false", "--theme.base", "dark",
            "--client.toolbarMode", "minimal"]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def start_viewer(settings: ViewerSettings, host: str = "127.0.0.1", port: int | None = None,
                 timeout_s: float = 60.0, log_path: str | Path | None = None) -> ViewerServer:
    """Start the app for ``settings`` and wait for its health check; raises ViewerStartError when it fails.

    ``port`` None: 8501 when free, else any free port. The server's output goes to ``log_path`` (default: a
    ``viewer.log`` in the settings' cache folder).
    """
    if port is None:
        port = DEFAULT_PORT if port_free(host, DEFAULT_PORT) else free_port(host)
    log_path = Path(log_path) if log_path else settings.cache_dir / "viewer.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(streamlit_command(host, port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    url = f"http://{host}:{port}"
    server = ViewerServer(proc, url, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ViewerStartError(f"streamlit exited with code {proc.returncode}; {log_path}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    server.stop()
    raise ViewerStartError(f"the viewer did not answer {url}/_stcore/health within {timeout_s:.0f} s; "
                           f"{log_path}:\n{_tail(log_path)}")
