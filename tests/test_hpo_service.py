"""Studies through the service: the API with a real agent, and kill -9 mid-study.

The trials run ``tests/hpo_train.py``, a closed-form training curve reporting through
``cplat.hpo.report`` to the service's MLflow API, exactly as a user's script would.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna")

from cplat.testing.service import ADMIN, Service, running_service, token  # noqa: E402

TRAIN = Path(__file__).with_name("hpo_train.py")
SPACE = {
    "params": {
        "x": {"type": "float", "low": -1.0, "high": 1.0},
        "y": {"type": "float", "low": -1.0, "high": 1.0},
    }
}


def study_body(name: str, marks: Path, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "space": SPACE,
        "metric": "val_loss",
        "direction": "minimize",
        "sampler": "tpe",
        "pruner": "median",
        "n_trials": 6,
        "parallel": 2,
        "seed": 3,
        "job": {
            "command": [sys.executable, str(TRAIN)],
            "env": {"HPO_STEPS": "5", "HPO_STEP_SECONDS": "0.2", "HPO_MARKS": str(marks)},
            "tasks": {"count": 1, "resources": {"cpu_milli": 100, "memory_mib": 64}},
            "max_runtime": 120,
        },
        **kw,
    }


async def wait_study(svc: Service, name: str, tok: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, out = await svc.call("GET", f"/v1/studies/{name}", tok)
        assert status == 200, out
        if out["state"] in ("finished", "stopped"):
            return dict(out)
        if time.monotonic() > deadline:
            raise AssertionError(f"study {name} still {out['state']}: {out['counts']}")
        await asyncio.sleep(0.2)


async def cli_checks(svc: Service, tok: str, tmp_path: Path, marks: Path) -> None:
    import contextlib
    import io

    from cplat.cli.hpo import main as hpo

    conn = ["--server", svc.url, "--token", tok]

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = hpo(["hpo", *argv])
        return code, out.getvalue(), err.getvalue()

    plots = tmp_path / "plots"
    code, out, err = await asyncio.to_thread(run, "show", "s1", *conn, "--plot-dir", str(plots))
    assert code == 0, err
    assert "best: trial" in out and "COMPLETE" in out
    for png in ("s1-history.png", "s1-importance.png"):
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = await asyncio.to_thread(run, "list", *conn)
    assert code == 0 and "s1" in out and "finished" in out, err
    space = tmp_path / "space.toml"
    space.write_text('[params.x]\ntype = "float"\nlow = 0\nhihg = 1\n')
    code, out, err = await asyncio.to_thread(
        run, "create", *conn, "--name", "s9", "--space", str(space), "--metric", "m", "--", "true"
    )
    assert code == 2 and str(space) in err and "params.x.hihg" in err, err
    code, out, err = await asyncio.to_thread(run, "show", "nope", *conn, "--no-plots")
    assert code == 2 and "not found" in err, err
    code, out, err = await asyncio.to_thread(run, "register-best", "s1", *conn, "--model", "m1")
    assert code == 0, err
    assert "registered m1 version 1 from trial" in out


def test_study_through_the_service(tmp_path: Path) -> None:
    member = token("ana", "vision", "member")
    viewer = token("vic", "vision", "viewer")
    other = token("oz", "audio", "member")
    marks = tmp_path / "marks"
    marks.mkdir()

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await svc.start_agent("node-1", tmp_path / "agent")
            # Refusals first: each names its field, none creates anything.
            bad = study_body("s1", marks)
            bad["space"] = {"params": {"x": {"type": "float", "low": 1, "high": 0}}}
            status, out = await svc.call("POST", "/v1/studies", member, json=bad)
            assert status == 400 and out["error"]["field"] == "space.params.x.high", out
            bad = study_body("s1", marks, sampler="annealing")
            status, out = await svc.call("POST", "/v1/studies", member, json=bad)
            assert status == 400 and out["error"]["field"] == "sampler", out
            bad = study_body("s1", marks)
            bad["job"]["tasks"]["resources"]["gpu_milli"] = 250
            status, out = await svc.call("POST", "/v1/studies", member, json=bad)
            assert status == 400 and out["error"]["field"] == "job.tasks.resources.gpu_milli", out
            status, out = await svc.call(
                "POST", "/v1/studies", viewer, json=study_body("s1", marks)
            )
            assert status == 403, out
            body = study_body("s1", marks, project="audio")
            status, out = await svc.call("POST", "/v1/studies", member, json=body)
            assert status == 403, out

            body = study_body("s1", marks)
            body["job"]["env"]["HPO_MLFLOW_TRIAL"] = "0"
            # The trial that imports mlflow needs more than 64 MiB (the limit is enforced).
            body["job"]["tasks"]["resources"]["memory_mib"] = 1024
            status, out = await svc.call("POST", "/v1/studies", member, json=body)
            assert status == 201, out
            assert out["state"] == "running" and out["n_trials"] == 6
            status, out = await svc.call(
                "POST", "/v1/studies", member, json=study_body("s1", marks)
            )
            assert status == 409 and out["error"]["field"] == "name", out

            done = await wait_study(svc, "s1", viewer, 60)
            assert done["state"] == "finished"
            trials = done["trials"]
            assert len(trials) == 6
            assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}, trials
            best = done["best"]
            x, y = best["params"]["x"], best["params"]["y"]
            assert best["value"] == pytest.approx((x - 0.3) ** 2 + (y + 0.2) ** 2 + 1 / 5)
            # Each trial was a job of the creator's, in the project, named after the study.
            for t in trials:
                status, job = await svc.call("GET", f"/v1/jobs/{t['job_id']}", member)
                assert status == 200 and job["user"] == "ana" and job["name"].startswith("s1-t")
                want = "SUCCEEDED" if t["state"] == "COMPLETE" else "CANCELLED"
                assert job["state"] == want, (t, job)
            # Trial 0 logged with the MLflow client, on its own run's token.
            first = next(t for t in trials if t["number"] == 0)
            status, run = await svc.call(
                "GET", f"/api/2.0/mlflow/runs/get?run_id={first['run_id']}", member
            )
            assert status == 200, run
            params = {p["key"]: p["value"] for p in run["run"]["data"].get("params", [])}
            assert params.get("logged_by") == "mlflow", params
            # The CLI: the table and the plots, a bad space file, register-best.
            await cli_checks(svc, member, tmp_path, marks)
            # Reads: the viewer sees it; another project does not, even by name.
            status, listed = await svc.call("GET", "/v1/studies", viewer)
            assert status == 200 and [s["name"] for s in listed["studies"]] == ["s1"]
            status, listed = await svc.call("GET", "/v1/studies", other)
            assert status == 200 and listed["studies"] == []
            for method in ("GET", "DELETE"):
                status, out = await svc.call(method, "/v1/studies/s1", other)
                assert status == 404, out
            status, out = await svc.call("GET", "/v1/studies/s1?project=vision", other)
            assert status == 404, out
            status, out = await svc.call("GET", "/v1/studies/..%2Fetc", member)
            assert status == 404, out
            status, out = await svc.call("DELETE", "/v1/studies/s1", viewer)
            assert status == 403, out
            # A stop: the running trials' jobs are cancelled, the study keeps what it has.
            body = study_body("s2", marks, n_trials=10, parallel=2)
            body["job"]["env"]["HPO_STEP_SECONDS"] = "2"
            status, out = await svc.call("POST", "/v1/studies", member, json=body)
            assert status == 201, out
            await asyncio.sleep(1.5)
            status, out = await svc.call("DELETE", "/v1/studies/s2", member)
            assert status == 200, out
            stopped = await wait_study(svc, "s2", member, 30)
            assert stopped["state"] == "stopped" and len(stopped["trials"]) == 2
            for t in stopped["trials"]:
                job = await svc.wait(t["job_id"], member)
                assert job["state"] == "CANCELLED"
            # Creations and stops are audited under the project.
            status, audit = await svc.call("GET", "/v1/audit?project=vision", ADMIN)
            assert status == 200
            actions = {(e["action"], e["target"], e["status"]) for e in audit["entries"]}
            assert ("POST /v1/studies", "study/s1", 201) in actions, actions
            assert ("DELETE /v1/studies/{name}", "study/s2", 200) in actions, actions

    asyncio.run(main())


def test_study_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    """The issue's study end to end: ``cplat serve`` and ``cplat agent`` as processes, 16
    trials 4 at a time, pruning, and a ``kill -9`` of the server in the middle."""
    import json
    import os
    import signal
    import subprocess
    import urllib.error
    import urllib.request

    from cplat.testing.served import free_port
    from cplat.testing.service import SECRET

    member = token("ana", "vision", "member", ttl=3600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    serve = [sys.executable, "-m", "cplat.cli", "serve", "--port", str(port)]
    serve += ["--data-dir", str(tmp_path / "data"), "--no-local-agent", "--node-timeout", "30"]
    agent = [sys.executable, "-m", "cplat.cli", "agent", "--server", url, "--token", ADMIN]
    agent += ["--name", "node-1", "--work-dir", str(tmp_path / "agent"), "--heartbeat", "0.5"]
    agent += ["--task-user", "self"]
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "ab") as log:
            p = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        procs.append(p)
        return p

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(url + path, method=method)
        req.add_header("Authorization", f"Bearer {member}")
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, data, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def until(what: str, ok: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = ok()
            except OSError:
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                logs = "".join(
                    f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log")
                )
                raise AssertionError(f"timed out waiting for {what}{logs}")
            time.sleep(0.25)

    def study() -> dict[str, Any]:
        status, out = call("GET", "/v1/studies/e2e")
        assert status == 200, out
        return dict(out)

    try:
        server = spawn("server-1", serve)
        until("the server", lambda: call("GET", "/v1/studies")[0] == 200, 60)
        spawn("agent", agent)
        until("the agent", lambda: call("GET", "/v1/nodes/node-1")[0] == 200, 30)
        body = study_body("e2e", marks, n_trials=16, parallel=4)
        steps = 8
        body["job"]["env"].update({"HPO_STEPS": str(steps), "HPO_STEP_SECONDS": "0.3"})
        status, out = call("POST", "/v1/studies", body)
        assert status == 201, out

        def some_done() -> dict[str, Any] | None:
            s = study()
            told = [t for t in s["trials"] if t["state"] != "RUNNING"]
            running = [t for t in s["trials"] if t["state"] == "RUNNING" and t["last_step"]]
            return s if len(told) >= 5 and running else None

        before = until("trials to finish before the kill", some_done, 120)
        server.send_signal(signal.SIGKILL)  # kill -9, trials in flight
        server.wait()
        time.sleep(1.0)
        spawn("server-2", serve)
        until("the restarted server", lambda: call("GET", "/v1/studies")[0] == 200, 60)
        after = until(
            "the study to finish", lambda: (s := study())["state"] == "finished" and s, 240
        )

        trials = {t["number"]: t for t in after["trials"]}
        assert len(trials) == 16
        for t in before["trials"]:  # nothing told before the kill was lost or changed
            if t["state"] != "RUNNING":
                kept = trials[t["number"]]
                assert (kept["state"], kept["value"], kept["params"]) == (
                    t["state"],
                    t["value"],
                    t["params"],
                )
        states = [t["state"] for t in trials.values()]
        assert set(states) <= {"COMPLETE", "PRUNED"}, after["trials"]
        pruned = [t for t in trials.values() if t["state"] == "PRUNED"]
        assert pruned, "no trial was pruned"
        # Pruning stopped the job early: its script got fewer than its steps done. (A mark is
        # written after each report: a trial stopped in between may have none yet.)

        def done(t: dict[str, Any]) -> int:
            mark = marks / str(t["number"])
            return int(mark.read_text()) if mark.exists() else 0

        early = [t for t in pruned if done(t) < steps]
        assert early, [(t["number"], done(t)) for t in pruned]
        best = after["best"]
        x, y = best["params"]["x"], best["params"]["y"]
        assert best["value"] == pytest.approx((x - 0.3) ** 2 + (y + 0.2) ** 2 + 1 / steps)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_quarter_gpu_trials_share_one_gpu(tmp_path: Path) -> None:
    """``gpu_milli: 250``: four trials of a study run side by side on one GPU."""
    member = token("ana", "vision", "member")
    marks = tmp_path / "marks"
    marks.mkdir()

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            # A registered GPU node with no agent behind it: the placements are the test.
            node = {
                "name": "gpu-1",
                "cpu_milli": 8000,
                "memory_mib": 16384,
                "gpus": [{"index": i, "model": "A100-SXM4-80GB"} for i in range(2)],
            }
            status, out = await svc.call("POST", "/v1/nodes", ADMIN, json=node)
            assert status == 201, out
            body = study_body("q", marks, n_trials=4, parallel=4)
            body["job"]["tasks"]["resources"].update(num_gpu=1, gpu_milli=250)
            status, out = await svc.call("POST", "/v1/studies", member, json=body)
            assert status == 201, out
            deadline = time.monotonic() + 20
            while True:
                _, out = await svc.call("GET", "/v1/studies/q", member)
                # A trial is listed once asked, and has its job a moment later.
                trials = out["trials"]
                if len(trials) == 4 and all(t["job_id"] is not None for t in trials):
                    break
                assert time.monotonic() < deadline, trials
                await asyncio.sleep(0.1)
            jobs = [await svc.wait(t["job_id"], member, {"SCHEDULED"}) for t in trials]
            devices = {(p["node"], tuple(p["gpus"])) for j in jobs for p in j["placement"]}
            assert len(devices) == 1, devices
            _, cluster = await svc.call("GET", "/v1/cluster", member)
            assert cluster["allocated"]["gpu_milli"] == 1000
            status, _ = await svc.call("DELETE", "/v1/studies/q", member)
            assert status == 200

    asyncio.run(main())
