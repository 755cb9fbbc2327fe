from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from cplat.traces.schema import JOB_SCHEMA, NODE_SCHEMA
from cplat.workload import (
    BATCH,
    INTERACTIVE,
    LublinParams,
    bucket_weights,
    lublin_feitelson,
    synthetic_cluster_nodes,
)

WHOLE = LublinParams(split_types=False)


def _stats(table: pa.Table, nodes: int) -> dict[str, float]:
    size = table["num_tasks"].to_numpy().astype(np.int64)
    dur = table["duration"].to_numpy()
    submit = table["submit_time"].to_numpy()
    span = float(submit[-1] - submit[0])
    return {
        "serial": float(np.mean(size == 1)),
        "pow2": float(np.mean((size > 1) & ((size & (size - 1)) == 0))),
        "mean_rt": float(dur.mean()),
        "median_rt": float(np.median(dur)),
        "load": float((dur * size).sum() / (span * nodes)),
    }


@pytest.fixture(scope="module")
def split_10k() -> pa.Table:
    return lublin_feitelson(10_000, nodes=256, seed=0)


@pytest.fixture(scope="module")
def whole_10k() -> pa.Table:
    return lublin_feitelson(10_000, nodes=256, seed=0, params=WHOLE)


def test_schema_and_fixed_columns(split_10k: pa.Table) -> None:
    t = split_10k
    assert t.schema.equals(JOB_SCHEMA, check_metadata=True)
    assert t.num_rows == 10_000
    assert t["job_id"].to_pylist() == list(range(1, 10_001))
    assert set(t["cpu_milli"].to_pylist()) == {1000}
    assert set(t["memory_mib"].to_pylist()) == {0}
    assert set(t["num_gpu"].to_pylist()) == {0}
    assert set(t["gpu_milli"].to_pylist()) == {0}
    assert set(t["gpu_models"].to_pylist()) == {""}
    assert set(t["priority"].to_pylist()) == {0}
    assert set(t["queue"].to_pylist()) == {"batch", "interactive"}
    assert t["requested_time"].equals(t["duration"])
    for name in JOB_SCHEMA.names:
        if name != "requested_time":
            assert t[name].null_count == 0


def test_times_and_sizes(split_10k: pa.Table) -> None:
    submit = split_10k["submit_time"].to_numpy()
    assert submit[0] == 0
    assert np.all(np.diff(submit) >= 0)
    assert submit[-1] > 86_400  # 10k jobs take weeks
    size = split_10k["num_tasks"].to_numpy()
    assert size.min() >= 1 and size.max() <= 256
    assert size.max() > 128  # the size model is stretched to the machine
    assert split_10k["duration"].to_numpy().min() >= 1
    assert split_10k["duration"].to_numpy().max() <= int(np.exp(12)) + 1


def test_determinism() -> None:
    a = lublin_feitelson(2_000, seed=7)
    b = lublin_feitelson(2_000, seed=7)
    c = lublin_feitelson(2_000, seed=8)
    assert a.equals(b)
    assert not a.equals(c)
    assert not np.array_equal(a["duration"].to_numpy(), c["duration"].to_numpy())


def test_estimates_touch_only_requested_time() -> None:
    exact = lublin_feitelson(3_000, seed=3)
    over = lublin_feitelson(3_000, seed=3, estimate="overestimate")
    none = lublin_feitelson(3_000, seed=3, estimate="none")
    others = [n for n in JOB_SCHEMA.names if n != "requested_time"]
    assert exact.select(others).equals(over.select(others))
    assert exact.select(others).equals(none.select(others))
    dur = over["duration"].to_numpy()
    req = over["requested_time"].to_numpy()
    assert np.all(req >= dur) and np.all(req <= np.ceil(5 * dur))
    assert np.mean(req > dur) > 0.9
    assert none["requested_time"].null_count == 3_000
    assert none.schema.equals(JOB_SCHEMA)


def test_users_and_groups(split_10k: pa.Table) -> None:
    users = split_10k["user"].to_numpy(zero_copy_only=False)
    groups = split_10k["group"].to_numpy(zero_copy_only=False)
    assert set(users) <= {f"u{k}" for k in range(1, 41)}
    assert set(groups) == {f"g{k}" for k in range(1, 9)}
    assert len(set(users)) >= 35
    counts = {u: int(np.sum(users == u)) for u in set(users)}
    assert counts["u1"] > 3 * counts.get("u40", 0)  # Zipf-like
    # every user stays in one group
    pairs = set(zip(users.tolist(), groups.tolist(), strict=True))
    assert len(pairs) == len(set(users))


def test_published_proportions_split(split_10k: pa.Table) -> None:
    s = _stats(split_10k, 256)
    print("split model, 10k jobs on 256 processors:", s)
    # serial: mix of 0.2927 (batch) and 0.1541 (interactive); pow2 at least pow2_prob
    assert 0.14 < s["serial"] < 0.30
    assert 0.60 < s["pow2"] < 0.75
    assert 300 < s["mean_rt"] < 5_000
    assert 5 < s["median_rt"] < 200
    assert 0.2 < s["load"] < 1.5


def test_published_proportions_whole(whole_10k: pa.Table) -> None:
    s = _stats(whole_10k, 256)
    print("typeless model, 10k jobs on 256 processors:", s)
    assert 0.22 < s["serial"] < 0.27  # SERIAL_PROB = 0.244
    assert 0.57 < s["pow2"] < 0.68  # POW2_PROB = 0.576 plus sizes that round to 2**k
    assert 2_000 < s["mean_rt"] < 10_000
    assert 50 < s["median_rt"] < 400
    assert 0.2 < s["load"] < 1.5
    assert set(whole_10k["queue"].to_pylist()) == {"batch"}


def test_size_runtime_correlation(whole_10k: pa.Table) -> None:
    size = whole_10k["num_tasks"].to_numpy()
    dur = whole_10k["duration"].to_numpy()
    assert np.median(dur[size >= 32]) > 3 * np.median(dur[size == 1])


def test_daily_cycle(whole_10k: pa.Table) -> None:
    hour = (whole_10k["submit_time"].to_numpy() % 86_400) // 3600
    per_hour = np.bincount(hour, minlength=24)
    assert per_hour[12:17].sum() > 3 * per_hour[2:7].sum()


def test_bucket_weights() -> None:
    for cls in (BATCH, INTERACTIVE):
        w = bucket_weights(cls)
        assert w.shape == (48,)
        assert np.all(w > 0) and w.mean() == pytest.approx(1.0)
        assert 20 <= int(np.argmax(w)) <= 34  # peak in the early afternoon


def test_small_machines() -> None:
    for nodes in (1, 2, 3, 5, 100):
        size = lublin_feitelson(2_000, nodes=nodes, seed=1)["num_tasks"].to_numpy()
        assert size.min() >= 1 and size.max() <= nodes
    assert set(lublin_feitelson(100, nodes=1)["num_tasks"].to_pylist()) == {1}


def test_empty() -> None:
    t = lublin_feitelson(0)
    assert t.num_rows == 0 and t.schema.equals(JOB_SCHEMA)
    assert lublin_feitelson(1)["submit_time"].to_pylist() == [0]


def test_cluster_nodes() -> None:
    t = synthetic_cluster_nodes(256, procs_per_node=4)
    assert t.schema.equals(NODE_SCHEMA, check_metadata=True)
    assert t.num_rows == 256
    assert t["name"][0].as_py() == "lf-node-0000" and t["name"][255].as_py() == "lf-node-0255"
    assert set(t["cpu_milli"].to_pylist()) == {4000}
    assert set(t["num_gpu"].to_pylist()) == {0}
    assert set(t["gpu_model"].to_pylist()) == {""}
    assert synthetic_cluster_nodes()["cpu_milli"].to_pylist() == [1000] * 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_jobs": -1},
        {"num_jobs": 1.5},
        {"num_jobs": True},
        {"num_jobs": 10, "nodes": 0},
        {"num_jobs": 10, "seed": -1},
        {"num_jobs": 10, "estimate": "guess"},
        {"num_jobs": 10, "params": "defaults"},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        lublin_feitelson(**kwargs)  # type: ignore[arg-type]


def test_bad_params() -> None:
    with pytest.raises(ValueError, match="start_hour"):
        LublinParams(start_hour=24)
    with pytest.raises(ValueError, match="num_groups"):
        LublinParams(num_users=4, num_groups=8)
    with pytest.raises(ValueError, match="serial_prob"):
        replace(BATCH, serial_prob=1.5)
    with pytest.raises(ValueError, match="u_low"):
        replace(BATCH, u_med=8.0)
    with pytest.raises(ValueError, match="a2"):
        replace(BATCH, a2=0.0)
    with pytest.raises(ValueError):
        synthetic_cluster_nodes(0)
    with pytest.raises(ValueError):
        synthetic_cluster_nodes(4, procs_per_node=0)


def test_speed_500k() -> None:
    lublin_feitelson(1_000)  # warm up
    t0 = time.perf_counter()
    t = lublin_feitelson(500_000, nodes=256, seed=0)
    elapsed = time.perf_counter() - t0
    print(f"500,000 jobs in {elapsed:.2f} s")
    assert t.num_rows == 500_000
    assert elapsed < 5.0
