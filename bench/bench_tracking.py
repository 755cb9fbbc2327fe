"""Experiment tracking: the same ``mlflow`` client calls on ``mlflow server`` and ``cplat serve``.

Both servers run on this machine in one run, as subprocesses on free ports with fresh temporary
folders: ``mlflow server`` with its SQLite backend (one worker) and ``cplat serve`` with its
embedded SQLite store (no local agent; the client sends a cplat token as
``MLFLOW_TRACKING_TOKEN``, which ``mlflow server`` ignores). Each operation is the same
``MlflowClient`` call with the same arguments on both sides:

(a) ``log_batch`` of 1,000,000 metric points to one run (10 metrics x 100,000 steps; the client
    splits them into requests of 1,000, the most the protocol allows); timed once per side.
(b) ``get_metric_history`` of one of those metrics: 100,000 points (the client pages by 25,000).
(c) ``search_runs`` over 10,000 runs with ``metrics.acc > 0.5 and params.lr = '0.01'``, ordered
    by ``metrics.acc DESC``, 1,000 per page, every page.
(d) ``search_registered_models`` over 1,000 models with ``name LIKE '%7%'``, 100 per page,
    every page.

The runs and models that (c) and (d) search are created before the clock starts, identical in
content, by the fastest path each side has: MLflow's own store in-process on the server's
database file (``MlflowClient("sqlite:///...")``, the same client calls without HTTP), and the
HTTP API of cplat from a few client threads. (b), (c) and (d) alternate between the sides, a
few rounds each, and report medians; their answers must be equal on both sides or the run
fails.

Each operation is also timed "bare": the same requests sent with ``requests`` and parsed with
``json``, without the client's conversion of every metric, run or model to and from protobuf
objects. At these sizes that conversion costs the client more than cplat takes to answer
(about 2.5 s of the client's own work per 100,000 history points), so the bare rows show what
the servers cost.

Goals: cplat at least 5x faster on each of (a)-(d), and the 100,000-point history in at most
100 ms. The table shows mlflow s, cplat s and the ratio of both rows; in full mode the script
exits 1 when a goal is missed on the client's rows (``--gate http``: on the bare rows).
``--quick`` shrinks every size 10x for CI and only reports.

Usage: ``python bench/bench_tracking.py [--quick] [--rounds N] [--gate client|http] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
TARGET_RATIO = 5.0
TARGET_HISTORY_S = 0.100
KEYS = 10
T0 = 1_700_000_000_000  # ms; every timestamp is fixed so that both sides hold the same data
LRS = ("0.001", "0.01", "0.1")
RUN_FILTER = "metrics.acc > 0.5 and params.lr = '0.01'"
RUN_ORDER = ["metrics.acc DESC"]
MODEL_FILTER = "name LIKE '%7%'"


@dataclass(frozen=True)
class Sizes:
    steps: int  # per metric in (a); (b) reads one metric's steps
    runs: int
    models: int

    @property
    def points(self) -> int:
        return KEYS * self.steps


FULL = Sizes(steps=100_000, runs=10_000, models=1_000)
QUICK = Sizes(steps=10_000, runs=1_000, models=100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def spawn(name: str, args: list[str], log: Path, env: dict[str, str], url: str) -> Server:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(name, url, proc, log)


def wait_healthy(srv: Server, path: str, timeout: float = 180.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(srv.url + path, timeout=5).status_code == 200:
                return
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            stop(srv)
            sys.exit(f"{srv.name} did not start; see {srv.log}:\n{srv.log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(srv: Server) -> None:
    if srv.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(srv.proc.pid, signal.SIGTERM)
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()


@contextlib.contextmanager
def servers(tmp: Path, sizes: Sizes) -> Iterator[tuple[Server, Server]]:
    """Seed MLflow's database, then run both servers until the block ends."""
    mdb = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    (tmp / "mlflow").mkdir()
    martifacts = str(tmp / "mlflow" / "artifacts")
    t = time.perf_counter()
    seed(mdb, mdb, sizes, threads=1)
    print(f"  seeded mlflow's store in-process: {time.perf_counter() - t:.1f} s", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CPLAT_"))}
    mport, cport = free_port(), free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    ml = spawn(
        "mlflow server",
        [
            mlflow_bin, "server", "--backend-store-uri", mdb, "--default-artifact-root",
            martifacts, "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
        ],
        tmp / "mlflow.log",
        env,
        f"http://127.0.0.1:{mport}",
    )  # fmt: skip
    cp = spawn(
        "cplat serve",
        [
            sys.executable, "-m", "cplat.cli", "serve", "--data-dir", str(tmp / "cplat"),
            "--port", str(cport), "--no-local-agent",
        ],
        tmp / "cplat.log",
        {**env, "CPLAT_JWT_SECRET": SECRET},
        f"http://127.0.0.1:{cport}",
    )  # fmt: skip
    try:
        wait_healthy(ml, "/health")
        wait_healthy(cp, "/healthz")
        yield ml, cp
    finally:
        stop(cp)
        stop(ml)


# --- the data ---------------------------------------------------------------------------------


def acc_of(i: int) -> float:
    """A run's accuracy: spread over [0, 1) without a pattern the filter could lean on."""
    return ((i * 7919) % 10007) / 10007


def seed(tracking_uri: str, registry_uri: str, sizes: Sizes, threads: int) -> None:
    """Create the searched runs and models through ``MlflowClient`` (same calls both sides)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    exp = client.create_experiment("bench-search")

    def one_run(i: int) -> None:
        run = client.create_run(
            exp, start_time=T0 + i, tags={"mlflow.user": "bench"}, run_name=f"run-{i:05d}"
        )
        acc = acc_of(i)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("acc", acc, T0, 0), Metric("loss", 1.0 - acc, T0, 0)],
            params=[Param("lr", LRS[i % 3]), Param("batch", str(32 << (i % 2)))],
            tags=[RunTag("team", f"t{i % 5}")],
        )

    def one_model(i: int) -> None:
        client.create_registered_model(f"model-{i:04d}", tags={"team": f"t{i % 5}"})

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one_run, range(sizes.runs)):
            pass
        for _ in pool.map(one_model, range(sizes.models)):
            pass


def metric_points(steps: int) -> list[Any]:
    from mlflow.entities import Metric

    return [
        Metric(f"m{k}", math.sin(s * 1e-3) + k, T0 + s, s)
        for s in range(steps)
        for k in range(KEYS)
    ]


# --- the operations ---------------------------------------------------------------------------


@contextlib.contextmanager
def token(value: str) -> Iterator[None]:
    """The client reads ``MLFLOW_TRACKING_TOKEN`` at every request."""
    old = os.environ.get("MLFLOW_TRACKING_TOKEN")
    os.environ["MLFLOW_TRACKING_TOKEN"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        else:
            os.environ["MLFLOW_TRACKING_TOKEN"] = old


@dataclass
class Side:
    name: str
    url: str
    client: Any
    run_id: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)

    def timed(self, op: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.times.setdefault(op, []).append(time.perf_counter() - t)
        return out


def search_runs(client: Any, exp_id: str) -> list[str]:
    names: list[str] = []
    token_: str | None = None
    while True:
        page = client.search_runs(
            [exp_id], RUN_FILTER, order_by=RUN_ORDER, max_results=1000, page_token=token_
        )
        names += [r.info.run_name for r in page]
        token_ = page.token
        if not token_:
            return names


def search_models(client: Any) -> list[str]:
    names: list[str] = []
    token_: str | None = None
    while True:
        page = client.search_registered_models(MODEL_FILTER, max_results=100, page_token=token_)
        names += [m.name for m in page]
        token_ = page.token
        if not token_:
            return names


class Bare:
    """The same requests as the client's, sent with ``requests`` and parsed with ``json`` only.

    What the server costs, without the client's conversion of every item to and from protobuf
    objects (which, at these sizes, takes longer than cplat's answers).
    """

    def __init__(self, url: str, auth: str) -> None:
        import requests

        self.url = url + "/api/2.0/mlflow"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {auth}"

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.session.request(method, self.url + path, timeout=600, **kw)
        r.raise_for_status()
        return r.json()

    @staticmethod
    def batches(run_id: str, points: list[Any]) -> list[bytes]:
        """The client's ``log-batch`` bodies (1,000 metrics each), encoded ahead of the clock."""
        return [
            json.dumps(
                {
                    "run_id": run_id,
                    "metrics": [
                        {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                        for m in points[i : i + 1000]
                    ],
                }
            ).encode()
            for i in range(0, len(points), 1000)
        ]

    def log_batches(self, bodies: list[bytes]) -> None:
        headers = {"Content-Type": "application/json"}
        for body in bodies:
            self._call("POST", "/runs/log-batch", data=body, headers=headers)

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        out: list[tuple[int, float, int]] = []
        page = None
        while True:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if page:
                params["page_token"] = page
            body = self._call("GET", "/metrics/get-history", params=params)
            out += [
                (int(m["step"]), float(m["value"]), int(m["timestamp"])) for m in body["metrics"]
            ]
            page = body.get("next_page_token")
            if not page:
                return sorted(out)

    def search_runs(self, exp_id: str) -> list[str]:
        names: list[str] = []
        page = None
        while True:
            req: dict[str, Any] = {
                "experiment_ids": [exp_id],
                "filter": RUN_FILTER,
                "order_by": RUN_ORDER,
                "max_results": 1000,
            }
            if page:
                req["page_token"] = page
            body = self._call("POST", "/runs/search", json=req)
            names += [r["info"]["run_name"] for r in body.get("runs", [])]
            page = body.get("next_page_token")
            if not page:
                return names

    def search_models(self) -> list[str]:
        names: list[str] = []
        page = None
        while True:
            params: dict[str, Any] = {"filter": MODEL_FILTER, "max_results": 100}
            if page:
                params["page_token"] = page
            body = self._call("GET", "/registered-models/search", params=params)
            names += [m["name"] for m in body.get("registered_models", [])]
            page = body.get("next_page_token")
            if not page:
                return names


#: The measured operations and their titles. Each is timed twice: the mlflow client's call,
#: and the same requests sent bare (key ``<op>/http``).
OPERATIONS = (
    ("log_batch", "(a) log_batch, {points:,} metric points"),
    ("history", "(b) metric history, {steps:,} points"),
    ("search_runs", "(c) search_runs, {runs:,} runs, filter + order"),
    ("search_models", "(d) search_registered_models, {models:,} models"),
)


def reads(side: Side, bare: Bare, exp_id: str) -> None:
    """One round of (b), (c) and (d) on one side, by the client and bare."""
    hist = side.timed("history", partial(side.client.get_metric_history, side.run_id, "m3"))
    # The protocol leaves the order of a history open; the points must be equal.
    side.answers["history"] = sorted((m.step, m.value, m.timestamp) for m in hist)
    side.answers["history/http"] = side.timed(
        "history/http", partial(bare.history, side.run_id, "m3")
    )
    side.answers["search_runs"] = side.timed(
        "search_runs", partial(search_runs, side.client, exp_id)
    )
    side.answers["search_runs/http"] = side.timed(
        "search_runs/http", partial(bare.search_runs, exp_id)
    )
    side.answers["search_models"] = side.timed("search_models", partial(search_models, side.client))
    side.answers["search_models/http"] = side.timed("search_models/http", bare.search_models)


def measure(sizes: Sizes, rounds: int, keep: Path | None = None) -> dict[str, tuple[float, float]]:
    """Run both servers and every operation; return ``{op: (mlflow s, cplat s)}`` (medians).

    The keys are those of :data:`OPERATIONS`, each also with ``/http`` (the bare requests).

    Raises
    ------
    RuntimeError
        When the two servers answer a read differently.
    """
    from mlflow import MlflowClient

    from cplat_server.auth import create_token

    auth = create_token(SECRET, "bench", "bench", "member", ttl=86400)
    ctx = tempfile.TemporaryDirectory(prefix="cplat-bench-tracking-")
    tmp = keep if keep is not None else Path(ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    points = metric_points(sizes.steps)
    with ctx, token(auth), servers(tmp, sizes) as (ml, cp):
        t = time.perf_counter()
        seed(cp.url, cp.url, sizes, threads=4)
        print(f"  seeded cplat over HTTP (4 threads): {time.perf_counter() - t:.1f} s", flush=True)
        sides = [Side(s.name, s.url, MlflowClient(s.url, s.url)) for s in (ml, cp)]
        bare = {side.name: Bare(side.url, auth) for side in sides}
        search_exp: dict[str, str] = {}
        for side in sides:
            search_exp[side.name] = side.client.get_experiment_by_name("bench-search").experiment_id
            exp = side.client.create_experiment("bench-metrics")
            side.run_id = side.client.create_run(exp, start_time=T0).info.run_id
            print(f"  (a) log_batch of {len(points):,} points to {side.name} ...", flush=True)
            side.timed("log_batch", lambda s=side: s.client.log_batch(s.run_id, metrics=points))
            bodies = Bare.batches(side.client.create_run(exp, start_time=T0).info.run_id, points)
            side.timed("log_batch/http", partial(bare[side.name].log_batches, bodies))
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                reads(side, bare[side.name], search_exp[side.name])
        for op in sides[0].answers:
            x, y = (side.answers[op] for side in sides)
            if x != y:
                raise RuntimeError(f"the answers of {op} differ: mlflow {len(x)}, cplat {len(y)}")
        print(
            f"  answers equal: history {len(sides[0].answers['history']):,} points, "
            f"search_runs {len(sides[0].answers['search_runs']):,} runs, "
            f"search_models {len(sides[0].answers['search_models']):,} models"
        )
    ml, cp = sides
    return {
        op: (statistics.median(ml.times[op]), statistics.median(cp.times[op])) for op in ml.times
    }


def report(
    results: dict[str, tuple[float, float]], sizes: Sizes, rounds: int, gate: str = "client"
) -> int:
    """Print the table; return 1 when a goal is missed on the ``gate`` rows, else 0."""
    print()
    print(f"{'operation':<52} {'mlflow s':>10} {'cplat s':>10} {'ratio':>8}  goal")
    missed: list[str] = []
    for op, template in OPERATIONS:
        title = template.format(
            points=sizes.points, steps=sizes.steps, runs=sizes.runs, models=sizes.models
        )
        for key, label, kind in ((op, title, "client"), (f"{op}/http", "    bare HTTP", "http")):
            m, c = results[key]
            ratio = m / c
            ok = ratio >= TARGET_RATIO
            goal = f">= {TARGET_RATIO:g}x {'PASS' if ok else 'MISS'}"
            if op == "history":
                fast = c <= TARGET_HISTORY_S
                goal += f", <= {TARGET_HISTORY_S * 1e3:.0f} ms {'PASS' if fast else 'MISS'}"
                if kind == gate and not fast:
                    missed.append(f"{key} {c * 1e3:.0f} ms")
            if kind == gate and not ok:
                missed.append(f"{key} ratio {ratio:.2f}")
            print(f"{label:<52} {m:>10.3f} {c:>10.3f} {ratio:>7.1f}x  {goal}")
    print(
        f"\nmedians of {rounds} rounds for (b)-(d); (a) timed once per side. 'bare HTTP': the "
        "same requests without the mlflow client's protobuf conversions."
    )
    if missed:
        print(f"goals missed ({gate} rows): " + "; ".join(missed))
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="every size 10x smaller (CI)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds of (b)-(d) (default 5; 3 quick)")
    ap.add_argument(
        "--gate",
        choices=("client", "http"),
        default="client",
        help="which rows the goals apply to in full mode: the mlflow client's calls (default) "
        "or the same requests sent bare",
    )
    ap.add_argument("--keep", type=Path, help="keep the servers' folders and logs here")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 1:
        ap.error("--rounds must be at least 1")
    print(
        f"tracking benchmark ({'quick' if args.quick else 'full'}): {sizes.points:,} points, "
        f"{sizes.runs:,} runs, {sizes.models:,} models; {rounds} rounds",
        flush=True,
    )
    code = report(measure(sizes, rounds, args.keep), sizes, rounds, args.gate)
    # Quick runs report; only the full sizes are what the goals are about.
    return code if not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
