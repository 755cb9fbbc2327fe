#!/usr/bin/env python3
"""Check on a GPU machine that a task's cgroup lets it open its own GPUs and no other.

Run as root with cplat importable (``pip install -e .``, or from the repository root)::

    sudo python tools/gpu_device_check.py [--timeout 55]

The task cgroup is made the way the agent makes it: on cgroup v2 an eBPF device program
(:mod:`cplat.runtime.devices_bpf`) on a fresh child cgroup, else the v1 devices controller's
allow-list; the rules are :func:`cplat.runtime.isolation.device_rules`. Then, each time in a
child process that joins the cgroup before it opens anything:

1. ``no-gpu``: the task allow-list without GPUs. ``/dev/null`` opens; ``/dev/nvidia0`` and
   ``/dev/nvidiactl`` fail with EPERM.
2. ``control-only``: the NVIDIA control devices but no GPU, as a task of another GPU has.
   ``/dev/nvidia<minor>`` fails with EPERM, ``nvidia-smi -L`` lists no GPU, a CUDA context
   cannot be made.
3. ``own-gpu``: the first GPU's minor allowed (as a task assigned that GPU has). Its node
   and the control devices open, every other GPU's node fails with EPERM, ``nvidia-smi -L``
   lists it, and torch (where importable) makes a CUDA context with ``CUDA_VISIBLE_DEVICES``
   naming it.

It only opens device nodes and starts ``nvidia-smi -L`` and a CUDA context: no GPU setting
is read-modified-written. Prints one JSON object; exits 0 when every check that could run
passed, 1 otherwise, 2 when it cannot run at all (not root, no device nodes, no cgroup).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from cplat.runtime import devices_bpf
    from cplat.runtime.isolation import _cgroup_mounts, _own_cgroups, _under, device_rules
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from cplat.runtime import devices_bpf
    from cplat.runtime.isolation import _cgroup_mounts, _own_cgroups, _under, device_rules

PROC = Path("/proc")

#: Opens each path given read-write and prints {path: errno or 0}.
OPEN_CHILD = r"""
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        out[path] = 0
    except OSError as err:
        out[path] = err.errno
print(json.dumps(out))
"""

TORCH_CHILD = r"""
import json
try:
    import torch
except Exception as err:
    print(json.dumps({"importable": False, "error": repr(err)}))
    raise SystemExit(0)
try:
    torch.cuda.init()
    x = torch.ones(1, device="cuda")
    print(json.dumps({"importable": True, "ok": True, "device_count": torch.cuda.device_count(),
                      "name": torch.cuda.get_device_name(0), "value": float(x.sum().item())}))
except Exception as err:
    print(json.dumps({"importable": True, "ok": False,
                      "error": (type(err).__name__ + ": " + str(err))[:300]}))
"""


class Cgroup:
    """A throwaway task cgroup restricted to ``rules``, by a device program or by v1."""

    def __init__(self, mechanism: str, parent: Path, rules: list[str]) -> None:
        self.path = parent / f"cplat-gpucheck-{os.getpid()}-{secrets.token_hex(3)}"
        self.path.mkdir()
        try:
            if mechanism == "bpf":
                devices_bpf.attach(self.path, rules)
            else:
                self._write("devices.deny", "a")
                for rule in rules:
                    self._write("devices.allow", rule)
        except BaseException:
            self.remove()
            raise

    def _write(self, name: str, value: str) -> None:
        fd = os.open(self.path / name, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> Any:
        """Run argv in the cgroup; return (exit code or None on timeout, stdout, stderr)."""
        procs = os.open(self.path / "cgroup.procs", os.O_WRONLY)

        def join() -> None:
            # In the child before exec: nothing it runs opens a device outside the cgroup.
            os.write(procs, b"0")

        try:
            proc = subprocess.Popen(
                argv,
                preexec_fn=join,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(procs)
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout))
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return None, out, err

    def remove(self) -> None:
        """Kill what is left in the cgroup and remove it."""
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(OSError):
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


def _mechanism() -> tuple[str | None, Path | None, str]:
    """("bpf" or "v1", the parent of the test cgroups, why) or (None, None, why)."""
    v1, v2 = _cgroup_mounts(PROC)
    own_v1, own_v2 = _own_cgroups(PROC)
    reasons = []
    if v2 is not None:
        parent = _under(v2, own_v2)
        why = devices_bpf.probe(parent)
        if why is None:
            return "bpf", parent, f"eBPF device program under {parent}"
        # Under the mount's root, as the agent in v2 mode puts its tasks.
        if parent != v2[0] and devices_bpf.probe(v2[0]) is None:
            return "bpf", v2[0], f"eBPF device program under {v2[0]}"
        reasons.append(f"v2: {why}")
    else:
        reasons.append("v2: no cgroup2 mount")
    if "devices" in v1:
        return "v1", _under(v1["devices"], own_v1.get("devices")), "v1 devices controller"
    reasons.append("v1: no devices controller mounted")
    return None, None, "; ".join(reasons)


def _gpus(dev: Path) -> list[dict[str, Any]]:
    """List the GPUs of /proc/driver/nvidia (minor, bus id, UUID) by bus id, NVML's order."""
    out = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        text = info.read_text(errors="replace")
        minor = re.search(r"Device Minor:\s*(\d+)", text)
        uuid = re.search(r"GPU UUID:\s*(\S+)", text)
        if minor:
            out.append(
                {
                    "bus": info.parent.name,
                    "minor": int(minor.group(1)),
                    "uuid": uuid.group(1) if uuid else None,
                }
            )
    if not out:  # no procfs entries: the device nodes alone
        for node in sorted(dev.glob("nvidia[0-9]*")):
            out.append({"bus": None, "minor": os.minor(node.stat().st_rdev), "uuid": None})
    return out


def _gpus_of(dev: Path) -> list[dict[str, Any]]:
    """List the GPU nodes of a directory other than /dev (no procfs entry describes them)."""
    nodes = sorted(dev.glob("nvidia[0-9]*"), key=lambda p: int(p.name[6:]))
    return [{"bus": None, "minor": os.minor(p.stat().st_rdev), "uuid": None} for p in nodes]


def main() -> int:
    """Run the checks; print the JSON summary; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=55.0, help="overall budget in seconds")
    ap.add_argument(
        "--dev",
        type=Path,
        default=Path("/dev"),
        help="where the NVIDIA device nodes are (default /dev; another directory of nodes "
        "made with mknod exercises the checks on a machine without GPUs)",
    )
    args = ap.parse_args()
    start = time.monotonic()
    budget = float(args.timeout)

    def left() -> float:
        return budget - (time.monotonic() - start)

    summary: dict[str, Any] = {"ok": False, "mechanism": None, "how": "", "gpus": []}
    summary.update({"failures": [], "checks": {}})
    if os.geteuid() != 0:
        summary["error"] = "run as root (it creates cgroups and attaches device programs)"
        print(json.dumps(summary, indent=2))
        return 2
    proc_devices = (PROC / "devices").read_text()
    dev: Path = args.dev
    gpus = _gpus(dev) if dev == Path("/dev") else _gpus_of(dev)
    summary["gpus"] = gpus
    ctl = dev / "nvidiactl"
    if not gpus or not ctl.exists():
        summary["error"] = "no /dev/nvidia<N> or /dev/nvidiactl device nodes"
        print(json.dumps(summary, indent=2))
        return 2
    mechanism, parent, how = _mechanism()
    summary["mechanism"], summary["how"] = mechanism, how
    if mechanism is None or parent is None:
        summary["error"] = f"no way to restrict devices here: {how}"
        print(json.dumps(summary, indent=2))
        return 2

    own = gpus[0]
    own_node = str(dev / f"nvidia{own['minor']}")
    others = [str(dev / f"nvidia{g['minor']}") for g in gpus[1:]]
    control = [str(p) for p in (ctl, dev / "nvidia-uvm") if p.exists()]
    nvidia_major = os.major(os.stat(own_node).st_rdev)
    smi = shutil.which("nvidia-smi")
    checks: dict[str, Any] = summary["checks"]
    failures: list[str] = summary["failures"]

    def expect(stage: str, what: str, cond: bool) -> None:
        checks.setdefault(stage, {}).setdefault("expectations", {})[what] = cond
        if not cond:
            failures.append(f"{stage}: {what}")

    def opens(cg: Cgroup, stage: str, paths: list[str]) -> dict[str, int]:
        code, out, err = cg.run([sys.executable, "-c", OPEN_CHILD, *paths], min(15, left()))
        result: dict[str, int] = json.loads(out) if code == 0 else {}
        checks[stage]["opens"] = result or {"error": err.strip()[-300:]}
        return result

    def nvidia_smi(cg: Cgroup, stage: str) -> tuple[int | None, str]:
        assert smi is not None
        code, out, err = cg.run([smi, "-L"], min(20, left()))
        checks[stage]["nvidia_smi"] = {"exit": code, "out": (out + err).strip()[-500:]}
        return code, out

    def torch_run(cg: Cgroup, stage: str, visible: str | None) -> dict[str, Any] | None:
        if left() < 12:
            checks[stage]["torch"] = "skipped: out of time"
            return None
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        code, out, err = cg.run([sys.executable, "-c", TORCH_CHILD], left() - 2, env)
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"importable": True, "ok": False, "error": f"exit {code}: {err[-300:]}"}
        checks[stage]["torch"] = result
        return result if result.get("importable") else None

    # 1. The task allow-list without GPUs: no NVIDIA device at all.
    stage = "no-gpu"
    checks[stage] = {"rules": device_rules([], proc_devices)}
    cg = Cgroup(mechanism, parent, checks[stage]["rules"])
    try:
        got = opens(cg, stage, ["/dev/null", own_node, str(ctl)])
        expect(stage, "/dev/null opens", got.get("/dev/null") == 0)
        expect(stage, f"{own_node} is refused (EPERM)", got.get(own_node) == errno.EPERM)
        expect(stage, f"{ctl} is refused (EPERM)", got.get(str(ctl)) == errno.EPERM)
    finally:
        cg.remove()

    # 2. Control devices but not the GPU: what a task of another GPU may open.
    stage = "control-only"
    gpu_rule = f"c {nvidia_major}:{own['minor']} rwm"
    rules = [r for r in device_rules([own["minor"]], proc_devices) if r != gpu_rule]
    checks[stage] = {"rules": rules}
    cg = Cgroup(mechanism, parent, rules)
    try:
        got = opens(cg, stage, ["/dev/null", own_node, *control])
        expect(stage, f"{own_node} is refused (EPERM)", got.get(own_node) == errno.EPERM)
        for path in control:
            expect(stage, f"{path} opens", got.get(path) == 0)
        if smi:
            # Shown, not judged: what NVML can tell through the control device alone.
            nvidia_smi(cg, stage)
        result = torch_run(cg, stage, own["uuid"])
        if result is not None:
            expect(stage, "no CUDA context without the GPU", not result.get("ok"))
    finally:
        cg.remove()

    # 3. The GPU's own minor allowed, as a task assigned that GPU has.
    stage = "own-gpu"
    checks[stage] = {"rules": device_rules([own["minor"]], proc_devices)}
    cg = Cgroup(mechanism, parent, checks[stage]["rules"])
    try:
        got = opens(cg, stage, ["/dev/null", own_node, *control, *others])
        expect(stage, f"{own_node} opens", got.get(own_node) == 0)
        for path in control:
            expect(stage, f"{path} opens", got.get(path) == 0)
        for path in others:
            expect(stage, f"{path} (another GPU) is refused (EPERM)", got.get(path) == errno.EPERM)
        if smi:
            code, out = nvidia_smi(cg, stage)
            listed = code == 0 and (own["uuid"] in out if own["uuid"] else "GPU " in out)
            expect(stage, "nvidia-smi -L lists the GPU", listed)
        result = torch_run(cg, stage, own["uuid"])
        if result is not None:
            expect(stage, "torch makes a CUDA context", bool(result.get("ok")))
    finally:
        cg.remove()

    summary["ok"] = not failures
    summary["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
