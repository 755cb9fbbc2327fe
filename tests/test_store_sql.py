"""The SQL both stores share (:mod:`cplat.store.sql`): parameter spelling and query building.

The store's behaviour is tested in ``test_store.py`` on both backends; these tests pin what the
shared layer adds: statements are rewritten per backend without touching anything but
parameters, and values are always bound, never spliced into SQL text.
"""

from __future__ import annotations

from typing import Any

import pytest

# The backend fixtures (SQLite, and PostgreSQL when CPLAT_TEST_PG_DSN is set) of the store suite.
from test_store import Run, backend, new_job, run, store  # noqa: F401

from cplat.store import AuditIn, NodeRecord, Store
from cplat.store.sql import Query, SqlStore


def test_query_numbers_parameters_in_order() -> None:
    for spell, first, third in ((lambda n: f"?{n}", "?1", "?3"), (lambda n: f"${n}", "$1", "$3")):
        q = Query(spell)
        assert q.clause() == ""
        q.where("state = {}", "RUNNING")
        q.where('"user" = {}', "ana")
        limit = q.param(10)
        assert q.clause() == f'WHERE state = {first} AND "user" = {spell(2)} '
        assert (limit, q.params) == (third, ["RUNNING", "ana", 10])


def test_statements_are_spelled_for_the_backend(store: Store) -> None:  # noqa: F811
    assert isinstance(store, SqlStore)
    p = store.placeholder
    text = "SELECT x FROM t WHERE a = $1 AND b = $12 AND c = $1 AND d = '$'"
    # Multi-digit numbers stay whole ($12 is not $1 then "2"); a lone $ is left alone.
    assert (
        store.sql(text)
        == f"SELECT x FROM t WHERE a = {p(1)} AND b = {p(12)} AND c = {p(1)} AND d = '$'"
    )
    assert store.sql(text) is store.sql(text)  # spelled once, then reused


HOSTILE = ["p$1", "?2", "x'); DROP TABLE jobs; --", "' OR '1'='1", '"user"', "$$ $"]


def test_values_are_bound_never_spliced(store: Store, run: Run[Any]) -> None:  # noqa: F811
    jobs = run(store.create_jobs([new_job(i, project=v, user=v) for i, v in enumerate(HOSTILE)]))
    by_value = {v: j.id for v, j in zip(HOSTILE, jobs, strict=True)}
    for v in HOSTILE:
        assert [j.id for j in run(store.list_jobs(projects=[v]))] == [by_value[v]]
        assert [j.id for j in run(store.list_jobs(user=v))] == [by_value[v]]
    both = run(store.list_jobs(projects=["p$1", "' OR '1'='1", "nobody"]))
    assert [j.id for j in both] == [by_value["p$1"], by_value["' OR '1'='1"]]
    assert run(store.list_jobs(user="' OR 1=1 --")) == []
    assert len(run(store.list_jobs(limit=100))) == len(HOSTILE)  # nothing dropped, nothing added

    for v in HOSTILE:
        run(store.put_node(NodeRecord(v, "up", {"cpu_milli": 1}, {"k": v}, 1.0, 2.0)))
    assert sorted(n.name for n in run(store.list_nodes())) == sorted(HOSTILE)
    assert run(store.get_node("$1")) is None
    node = run(store.get_node("x'); DROP TABLE jobs; --"))
    assert node is not None and node.labels == {"k": "x'); DROP TABLE jobs; --"}
    assert run(store.delete_node("' OR '1'='1")) is True
    assert len(run(store.list_nodes())) == len(HOSTILE) - 1

    run(
        store.append_audit([AuditIn(1.0, v, v, "POST /v1/jobs", "job/1", 201, {}) for v in HOSTILE])
    )
    for v in HOSTILE:
        assert [e.user for e in run(store.list_audit(project=v))] == [v]


@pytest.mark.parametrize("limit", [-5, 0])
def test_non_positive_limits_return_nothing(
    store: Store,  # noqa: F811
    run: Run[Any],  # noqa: F811
    limit: int,
) -> None:
    (job,) = run(store.create_jobs([new_job()]))
    run(store.append_audit([AuditIn(1.0, "u", "p", "a", "t", 200, {})]))
    assert run(store.list_jobs(limit=limit)) == []
    assert run(store.job_events(job.id, limit=limit)) == []
    assert run(store.job_logs(job.id, limit=limit)) == []
    assert run(store.list_audit(limit=limit)) == []
