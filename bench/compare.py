"""Gate a benchmark run: read the ``--benchmark-json`` file and compare each figure's ratio to
its same-run baseline with its target and tolerance (``cplat.benchmarks.FIGURES``).

Prints the table; exits 1 when a gated figure regressed beyond its tolerance or has no
result, 2 on unreadable input.

    python bench/compare.py bench-results.json
"""

from __future__ import annotations

from cplat.benchmarks import compare_main

if __name__ == "__main__":
    raise SystemExit(compare_main())
