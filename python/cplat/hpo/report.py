"""What a trial's training script calls: its parameters, and ``report(step, value)``.

Standard library only, so a training script pays nothing to import it. A trial's job gets
``CPLAT_TRIAL_PARAMS`` (its parameters, JSON), ``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID`` and
``CPLAT_HPO_METRIC`` (the study's metric) from the study, and ``CPLAT_TOKEN`` from cplat; the
metric goes to the run through the service's MLflow REST API (``runs/log-metric``), exactly as
the MLflow client would log it (the client works as well: ``mlflow.log_metric(name, value,
step=step)`` with ``MLFLOW_TRACKING_TOKEN`` set to the token).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from cplat.client import ApiError, Client, ServerUnreachableError

__all__ = ["ReportError", "params", "report"]

#: Answers after which a report is tried again: the server is restarting.
_RETRY_STATUSES = frozenset({502, 503, 504})


class ReportError(RuntimeError):
    """A report that could not be made (no run in the environment, or the server refused)."""


def params(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the trial's parameters (``CPLAT_TRIAL_PARAMS``); empty outside a trial.

    Raises
    ------
    ReportError
        When the variable is set but is not a JSON object.
    """
    text = (os.environ if env is None else env).get("CPLAT_TRIAL_PARAMS")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ReportError("CPLAT_TRIAL_PARAMS is not JSON") from None
    if not isinstance(value, dict):
        raise ReportError("CPLAT_TRIAL_PARAMS is not a JSON object")
    return value


def report(
    step: int,
    value: float,
    key: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    retry_for: float = 120.0,
) -> None:
    """Log an intermediate value of the study's metric for this trial.

    The server reads it from the run, asks the study's pruner and, when the trial is not
    promising, stops the job (SIGTERM, then SIGKILL after the grace): a script need not check
    anything itself. The last value logged is the trial's result.

    Parameters
    ----------
    step
        The step (epoch, iteration) of the value; steps should grow.
    value
        The metric's value.
    key
        The metric's name (default: the study's, ``CPLAT_HPO_METRIC``).
    env
        The environment to read (default ``os.environ``).
    retry_for
        Seconds to keep trying while the server cannot be reached (it may be restarting).

    Raises
    ------
    ReportError
        Outside a trial (no ``MLFLOW_RUN_ID`` or server URL), or when the server refuses.
    """
    e = os.environ if env is None else env
    run_id = e.get("MLFLOW_RUN_ID")
    uri = e.get("MLFLOW_TRACKING_URI") or e.get("CPLAT_SERVER")
    key = key or e.get("CPLAT_HPO_METRIC")
    if not run_id or not uri or not key:
        raise ReportError(
            "not in a trial: MLFLOW_RUN_ID, MLFLOW_TRACKING_URI and CPLAT_HPO_METRIC (or key) "
            "are needed"
        )
    if isinstance(step, bool) or not isinstance(step, int):
        raise ReportError(f"step must be an integer, got {step!r}")
    token = e.get("MLFLOW_TRACKING_TOKEN") or e.get("CPLAT_TOKEN") or ""
    client = Client(uri, token, timeout=30.0)
    body = {
        "run_id": run_id,
        "key": key,
        "value": float(value),
        "timestamp": int(time.time() * 1000),
        "step": step,
    }
    deadline = time.monotonic() + retry_for
    delay = 0.2
    while True:
        try:
            client.request("POST", "/api/2.0/mlflow/runs/log-metric", body=body)
            return
        except ServerUnreachableError as exc:
            failure: Exception = exc
        except ApiError as exc:
            if exc.status not in _RETRY_STATUSES:
                raise ReportError(f"the server refused the report: {exc}") from None
            failure = exc
        if time.monotonic() >= deadline:
            raise ReportError(f"could not report for {retry_for:g} s: {failure}") from None
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
