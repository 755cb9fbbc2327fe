"""The status page at ``/``, rendered by a real headless browser against ``cplat serve``.

The page is static HTML whose inline script reads the JSON API with a token; only a browser
running that script shows whether the page works, so the test drives Debian's chromium
(``--dump-dom`` prints the DOM after the script ran) and skips when it is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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

import pytest

pytest.importorskip("aiohttp")

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@dataclass
class Served:
    url: str
    data_dir: Path

    def token(self, user: str, project: str, role: str, *admin: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cplat.cli", "token", "create", "--data-dir", str(self.data_dir)]
            + ["--user", user, "--project", project, "--role", role, *admin],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "CPLAT_JWT_SECRET"},
        )
        return out.stdout.strip()

    def call(self, method: str, path: str, tok: str | None, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, method=method)
        if tok is not None:
            req.add_header("Authorization", f"Bearer {tok}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, data, timeout=10) as r:
                raw, ctype, status = r.read(), r.headers.get("Content-Type", ""), r.status
                headers = dict(r.headers)
        except urllib.error.HTTPError as exc:
            raw, ctype, status = exc.read(), exc.headers.get("Content-Type", ""), exc.code
            headers = dict(exc.headers)
        if "json" in ctype:
            return status, json.loads(raw)
        return status, (raw.decode(), headers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    data = tmp_path / "data"
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cplat.cli", "serve", "--port", str(port)]
        + ["--data-dir", str(data), "--no-local-agent"],
        stdout=log,
        stderr=subprocess.STDOUT,
        # The secret the service keeps in its data dir, which `cplat token create` reads.
        env={k: v for k, v in os.environ.items() if k != "CPLAT_JWT_SECRET"},
    )
    svc = Served(f"http://127.0.0.1:{port}", data)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if svc.call("GET", "/healthz", None)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "cplat serve did not start: " + (tmp_path / "serve.log").read_text()
                )
            time.sleep(0.2)
        yield svc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


#: The sanitizer run (tools/sanitize.sh) preloads ASan/UBSan into every child: the browser is
#: not cplat's code and hangs under them, so it starts without them.
_SANITIZER_VARS = {"LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"}


def _render(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        + [f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in _SANITIZER_VARS},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_root_is_a_static_page_with_a_strict_policy(served: Served) -> None:
    admin = served.token("root", "system", "admin", "--cluster-admin")
    other = served.token("eve", "other", "member")
    assert (
        served.call("POST", "/v1/jobs", other, {"name": "other-secret", "command": ["true"]})[0]
        == 201
    )
    status, (html, headers) = served.call("GET", "/", None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "cplat status" in html and "other-secret" not in html  # no data without a token
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://", html)
    # The page is no API operation: the spec (and so the fuzzers) leave it out.
    status, spec = served.call("GET", "/openapi.json", admin)
    assert status == 200 and "/" not in spec["paths"]


@needs_chromium
def test_browser_renders_cluster_queue_and_jobs(served: Served, tmp_path: Path) -> None:
    admin = served.token("root", "system", "admin", "--cluster-admin")
    member = served.token("ana", "vision", "member")
    other = served.token("eve", "other", "member")
    node = {"name": "n1", "cpu_milli": 48000, "memory_mib": 196608}
    assert served.call("POST", "/v1/nodes", admin, node)[0] in (200, 201)
    # Too large for the one node: it stays in the queue.
    big = {
        "name": "probe-waiting",
        "command": ["true"],
        "tasks": {"count": 1, "resources": {"cpu_milli": 96000}},
    }
    status, job = served.call("POST", "/v1/jobs", member, big)
    assert status == 201, job
    assert (
        served.call("POST", "/v1/jobs", other, {"name": "other-secret", "command": ["true"]})[0]
        == 201
    )
    status, cluster = served.call("GET", "/v1/cluster", member)
    assert status == 200 and cluster["capacity"]["cpu_milli"] == 48000

    dom = _render(f"{served.url}/#token={member}", tmp_path / "profile")
    facts = dict(re.findall(r'<dd data-fact="([^"]+)">([^<]*)</dd>', dom))
    assert facts["nodes"].startswith("1 (") and " of 48 cores" in facts["CPU allocated"], facts
    assert f"{cluster['jobs']['pending']} pending" in facts["jobs"], facts
    queue = dom.split('id="queue"')[1].split("</tbody>")[0]
    recent = dom.split('id="recent"')[1].split("</tbody>")[0]
    assert "<td>probe-waiting</td>" in queue and f'<td class="n">{job["id"]}</td>' in queue
    assert "<td>probe-waiting</td>" in recent and "<td>PENDING</td>" in recent
    assert "other-secret" not in dom  # another project's job stays out of sight
    assert member not in dom  # the token was wiped from the address and the page
