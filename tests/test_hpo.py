"""Hyperparameter search: the space file, the samplers, and the driver against a fake cluster.

The fake cluster runs each trial's "job" as a closed-form training curve, one step per driver
pass, logging the metric to a real tracking store (SQLite) exactly where the service's runs
would log it; the driver, the journal and Optuna are the real ones.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from cplat.errors import InputError  # noqa: E402
from cplat.ml.hpo.driver import JobStatus  # noqa: E402
from cplat.ml.hpo.runner import StudyRunner  # noqa: E402
from cplat.ml.hpo.samplers import make_pruner, make_sampler  # noqa: E402
from cplat.ml.hpo.space import load_space, parse_space  # noqa: E402
from cplat.ml.hpo.study import JOB_ATTR, StudyConfig, open_storage  # noqa: E402
from cplat.ml.tracking import MetricIn, SqliteDriver, TrackingStore  # noqa: E402

# --- the space file -------------------------------------------------------------------------

GOOD = """
append_args = true
[params.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true
[params.layers]
type = "int"
low = 1
high = 8
[params.opt]
type = "categorical"
choices = ["sgd", "adam"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


def test_space_file_parses_into_optuna_distributions(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, GOOD))
    assert space.append_args
    d = space.distributions()
    assert isinstance(d["lr"], optuna.distributions.FloatDistribution) and d["lr"].log
    assert isinstance(d["layers"], optuna.distributions.IntDistribution)
    assert d["opt"].choices == ("sgd", "adam")
    assert space.args({"lr": 0.01, "layers": 3, "opt": "adam"}) == [
        "--lr",
        "0.01",
        "--layers",
        "3",
        "--opt",
        "adam",
    ]
    # The stored form reads back to the same space (the journal keeps it).
    assert parse_space(space.to_dict()) == space


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('[params.lr]\ntype = "float"\nlow = 1\nhigh = 0.5\n', "params.lr.high", "greater"),
        ('[params.lr]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true\n', "params.lr.low", "log"),
        ('[params.lr]\ntype = "float"\nlow = 0\nhihg = 1\n', "params.lr.hihg", "unknown key"),
        ('[params.lr]\ntype = "double"\nlow = 0\nhigh = 1\n', "params.lr.type", "float, int"),
        ('[params.n]\ntype = "int"\nlow = 0.5\nhigh = 4\n', "params.n.low", "integer"),
        ('[params.n]\ntype = "int"\nlow = 1\n', "params.n.high", "needs high"),
        ('[params.c]\ntype = "categorical"\nchoices = []\n', "params.c.choices", "non-empty"),
        ('[params.c]\ntype = "categorical"\nchoices = [1, 1]\n', "params.c.choices", "repeated"),
        ('[params."--x"]\ntype = "int"\nlow = 1\nhigh = 2\n', "params.--x", "parameter name"),
        ('[params.lr]\ntype = "float"\nlow = nan\nhigh = 1\n', "params.lr.low", "finite"),
        ('[params.s]\ntype = "float"\nlow = 0\nhigh = 1\nstep = 2\n', "params.s.step", "step"),
        ("append_args = 1\n[params.a]\ntype = 'int'\nlow = 1\nhigh = 2\n", "append_args", "true"),
        ("[sampler]\nx = 1\n", "sampler", "unknown key"),
        ("append_args = true\n", "params", "at least one"),
    ],
)
def test_bad_space_file_names_file_and_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_space(path)
    assert info.value.field == field
    assert info.value.source == str(path)
    assert words in info.value.message
    assert str(path) in str(info.value)


def test_space_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[params.lr\n")
    with pytest.raises(InputError) as info:
        load_space(path)
    assert info.value.source == str(path)


def test_grid_needs_steps_and_enumerates_them(tmp_path: Path) -> None:
    space = parse_space(
        {
            "params": {
                "a": {"type": "int", "low": 1, "high": 3},
                "b": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
                "c": {"type": "categorical", "choices": [True, False]},
            }
        }
    )
    assert space.grid() == {"a": [1, 2, 3], "b": [0.0, 0.25, 0.5], "c": [True, False]}
    make_sampler("grid", space)
    huge = parse_space(
        {
            "params": {
                "n": {"type": "int", "low": 0, "high": 10**18},
                "m": {"type": "int", "low": 0, "high": 9},
            }
        }
    )
    with pytest.raises(InputError) as info:  # refused before a single grid point is made
        make_sampler("grid", huge)
    assert info.value.field == "params"
    wide = parse_space(
        {"params": {"x": {"type": "float", "low": -1e308, "high": 1e308, "step": 1e307}}}
    )
    with pytest.raises(InputError):  # high - low overflows: no grid, and no 500
        make_sampler("grid", wide)
    continuous = parse_space({"params": {"x": {"type": "float", "low": 0, "high": 1}}})
    with pytest.raises(InputError) as info:
        make_sampler("grid", continuous)
    assert info.value.field == "params.x.step"


def test_sampler_and_pruner_names() -> None:
    space = parse_space({"params": {"x": {"type": "float", "low": 0, "high": 1}}})
    assert isinstance(make_sampler("tpe", space), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", space), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("successive-halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(InputError) as info:
        make_sampler("annealing", space)
    assert info.value.field == "sampler"
    with pytest.raises(InputError) as info:
        make_pruner("patient")
    assert info.value.field == "pruner"
    cat = parse_space({"params": {"c": {"type": "categorical", "choices": ["a", "b"]}}})
    with pytest.raises(InputError):
        make_sampler("cmaes", cat)


def test_gp_and_cmaes_samplers_search_and_a_missing_package_is_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("torch", reason="the gp sampler needs torch: pip install '.[hpo-bayes]'")
    space = parse_space(
        {
            "params": {
                "x": {"type": "float", "low": -1, "high": 1},
                "y": {"type": "float", "low": -1, "high": 1},
            }
        }
    )
    for name in ("gp", "cmaes"):
        study = optuna.create_study(sampler=make_sampler(name, space, seed=1))
        study.optimize(
            lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2 + t.suggest_float("y", -1, 1) ** 2,
            n_trials=20,
        )
        assert study.best_value < 0.05, name
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == "torch" else real(m, *a)
    )
    with pytest.raises(InputError) as info:
        make_sampler("gp", space)
    assert info.value.field == "sampler" and "torch" in str(info.value)


def test_study_body_errors_name_the_field() -> None:
    base: dict[str, Any] = {
        "name": "s1",
        "space": {"params": {"x": {"type": "float", "low": 0, "high": 1}}},
        "metric": "loss",
        "job": {"command": ["true"]},
    }
    StudyConfig.from_body(base, "p", "u")
    for change, fld in [
        ({"name": "../etc"}, "name"),
        ({"metric": "a'b"}, "metric"),
        ({"direction": "down"}, "direction"),
        ({"parallel": 0}, "parallel"),
        ({"n_trials": True}, "n_trials"),
        ({"sampler": "x"}, "sampler"),
        (
            {"space": {"params": {"x": {"type": "float", "low": 2, "high": 1}}}},
            "space.params.x.high",
        ),
    ]:
        with pytest.raises(InputError) as info:
            StudyConfig.from_body({**base, **change}, "p", "u")
        assert info.value.field == fld, change


# --- the driver against a fake cluster --------------------------------------------------------

#: The objective: a bowl with its minimum 0.0 at x = 0.3, y = -0.2; each trial's curve
#: falls towards its final value over STEPS steps, so early values rank trials as late ones do.
STEPS = 8


def objective(x: float, y: float) -> float:
    return (x - 0.3) ** 2 + (y + 0.2) ** 2


def curve(final: float, step: int) -> float:
    return final + 1.0 / (step + 1)


@dataclass
class FakeJob:
    name: str
    params: dict[str, Any]
    run_id: str
    state: str = "PENDING"
    attempt: int = 0
    step: int = 0
    cancelled_at_step: int | None = None


@dataclass
class FakeCluster:
    """Jobs as closed-form curves: each pass runs every running job one step."""

    tracking: TrackingStore
    metric: str = "val_loss"
    jobs: dict[int, FakeJob] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    preempt: set[tuple[int, int]] = field(default_factory=set)  # (job, at step)
    fail: set[int] = field(default_factory=set)  # job ids that exit 1 at step 2
    most_running: int = 0

    async def submit(self, cfg: StudyConfig, name: str, body: dict[str, Any], key: str) -> int:
        if key in self.keys:
            return self.keys[key]
        job_id = len(self.jobs) + 1
        env = body["env"]
        self.jobs[job_id] = FakeJob(
            name, json.loads(env["CPLAT_TRIAL_PARAMS"]), env["MLFLOW_RUN_ID"], "RUNNING", 1
        )
        self.keys[key] = job_id
        return job_id

    async def status(self, job_id: int) -> JobStatus | None:
        j = self.jobs.get(job_id)
        return None if j is None else JobStatus(j.state, j.attempt)

    async def cancel(self, job_id: int) -> None:
        j = self.jobs[job_id]
        if j.state in ("PENDING", "RUNNING"):
            j.state = "CANCELLED"
            j.cancelled_at_step = j.step

    async def advance(self) -> None:
        running = sum(j.state == "RUNNING" for j in self.jobs.values())
        self.most_running = max(self.most_running, running)
        for job_id, j in self.jobs.items():
            if j.state != "RUNNING":
                continue
            if (job_id, j.step) in self.preempt:
                # A preemption: the next attempt resumes from its checkpoint (the step).
                self.preempt.discard((job_id, j.step))
                j.attempt += 1
                continue
            if job_id in self.fail and j.step == 2:
                j.state = "FAILED"
                continue
            j.step += 1
            value = curve(objective(j.params["x"], j.params["y"]), j.step)
            await self.tracking.log_batch(
                j.run_id, metrics=[MetricIn(self.metric, value, 1000 + j.step, j.step)]
            )
            if j.step >= STEPS:
                j.state = "SUCCEEDED"


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[TrackingStore]:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(TrackingStore.open(SqliteDriver(tmp_path / "tracking.db")))
    yield store
    loop.run_until_complete(store.close())
    loop.close()


def _cfg(**kw: Any) -> StudyConfig:
    body = {
        "name": "bowl",
        "space": {
            "params": {
                "x": {"type": "float", "low": -1.0, "high": 1.0},
                "y": {"type": "float", "low": -1.0, "high": 1.0},
            }
        },
        "metric": "val_loss",
        "job": {"command": ["python", "train.py"], "env": {"A": "1"}},
        "sampler": "tpe",
        "pruner": "median",
        "n_trials": 24,
        "parallel": 4,
        "seed": 7,
        **kw,
    }
    return StudyConfig.from_body(body, "team", "alice")


async def _drive(runner: StudyRunner, cluster: FakeCluster, passes: int) -> None:
    for _ in range(passes):
        await runner.step()
        await cluster.advance()
        if not runner.drivers:
            return


def test_driver_finds_the_optimum_and_prunes(tmp_path: Path, tracking: TrackingStore) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking)
        runner = StudyRunner(open_storage(tmp_path), cluster, tracking, "http://srv:8470")
        # Another study first, in the same journal and driven at the same time: trial ids
        # are the journal's, numbers the study's, and they must not be mixed up.
        runner.create(_cfg(name="decoy", n_trials=3, parallel=3))
        runner.create(_cfg())
        await _drive(runner, cluster, 500)
        assert not runner.drivers, "the study should have finished"
        out = runner.get("team", "bowl")
        assert out is not None
        assert out["state"] == "finished"
        states = [t["state"] for t in out["trials"]]
        assert len(states) == 24
        assert states.count("PRUNED") >= 1
        assert states.count("COMPLETE") >= 1
        assert set(states) <= {"COMPLETE", "PRUNED"}
        assert len(cluster.jobs) == 27
        assert cluster.most_running == 4 + 3  # `parallel` of each at once, never more
        # Pruned trials' jobs were cancelled before their last step.
        pruned = [t for t in out["trials"] if t["state"] == "PRUNED"]
        for t in pruned:
            j = cluster.jobs[t["job_id"]]
            assert j.state == "CANCELLED" and j.cancelled_at_step is not None
            assert j.cancelled_at_step < STEPS
        # The best value is the closed form at the best params, and near the optimum (0).
        best = out["best"]
        assert best["value"] == pytest.approx(
            curve(objective(best["params"]["x"], best["params"]["y"]), STEPS)
        )
        assert best["value"] - curve(0.0, STEPS) < 0.1
        # Every trial is a child run of the study's parent run, with the trial's params.
        parent = out["parent_run_id"]
        run = await tracking.get_run(best["run_id"])
        assert run is not None and run.tags["mlflow.parentRunId"] == parent
        assert float(run.params["x"]) == best["params"]["x"]
        assert run.status == "FINISHED"
        prun = await tracking.get_run(pruned[0]["run_id"])
        assert prun is not None and prun.status == "KILLED"
        assert prun.tags["cplat.hpo.state"] == "PRUNED"
        parent_run = await tracking.get_run(parent)
        assert parent_run is not None and parent_run.status == "FINISHED"

    asyncio.run(main())


def test_job_body_carries_params_env_and_args(tmp_path: Path, tracking: TrackingStore) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking)
        storage = open_storage(tmp_path)
        space = {
            "append_args": True,
            "params": {
                "x": {"type": "float", "low": 0, "high": 1},
                "n": {"type": "int", "low": 1, "high": 3},
            },
        }
        runner = StudyRunner(storage, cluster, tracking, "http://srv:8470/")
        runner.create(_cfg(space=space, job={"command": "python train.py", "env": {"A": "1"}}))
        driver = runner.drivers["team/bowl"]
        trial = driver.study.ask(driver.cfg.space.distributions())
        frozen = storage.get_trial(trial._trial_id)
        body = driver.job_body(frozen, "r1", "5")
        env = body["env"]
        assert json.loads(env["CPLAT_TRIAL_PARAMS"]) == frozen.params
        assert env["A"] == "1" and env["MLFLOW_RUN_ID"] == "r1"
        assert env["MLFLOW_TRACKING_URI"] == "http://srv:8470"
        assert env["CPLAT_HPO_METRIC"] == "val_loss"
        assert body["command"].startswith("python train.py --x ")
        assert f"--n {frozen.params['n']}" in body["command"]
        # The template itself is untouched (trials must not leak into one another).
        assert driver.cfg.job["env"] == {"A": "1"}

    asyncio.run(main())


def test_restart_from_the_journal_keeps_finished_trials(
    tmp_path: Path, tracking: TrackingStore
) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking)
        storage = open_storage(tmp_path)
        first = StudyRunner(storage, cluster, tracking)
        first.create(_cfg(n_trials=12, parallel=3, pruner="none"))
        await _drive(first, cluster, 20)  # some trials told, some in flight
        before = first.get("team", "bowl")
        assert before is not None
        done = {t["number"]: t for t in before["trials"] if t["state"] == "COMPLETE"}
        assert done and before["state"] == "running"
        in_flight = [t["number"] for t in before["trials"] if t["state"] == "RUNNING"]
        assert in_flight
        del first, storage  # the server dies (nothing of the runner survives)

        again = StudyRunner(open_storage(tmp_path), cluster, tracking)
        assert again.resume() == ["team/bowl"]
        await _drive(again, cluster, 200)
        after = again.get("team", "bowl")
        assert after is not None and after["state"] == "finished"
        trials = {t["number"]: t for t in after["trials"]}
        assert len(trials) == 12
        for n, t in done.items():  # kept exactly as they were
            assert trials[n]["value"] == t["value"] and trials[n]["params"] == t["params"]
        # Trials in flight at the crash kept their jobs (no job submitted twice).
        assert len(cluster.jobs) == 12
        for n in in_flight:
            assert trials[n]["state"] == "COMPLETE"

    asyncio.run(main())


def test_trial_asked_but_not_submitted_before_a_crash_gets_one_job(
    tmp_path: Path, tracking: TrackingStore
) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking)
        storage = open_storage(tmp_path)
        runner = StudyRunner(storage, cluster, tracking)
        runner.create(_cfg(n_trials=2, parallel=2, pruner="none"))
        driver = runner.drivers["team/bowl"]
        await driver.parent_run()
        # The crash: a trial asked and its job created, but the job id never recorded.
        trial = driver.study.ask(driver.cfg.space.distributions())
        frozen = storage.get_trial(trial._trial_id)
        await driver._submit(frozen)
        storage.set_trial_user_attr(trial._trial_id, JOB_ATTR, None)
        again = StudyRunner(open_storage(tmp_path), cluster, tracking)
        again.resume()
        await _drive(again, cluster, 50)
        assert len(cluster.jobs) == 2  # the hidden job was found by its key, not resubmitted
        out = again.get("team", "bowl")
        assert out is not None and [t["state"] for t in out["trials"]] == ["COMPLETE"] * 2

    asyncio.run(main())


def test_preempted_trial_is_the_same_trial_and_failures_fail(
    tmp_path: Path, tracking: TrackingStore
) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking, preempt={(1, 3)}, fail={2})
        runner = StudyRunner(open_storage(tmp_path), cluster, tracking)
        runner.create(_cfg(n_trials=3, parallel=3, pruner="none"))
        await _drive(runner, cluster, 60)
        out = runner.get("team", "bowl")
        assert out is not None
        by_job = {t["job_id"]: t for t in out["trials"]}
        assert by_job[1]["state"] == "COMPLETE" and by_job[1]["attempt"] == 2
        assert sorted(int(s) for s in by_job[1]["intermediate"]) == list(range(1, STEPS + 1))
        assert by_job[2]["state"] == "FAIL" and "failed" in by_job[2]["reason"]
        assert len(out["trials"]) == 3  # a failure uses up its trial of the budget

    asyncio.run(main())


def test_stop_cancels_running_trials(tmp_path: Path, tracking: TrackingStore) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking)
        runner = StudyRunner(open_storage(tmp_path), cluster, tracking)
        runner.create(_cfg(n_trials=10, parallel=2, pruner="none"))
        await _drive(runner, cluster, 3)
        assert runner.stop("team", "bowl") is not None
        await _drive(runner, cluster, 3)
        out = runner.get("team", "bowl")
        assert out is not None and out["state"] == "stopped"
        assert len(out["trials"]) == 2
        assert all(j.state == "CANCELLED" for j in cluster.jobs.values())
        assert runner.stop("team", "nope") is None
        assert runner.list(["team"])[0]["name"] == "bowl"
        assert runner.list(["other"]) == []

    asyncio.run(main())


def test_step_without_metric_fails_the_trial(tmp_path: Path, tracking: TrackingStore) -> None:
    async def main() -> None:
        cluster = FakeCluster(tracking, metric="other_metric")
        runner = StudyRunner(open_storage(tmp_path), cluster, tracking)
        runner.create(_cfg(n_trials=1, parallel=1, pruner="none"))
        await _drive(runner, cluster, 20)
        out = runner.get("team", "bowl")
        assert out is not None
        [t] = out["trials"]
        assert t["state"] == "FAIL" and "without logging val_loss" in t["reason"]
        assert math.isnan(t["value"] or math.nan)

    asyncio.run(main())
