"""Python scorer figure: a numba-compiled BestFit against the native BestFit, same placements.

Gated as a ratio to the native scorer timed in the same run, with a floor of 0.5: the Python
scorer must stay within 2x of native placements/s (the goal of the research API).
"""

from __future__ import annotations

import pytest
from conftest import record

pytest.importorskip("numba", reason="needs the research extra (pip install '.[research]')")

from bench_pyscorer import run  # noqa: E402


@pytest.mark.figures("research.pyscorer_rate")
def test_pyscorer(benchmark, quick: bool) -> None:  # type: ignore[no-untyped-def]
    out: dict[str, float] = {}

    def measure() -> None:
        out.update(run(quick))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    assert out["same_placements"], "the numba BestFit must place exactly as the native one"
    placements = out["tasks"]
    native_t = placements / out["native_placements_per_s"]
    python_t = placements / out["python_placements_per_s"]
    record(benchmark, "research.pyscorer_rate", out["python_placements_per_s"], python_t, native_t)
