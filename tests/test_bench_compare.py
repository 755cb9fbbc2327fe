"""The benchmark gate: ratios to a same-run baseline against targets and tolerances."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from cplat.benchmarks import (
    FIGURES,
    Figure,
    compare_main,
    evaluate,
    figure,
    format_table,
    report,
)
from cplat.errors import InputError

GATED = Figure("x.rate", "x placements/s", "placements/s", True, 100.0, 4.0, tolerance=0.25)
REPORTED = Figure("x.mem", "x peak memory", "MB", False, 2048.0)


def doc(*entries: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "benchmarks": [{"name": f"test_{i}", "extra_info": {"figures": [e]}}
                       for i, e in enumerate(entries)],
        "cplat": meta,
    }  # fmt: skip


def rate(subject_s: float, baseline_s: float, value: float = 150.0) -> dict[str, Any]:
    return {"key": "x.rate", "value": value, "subject_s": subject_s, "baseline_s": baseline_s}


def test_within_tolerance_passes() -> None:
    # floor = 4.0 * (1 - 0.25) = 3.0; ratio = 0.31 / 0.1 = 3.1
    (row,) = evaluate(doc(rate(0.1, 0.31)), [GATED])
    assert row.status == "pass" and not row.failed
    assert row.ratio == pytest.approx(3.1)


def test_regression_beyond_tolerance_fails() -> None:
    (row,) = evaluate(doc(rate(0.1, 0.29)), [GATED])
    assert row.status == "REGRESSED" and row.failed
    assert "floor 3" in row.note


def test_ratio_gates_not_the_absolute_value() -> None:
    # A slow machine: far below the absolute target, same ratio -> passes, target not met.
    (row,) = evaluate(doc(rate(10.0, 40.0, value=1.0)), [GATED])
    assert row.status == "pass" and row.target_met is False
    # A fast machine whose code regressed: absolute target met, ratio low -> fails.
    (row,) = evaluate(doc(rate(0.001, 0.002, value=1e6)), [GATED])
    assert row.status == "REGRESSED" and row.target_met is True


def test_missing_figure_fails_clearly() -> None:
    rows = evaluate(doc(rate(0.1, 0.4)), [GATED, REPORTED])
    assert [r.status for r in rows] == ["pass", "MISSING"]
    assert rows[1].failed
    out = io.StringIO()
    assert report(doc(rate(0.1, 0.4)), out) == 1  # FIGURES: every other figure is missing
    assert "MISSING" in out.getvalue() and "benchmark gate FAILED" in out.getvalue()


def test_gated_figure_without_timings_fails() -> None:
    (row,) = evaluate(doc({"key": "x.rate", "value": 150.0}), [GATED])
    assert row.status == "MISSING" and "baseline" in row.note


def test_skipped_and_deselected_do_not_fail() -> None:
    rows = evaluate(
        doc(skipped={"x.rate": "needs the service extra"}, deselected=["x.mem"]), [GATED, REPORTED]
    )
    assert [(r.status, r.failed) for r in rows] == [("skipped", False), ("not run", False)]
    assert rows[0].note == "needs the service extra"


def test_reported_figure_never_fails() -> None:
    (row,) = evaluate(doc({"key": "x.mem", "value": 4096.0}), [REPORTED])
    assert row.status == "report" and row.target_met is False and not row.failed


def test_table_lists_figure_median_target_status() -> None:
    rows = evaluate(doc(rate(0.1, 0.2), {"key": "x.mem", "value": 900.0}), [GATED, REPORTED])
    table = format_table(rows)
    assert "x placements/s" in table and "150 placements/s" in table
    assert ">= 100 placements/s" in table and "<= 2,048 MB" in table
    assert "REGRESSED [1]" in table and "[1] x.rate: ratio 2 < floor 3" in table


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"benchmarks": [{"name": "t", "extra_info": {"figures": [{"value": 1}]}}]},
        {"benchmarks": [{"name": "t", "extra_info": {"figures": [{"key": "x.rate",
                                                                   "value": "fast"}]}}]},
        doc(rate(0.1, 0.4), rate(0.1, 0.4)),
    ],
)  # fmt: skip
def test_malformed_results_are_input_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        evaluate(bad, [GATED])


def test_compare_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {
        "benchmarks": [
            {"name": f.key, "extra_info": {"figures": [
                {"key": f.key, "value": 1.0, "subject_s": 1.0, "baseline_s": f.ratio_target}
                if f.gated else {"key": f.key, "value": 1.0}]}}
            for f in FIGURES
        ]
    }  # fmt: skip
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    assert compare_main([str(path)]) == 0
    assert "benchmark gate passed" in capsys.readouterr().out
    good["benchmarks"][0]["extra_info"]["figures"][0]["baseline_s"] = 0.01
    path.write_text(json.dumps(good))
    assert compare_main([str(path)]) == 1
    path.write_text("{not json")
    assert compare_main([str(path)]) == 2
    assert "line 1" in capsys.readouterr().err
    assert compare_main([str(tmp_path / "absent.json")]) == 2


def test_figure_keys_are_unique_and_known() -> None:
    keys = [f.key for f in FIGURES]
    assert len(keys) == len(set(keys))
    assert figure("engine.bestfit_rate").target == 20_000
    with pytest.raises(KeyError):
        figure("engine.nope")


def test_cplat_bench_without_suite_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cplat.cli.main import main

    assert main(["bench", "--suite", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cplat bench: error: no benchmark suite (bench/conftest.py)" in err
    assert str(tmp_path) in err and "Traceback" not in err
