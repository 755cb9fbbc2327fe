"""A trial's training script for the study tests: a closed-form "training" with a known optimum.

Its loss after ``step`` of ``HPO_STEPS`` steps is ``(x - 0.3)**2 + (y + 0.2)**2 + 1 / step``:
the minimum of the final loss lies at x = 0.3, y = -0.2, and every curve falls the same way, so
early values rank trials as late ones do (what a pruner needs). Each step sleeps
``HPO_STEP_SECONDS`` and reports through :func:`cplat.hpo.report`; a step counter in
``$HPO_MARKS/<trial>`` lets the tests see how far a pruned trial got before it was stopped.
Trial ``$HPO_MLFLOW_TRIAL`` also logs a parameter with the MLflow client itself.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cplat.hpo import params, report


def main() -> int:
    p = params()
    x, y = float(p["x"]), float(p["y"])
    steps = int(os.environ.get("HPO_STEPS", "6"))
    pause = float(os.environ.get("HPO_STEP_SECONDS", "0.3"))
    marks = os.environ.get("HPO_MARKS")
    mark = Path(marks) / os.environ["CPLAT_TRIAL"] if marks else None
    if os.environ.get("CPLAT_TRIAL") == os.environ.get("HPO_MLFLOW_TRIAL"):
        # The unmodified MLflow client, with only what the agent put in the environment.
        import mlflow

        mlflow.MlflowClient().log_param(os.environ["MLFLOW_RUN_ID"], "logged_by", "mlflow")
    for step in range(1, steps + 1):
        time.sleep(pause)
        report(step, (x - 0.3) ** 2 + (y + 0.2) ** 2 + 1.0 / step)
        if mark is not None:
            mark.write_text(str(step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
