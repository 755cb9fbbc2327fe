"""Jobs and runs (cplat.ml.tracking.jobs) and the environment snapshot (cplat.ml.tracking.snapshot).

The linker runs against a real tracking store on a temporary SQLite file and real local
artifact storage; the job side is a stand-in holding real ``JobRecord``s, changed the way the
controller changes the store (the event first, the committed record a moment later).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cplat.errors import InputError
from cplat.ml.tracking import SqliteDriver, TrackingError, TrackingStore
from cplat.ml.tracking.artifacts import LocalArtifactStore
from cplat.ml.tracking.jobs import (
    RUN_CLAIM,
    SNAPSHOT_ARTIFACT,
    SPEC_KEY,
    JobRunLinker,
    assignment_tracking,
    check_run_scope,
    job_tags,
    parse_experiment,
    run_claim,
    run_scope_target,
    tracking_env,
)
from cplat.ml.tracking.snapshot import (
    MAX_FREEZE_LINES,
    check_snapshot,
    git_state,
    pip_freeze,
    snapshot_tags,
    take_snapshot,
)
from cplat.store.base import JobRecord, NodeRecord

SPEC: dict[str, Any] = {
    "tasks": {
        "count": 2,
        "resources": {
            "cpu_milli": 2000,
            "memory_mib": 4096,
            "num_gpu": 1,
            "gpu_milli": 1000,
            "gpu_models": ["H100"],
        },
    },
    "priority": 5,
    "gang": True,
    "max_runtime": 600,
    "checkpoint": None,
    "command": ["python", "train.py", "--lr", "0.01"],
    "env": {"WANDB_API_KEY": "s3cr3t-value", "SEED": "1"},
    "workdir": None,
    "on_failure": "restart",
    "max_restarts": 2,
}


class Jobs:
    """The service's store as the linker sees it: jobs and nodes."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.reads = 0

    async def get_job(self, job_id: int) -> JobRecord | None:
        self.reads += 1
        return self.jobs.get(job_id)

    async def get_node(self, name: str) -> NodeRecord | None:
        return self.nodes.get(name)

    def add_node(self, name: str, models: list[str]) -> None:
        gpus = [{"index": i, "model": m} for i, m in enumerate(models)]
        self.nodes[name] = NodeRecord(name, "up", {"gpus": gpus}, {}, 0.0, 0.0)

    def change(self, job_id: int, **fields: Any) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], **fields)


def record(job_id: int, spec: dict[str, Any], submitted: float) -> JobRecord:
    return JobRecord(
        job_id, "p1", "alice", "train", "PENDING", spec, "queued", submitted, submitted
    )


@pytest.fixture
def env(tmp_path: Path) -> Any:
    """A tracking store, artifact storage and a job side, inside one event loop per test."""

    class Env:
        store: TrackingStore
        jobs: Jobs
        artifacts: LocalArtifactStore
        linker: JobRunLinker

    async def make() -> Env:
        e = Env()
        e.store = await TrackingStore.open(SqliteDriver(tmp_path / "tracking.db"))
        e.jobs = Jobs()
        e.artifacts = LocalArtifactStore(tmp_path / "artifacts")
        e.linker = JobRunLinker(e.store, e.jobs, e.artifacts, settle_wait=2.0)
        return e

    def run(body: Callable[[Env], Any]) -> Any:
        async def main() -> Any:
            e = await make()
            try:
                return await body(e)
            finally:
                await e.store.close()

        return asyncio.run(main())

    return run


async def submit(e: Any, job_id: int = 1, experiment: Any = "exp-a", spec: Any = None) -> Any:
    spec = dict(spec or SPEC)
    link = await e.linker.on_submit("p1", "alice", spec, experiment, job_name="train")
    spec[SPEC_KEY] = link.spec_entry()
    rec = record(job_id, spec, time.time() - 3.0)
    e.jobs.jobs[job_id] = rec
    await e.linker.on_created(rec)
    return link, rec


def event(job_id: int, state: str, reason: str = "", at: float | None = None) -> dict[str, Any]:
    return {
        "id": job_id,
        "project": "p1",
        "state": state,
        "reason": reason,
        "at": at or time.time(),
    }


# --- the run of a job -----------------------------------------------------------------------


def test_submit_creates_experiment_and_scheduled_run_with_job_tags(env: Any) -> None:
    async def body(e: Any) -> None:
        link, _ = await submit(e)
        exp = await e.store.get_experiment_by_name("p1", "exp-a")
        assert exp is not None and link.experiment_id == exp.experiment_id
        assert await e.store.get_experiment_by_name("p2", "exp-a") is None
        run = await e.store.get_run(link.run_id)
        assert run.project == "p1" and run.status == "SCHEDULED" and run.user_id == "alice"
        assert run.tags["cplat.job_id"] == "1"
        assert json.loads(run.tags["cplat.command"]) == SPEC["command"]
        assert json.loads(run.tags["cplat.resources"]) == SPEC["tasks"]
        rest = json.loads(run.tags["cplat.job_spec"])
        assert rest["max_restarts"] == 2 and rest["priority"] == 5
        # Names of the job's env are kept; a value never is, in any tag.
        assert rest["env_names"] == ["SEED", "WANDB_API_KEY"]
        assert not any("s3cr3t" in v for v in run.tags.values())
        assert run.tags["mlflow.source.type"] == "JOB"
        # A second job in the same experiment gets its own run.
        link2, _ = await submit(e, 2)
        assert link2.experiment_id == link.experiment_id and link2.run_id != link.run_id

    env(body)


def test_run_follows_job_to_finished_with_attempt_nodes_gpus_queue_wait(env: Any) -> None:
    async def body(e: Any) -> None:
        e.jobs.add_node("n1", ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
        e.jobs.add_node("n2", ["NVIDIA A100-SXM4-40GB"])
        link, rec = await submit(e)
        placement = [{"rank": 0, "node": "n1", "gpus": [1]}, {"rank": 1, "node": "n2", "gpus": [0]}]
        e.jobs.change(1, state="SCHEDULED", attempt=1, placement=placement)
        await e.linker.on_job_event(event(1, "RUNNING", at=rec.submitted_at + 2.5))
        run = await e.store.get_run(link.run_id)
        assert run.status == "RUNNING"
        assert run.tags["cplat.attempt"] == "1"
        assert run.tags["cplat.nodes"] == "n1,n2"
        assert run.tags["cplat.gpus"] == "2"
        assert run.tags["cplat.gpu_models"] == "NVIDIA A100-SXM4-40GB,NVIDIA H100 80GB HBM3"
        assert float(run.tags["cplat.queue_wait_s"]) == pytest.approx(2.5, abs=0.01)
        e.jobs.change(1, state="SUCCEEDED", exit_code=0)
        at = time.time()
        await e.linker.on_job_event(event(1, "SUCCEEDED", "all tasks exited 0", at))
        run = await e.store.get_run(link.run_id)
        assert run.status == "FINISHED" and run.end_time == int(at * 1000)
        assert run.tags["cplat.exit_code"] == "0" and run.tags["cplat.job_state"] == "SUCCEEDED"
        assert 1 not in e.linker.links  # finished: no longer followed

    env(body)


@pytest.mark.parametrize(
    ("state", "status", "code"), [("FAILED", "FAILED", 3), ("CANCELLED", "KILLED", None)]
)
def test_failed_and_cancelled_jobs(env: Any, state: str, status: str, code: int | None) -> None:
    async def body(e: Any) -> None:
        link, _ = await submit(e)
        e.jobs.change(1, state=state, exit_code=code)
        await e.linker.on_job_event(event(1, state, "cancelled by alice"))
        run = await e.store.get_run(link.run_id)
        assert run.status == status
        assert run.tags["cplat.job_reason"] == "cancelled by alice"
        assert ("cplat.exit_code" in run.tags) == (code is not None)

    env(body)


def test_requeued_job_resumes_the_same_run(env: Any) -> None:
    async def body(e: Any) -> None:
        e.jobs.add_node("n1", [])
        e.jobs.add_node("n2", [])
        link, rec = await submit(e)
        e.jobs.change(1, state="SCHEDULED", attempt=1, placement=[{"node": "n1", "gpus": []}])
        await e.linker.on_job_event(event(1, "RUNNING", at=rec.submitted_at + 1))
        await e.linker.on_job_event(event(1, "PREEMPTED", "preempted by a higher-priority job"))
        run = await e.store.get_run(link.run_id)
        assert run.status == "SCHEDULED" and run.tags["cplat.requeues"] == "1"
        assert run.tags["cplat.requeue_reason"] == "preempted by a higher-priority job"
        await e.linker.on_job_event(event(1, "PENDING", "requeued"))
        e.jobs.change(1, state="SCHEDULED", attempt=2, placement=[{"node": "n2", "gpus": []}])
        await e.linker.on_job_event(event(1, "RUNNING", at=rec.submitted_at + 60))
        run = await e.store.get_run(link.run_id)
        assert run.status == "RUNNING" and run.tags["cplat.attempt"] == "2"
        assert run.tags["cplat.nodes"] == "n2" and run.tags["cplat.requeues"] == "1"
        # The queue wait is the first start's, not the requeued attempt's.
        assert float(run.tags["cplat.queue_wait_s"]) == pytest.approx(1.0, abs=0.01)
        assert "cplat.gpu_models" not in run.tags
        # The same run, never a second one.
        found, _ = await e.store.search_runs([link.experiment_id], ["p1"])
        assert [r.run_id for r in found] == [link.run_id]

    env(body)


def test_event_before_its_write_commits_waits_for_the_store(env: Any) -> None:
    """The controller publishes a change when it queues the write: the record comes later."""

    async def body(e: Any) -> None:
        link, _ = await submit(e)

        async def commit_later() -> None:
            await asyncio.sleep(0.3)
            e.jobs.change(1, state="FAILED", exit_code=137)

        late = asyncio.create_task(commit_later())
        await e.linker.on_job_event(event(1, "FAILED", "task 0 failed (exit code 137)"))
        await late
        run = await e.store.get_run(link.run_id)
        assert run.status == "FAILED" and run.tags["cplat.exit_code"] == "137"

    env(body)


def test_events_of_other_jobs_are_dropped_without_reading_the_store(env: Any) -> None:
    async def body(e: Any) -> None:
        e.jobs.jobs[7] = record(7, dict(SPEC), time.time())
        await e.linker.on_created(e.jobs.jobs[7])  # no run: nothing to follow
        before = e.jobs.reads
        for state in ("RUNNING", "SUCCEEDED"):
            e.linker.notify(event(7, state))
            await e.linker.on_job_event(event(7, state))
        e.linker.notify({"id": "7", "state": "RUNNING"})  # malformed: ignored
        assert e.jobs.reads == before and e.linker._queue.empty()

    env(body)


def test_notify_and_run_apply_events_in_order(env: Any) -> None:
    async def body(e: Any) -> None:
        link, rec = await submit(e)
        e.jobs.change(1, state="SCHEDULED", attempt=1, placement=[{"node": "gone", "gpus": [0]}])
        task = asyncio.create_task(e.linker.run())
        e.linker.notify(event(1, "RUNNING"))
        e.jobs.change(1, state="CANCELLED")
        e.linker.notify(event(1, "CANCELLED", "cancelled"))
        for _ in range(100):
            run = await e.store.get_run(link.run_id)
            if run.status == "KILLED":
                break
            await asyncio.sleep(0.02)
        task.cancel()
        run = await e.store.get_run(link.run_id)
        assert run.status == "KILLED" and run.tags["cplat.attempt"] == "1"
        # A node the store no longer knows: its GPU is counted, its model unknown.
        assert run.tags["cplat.gpus"] == "1" and "cplat.gpu_models" not in run.tags

    env(body)


def test_deleted_run_stops_being_followed(env: Any) -> None:
    async def body(e: Any) -> None:
        link, _ = await submit(e)
        await e.store.set_run_lifecycle(link.run_id, "deleted")
        e.jobs.change(1, state="SUCCEEDED", exit_code=0)
        await e.linker.on_job_event(event(1, "SUCCEEDED"))  # no exception
        assert 1 not in e.linker.links

    env(body)


def test_recover_follows_unfinished_jobs_and_resets_their_runs(env: Any) -> None:
    async def body(e: Any) -> None:
        link, rec = await submit(e)
        await e.store.update_run(link.run_id, status="RUNNING")
        fresh = JobRunLinker(e.store, e.jobs)
        # After a restart the job was requeued: its run waits again.
        await fresh.recover([replace(rec, state="PENDING"), record(9, dict(SPEC), 0.0)])
        assert fresh.links == {1: link.run_id}
        assert (await e.store.get_run(link.run_id)).status == "SCHEDULED"

    env(body)


def test_discard_deletes_the_run_of_a_submission_without_job(env: Any) -> None:
    async def body(e: Any) -> None:
        link = await e.linker.on_submit("p1", "alice", dict(SPEC), "exp-a")
        await e.linker.discard(link)
        assert (await e.store.get_run(link.run_id)).lifecycle_stage == "deleted"

    env(body)


def test_snapshot_recorded_as_tags_and_artifact(env: Any, tmp_path: Path) -> None:
    snap = take_snapshot(SPEC["command"], cwd=tmp_path, environ={"HF_TOKEN": "hf_secret123"})

    async def body(e: Any) -> None:
        link, _ = await submit(e, experiment={"name": "exp-a", "run_name": "r1", "snapshot": snap})
        run = await e.store.get_run(link.run_id)
        assert run.run_name == "r1"
        assert run.tags["cplat.snapshot.python_version"] == snap["python"]["version"]
        assert run.tags["cplat.snapshot.git"] == "absent"  # tmp_path is no git work tree
        assert run.tags["cplat.snapshot.env_names"] == "HF_TOKEN"
        path = run.artifact_uri.removeprefix("mlflow-artifacts:/") + "/" + SNAPSHOT_ARTIFACT
        stored = json.loads(await e.artifacts.get_bytes(path))
        assert stored["env_names"] == ["HF_TOKEN"] and stored["git"] is None
        assert stored["pip_freeze"]["packages"] == snap["pip_freeze"]["packages"]
        everything = json.dumps(stored) + json.dumps(run.tags)
        assert "hf_secret123" not in everything

    env(body)


def test_from_run_must_be_a_run_of_the_project(env: Any) -> None:
    async def body(e: Any) -> None:
        link, _ = await submit(e)
        other = await e.store.create_experiment("p2", "theirs")
        theirs = await e.store.create_run(other, "bob")
        again = await e.linker.on_submit(
            "p1", "alice", dict(SPEC), {"name": "exp-b", "from_run": link.run_id}
        )
        assert (await e.store.get_run(again.run_id)).tags["cplat.from_run"] == link.run_id
        for bad in (theirs.run_id, "0" * 32):
            with pytest.raises(InputError) as err:
                await e.linker.on_submit("p1", "alice", dict(SPEC), {"name": "x", "from_run": bad})
            assert err.value.field == "experiment.from_run"

    env(body)


def test_deleted_experiment_is_refused(env: Any) -> None:
    async def body(e: Any) -> None:
        exp = await e.store.create_experiment("p1", "old")
        await e.store.set_experiment_lifecycle(exp, "deleted")
        with pytest.raises(InputError) as err:
            await e.linker.on_submit("p1", "alice", dict(SPEC), "old")
        assert err.value.field == "experiment.name"

    env(body)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (5, "experiment"),
        ("", "experiment"),
        (" ", "experiment"),
        ("a\nb", "experiment"),
        ("x" * 501, "experiment"),
        ({}, "experiment.name"),
        ({"name": "a", "extra": 1}, "experiment.extra"),
        ({"name": "a", "run_name": 7}, "experiment.run_name"),
        ({"name": "a", "from_run": "../../etc"}, "experiment.from_run"),
        ({"name": "a", "snapshot": []}, "experiment.snapshot"),
        ({"name": "a", "snapshot": {"env_names": ["TOKEN=abc"]}}, "experiment.snapshot.env_names"),
        ({"name": "a", "snapshot": {"git": {"commit": "zz"}}}, "experiment.snapshot.git.commit"),
        ({"name": "a", "snapshot": {"cwd": "a\x00b"}}, "experiment.snapshot.cwd"),
    ],
)
def test_bad_experiment_field_names_the_field(value: Any, field: str) -> None:
    with pytest.raises(InputError) as err:
        parse_experiment(value)
    assert err.value.field == field


def test_long_command_is_left_out_of_the_tags_and_said_so() -> None:
    spec = dict(SPEC, command=["python", "x" * 9000])
    tags = job_tags(spec, "alice")
    assert "cplat.command" not in tags and tags["cplat.job_tags_truncated"] == "cplat.command"
    assert len(tags["mlflow.source.name"]) == 8000


# --- the task's side and the token's scope ------------------------------------------------------


def test_tracking_env_and_claims() -> None:
    spec = dict(SPEC, tracking={"experiment": "e", "experiment_id": "4", "run_id": "a" * 32})
    assert run_claim(spec) == "a" * 32 and run_claim(SPEC) == ""
    entry = assignment_tracking(spec)
    assert entry == {"run_id": "a" * 32, "experiment_id": "4"}
    assert assignment_tracking(SPEC) is None
    env = tracking_env(entry, "http://head:8470", "tok")
    assert env == {
        "MLFLOW_TRACKING_URI": "http://head:8470",
        "MLFLOW_RUN_ID": "a" * 32,
        "MLFLOW_EXPERIMENT_ID": "4",
        "MLFLOW_TRACKING_TOKEN": "tok",
    }
    assert tracking_env(None, "http://x", "tok") == {}
    assert "MLFLOW_TRACKING_TOKEN" not in tracking_env(entry, "http://x", None)
    for bad in ("x", {"run_id": "../x", "experiment_id": "4"}, {"run_id": "a" * 32}):
        with pytest.raises(ValueError, match="bad assignment"):
            tracking_env(bad, "http://x", "t")
    assert RUN_CLAIM == "run"


def test_run_scope() -> None:
    check_run_scope("", "b" * 32, "run b")  # an unscoped token: not this check's business
    check_run_scope("a" * 32, "a" * 32, "run a")
    for target in ("b" * 32, None):
        with pytest.raises(TrackingError) as err:
            check_run_scope("a" * 32, target, "experiment 3")
        assert err.value.code == "PERMISSION_DENIED" and "experiment 3" in err.value.message


def test_run_scope_target_of_every_kind_of_write(env: Any) -> None:
    async def body(e: Any) -> None:
        link, _ = await submit(e)
        mine, exp = link.run_id, link.experiment_id
        other = (await e.store.create_run(exp, "alice")).run_id
        model = await e.store.create_logged_model(exp, "m", source_run_id=mine)
        loose = await e.store.create_logged_model(exp, "n")
        api = "/api/2.0/mlflow"
        cases: list[tuple[str, dict[str, Any], str | None]] = [
            (f"{api}/runs/log-batch", {"run_id": mine}, mine),
            ("/ajax-api/2.0/mlflow/runs/update", {"run_uuid": mine}, mine),
            (f"{api}/runs/set-tag", {"run_id": other}, other),
            (f"{api}/runs/log-batch", {"run_id": 5}, None),
            (f"{api}/runs/delete", {"run_id": mine}, None),
            (f"{api}/runs/create", {"experiment_id": exp}, None),
            (f"{api}/experiments/create", {"name": "x"}, None),
            (f"{api}/registered-models/create", {"name": "x"}, None),
            (f"{api}/model-versions/create", {"run_id": mine}, None),
            (f"{api}/logged-models", {"source_run_id": mine}, mine),
            (f"{api}/logged-models", {}, None),
            (f"{api}/logged-models/{model.model_id}", {}, mine),
            (f"{api}/logged-models/{model.model_id}/tags", {}, mine),
            (f"{api}/logged-models/{loose.model_id}/params", {}, None),
            (f"{api}/logged-models/nope", {}, None),
            (f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{mine}/artifacts/a/b.txt", {}, mine),
            (f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{other}/artifacts/x", {}, other),
            (
                f"/api/2.0/mlflow-artifacts/artifacts/{exp}/models/{model.model_id}/artifacts/m",
                {},
                mine,
            ),
            (f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{mine}/elsewhere/x", {}, None),
            (f"/api/2.0/mlflow-artifacts/artifacts/{exp}", {}, None),
            ("/v1/jobs", {"run_id": mine}, None),
        ]
        for path, fields, want in cases:
            assert await run_scope_target(path, fields, e.store) == want, path
            if want != mine:
                with pytest.raises(TrackingError):
                    check_run_scope(mine, want, path)

    env(body)


# --- the snapshot -------------------------------------------------------------------------------


def test_snapshot_records_env_names_never_values(tmp_path: Path) -> None:
    environ = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
        "PATH": "/usr/bin",
        "BAD=NAME": "x",
    }
    snap = take_snapshot("python train.py", cwd=tmp_path, environ=environ)
    assert snap["env_names"] == ["AWS_SECRET_ACCESS_KEY", "PATH"]
    text = json.dumps(check_snapshot(snap)) + json.dumps(snapshot_tags(check_snapshot(snap)))
    assert "wJalrXUtnFEMI" not in text and "/usr/bin" not in text
    assert snap["command"] == "python train.py"
    assert snap["python"]["executable"] == sys.executable


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fakepython"
    path.write_text(f"#!{sys.executable}\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_huge_pip_freeze_is_truncated_with_digest_of_all(tmp_path: Path) -> None:
    lines = "".join(f"package-{i}==1.0.{i}\n" for i in range(100_000))
    (tmp_path / "freeze.txt").write_text(lines)
    python = fake_python(
        tmp_path, f"import sys; sys.stdout.write(open({str(tmp_path / 'freeze.txt')!r}).read())"
    )
    out = pip_freeze(python)
    assert out["error"] is None and out["truncated"] is True
    assert out["count"] == 100_000 and len(out["packages"]) == MAX_FREEZE_LINES
    assert out["packages"][0] == "package-0==1.0.0"
    import hashlib

    assert out["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    # The bytes bound holds too: few long lines.
    long = fake_python(tmp_path, "print(('x' * 4000 + '\\n') * 200, end='')")
    cut = pip_freeze(long, max_bytes=64 * 1024)
    assert cut["truncated"] and sum(len(p) + 1 for p in cut["packages"]) <= 64 * 1024
    snap = take_snapshot(["x"], cwd=tmp_path, python=python, environ={})
    assert check_snapshot(snap)["pip_freeze"]["truncated"] is True


def test_pip_freeze_failures_are_recorded_not_raised(tmp_path: Path) -> None:
    slow = fake_python(tmp_path, "import time; time.sleep(30)")
    started = time.monotonic()
    out = pip_freeze(slow, timeout=0.5)
    assert time.monotonic() - started < 10
    assert out["packages"] == [] and "longer than" in out["error"]
    failing = fake_python(
        tmp_path, "import sys; sys.stderr.write('No module named pip\\n'); sys.exit(1)"
    )
    assert "No module named pip" in pip_freeze(failing)["error"]
    assert "cannot run" in pip_freeze(str(tmp_path / "missing"))["error"]


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_git_state_clean_dirty_untracked_and_absent(tmp_path: Path) -> None:
    assert git_state(tmp_path) is None  # not a git work tree: recorded as absent
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    empty = git_state(repo)
    assert empty is not None and empty["commit"] is None
    (repo / "a.py").write_text("print(1)\n")
    git(repo, "add", "a.py")
    git(repo, "commit", "-q", "-m", "one")
    clean = git_state(repo)
    assert clean is not None and len(clean["commit"]) == 40 and clean["dirty"] is False
    assert clean["diff_sha256"] is None and clean["error"] is None
    (repo / "a.py").write_text("print(2)\n")
    dirty = git_state(repo)
    assert dirty is not None and dirty["dirty"] and dirty["diff_sha256"]
    (repo / "new.txt").write_text("x")
    more = git_state(repo)
    assert more is not None and more["untracked"] == 1
    assert more["diff_sha256"] != dirty["diff_sha256"]  # untracked names count
    (repo / "a.py").write_text("print(1)\n")
    os.remove(repo / "new.txt")
    assert git_state(repo) == clean  # back to the commit: the same state again
    snap = check_snapshot(take_snapshot(["x"], cwd=repo / ".", environ={}))
    tags = snapshot_tags(snap)
    assert tags["mlflow.source.git.commit"] == clean["commit"]
    assert tags["cplat.snapshot.git_dirty"] == "false"


def test_check_snapshot_bounds() -> None:
    with pytest.raises(InputError) as err:
        check_snapshot({"cwd": "x" * 600_000})
    assert err.value.field == "snapshot"
    with pytest.raises(InputError) as err:
        check_snapshot({"pip_freeze": {"packages": ["a"] * (MAX_FREEZE_LINES + 1)}})
    assert err.value.field == "snapshot.pip_freeze.packages"
    with pytest.raises(InputError) as err:
        check_snapshot({"version": 2})
    assert err.value.field == "snapshot.version"
    with pytest.raises(InputError) as err:
        check_snapshot({"taken_at": float("inf")})
    assert err.value.field == "snapshot"
    assert check_snapshot({})["git"] is None


# --- end to end: a real cplat serve, a real agent, the real mlflow client in the job ------------

TRAIN = """
import json, os, jwt, mlflow
run_id = os.environ["MLFLOW_RUN_ID"]  # end_run() takes it out of the environment
with mlflow.start_run():
    mlflow.log_param("lr", "0.01")
    for step in range(3):
        mlflow.log_metric("acc", 0.5 + 0.1 * step, step=step)
    mlflow.log_text("hello", "notes/hello.txt")
claims = jwt.decode(os.environ["MLFLOW_TRACKING_TOKEN"], options={"verify_signature": False})
denied = []
client = mlflow.MlflowClient()
for write in (lambda: client.create_experiment("sneaky"),
              lambda: client.set_tag(os.environ["OTHER_RUN"], "x", "y"),
              lambda: client.delete_run(run_id),
              lambda: client.log_text(os.environ["OTHER_RUN"], "x", "x.txt")):
    try:
        write()
        denied.append(False)
    except Exception as exc:  # the artifact client raises its own errors for a 403
        denied.append("PERMISSION_DENIED" in str(exc) or "403" in str(exc))
print(json.dumps({"uri": os.environ["MLFLOW_TRACKING_URI"], "run": claims.get("run"),
                  "same": os.environ["MLFLOW_TRACKING_TOKEN"] == os.environ["CPLAT_TOKEN"],
                  "denied": denied}))
"""
QUIET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_RUN_ID": "0" * 32,  # the job's own env cannot point the run elsewhere
}


def test_job_with_experiment_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from cplat.testing.service import running_service, token

    member = token("ana", "vision", "member")
    small = {"resources": {"cpu_milli": 100, "memory_mib": 512}}
    snap = take_snapshot([sys.executable, "-c", "..."], cwd=tmp_path, environ={"SECRET": "v4lue"})

    async def run_of(svc: Any, run_id: str, status: str) -> dict[str, Any]:
        # The code's own end_run() may set FINISHED first: wait for the job's last word too.
        final = status in ("FINISHED", "FAILED", "KILLED")
        deadline = time.monotonic() + 30
        while True:
            code, body = await svc.call("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", member)
            assert code == 200, body
            keys = {t["key"] for t in body["run"]["data"].get("tags", [])}
            done = body["run"]["info"]["status"] == status
            if (done and (not final or "cplat.job_state" in keys)) or time.monotonic() > deadline:
                return dict(body["run"])
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with running_service(tmp_path) as svc:
            await svc.start_agent("node-a", tmp_path / "a")
            api = "/api/2.0/mlflow"
            code, exp = await svc.call(
                "POST", f"{api}/experiments/create", member, json={"name": "o"}
            )
            code, other = await svc.call(
                "POST", f"{api}/runs/create", member, json={"experiment_id": exp["experiment_id"]}
            )
            other_run = other["run"]["info"]["run_id"]
            job = await svc.submit(
                member,
                name="train",
                command=[sys.executable, "-c", TRAIN],
                tasks=small,
                env={**QUIET, "OTHER_RUN": other_run},
                experiment={"name": "e2e", "run_name": "first", "snapshot": snap},
            )
            link = job["tracking"]
            done = await svc.wait(job["id"], member, timeout=120)
            code, logs = await svc.call("GET", f"/v1/jobs/{job['id']}/logs", member)
            assert done["state"] == "SUCCEEDED", "".join(c["data"] for c in logs["logs"])[-3000:]
            stdout = "".join(c["data"] for c in logs["logs"] if c["stream"] == "stdout")
            out = json.loads(stdout.strip().splitlines()[-1])
            assert out == {
                "uri": svc.url,
                "run": link["run_id"],
                "same": True,
                "denied": [True, True, True, True],  # the job's token writes to its run only
            }
            run = await run_of(svc, link["run_id"], "FINISHED")
            info, data = run["info"], run["data"]
            assert info["status"] == "FINISHED" and info["run_name"] == "first"
            tags = {t["key"]: t["value"] for t in data["tags"]}
            assert tags["cplat.job_id"] == str(job["id"]) and tags["cplat.attempt"] == "1"
            assert tags["cplat.nodes"] == "node-a" and tags["cplat.exit_code"] == "0"
            assert float(tags["cplat.queue_wait_s"]) >= 0
            assert tags["cplat.snapshot.env_names"] == "SECRET"
            assert {p["key"]: p["value"] for p in data["params"]} == {"lr": "0.01"}
            code, hist = await svc.call(
                "GET",
                f"/api/2.0/mlflow/metrics/get-history?run_id={link['run_id']}&metric_key=acc",
                member,
            )
            assert [round(m["value"], 3) for m in hist["metrics"]] == [0.5, 0.6, 0.7]
            path = f"{link['experiment_id']}/{link['run_id']}/artifacts/{SNAPSHOT_ARTIFACT}"
            code, stored = await svc.call(
                "GET", f"/api/2.0/mlflow-artifacts/artifacts/{path}", member
            )
            stored = json.loads(stored) if isinstance(stored, str) else stored
            assert code == 200 and stored["env_names"] == ["SECRET"]
            code, note = await svc.call(
                "GET",
                f"/api/2.0/mlflow-artifacts/artifacts/{link['experiment_id']}/{link['run_id']}"
                "/artifacts/notes/hello.txt",
                member,
            )
            assert (code, note) == (200, "hello")  # its own run's artifacts: allowed
            assert "v4lue" not in json.dumps(stored) + json.dumps(tags)

            # A cancelled job leaves a KILLED run.
            sleeper = await svc.submit(
                member,
                name="sleeper",
                command=[sys.executable, "-c", "import time; time.sleep(60)"],
                tasks=small,
                experiment="e2e",
            )
            await svc.wait(sleeper["id"], member, {"RUNNING"}, timeout=60)
            assert (await run_of(svc, sleeper["tracking"]["run_id"], "RUNNING"))["info"][
                "status"
            ] == "RUNNING"
            code, _ = await svc.call("POST", f"/v1/jobs/{sleeper['id']}/cancel", member)
            assert code == 200
            killed = await run_of(svc, sleeper["tracking"]["run_id"], "KILLED")
            assert killed["info"]["status"] == "KILLED" and killed["info"]["end_time"]

            # A bad experiment field is a 400 naming the field, and creates nothing.
            code, err = await svc.call(
                "POST",
                "/v1/jobs",
                member,
                json={
                    "name": "x",
                    "command": ["true"],
                    "experiment": {"name": "e2e", "snapshot": {"env_names": ["A=b"]}},
                },
            )
            assert code == 400 and err["error"]["field"] == "experiment.snapshot.env_names"

            # A replayed submission answers with the first job and leaves no second run.
            again = {"name": "idem", "command": ["true"], "tasks": small, "experiment": "idem"}
            key = {"Idempotency-Key": "one-key"}
            c1, j1 = await svc.call("POST", "/v1/jobs", member, json=again, headers=dict(key))
            c2, j2 = await svc.call("POST", "/v1/jobs", member, json=again, headers=dict(key))
            assert (c1, c2) == (201, 200) and j1["id"] == j2["id"]
            assert j2["tracking"] == j1["tracking"]
            code, idem = await svc.call(
                "GET", f"{api}/experiments/get-by-name?experiment_name=idem", member
            )
            code, found = await svc.call(
                "POST",
                f"{api}/runs/search",
                member,
                json={"experiment_ids": [idem["experiment"]["experiment_id"]]},
            )
            assert [r["info"]["run_id"] for r in found["runs"]] == [j1["tracking"]["run_id"]]

    asyncio.run(main())
