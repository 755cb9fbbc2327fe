"""Hyperparameter search benchmark: sampler quality in-process, and cplat's overhead per trial.

(a) Samplers, side by side on one objective and budget: random, TPE and GP (and CMA-ES), as
cplat builds them (:func:`cplat.ml.hpo.samplers.make_sampler`), run in Optuna's own in-process
study -- the reference a service adds nothing to. The objective is the 6-dimensional Hartmann
function (global minimum -3.32237); each sampler gets the same trial budget over several seeds,
and the table prints the median best value per sampler and whether it beats random search.
A sampler whose package is missing (GP needs torch, CMA-ES needs cmaes) is listed as skipped.

(b) cplat's overhead per trial: a ``cplat serve`` and a ``cplat agent`` subprocess run a study
of ``tests/hpo_train.py`` with one step and no sleep, so a trial is little more than a process
start. Per trial, from the server's own timestamps: ask -> submit (the driver's turn), submit
-> first report (the job queued, placed, started, and its script's first ``report`` stored), and
the same submit -> first report for plain jobs of the same script submitted directly, so the
study's own share is the difference.

Usage: ``python bench/bench_hpo.py [--quick] [--seeds N] [--trials N]``. Benchmarks report,
they do not gate: the script exits 0 either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna

from cplat.errors import InputError
from cplat.ml.hpo.samplers import make_sampler
from cplat.ml.hpo.space import parse_space

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "tests" / "hpo_train.py"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

# Hartmann 6-D (Dixon and Szegő): the standard Bayesian-optimisation test function.
_A = [
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
]
_P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]
_ALPHA = [1.0, 1.2, 3.0, 3.2]
HARTMANN_MIN = -3.32237
SPACE = parse_space(
    {"params": {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(6)}}
)


def hartmann6(x: list[float]) -> float:
    """The Hartmann 6-D function on [0, 1]^6."""
    return -sum(
        _ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - _P[i][j]) ** 2 for j in range(6)))
        for i in range(4)
    )


def sampler_quality(samplers: list[str], trials: int, seeds: int) -> None:
    """Print the median best value of each sampler over ``seeds`` seeded studies."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"(a) samplers in-process: Hartmann-6 (minimum {HARTMANN_MIN}), {trials} trials, "
        f"median over {seeds} seeds"
    )
    print(f"{'sampler':<10}{'median best':>14}{'gap to min':>13}{'s/study':>10}  vs random")
    medians: dict[str, float] = {}
    for name in samplers:
        bests, took = [], []
        for seed in range(seeds):
            try:
                sampler = make_sampler(name, SPACE, seed=seed)
            except InputError as exc:
                print(f"{name:<10}{'skipped':>14}  ({exc.message})")
                break
            study = optuna.create_study(direction="minimize", sampler=sampler)
            dists = SPACE.distributions()
            started = time.perf_counter()
            for _ in range(trials):
                t = study.ask(dists)
                study.tell(t, hartmann6([t.params[f"x{i}"] for i in range(6)]))
            took.append(time.perf_counter() - started)
            bests.append(study.best_value)
        else:
            med = statistics.median(bests)
            medians[name] = med
            versus = ""
            if name != "random" and "random" in medians:
                versus = "better" if med < medians["random"] else "NOT better"
            print(
                f"{name:<10}{med:>14.4f}{med - HARTMANN_MIN:>13.4f}"
                f"{statistics.median(took):>10.2f}  {versus}"
            )


# (b) through the service ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """A few calls to the service with one token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(self.url + path, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, data, timeout=30) as r:
            return json.loads(r.read())

    def first_report(self, run_id: str, metric: str) -> float | None:
        out = self.call(
            "GET", f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={metric}"
        )
        stamps = [m["timestamp"] for m in out.get("metrics", [])]
        return min(stamps) / 1000 if stamps else None


def _wait(what: str, ok: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = ok()
        except (OSError, urllib.error.URLError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def service_overhead(trials: int, parallel: int) -> None:
    """Print ask -> submit and submit -> first report, for trials and for plain jobs."""
    from cplat_server.auth import create_token

    admin = create_token(SECRET, "root", "system", "admin", cluster_admin=True, ttl=86400)
    member = create_token(SECRET, "bench", "bench", "member", ttl=86400)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    api = Api(url, member)
    env = {**os.environ, "CPLAT_JWT_SECRET": SECRET}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-hpo-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for args in (
                [
                    "serve",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(tmp / "data"),
                    "--no-local-agent",
                ],
                [
                    "agent",
                    "--server",
                    url,
                    "--token",
                    admin,
                    "--name",
                    "n1",
                    "--work-dir",
                    str(tmp / "agent"),
                    "--heartbeat",
                    "0.5",
                    "--task-user",
                    "self",
                ],
            ):
                log = open(tmp / f"{args[0]}.log", "wb")  # noqa: SIM115 - lives with the child
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "cplat.cli", *args],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
                _wait(args[0], lambda: api.call("GET", "/v1/studies") is not None, 60)
            _wait("the agent", lambda: api.call("GET", "/v1/nodes/n1"), 30)
            job = {
                "command": [sys.executable, str(TRAIN)],
                "env": {"HPO_STEPS": "1", "HPO_STEP_SECONDS": "0"},
                "tasks": {"count": 1, "resources": {"cpu_milli": 100, "memory_mib": 64}},
            }
            api.call(
                "POST",
                "/v1/studies",
                {
                    "name": "overhead",
                    "space": {
                        "params": {
                            "x": {"type": "float", "low": 0, "high": 1},
                            "y": {"type": "float", "low": 0, "high": 1},
                        }
                    },
                    "metric": "loss",
                    "sampler": "random",
                    "pruner": "none",
                    "n_trials": trials,
                    "parallel": parallel,
                    "job": job,
                },
            )
            study = _wait(
                "the study",
                lambda: (s := api.call("GET", "/v1/studies/overhead"))["state"] == "finished" and s,
                60 + 10 * trials,
            )
            ask_submit, submit_report = [], []
            for t in study["trials"]:
                j = api.call("GET", f"/v1/jobs/{t['job_id']}")
                first = api.first_report(t["run_id"], "loss")
                ask_submit.append(j["submitted_at"] - t["started_at"])
                if first is not None:
                    submit_report.append(first - j["submitted_at"])
            # The same script as plain jobs (its own run given by hand), one at a time.
            exp = api.call("POST", "/api/2.0/mlflow/experiments/create", {"name": "plain"})
            plain = []
            for i in range(min(trials, 8)):
                run = api.call(
                    "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp["experiment_id"]}
                )["run"]["info"]["run_id"]
                body = json.loads(json.dumps(job))
                body["name"] = f"plain-{i}"
                body["env"].update(
                    {
                        "CPLAT_TRIAL_PARAMS": '{"x": 0.5, "y": 0.5}',
                        "MLFLOW_RUN_ID": run,
                        "MLFLOW_TRACKING_URI": url,
                        "CPLAT_HPO_METRIC": "loss",
                        "CPLAT_TRIAL": "0",
                    }
                )
                j = api.call("POST", "/v1/jobs", body)
                _wait(
                    "a plain job",
                    lambda j=j: api.call("GET", f"/v1/jobs/{j['id']}")["state"] == "SUCCEEDED",
                    60,
                )
                first = api.first_report(run, "loss")
                if first is not None:
                    plain.append(first - j["submitted_at"])
        except SystemExit:
            for log_path in sorted(tmp.glob("*.log")):
                print(f"--- {log_path.name}\n{log_path.read_text()[-2000:]}", file=sys.stderr)
            raise
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

    def row(name: str, xs: list[float]) -> None:
        if xs:
            print(
                f"{name:<34}{statistics.median(xs) * 1000:>10.0f}{max(xs) * 1000:>10.0f}"
                f"{len(xs):>6}"
            )

    print(
        f"\n(b) cplat study overhead per trial: {trials} trials, {parallel} at a time "
        "(one-step script, one node)"
    )
    print(f"{'':<34}{'p50 ms':>10}{'max ms':>10}{'n':>6}")
    row("trial: ask -> job submitted", ask_submit)
    row("trial: submit -> first report", submit_report)
    row("plain job: submit -> first report", plain)
    if submit_report and plain:
        extra = statistics.median(submit_report) - statistics.median(plain)
        print(f"study overhead per trial (p50 difference): {extra * 1000:.0f} ms")


def main() -> None:
    """Run both parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (CI)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--no-service", action="store_true", help="skip part (b)")
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.quick else 7)
    trials = args.trials or (25 if args.quick else 60)
    sampler_quality(["random", "tpe", "gp", "cmaes"], trials, seeds)
    if not args.no_service:
        service_overhead(6 if args.quick else 16, 2 if args.quick else 4)


if __name__ == "__main__":
    main()
