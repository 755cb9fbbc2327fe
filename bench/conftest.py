"""pytest-benchmark suite of cplat: options, figure recording, skips in the JSON.

Run with ``python -m pytest bench/ --benchmark-only [--quick] --benchmark-json=FILE`` and gate
with ``python bench/compare.py FILE`` (or ``cplat bench``). The default ``python -m pytest``
collects only ``tests/`` (``testpaths``), so this file is loaded only when ``bench/`` is named.

Each test records its figures with :func:`record` (``extra_info["figures"]`` in the JSON) and
names them in ``@pytest.mark.figures(...)`` so that a skipped test's figures are listed in the
JSON's ``cplat.skipped`` with the reason, and a deselected test's in ``cplat.deselected``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Generator
from typing import Any

import pytest
from bench_engine import machine

from cplat.benchmarks import figure

_SKIPPED = pytest.StashKey[dict[str, str]]()
_DESELECTED = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="cplat benchmarks: fewer rounds and smaller runs (also CPLAT_BENCH_QUICK=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "figures(*keys): the benchmark figures a test records")
    config.stash[_SKIPPED] = {}
    config.stash[_DESELECTED] = []


def is_quick(config: pytest.Config) -> bool:
    return bool(config.getoption("--quick")) or os.environ.get("CPLAT_BENCH_QUICK", "") not in (
        "",
        "0",
    )


@pytest.fixture(scope="session")
def quick(pytestconfig: pytest.Config) -> bool:
    return is_quick(pytestconfig)


def _keys(item: pytest.Item) -> list[str]:
    return [k for m in item.iter_markers("figures") for k in m.args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for key in _keys(item):
            figure(key)  # an unregistered key is a mistake in the suite: fail collection


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        item.config.stash[_DESELECTED].extend(_keys(item))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        for key in _keys(item):
            item.config.stash[_SKIPPED][key] = reason


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    output_json["cplat"] = {
        "quick": is_quick(config),
        "machine": machine(),
        "skipped": dict(config.stash[_SKIPPED]),
        "deselected": sorted(set(config.stash[_DESELECTED])),
    }


class Interleaved:
    """A subject timed by pytest-benchmark with a baseline timed before each of its rounds.

    The baseline runs in the round's (untimed) setup, so both see the same machine state,
    round by round.
    """

    def __init__(self, benchmark: Any, baseline: Callable[[], object]) -> None:
        self.benchmark = benchmark
        self.baseline = baseline
        self.baseline_times: list[float] = []

    def run(
        self,
        subject: Callable[..., object],
        rounds: int,
        prepare: Callable[[], tuple[tuple[Any, ...], dict[str, Any]] | None] | None = None,
    ) -> Any:
        """Run ``rounds`` rounds; ``prepare`` (untimed) builds the subject's arguments."""
        from reference import timed

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            args = prepare() if prepare is not None else None
            self.baseline_times.append(timed(self.baseline))
            return args

        return self.benchmark.pedantic(subject, setup=setup, rounds=rounds, iterations=1)

    @property
    def subject_s(self) -> float:
        return float(self.benchmark.stats.stats.median)

    @property
    def baseline_s(self) -> float:
        return statistics.median(self.baseline_times)


def record(
    benchmark: Any,
    key: str,
    value: float,
    subject_s: float | None = None,
    baseline_s: float | None = None,
) -> None:
    """Record figure ``key`` (its median ``value`` and, if gated, the two median times)."""
    fig = figure(key)
    if fig.gated and (subject_s is None or baseline_s is None):
        raise AssertionError(f"{key} is gated: record its subject and baseline times")
    entry: dict[str, Any] = {"key": key, "value": value, "unit": fig.unit}
    if subject_s is not None and baseline_s is not None:
        entry |= {"subject_s": subject_s, "baseline_s": baseline_s, "ratio": baseline_s / subject_s}
    benchmark.extra_info.setdefault("figures", []).append(entry)


def _have_service() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


#: Benchmarks of the store, the service and the live cluster need the ``service`` extra.
needs_service = pytest.mark.skipif(
    not _have_service(), reason="needs the service extra (pip install '.[service]'): no aiohttp"
)
