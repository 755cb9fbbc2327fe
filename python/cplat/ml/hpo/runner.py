"""The studies of a service: create, list, read, stop, and the task that drives them all.

:class:`StudyRunner` is what ``cplat serve`` runs in the background (and what tests run against
a fake job backend). On start it resumes every study the journal holds as ``running`` or
``stopping``: a server restarted after ``kill -9`` goes on with its studies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cplat.errors import InputError
from cplat.ml.hpo.driver import JobBackend, StudyDriver
from cplat.ml.hpo.study import (
    CONFIG_ATTR,
    STATE_ATTR,
    StudyConfig,
    create_study,
    load_study,
    optuna_name,
    study_state,
    study_summary,
)
from cplat.ml.tracking import TrackingStore

__all__ = ["StudyRunner"]

log = logging.getLogger("cplat.hpo")


class StudyRunner:
    """Every study of one journal, and the loop that drives the unfinished ones.

    Parameters
    ----------
    storage
        The journal (:func:`cplat.ml.hpo.study.open_storage`).
    jobs
        Where trials run.
    tracking
        The tracking store.
    server_url
        The URL tasks reach the service at, or a function returning it.
    tick
        Seconds between two passes over the studies (a change wakes the loop at once).
    """

    def __init__(
        self,
        storage: Any,
        jobs: JobBackend,
        tracking: TrackingStore,
        server_url: str | Callable[[], str] = "",
        tick: float = 1.0,
    ) -> None:
        self.storage = storage
        self.jobs = jobs
        self.tracking = tracking
        self.server_url = server_url
        self.tick = tick
        self.drivers: dict[str, StudyDriver] = {}
        self._wake = asyncio.Event()

    # The API's operations -----------------------------------------------------------------
    def resume(self) -> list[str]:
        """Take up every study left running or stopping; return their keys."""
        for key in self._keys():
            study, _ = load_study(self.storage, key)
            if study_state(study) in ("running", "stopping") and key not in self.drivers:
                self.drivers[key] = self._driver(key)
        return sorted(self.drivers)

    def _driver(self, key: str) -> StudyDriver:
        return StudyDriver(self.storage, key, self.jobs, self.tracking, self.server_url)

    def _keys(self) -> list[str]:
        return [s.study_name for s in self.storage.get_all_studies()]

    def create(self, cfg: StudyConfig) -> dict[str, Any]:
        """Create a study and start driving it; return its summary.

        Raises
        ------
        InputError
            ``field="name"`` when the project has a study of that name already.
        """
        study = create_study(self.storage, cfg)
        self.drivers[cfg.key] = self._driver(cfg.key)
        self._wake.set()
        return study_summary(study, cfg)

    def get(self, project: str, name: str, trials: bool = True) -> dict[str, Any] | None:
        """Return a study's summary (None when the project has no such study)."""
        try:
            study, cfg = load_study(self.storage, optuna_name(project, name))
        except KeyError:
            return None
        return study_summary(study, cfg, trials=trials)

    def list(self, projects: Sequence[str] | None) -> list[dict[str, Any]]:
        """Return the summaries (without trials) of the studies of ``projects`` (None: all)."""
        out = []
        for s in self.storage.get_all_studies():
            raw = s.user_attrs.get(CONFIG_ATTR)
            if raw is None or (projects is not None and raw["project"] not in projects):
                continue
            found = self.get(raw["project"], raw["name"], trials=False)
            if found is not None:
                out.append(found)
        return sorted(out, key=lambda d: (d["project"], d["name"]))

    def stop(self, project: str, name: str) -> dict[str, Any] | None:
        """Ask a study to stop: its running trials' jobs are cancelled, no new ones asked.

        Returns the summary (None when there is no such study). Stopping an ended study
        changes nothing.
        """
        key = optuna_name(project, name)
        try:
            study, cfg = load_study(self.storage, key)
        except KeyError:
            return None
        if study_state(study) == "running":
            study.set_user_attr(STATE_ATTR, "stopping")
            self.drivers.setdefault(key, self._driver(key))
            self._wake.set()
        return study_summary(study, cfg)

    # The loop -----------------------------------------------------------------------------
    async def step(self) -> None:
        """Advance every driven study once; drop the ones that ended."""
        for key, driver in list(self.drivers.items()):
            try:
                if await driver.step():
                    del self.drivers[key]
            except InputError as exc:
                # The study cannot go on (its sampler's package was removed, say): say why
                # once and leave it, rather than fail every tick.
                log.error("study %s stopped: %s", key, exc)
                driver.study.set_user_attr(STATE_ATTR, "stopped")
                del self.drivers[key]
            except Exception:
                # Another study, or a later pass, must not suffer from one bad pass.
                log.exception("study %s: a pass failed; retrying", key)

    async def run(self) -> None:
        """Drive the studies until cancelled."""
        self.resume()
        while True:
            self._wake.clear()
            await self.step()
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=self.tick)
            finally:
                waiter.cancel()
