"""A real ``cplat serve`` subprocess for tests that drive the unmodified ``mlflow`` client.

The server gets a known JWT secret through ``CPLAT_JWT_SECRET`` so that tests make tokens with
:func:`cplat.testing.service.token`; the client is pointed at it with ``MLFLOW_TRACKING_URI`` and
authenticates with ``MLFLOW_TRACKING_TOKEN`` (switch tokens with :meth:`Served.use`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cplat.testing.service import SECRET

#: The client fails fast in tests instead of retrying with back-off.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def free_port() -> int:
    """Return a port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ``cplat serve``."""

    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]

    def use(self, token: str) -> None:
        """Make the mlflow client in this process talk to the server with ``token``."""
        os.environ["MLFLOW_TRACKING_URI"] = self.url
        os.environ["MLFLOW_TRACKING_TOKEN"] = token

    def call(
        self, method: str, path: str, token: str | None, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        """Send one request (JSON body, or ``raw`` bytes); return the status and the answer."""
        req = urllib.request.Request(self.url + path, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, data, timeout=30) as r:
                payload, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")


@contextlib.contextmanager
def serve(tmp: Path, db: str = "") -> Iterator[Served]:
    """Run ``cplat serve`` (no local agent) on a free port until the block ends."""
    data = tmp / "data"
    port = free_port()
    log_path = tmp / "serve.log"
    env = dict(os.environ, CPLAT_JWT_SECRET=SECRET)
    args = [sys.executable, "-m", "cplat.cli", "serve", "--port", str(port)]
    args += ["--data-dir", str(data), "--no-local-agent"]
    if db:
        args += ["--db", db]
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        served = Served(f"http://127.0.0.1:{port}", data, proc)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if served.call("GET", "/healthz", None)[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("cplat serve did not start: " + log_path.read_text())
                time.sleep(0.2)
            yield served
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
