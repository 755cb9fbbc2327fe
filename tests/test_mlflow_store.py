"""The tracking store on both backends, and the search grammar of the MLflow endpoints.

PostgreSQL runs when CPLAT_TEST_PG_DSN is set.
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cplat.ml.tracking import MetricIn, TrackingError, TrackingStore, open_tracking_store
from cplat.ml.tracking.driver import to_dollar
from cplat.ml.tracking.search import (
    Comparison,
    OrderKey,
    decode_page_token,
    encode_page_token,
    parse_filter,
    parse_order_by,
)

PG_DSN = os.environ.get("CPLAT_TEST_PG_DSN", "")
T = TypeVar("T")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(not PG_DSN, reason="CPLAT_TEST_PG_DSN is not set"),
    ),
]


async def _reset_pg() -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename LIKE 'trk\\_%'"
        )
        for t in tables:
            await conn.execute(f'DROP TABLE IF EXISTS "{t[0]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def with_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[Callable[[TrackingStore], Awaitable[T]]], T]:
    """Run a coroutine function against a fresh store of the backend."""

    def run(fn: Callable[[TrackingStore], Awaitable[T]]) -> T:
        async def main() -> T:
            if request.param == "postgres":
                await _reset_pg()
                url = PG_DSN
            else:
                url = f"sqlite:///{tmp_path / 'cplat.db'}"
            store = await open_tracking_store(url, tmp_path)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(main())

    return run


async def _code(aw: Awaitable[Any]) -> str:
    try:
        await aw
    except TrackingError as exc:
        return exc.code
    return "ok"


# --- grammar ----------------------------------------------------------------------------------


def test_filter_grammar() -> None:
    got = parse_filter(
        "metrics.acc > 0.9 and params.lr = '0.01' AND tags.`my tag` LIKE 'a%' "
        "and attributes.status IN (\"FINISHED\", 'FAILED') and run_name != 'it''s' "
        "and tags.x IS NOT NULL and metrics.\"a b\" <= -1e3 and datasets.name NOT IN ('x')"
    )
    assert got == [
        Comparison("metric", "acc", ">", 0.9),
        Comparison("param", "lr", "=", "0.01"),
        Comparison("tag", "my tag", "LIKE", "a%"),
        Comparison("attribute", "status", "IN", ("FINISHED", "FAILED")),
        Comparison("attribute", "run_name", "!=", "it's"),
        Comparison("tag", "x", "IS NOT NULL", None),
        Comparison("metric", "a b", "<=", -1000.0),
        Comparison("dataset", "name", "NOT IN", ("x",)),
    ]
    assert parse_filter("metrics.val.acc>1") == [Comparison("metric", "val.acc", ">", 1.0)]
    assert parse_filter("") == [] and parse_filter(None) == []
    assert parse_order_by(["metrics.acc DESC", "name", "tags.`a b` asc"]) == [
        OrderKey("metric", "acc", False),
        OrderKey("attribute", "name", True),
        OrderKey("tag", "a b", True),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "metrics.acc",
        "metrics.acc >",
        "metrics.acc > 1 or metrics.acc < 0",
        "(metrics.acc > 1)",
        "bogus.x = 'a'",
        "metrics. = 1",
        "tags.x IN 'a'",
        "tags.x IN (1, 2)",
        "tags.x IS 'a'",
        "tags.x = 'a' tags.y = 'b'",
        "tags.x = 'a';",
        "x" * 20_000,
    ],
)
def test_filter_grammar_refuses(bad: str) -> None:
    with pytest.raises(TrackingError) as err:
        parse_filter(bad)
    assert err.value.code == "INVALID_PARAMETER_VALUE" and err.value.field == "filter"


def test_page_tokens_and_placeholders() -> None:
    assert decode_page_token(encode_page_token(42)) == 42
    for bad in ("x", "e30=", encode_page_token(-1), "eyJvZmZzZXQiOiAiMSJ9"):
        with pytest.raises(TrackingError):
            decode_page_token(bad)
    assert to_dollar("SELECT ? , '?' , ?") == "SELECT $1 , '?' , $2"


# --- the store on each backend ----------------------------------------------------------------


def test_experiments_runs_and_params(with_store: Any) -> None:
    async def body(st: TrackingStore) -> None:
        eid = await st.create_experiment("p1", "exp", tags={"a": "b"})
        assert await st.experiment_project(eid) == "p1"
        assert await st.experiment_project("999999") is None
        assert await st.experiment_project("../1") is None
        assert await _code(st.create_experiment("p1", "exp")) == "RESOURCE_ALREADY_EXISTS"
        assert (await st.create_experiment("p2", "exp")) != eid  # names are per project
        run = await st.create_run(eid, "ana", run_name="r")
        owner = await st.run_owner(run.run_id)
        assert owner is not None and (owner.project, owner.experiment_id) == ("p1", eid)
        assert owner.artifact_uri == f"mlflow-artifacts:/{eid}/{run.run_id}/artifacts"
        await st.log_batch(run.run_id, params=[("lr", "0.1")])
        assert await _code(st.log_batch(run.run_id, params=[("lr", "0.2")])) == (
            "INVALID_PARAMETER_VALUE"
        )
        # A failed batch writes nothing of itself.
        bad = st.log_batch(
            run.run_id, [MetricIn("m", 1.0, 1, 0)], params=[("lr", "0.3")], tags=[("t", "v")]
        )
        assert await _code(bad) == "INVALID_PARAMETER_VALUE"
        got = await st.get_run(run.run_id)
        assert got is not None and got.metrics == [] and "t" not in got.tags
        await st.set_experiment_lifecycle(eid, "deleted")
        assert (await st.get_run(run.run_id)).lifecycle_stage == "deleted"  # type: ignore[union-attr]
        assert await _code(st.create_run(eid, "ana")) == "INVALID_PARAMETER_VALUE"
        assert await st.get_experiment_by_name("p1", "nope") is None

    with_store(body)


def test_metrics_latest_history_nan_and_paging(with_store: Any) -> None:
    async def body(st: TrackingStore) -> None:
        eid = await st.create_experiment("p", "m")
        run = await st.create_run(eid, "ana")
        pts = [MetricIn("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(1000)]
        await st.log_batch(run.run_id, pts[500:])
        await st.log_batch(run.run_id, pts[:500])  # older steps later: latest stays step 999
        await st.log_batch(run.run_id, pts[:10])  # exact repeats are stored once
        await st.log_batch(run.run_id, [MetricIn("odd", math.nan, 5, 3)])
        got = await st.get_run(run.run_id)
        assert got is not None
        latest = {m.key: m for m in got.metrics}
        assert latest["loss"].step == 999 and latest["loss"].value == pytest.approx(1 / 1000)
        assert math.isnan(latest["odd"].value)
        page, token = await st.metric_history(run.run_id, "loss", 300)
        seen = list(page)
        while token:
            page, token = await st.metric_history(run.run_id, "loss", 300, token)
            seen += page
        assert [p[0] for p in seen] == list(range(1000))
        nan_hist, _ = await st.metric_history(run.run_id, "odd")
        assert len(nan_hist) == 1 and math.isnan(nan_hist[0][2])
        assert (await st.metric_history(run.run_id, "absent"))[0] == []
        sampled = await st.metric_history_bulk_interval([run.run_id], "loss", 100, 199, 5)
        assert [s for _, s, _, _ in sampled] == [100, 125, 150, 174, 199]

    with_store(body)


def test_search_runs_projects_and_order(with_store: Any) -> None:
    async def body(st: TrackingStore) -> None:
        mine = await st.create_experiment("mine", "e")
        theirs = await st.create_experiment("theirs", "e")
        ids = []
        for i in range(5):
            r = await st.create_run(mine, "ana", start_time=100 + i)
            await st.log_batch(r.run_id, [MetricIn("acc", i / 10, 1, 0)], [("i", str(i))])
            ids.append(r.run_id)
        other = await st.create_run(theirs, "eve")
        await st.log_batch(other.run_id, [MetricIn("acc", 0.99, 1, 0)])
        runs, _ = await st.search_runs([mine, theirs], ["mine"], "metrics.acc >= 0.2")
        assert [r.run_id for r in runs] == ids[:1:-1]
        runs, _ = await st.search_runs([theirs], ["mine"])
        assert runs == []  # another project's experiment is simply not there
        runs, _ = await st.search_runs([mine, theirs], None, "metrics.acc > 0.35")
        assert {r.run_id for r in runs} == {ids[4], other.run_id}
        runs, tok = await st.search_runs([mine], ["mine"], order_by=["params.i ASC"], max_results=2)
        assert [r.run_id for r in runs] == ids[:2] and tok is not None
        runs, tok = await st.search_runs([mine], ["mine"], order_by=["params.i"], page_token=tok)
        assert [r.run_id for r in runs] == ids[2:] and tok is None
        sneaky = "params.`i' OR 1=1 --` = 'x'"
        assert (await st.search_runs([mine], ["mine"], sneaky))[0] == []

    with_store(body)


def test_registry_versions_aliases_stages(with_store: Any) -> None:
    async def body(st: TrackingStore) -> None:
        await st.create_registered_model("p", "m", "ana", tags={"a": "1"})
        assert await _code(st.create_registered_model("p", "m", "ana")) == (
            "RESOURCE_ALREADY_EXISTS"
        )
        await st.create_registered_model("q", "m", "eve")  # another project's
        for _ in range(3):
            await st.create_model_version("p", "m", "s", "ana", "mlflow-artifacts:/1/x")
        await st.delete_model_version("p", "m", 3)
        v4 = await st.create_model_version("p", "m", "s", "ana", "loc4")
        assert v4.version == 4  # numbers are never reused
        await st.set_alias("p", "m", "champion", 2)
        assert (await st.version_by_alias("p", "m", "champion")).version == 2
        assert await _code(st.set_alias("p", "m", "v1", 1)) == "INVALID_PARAMETER_VALUE"
        assert await _code(st.set_alias("p", "m", "latest", 1)) == "INVALID_PARAMETER_VALUE"
        assert await _code(st.set_alias("p", "m", "x", 9)) == "RESOURCE_DOES_NOT_EXIST"
        await st.delete_model_version("p", "m", 2)  # its alias goes with it
        assert await _code(st.version_by_alias("p", "m", "champion")) == ("RESOURCE_DOES_NOT_EXIST")
        await st.transition_stage("p", "m", 1, "production", False)
        await st.transition_stage("p", "m", 4, "Production", True)
        latest = await st.latest_versions("p", "m", ["Production", "Archived"])
        assert [(v.version, v.current_stage) for v in latest] == [
            (1, "Archived"),
            (4, "Production"),
        ]
        assert await st.model_version_source("p", "m", 4) == "loc4"
        assert await st.model_version_source("q", "m", 4) is None
        found, _ = await st.search_registered_models(["p"], "tags.a != 'x'")
        assert [(m.project, m.name) for m in found] == [("p", "m")]
        found, _ = await st.search_registered_models(
            ["q"], "tags.`mlflow.prompt.is_prompt` != 'true'"
        )
        assert [(m.project, m.name) for m in found] == [("q", "m")]
        await st.update_registered_model("p", "m", new_name="m2")
        assert await _code(st.update_registered_model("p", "m2", new_name="m2")) == "ok"
        versions, _ = await st.search_model_versions(["p"], "name = 'm2' and version_number > 1")
        assert [v.version for v in versions] == [4]
        await st.delete_registered_model("p", "m2")
        assert await st.get_registered_model("p", "m2") is None

    with_store(body)


def test_sqlite_file_is_private_and_in_the_data_dir(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_tracking_store(f"sqlite:///{tmp_path / 'cplat.db'}", tmp_path)
        try:
            await store.create_experiment("p", "e")
        finally:
            await store.close()

    asyncio.run(main())
    for name in ("tracking.db", "tracking.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (tmp_path / "tracking.db").exists()
