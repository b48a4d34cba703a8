"""Test helpers (not a test module): a stand-in for the Kaggle API on http://localhost:80, and a tiny local wheel.

The real kaggle CLI talks to it when ``KAGGLE_API_ENVIRONMENT=LOCALHOST``. It implements just what ``datasets
status/create/version`` and ``kernels push`` call (JSON RPC under ``/api/v1/<service>/<method>``, resumable blob
uploads by PUT) and records every request, the uploaded bytes and the metadata, so tests can check what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_wheel(folder: Path, name: str = "rsna_demo_extra", version: str = "1.0") -> Path:
    """A valid pure-Python wheel (``import rsna_demo_extra`` gives ``VALUE = 42``), standing in for a decoder."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: rsna-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


class KaggleStandIn:
    def __init__(self, port: int = 80) -> None:
        self.port = port
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "body", "auth"}
        self.uploads: dict[str, bytes] = {}  # token -> bytes
        self.blob_names: dict[str, str] = {}  # token -> file name
        self.datasets: dict[str, dict[str, Any]] = {}  # "owner/slug" -> last create/version request
        self.kernels: dict[str, dict[str, Any]] = {}  # "owner/slug" -> last SaveKernel request
        self.kernel_error: str | None = None  # answer SaveKernel with this error (the CLI still exits 0)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, wait_s: float = 30.0) -> KaggleStandIn:
        """Bind 127.0.0.1:port (waiting up to ``wait_s`` for a busy port); PermissionError when not allowed."""
        handler = self._handler()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                ThreadingHTTPServer.allow_reuse_address = True
                self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
                break
            except PermissionError:
                raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def calls(self, method_name: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/" + method_name)]

    # -- the API -----------------------------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        name = path.rsplit("/", 1)[-1]
        if method == "PUT" and path.startswith("/upload/"):
            return 200, {}
        if name == "GetDatasetStatus":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref in self.datasets:
                return 200, {"status": "READY"}
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        if name == "StartBlobUpload":
            token = f"tok{len(self.blob_names)}"
            self.blob_names[token] = body.get("name", "")
            return 200, {"token": token, "createUrl": f"http://localhost:{self.port}/upload/{token}"}
        if name == "CreateDataset":
            ref = f"{body['ownerSlug']}/{body['slug']}"
            self.datasets[ref] = body
            return 200, {"ref": ref, "url": f"http://localhost/{ref}", "status": "ok"}
        if name == "CreateDatasetVersion":
            ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": f"Dataset {ref} not found"}
            self.datasets[ref] = body
            return 200, {"ref": ref, "url": f"http://localhost/{ref}", "status": "ok"}
        if name == "SaveKernel":
            if self.kernel_error:
                return 200, {"error": self.kernel_error}
            self.kernels[body["slug"]] = body
            return 200, {"ref": body["slug"], "url": f"http://localhost/code/{body['slug']}", "versionNumber": 1}
        return 404, {"code": 404, "message": f"stand-in does not implement {method} {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _read(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self, method: str) -> None:
                raw = self._read()
                body: Any = None
                if method == "POST":
                    body = json.loads(raw or b"{}")
                elif self.path.startswith("/upload/"):
                    standin.uploads[self.path.rsplit("/", 1)[-1]] = raw
                standin.requests.append({"method": method, "path": self.path, "body": body,
                                         "auth": self.headers.get("Authorization")})
                status, answer = standin.answer(method, self.path, body or {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

        return Handler
