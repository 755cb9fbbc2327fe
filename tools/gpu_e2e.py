"""End-to-end check of task isolation on a GPU machine: a real `cplat serve` (root, local agent).

Run as root on a node with an NVIDIA GPU, with cplat installed (``tools/gpu_check.sh`` does
the installing on a lent GPU machine). It starts ``cplat serve`` in a temporary data dir,
then runs jobs as a project member and prints one JSON document:

* the node view (GPUs from NVML with minor numbers, the isolation in effect);
* ``gpu``: a one-GPU job computing on the GPU through PyTorch (if the interpreter given by
  ``--torch-python`` exists), as its own unprivileged uid;
* ``no_gpu``: a job without GPUs that tries to open ``/dev/nvidia*`` and run
  ``nvidia-smi``; with devices restricted it must be refused;
* ``hog``: a 64 MiB job allocating 1 GiB, which must end ``oom_killed``;
* ``secret``: a job reading the signing secret, which must be denied.

It changes no GPU setting. Exit code 0 when every expectation holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cplat.client import Client

PROBE_DEVICES = r"""
import glob, os, subprocess
print("uid", os.getuid(), "cvd", os.environ.get("CUDA_VISIBLE_DEVICES"))
for dev in sorted(glob.glob("/dev/nvidia*")):
    if os.path.isdir(dev):
        continue
    try:
        os.close(os.open(dev, os.O_RDWR))
        print("open", dev, "ok")
    except OSError as err:
        print("open", dev, "errno", err.errno)
smi = "/usr/bin/nvidia-smi" if os.path.exists("/usr/bin/nvidia-smi") else "nvidia-smi"
try:
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    print("nvidia-smi rc", out.returncode, (out.stdout + out.stderr).strip()[:300])
except OSError as err:
    print("nvidia-smi missing", err)
"""

TORCH = r"""
import os, torch
print("uid", os.getuid(), "cvd", os.environ.get("CUDA_VISIBLE_DEVICES"))
x = torch.ones(1 << 20, device="cuda")
print("sum", float(x.sum()), torch.cuda.get_device_name(0), torch.cuda.device_count())
"""


def _wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"cplat serve did not answer at {url} within {timeout:.0f} s")


def main() -> int:
    """Run the check and print its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8479)
    ap.add_argument("--torch-python", default="/opt/torch/.venv/bin/python3")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cplat-gpu-e2e-"))
    os.chmod(base, 0o755)
    data = base / "data"
    url = f"http://127.0.0.1:{args.port}"
    cplat = [sys.executable, "-m", "cplat.cli"]
    log = open(base / "serve.log", "wb")  # noqa: SIM115 - closed at the end
    serve = subprocess.Popen(
        [*cplat, "serve", "--data-dir", str(data), "--port", str(args.port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    out: dict[str, Any] = {"ok": False}
    try:
        _wait_up(url)
        tok = subprocess.run(
            [*cplat, "token", "create", "--data-dir", str(data), "--user", "ana"]
            + ["--project", "vision", "--role", "member"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        admin = subprocess.run(
            [*cplat, "token", "create", "--data-dir", str(data), "--user", "ops"]
            + ["--project", "ops", "--role", "admin", "--cluster-admin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        deadline = time.monotonic() + 60
        nodes: list[Any] = []
        while time.monotonic() < deadline and not nodes:
            nodes = list(Client(url, admin).nodes())
            time.sleep(0.2)
        out["node"] = nodes[0] if nodes else None
        c = Client(url, tok)
        has_gpu = bool(nodes and nodes[0]["gpus"])
        jobs: dict[str, int] = {}
        if has_gpu and Path(args.torch_python).exists():
            jobs["gpu"] = c.submit(
                "gpu", [args.torch_python, "-c", TORCH], num_gpu=1, memory_mib=16384
            )["id"]
        if has_gpu:
            jobs["gpu_devices"] = c.submit(
                "gpu-devices", ["python3", "-c", PROBE_DEVICES], num_gpu=1, memory_mib=512
            )["id"]
        jobs["no_gpu"] = c.submit("no-gpu", ["python3", "-c", PROBE_DEVICES], memory_mib=512)["id"]
        jobs["hog"] = c.submit(
            "hog",
            ["python3", "-c", "x = b'a' * (1 << 30); print('allocated')"],
            memory_mib=64,
        )["id"]
        jobs["secret"] = c.submit("secret", f"cat {data}/jwt-secret", memory_mib=64)["id"]
        results: dict[str, Any] = {}
        for label, job in jobs.items():
            done = c.wait(job, timeout=300)
            text = "".join(chunk["data"] for chunk in c.logs(job))
            results[label] = {
                "state": done["state"],
                "reason": done.get("reason"),
                "exit_code": done.get("exit_code"),
                "placement": done.get("placement"),
                "log": text[-2000:],
            }
        out["jobs"] = results
        iso = (out["node"] or {}).get("isolation", {})
        checks = {
            "hog_oom_killed": "oom_killed" in (results["hog"]["reason"] or ""),
            "secret_denied": results["secret"]["state"] == "FAILED",
            "no_gpu_refused": not any(
                line.startswith("open /dev/nvidia") and line.endswith(" ok")
                for line in results["no_gpu"]["log"].splitlines()
            )
            if iso.get("devices_restricted")
            else None,
        }
        if "gpu" in results:
            checks["gpu_job_computes"] = "sum 1048576.0" in results["gpu"]["log"]
        out["checks"] = checks
        out["ok"] = all(v is not False for v in checks.values())
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
        out["serve_log_tail"] = (base / "serve.log").read_text(errors="replace")[-3000:]
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
