"""Jobs as tracking runs in the service: the linker's place in the app's life and in submit.

:mod:`cplat.ml.tracking.jobs` holds the logic (no HTTP); this module gives it the app's stores,
feeds it the controller's job events, and turns its errors into 400 answers naming the field.
The submit view calls :func:`link_submission` before storing a job with an ``experiment``,
:func:`job_created` once it is stored and :func:`discard_link` when the request created none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cplat.errors import InputError
from cplat.ml.tracking import TrackingError
from cplat.ml.tracking.jobs import SPEC_KEY, JobRunLinker, RunLink
from cplat.store.base import JobRecord
from cplat_server.errors import bad_request
from cplat_server.keys import CONTROLLER, STORE
from cplat_server.views.mlflow_compat.artifacts import ARTIFACTS
from cplat_server.views.mlflow_compat.common import TRACKING

__all__ = ["LINKER", "discard_link", "job_created", "job_runs_context", "link_submission"]

#: The app's linker of jobs and runs.
LINKER = web.AppKey("job_runs", JobRunLinker)


async def job_runs_context(app: web.Application) -> AsyncIterator[None]:
    """Run the linker for the app's life (an aiohttp cleanup context).

    Append it after the contexts that open the store, the controller and the tracking store.
    It listens to the job events before it brings the runs of the unfinished jobs in step,
    so that no change made in between is missed.
    """
    ctrl = app[CONTROLLER]
    linker = JobRunLinker(app[TRACKING], app[STORE], app[ARTIFACTS] if ARTIFACTS in app else None)
    # A listener, not a stream subscription: a stream whose reader falls behind is dropped,
    # and a run must never miss its job's end.
    ctrl.hub.listeners.append(linker.notify)
    await linker.recover(await app[STORE].unfinished_jobs())
    app[LINKER] = linker
    task = asyncio.create_task(linker.run(), name="cplat-job-runs")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ctrl.hub.listeners.remove(linker.notify)


async def link_submission(
    request: web.Request, project: str, user: str, spec: dict[str, Any], body: dict[str, Any]
) -> RunLink | None:
    """Create the run of a submission with an ``experiment`` and note it in ``spec``.

    Returns
    -------
    RunLink or None
        None when the body names no experiment.

    Raises
    ------
    ApiError
        400 naming the field (``experiment.name``, ``experiment.snapshot.env_names``, ...).
    """
    experiment = body.get("experiment")
    if experiment is None:
        return None
    try:
        link = await request.app[LINKER].on_submit(
            project, user, spec, experiment, job_name=str(body.get("name", ""))
        )
    except InputError as exc:
        raise bad_request(exc.message, exc.field or "experiment") from None
    except TrackingError as exc:
        raise bad_request(exc.message, exc.field or "experiment") from None
    spec[SPEC_KEY] = link.spec_entry()
    return link


async def job_created(request: web.Request, rec: JobRecord) -> None:
    """Tag the run of a stored job with the job's id and follow the job's events."""
    await request.app[LINKER].on_created(rec)


async def discard_link(request: web.Request, link: RunLink | None) -> None:
    """Delete the run of a submission that created no job (refused, or an idempotent replay)."""
    if link is not None:
        await request.app[LINKER].discard(link)
