"""The tracking store: experiments, runs, metrics, datasets, logged models and the registry.

One implementation over a :class:`~cplat.ml.tracking.driver.Driver`: the SQL and the decoding of
rows are shared by SQLite and PostgreSQL. Methods take and return plain values and the records
of :mod:`cplat.ml.tracking.records`; they check what the data model requires (names, lengths,
states) and raise :class:`~cplat.ml.tracking.errors.TrackingError`. Who may see or change what
(projects, roles) is the caller's business: every record carries its project, and the
``*_owner`` lookups answer that question cheaply.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cplat.ml.tracking import search as q
from cplat.ml.tracking.driver import Driver, Row, Tx
from cplat.ml.tracking.errors import exists, invalid, not_found
from cplat.ml.tracking.records import (
    ACTIVE,
    DELETED,
    LOGGED_MODEL_STATUSES,
    RUN_STATUSES,
    STAGES,
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    ModelVersion,
    RegisteredModel,
    Run,
    RunOwner,
)
from cplat.ml.tracking.schema import SCHEMA_VERSION, statements

__all__ = ["DatasetIn", "MetricIn", "TrackingStore", "artifact_root"]

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_NAME = 500
MAX_TEXT = 65_536
#: One log-batch call: MLflow's own limits (the client splits bigger batches).
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS_TAGS = 100
#: Search page sizes: (default, most) as MLflow answers them.
RUNS_PAGE = (1000, 50_000)
EXPERIMENTS_PAGE = (1000, 50_000)
MODELS_PAGE = (100, 1000)
VERSIONS_PAGE = (10_000, 200_000)
HISTORY_PAGE = (100_000_000, 100_000_000)
DEFAULT_EXPERIMENT = "Default"
RUN_NAME_TAG = "mlflow.runName"
_IN_CHUNK = 500
# MLflow allows these in keys; a key is also a path component of nothing, but '..' and a leading
# '/' are refused anyway so that no consumer can ever read one as a path.
_KEY = re.compile(r"^[\w\-. :/]+$")
_ALIAS = re.compile(r"^[A-Za-z_][\w\-]*$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "crisp", "eager", "gentle", "keen", "lucid",
    "merry", "nimble", "quiet", "rapid", "sly", "sunny", "swift", "tidy", "vivid", "wise",
)  # fmt: skip
_NOUNS = (
    "badger", "cat", "crane", "deer", "eel", "falcon", "fox", "gull", "hare", "heron",
    "lynx", "mole", "newt", "otter", "owl", "panda", "robin", "seal", "stoat", "wren",
)  # fmt: skip


def now_ms() -> int:
    """Return the wall clock in integer milliseconds."""
    return int(time.time() * 1000)


def artifact_root(experiment_id: str) -> str:
    """Return an experiment's default artifact location (served by the artifact proxy)."""
    return f"mlflow-artifacts:/{experiment_id}"


def _random_run_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


def check_key(key: Any, field: str) -> str:
    """Return a metric, param or tag key after checking it (``INVALID_PARAMETER_VALUE``)."""
    if not isinstance(key, str) or not key:
        raise invalid(f"{field} must be a non-empty string", field)
    if len(key) > MAX_KEY:
        raise invalid(f"{field} is longer than {MAX_KEY} characters", field)
    if not _KEY.match(key) or key.startswith("/") or ".." in key.split("/"):
        raise invalid(
            f"{field} {key!r} may hold only letters, digits, _ - . : / and spaces "
            "(no leading / and no .. component)",
            field,
        )
    return key


def check_text(value: Any, field: str, limit: int = MAX_TEXT, empty: bool = True) -> str:
    """Return a text value after checking its type and length."""
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string", field)
    if not empty and not value.strip():
        raise invalid(f"{field} must not be empty", field)
    if len(value) > limit:
        raise invalid(f"{field} is longer than {limit} characters", field)
    if "\x00" in value:
        raise invalid(f"{field} must not contain NUL", field)
    return value


def check_name(value: Any, field: str) -> str:
    """Return an experiment or model name (non-empty, at most ``MAX_NAME`` characters)."""
    return check_text(value, field, MAX_NAME, empty=False)


def _id(value: Any, field: str, what: str) -> int:
    """Return a decimal id (experiment) as an integer; anything else names nothing."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise not_found(what)


def _int(value: Any, field: str, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(f"{field} must be an integer in {lo}..{hi}", field)
    return value


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


@dataclass(frozen=True)
class MetricIn:
    """A metric point to log; ``model_id`` links it to a logged model as well."""

    key: str
    value: float
    timestamp: int
    step: int = 0
    model_id: str = ""
    dataset_name: str = ""
    dataset_digest: str = ""


@dataclass(frozen=True)
class DatasetIn:
    """A dataset input to log (``log-inputs``)."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str = ""
    profile: str = ""
    tags: tuple[tuple[str, str], ...] = ()


def _latest_key(step: int, ts: int, value: float, is_nan: int) -> tuple[int, int, int, float]:
    # MLflow's latest point: highest step, then latest timestamp, then (non-NaN first) value.
    return (step, ts, 1 - is_nan, value)


_RUN_COLS = (
    "r.run_id, r.experiment_id, r.project, r.run_name, r.user_id, r.status, r.start_time, "
    "r.end_time, r.artifact_uri, r.lifecycle_stage"
)
_EXP_COLS = (
    "e.experiment_id, e.project, e.name, e.artifact_location, e.lifecycle_stage, "
    "e.creation_time, e.last_update_time"
)
_MV_COLS = (
    "m.name, v.version, m.project, v.creation_timestamp, v.last_updated_timestamp, v.user_id, "
    "v.current_stage, v.description, v.source, v.run_id, v.run_link, v.status, "
    "v.status_message, v.storage_location, v.model_id, v.model_pk"
)
_RM_COLS = (
    "m.model_pk, m.name, m.project, m.creation_timestamp, m.last_updated_timestamp, m.user_id, "
    "m.description"
)
_LM_COLS = (
    "l.model_id, l.experiment_id, l.project, l.name, l.artifact_location, "
    "l.creation_timestamp_ms, l.last_updated_timestamp_ms, l.status, l.status_message, "
    "l.model_type, l.source_run_id, l.lifecycle_stage"
)
_RUN_ATTRS = {
    "run_id": q.Column("r.run_id", False),
    "run_name": q.Column("r.run_name", False),
    "status": q.Column("r.status", False),
    "user_id": q.Column("r.user_id", False),
    "artifact_uri": q.Column("r.artifact_uri", False),
    "lifecycle_stage": q.Column("r.lifecycle_stage", False),
    "start_time": q.Column("r.start_time", True),
    "end_time": q.Column("r.end_time", True),
    "created": q.Column("r.start_time", True),
    "Created": q.Column("r.start_time", True),
}
_EXP_ATTRS = {
    "name": q.Column("e.name", False),
    "experiment_id": q.Column("CAST(e.experiment_id AS TEXT)", False),
    "creation_time": q.Column("e.creation_time", True),
    "last_update_time": q.Column("e.last_update_time", True),
}
_RM_ATTRS = {
    "name": q.Column("m.name", False),
    "creation_timestamp": q.Column("m.creation_timestamp", True),
    "last_updated_timestamp": q.Column("m.last_updated_timestamp", True),
    "timestamp": q.Column("m.last_updated_timestamp", True),
    "user_id": q.Column("m.user_id", False),
    "description": q.Column("m.description", False),
}
_MV_ATTRS = {
    "name": q.Column("m.name", False),
    "run_id": q.Column("v.run_id", False),
    "source_path": q.Column("v.source", False),
    "source": q.Column("v.source", False),
    "version_number": q.Column("v.version", True),
    "current_stage": q.Column("v.current_stage", False),
    "user_id": q.Column("v.user_id", False),
    "model_id": q.Column("v.model_id", False),
    "creation_timestamp": q.Column("v.creation_timestamp", True),
    "last_updated_timestamp": q.Column("v.last_updated_timestamp", True),
    "timestamp": q.Column("v.last_updated_timestamp", True),
}
_LM_ATTRS = {
    "name": q.Column("l.name", False),
    "model_id": q.Column("l.model_id", False),
    "model_type": q.Column("l.model_type", False),
    "status": q.Column("l.status", False),
    "source_run_id": q.Column("l.source_run_id", False),
    "creation_timestamp": q.Column("l.creation_timestamp_ms", True),
    "creation_time": q.Column("l.creation_timestamp_ms", True),
    "last_updated_timestamp": q.Column("l.last_updated_timestamp_ms", True),
}


def _view_stages(view_type: str | None, field: str = "view_type") -> tuple[str, ...]:
    kind = (view_type or "ACTIVE_ONLY").upper()
    if kind in ("ACTIVE_ONLY", "1"):
        return (ACTIVE,)
    if kind in ("DELETED_ONLY", "2"):
        return (DELETED,)
    if kind in ("ALL", "3"):
        return (ACTIVE, DELETED)
    raise invalid(f"{field} must be ACTIVE_ONLY, DELETED_ONLY or ALL", field)


def _project_clause(col: str, projects: Sequence[str] | None) -> tuple[str, list[Any]]:
    if projects is None:
        return "1 = 1", []
    if not projects:
        return "1 = 0", []
    return f"{col} IN ({_marks(len(projects))})", list(projects)


def _order_sql(expr: str, ascending: bool) -> str:
    # Missing values last in either direction, on both dialects (they place NULLs differently).
    return f"({expr} IS NULL), {expr} {'ASC' if ascending else 'DESC'}"


def _tag_clause(
    c: q.Comparison, attrs: Mapping[str, Any], tag_table: str, what: str, absent_differs: bool
) -> tuple[str, list[Any]]:
    """Return the SQL of one filter comparison on an attribute or a tag (``t.`` side table)."""
    if c.entity == "attribute":
        return q.attribute_clause(attrs, c, "filter")
    if c.entity == "tag":
        return q.keyed_exists(
            tag_table, "t.key", "t.value", c, False, "filter", absent_differs=absent_differs
        )
    raise invalid(f"invalid filter: {what} have no {c.entity}s", "filter")


def _order_clauses(
    order_by: Sequence[str] | None, attrs: Mapping[str, Any], what: str
) -> list[str]:
    """Return the ORDER BY terms of MLflow ``order_by`` strings over attributes."""
    order = []
    for o in q.parse_order_by(order_by):
        col = attrs.get(o.key) if o.entity == "attribute" else None
        if col is None:
            raise invalid(f"invalid order_by: cannot order {what} by {o.key!r}", "order_by")
        order.append(_order_sql(col.sql, o.ascending))
    return order


class TrackingStore:
    """Experiments, runs and models of every project, over one driver.

    Open with :meth:`open` (or :func:`cplat.ml.tracking.open_tracking_store`); every method is a
    coroutine and every write has committed when it returns.

    Parameters
    ----------
    driver
        The database.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @classmethod
    async def open(cls, driver: Driver) -> TrackingStore:
        """Create the tables if missing and return the store."""
        async with driver.transaction() as tx:
            if driver.dialect == "postgresql":
                # Two servers starting at once on one database must not race on the DDL.
                await tx.fetch("SELECT pg_advisory_xact_lock(7235412)")
            for stmt in statements(driver.ddl):
                await tx.execute(stmt)
            rows = await tx.fetch("SELECT value FROM trk_meta WHERE name = 'schema'")
            if not rows:
                await tx.execute(
                    "INSERT INTO trk_meta (name, value) VALUES ('schema', ?)", [str(SCHEMA_VERSION)]
                )
            elif int(rows[0][0]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the tracking tables are at schema {rows[0][0]}, newer than this cplat "
                    f"({SCHEMA_VERSION}); upgrade cplat"
                )
        return cls(driver)

    async def close(self) -> None:
        """Close the database connections."""
        await self.driver.close()

    # --- ownership lookups (the artifact proxy and the views use these) ---------------------

    async def experiment_project(self, experiment_id: str) -> str | None:
        """Return the project owning an experiment (None when there is no such experiment).

        Every artifact path of the proxy starts with an experiment id, so this one lookup
        decides access to any artifact.
        """
        if not (experiment_id.isascii() and experiment_id.isdigit() and len(experiment_id) <= 18):
            return None
        rows = await self.driver.fetch(
            "SELECT project FROM trk_experiments WHERE experiment_id = ?", [int(experiment_id)]
        )
        return str(rows[0][0]) if rows else None

    async def run_owner(self, run_id: str) -> RunOwner | None:
        """Return a run's project, experiment and artifact root (None when unknown)."""
        rows = await self.driver.fetch(
            "SELECT run_id, project, experiment_id, artifact_uri, lifecycle_stage FROM trk_runs "
            "WHERE run_id = ?",
            [run_id],
        )
        if not rows:
            return None
        r = rows[0]
        return RunOwner(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]))

    async def logged_model_owner(self, model_id: str) -> tuple[str, str, str] | None:
        """Return ``(project, experiment_id, artifact_location)`` of a logged model."""
        rows = await self.driver.fetch(
            "SELECT project, experiment_id, artifact_location FROM trk_logged_models "
            "WHERE model_id = ?",
            [model_id],
        )
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    async def model_version_source(self, project: str, name: str, version: int) -> str | None:
        """Return where a model version's files are (its download URI), None when unknown."""
        rows = await self.driver.fetch(
            "SELECT v.storage_location FROM trk_model_versions v JOIN trk_registered_models m "
            "ON m.model_pk = v.model_pk WHERE m.project = ? AND m.name = ? AND v.version = ?",
            [project, name, version],
        )
        return str(rows[0][0]) if rows else None

    # --- experiments --------------------------------------------------------------------------

    async def create_experiment(
        self,
        project: str,
        name: str,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
        now: int | None = None,
    ) -> str:
        """Create an experiment; return its id.

        Raises
        ------
        TrackingError
            ``RESOURCE_ALREADY_EXISTS`` when the project has one of that name (deleted ones
            too, as in MLflow), ``INVALID_PARAMETER_VALUE`` for a bad name or tag.
        """
        check_name(name, "name")
        tags = dict(tags or {})
        for k, v in tags.items():
            check_key(k, "tags.key")
            check_text(v, "tags.value", MAX_TAG_VALUE)
        if artifact_location is not None:
            check_text(artifact_location, "artifact_location", 2048)
        t = now if now is not None else now_ms()
        async with self.driver.transaction() as tx:
            dup = await tx.fetch(
                "SELECT 1 FROM trk_experiments WHERE project = ? AND name = ?", [project, name]
            )
            if dup:
                raise exists(f"experiment {name!r} already exists", "name")
            rows = await tx.fetch(
                "INSERT INTO trk_experiments (project, name, artifact_location, "
                "lifecycle_stage, creation_time, last_update_time) VALUES (?, ?, '', ?, ?, ?) "
                "RETURNING experiment_id",
                [project, name, ACTIVE, t, t],
            )
            exp_id = int(rows[0][0])
            location = artifact_location or artifact_root(str(exp_id))
            await tx.execute(
                "UPDATE trk_experiments SET artifact_location = ? WHERE experiment_id = ?",
                [location, exp_id],
            )
            await tx.executemany(
                "INSERT INTO trk_experiment_tags (experiment_id, key, value) VALUES (?, ?, ?)",
                [(exp_id, k, v) for k, v in tags.items()],
            )
        return str(exp_id)

    async def _experiments(self, rows: Sequence[Row]) -> list[Experiment]:
        ids = [int(r[0]) for r in rows]
        tags: dict[int, dict[str, str]] = {i: {} for i in ids}
        for chunk in _chunks(ids):
            for eid, k, v in await self.driver.fetch(
                "SELECT experiment_id, key, value FROM trk_experiment_tags "
                f"WHERE experiment_id IN ({_marks(len(chunk))}) ORDER BY key",
                list(chunk),
            ):
                tags[int(eid)][str(k)] = str(v)
        return [
            Experiment(str(r[0]), r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), tags[int(r[0])])
            for r in rows
        ]

    async def get_experiment(self, experiment_id: str) -> Experiment | None:
        """Return an experiment by id (None when unknown)."""
        if not (experiment_id.isascii() and experiment_id.isdigit() and len(experiment_id) <= 18):
            return None
        rows = await self.driver.fetch(
            f"SELECT {_EXP_COLS} FROM trk_experiments e WHERE e.experiment_id = ?",
            [int(experiment_id)],
        )
        found = await self._experiments(rows)
        return found[0] if found else None

    async def get_experiment_by_name(self, project: str, name: str) -> Experiment | None:
        """Return a project's experiment by name (None when unknown)."""
        rows = await self.driver.fetch(
            f"SELECT {_EXP_COLS} FROM trk_experiments e WHERE e.project = ? AND e.name = ?",
            [project, name],
        )
        found = await self._experiments(rows)
        return found[0] if found else None

    async def default_experiment(self, project: str) -> Experiment:
        """Return the project's ``Default`` experiment, creating it on first use.

        MLflow clients log to experiment ``0`` when none is chosen; each project has its own
        default instead of one shared by everyone.
        """
        found = await self.get_experiment_by_name(project, DEFAULT_EXPERIMENT)
        if found is None:
            try:
                await self.create_experiment(project, DEFAULT_EXPERIMENT)
            except Exception as exc:  # noqa: BLE001 - a concurrent first use created it
                if getattr(exc, "code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = await self.get_experiment_by_name(project, DEFAULT_EXPERIMENT)
        assert found is not None
        return found

    async def _page(
        self,
        source: str,
        clauses: list[str],
        params: list[Any],
        order: list[str],
        limit: int,
        offset: int,
    ) -> tuple[Sequence[Row], str | None]:
        """Fetch one page of ``source`` (``SELECT ... FROM ...``) and the next page's token."""
        rows = await self.driver.fetch(
            f"{source} WHERE {' AND '.join(clauses)} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?",
            [*params, limit + 1, offset],
        )
        token = q.encode_page_token(offset + limit) if len(rows) > limit else None
        return rows[:limit], token

    async def search_experiments(
        self,
        projects: Sequence[str] | None,
        view_type: str | None = None,
        filter_string: str | None = None,
        order_by: Sequence[str] | None = None,
        max_results: Any = None,
        page_token: str | None = None,
    ) -> tuple[list[Experiment], str | None]:
        """Search experiments of ``projects`` (None: all); return a page and the next token."""
        limit = q.check_max_results(max_results, *EXPERIMENTS_PAGE)
        offset = q.decode_page_token(page_token)
        stages = _view_stages(view_type)
        where, params = _project_clause("e.project", projects)
        clauses = [where, f"e.lifecycle_stage IN ({_marks(len(stages))})"]
        params += list(stages)
        tags = "FROM trk_experiment_tags t WHERE t.experiment_id = e.experiment_id"
        for c in q.parse_filter(filter_string):
            sql, p = _tag_clause(c, _EXP_ATTRS, tags, "experiments", False)
            clauses.append(sql)
            params += p
        order = _order_clauses(order_by, _EXP_ATTRS, "experiments")
        order += ["e.creation_time DESC", "e.experiment_id ASC"]
        rows, token = await self._page(
            f"SELECT {_EXP_COLS} FROM trk_experiments e", clauses, params, order, limit, offset
        )
        return await self._experiments(rows), token

    async def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment (``RESOURCE_ALREADY_EXISTS`` when the name is taken)."""
        check_name(new_name, "new_name")
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        async with self.driver.transaction() as tx:
            rows = await tx.fetch(
                "SELECT project, lifecycle_stage FROM trk_experiments WHERE experiment_id = ?",
                [eid],
            )
            if not rows:
                raise not_found(f"experiment {experiment_id!r}")
            if rows[0][1] != ACTIVE:
                raise invalid("a deleted experiment cannot be renamed", "experiment_id")
            dup = await tx.fetch(
                "SELECT 1 FROM trk_experiments WHERE project = ? AND name = ? "
                "AND experiment_id != ?",
                [rows[0][0], new_name, eid],
            )
            if dup:
                raise exists(f"experiment {new_name!r} already exists", "new_name")
            await tx.execute(
                "UPDATE trk_experiments SET name = ?, last_update_time = ? WHERE experiment_id = ?",
                [new_name, now_ms(), eid],
            )

    async def set_experiment_lifecycle(self, experiment_id: str, stage: str) -> None:
        """Delete (``deleted``) or restore (``active``) an experiment and its runs."""
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        t = now_ms()
        async with self.driver.transaction() as tx:
            n = await tx.execute(
                "UPDATE trk_experiments SET lifecycle_stage = ?, last_update_time = ? "
                "WHERE experiment_id = ?",
                [stage, t, eid],
            )
            if n == 0:
                raise not_found(f"experiment {experiment_id!r}")
            await tx.execute(
                "UPDATE trk_runs SET lifecycle_stage = ?, deleted_time = ? WHERE experiment_id = ?",
                [stage, t if stage == DELETED else None, eid],
            )

    async def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (or replace) an experiment tag."""
        check_key(key, "key")
        check_text(value, "value", MAX_TAG_VALUE)
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        async with self.driver.transaction() as tx:
            await tx.execute(
                "INSERT INTO trk_experiment_tags (experiment_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
                [eid, key, value],
            )

    async def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        async with self.driver.transaction() as tx:
            n = await tx.execute(
                "DELETE FROM trk_experiment_tags WHERE experiment_id = ? AND key = ?", [eid, key]
            )
        if n == 0:
            raise not_found(f"tag {key!r} of experiment {experiment_id}")

    # --- runs ---------------------------------------------------------------------------------

    async def create_run(
        self,
        experiment_id: str,
        user_id: str,
        run_name: str = "",
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        """Create a RUNNING run in an active experiment.

        The run's name comes from ``run_name``, else from the ``mlflow.runName`` tag, else a
        random one; the tag is set to it, as MLflow does.
        """
        tags = dict(tags or {})
        for k, v in tags.items():
            check_key(k, "tags.key")
            check_text(v, "tags.value", MAX_TAG_VALUE)
        name = run_name or tags.get(RUN_NAME_TAG) or _random_run_name()
        check_text(name, "run_name", MAX_KEY)
        tags[RUN_NAME_TAG] = name
        if start_time is not None:
            _int(start_time, "start_time", 0)
        t = start_time if start_time else now_ms()
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        run_id = uuid.uuid4().hex
        async with self.driver.transaction() as tx:
            rows = await tx.fetch(
                "SELECT project, artifact_location, lifecycle_stage FROM trk_experiments "
                "WHERE experiment_id = ?",
                [eid],
            )
            if not rows:
                raise not_found(f"experiment {experiment_id!r}")
            project, location, stage = rows[0]
            if stage != ACTIVE:
                raise invalid(f"experiment {experiment_id} is deleted", "experiment_id")
            uri = f"{str(location).rstrip('/')}/{run_id}/artifacts"
            await tx.execute(
                "INSERT INTO trk_runs (run_id, experiment_id, project, run_name, user_id, status, "
                "start_time, end_time, artifact_uri, lifecycle_stage) "
                "VALUES (?, ?, ?, ?, ?, 'RUNNING', ?, NULL, ?, ?)",
                [run_id, eid, project, name, user_id, t, uri, ACTIVE],
            )
            await tx.executemany(
                "INSERT INTO trk_tags (run_id, key, value) VALUES (?, ?, ?)",
                [(run_id, k, v) for k, v in tags.items()],
            )
        run = await self.get_run(run_id)
        assert run is not None
        return run

    async def _runs(self, rows: Sequence[Row], full: bool = True) -> list[Run]:
        ids = [str(r[0]) for r in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[str, list[Metric]] = {i: [] for i in ids}
        datasets: dict[str, list[DatasetInput]] = {i: [] for i in ids}
        inputs: dict[str, list[str]] = {i: [] for i in ids}
        outputs: dict[str, list[tuple[str, int]]] = {i: [] for i in ids}
        for chunk in _chunks(ids):
            m, ps = _marks(len(chunk)), list(chunk)
            for rid, k, v in await self.driver.fetch(
                f"SELECT run_id, key, value FROM trk_params WHERE run_id IN ({m}) ORDER BY key", ps
            ):
                params[rid][k] = v
            for rid, k, v in await self.driver.fetch(
                f"SELECT run_id, key, value FROM trk_tags WHERE run_id IN ({m}) ORDER BY key", ps
            ):
                tags[rid][k] = v
            for rid, k, step, ts, val, nan in await self.driver.fetch(
                "SELECT run_id, key, last_step, last_timestamp, last_value, last_is_nan "
                f"FROM trk_metric_series WHERE run_id IN ({m}) ORDER BY key",
                ps,
            ):
                metrics[rid].append(Metric(k, math.nan if nan else float(val), int(ts), int(step)))
            if not full:
                continue
            for row in await self.driver.fetch(
                "SELECT i.run_id, d.name, d.digest, d.source_type, d.source, d.schema_json, "
                "d.profile, i.tags_json FROM trk_run_inputs i JOIN trk_datasets d "
                f"ON d.dataset_id = i.dataset_id WHERE i.run_id IN ({m}) ORDER BY d.dataset_id",
                ps,
            ):
                itags = json.loads(row[7])
                datasets[row[0]].append(
                    DatasetInput(row[1], row[2], row[3], row[4], row[5], row[6], itags)
                )
            for rid, mid, direction, step in await self.driver.fetch(
                "SELECT run_id, model_id, direction, step FROM trk_run_models "
                f"WHERE run_id IN ({m}) ORDER BY model_id",
                ps,
            ):
                if direction == "input":
                    inputs[rid].append(mid)
                else:
                    outputs[rid].append((mid, int(step)))
        return [
            Run(
                run_id=str(r[0]),
                experiment_id=str(r[1]),
                project=r[2],
                run_name=r[3],
                user_id=r[4],
                status=r[5],
                start_time=int(r[6]),
                end_time=None if r[7] is None else int(r[7]),
                artifact_uri=r[8],
                lifecycle_stage=r[9],
                params=params[r[0]],
                tags=tags[r[0]],
                metrics=metrics[r[0]],
                datasets=datasets[r[0]],
                model_inputs=inputs[r[0]],
                model_outputs=outputs[r[0]],
            )
            for r in rows
        ]

    async def get_run(self, run_id: str) -> Run | None:
        """Return a run with its params, tags, latest metrics, inputs and outputs."""
        rows = await self.driver.fetch(
            f"SELECT {_RUN_COLS} FROM trk_runs r WHERE r.run_id = ?", [run_id]
        )
        found = await self._runs(rows)
        return found[0] if found else None

    async def update_run(
        self,
        run_id: str,
        status: str | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> Run:
        """Change a run's status, end time or name (the name also sets ``mlflow.runName``)."""
        if status is not None and status not in RUN_STATUSES:
            raise invalid(f"status must be one of {', '.join(RUN_STATUSES)}", "status")
        if end_time is not None:
            _int(end_time, "end_time", 0)
        if run_name:
            check_text(run_name, "run_name", MAX_KEY)
        async with self.driver.transaction() as tx:
            rows = await tx.fetch("SELECT lifecycle_stage FROM trk_runs WHERE run_id = ?", [run_id])
            if not rows:
                raise not_found(f"run {run_id!r}")
            if rows[0][0] != ACTIVE:
                raise invalid(f"run {run_id} is deleted", "run_id")
            await tx.execute(
                "UPDATE trk_runs SET status = COALESCE(?, status), "
                "end_time = COALESCE(?, end_time), run_name = COALESCE(?, run_name) "
                "WHERE run_id = ?",
                [status, end_time, run_name or None, run_id],
            )
            if run_name:
                await self._upsert_tags(tx, run_id, [(RUN_NAME_TAG, run_name)])
        run = await self.get_run(run_id)
        assert run is not None
        return run

    async def set_run_lifecycle(self, run_id: str, stage: str) -> None:
        """Delete (``deleted``) or restore (``active``) a run."""
        async with self.driver.transaction() as tx:
            n = await tx.execute(
                "UPDATE trk_runs SET lifecycle_stage = ?, deleted_time = ? WHERE run_id = ?",
                [stage, now_ms() if stage == DELETED else None, run_id],
            )
        if n == 0:
            raise not_found(f"run {run_id!r}")

    async def _active_run(self, tx: Tx, run_id: str) -> None:
        rows = await tx.fetch("SELECT lifecycle_stage FROM trk_runs WHERE run_id = ?", [run_id])
        if not rows:
            raise not_found(f"run {run_id!r}")
        if rows[0][0] != ACTIVE:
            raise invalid(f"run {run_id} is deleted; only active runs can be written to", "run_id")

    async def _upsert_tags(self, tx: Tx, run_id: str, tags: Sequence[tuple[str, str]]) -> None:
        await tx.executemany(
            "INSERT INTO trk_tags (run_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            [(run_id, k, v) for k, v in tags],
        )
        for k, v in tags:
            if k == RUN_NAME_TAG:
                await tx.execute("UPDATE trk_runs SET run_name = ? WHERE run_id = ?", [v, run_id])

    async def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricIn] = (),
        params: Sequence[tuple[str, str]] = (),
        tags: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Log metric points, params and tags to an active run in one transaction.

        A param, once logged, keeps its value: logging it again with another value is
        ``INVALID_PARAMETER_VALUE`` (and nothing of the batch is written).
        """
        if len(metrics) > MAX_BATCH_METRICS:
            raise invalid(f"at most {MAX_BATCH_METRICS} metrics per batch", "metrics")
        if len(params) + len(tags) > MAX_BATCH_PARAMS_TAGS * 10:
            raise invalid("too many params and tags in one batch", "params")
        for i, m in enumerate(metrics):
            check_key(m.key, f"metrics[{i}].key")
        seen: dict[str, str] = {}
        for i, (k, v) in enumerate(params):
            check_key(k, f"params[{i}].key")
            check_text(v, f"params[{i}].value", MAX_PARAM_VALUE)
            if seen.setdefault(k, v) != v:
                raise invalid(f"param {k!r} is given twice with different values", "params")
        for i, (k, v) in enumerate(tags):
            check_key(k, f"tags[{i}].key")
            check_text(v, f"tags[{i}].value", MAX_TAG_VALUE)
        async with self.driver.transaction() as tx:
            await self._active_run(tx, run_id)
            if seen:
                await self._log_params(tx, run_id, seen)
            if tags:
                await self._upsert_tags(tx, run_id, list(dict(tags).items()))
            if metrics:
                await self._log_metrics(tx, run_id, metrics)

    async def _log_params(self, tx: Tx, run_id: str, params: dict[str, str]) -> None:
        keys = list(params)
        for chunk in _chunks(keys):
            for k, v in await tx.fetch(
                "SELECT key, value FROM trk_params WHERE run_id = ? "
                f"AND key IN ({_marks(len(chunk))})",
                [run_id, *chunk],
            ):
                if params[k] != v:
                    raise invalid(
                        f"changing param values is not allowed: param {k!r} of run {run_id} "
                        f"was {v!r}, not {params[k]!r}",
                        "params",
                    )
        await tx.executemany(
            "INSERT INTO trk_params (run_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO NOTHING",
            [(run_id, k, v) for k, v in params.items()],
        )

    async def _log_metrics(self, tx: Tx, run_id: str, metrics: Sequence[MetricIn]) -> None:
        best: dict[str, tuple[int, int, float, int]] = {}
        points: list[tuple[str, int, int, float, int]] = []
        for m in metrics:
            nan = 1 if math.isnan(m.value) else 0
            value = 0.0 if nan else float(m.value)
            points.append((m.key, m.step, m.timestamp, value, nan))
            cand = (m.step, m.timestamp, value, nan)
            cur = best.get(m.key)
            if cur is None or _latest_key(*cand) > _latest_key(*cur):
                best[m.key] = cand
        keys = list(best)
        series: dict[str, tuple[int, tuple[int, int, float, int]]] = {}
        for chunk in _chunks(keys):
            for sid, k, step, ts, val, nan in await tx.fetch(
                "SELECT series_id, key, last_step, last_timestamp, last_value, last_is_nan "
                f"FROM trk_metric_series WHERE run_id = ? AND key IN ({_marks(len(chunk))})",
                [run_id, *chunk],
            ):
                series[k] = (int(sid), (int(step), int(ts), float(val), int(nan)))
        for k in keys:
            if k not in series:
                step, ts, val, nan = best[k]
                rows = await tx.fetch(
                    "INSERT INTO trk_metric_series (run_id, key, last_step, last_timestamp, "
                    "last_value, last_is_nan) VALUES (?, ?, ?, ?, ?, ?) RETURNING series_id",
                    [run_id, k, step, ts, val, nan],
                )
                series[k] = (int(rows[0][0]), best[k])
        updates = [
            (best[k][0], best[k][1], best[k][2], best[k][3], series[k][0])
            for k in keys
            if _latest_key(*best[k]) > _latest_key(*series[k][1])
        ]
        await tx.executemany(
            "UPDATE trk_metric_series SET last_step = ?, last_timestamp = ?, last_value = ?, "
            "last_is_nan = ? WHERE series_id = ?",
            updates,
        )
        await tx.executemany(
            "INSERT INTO trk_metric_points (series_id, step, timestamp, value, is_nan) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(series[k][0], step, ts, v, nan) for k, step, ts, v, nan in points],
        )
        linked = [m for m in metrics if m.model_id]
        if linked:
            await tx.executemany(
                "INSERT INTO trk_logged_model_metrics (model_id, key, value, is_nan, timestamp, "
                "step, run_id, dataset_name, dataset_digest) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM trk_logged_models WHERE model_id = ?)",
                [
                    (
                        m.model_id,
                        m.key,
                        0.0 if math.isnan(m.value) else float(m.value),
                        1 if math.isnan(m.value) else 0,
                        m.timestamp,
                        m.step,
                        run_id,
                        m.dataset_name,
                        m.dataset_digest,
                        m.model_id,
                    )
                    for m in linked
                ],
            )

    async def delete_tag(self, run_id: str, key: str) -> None:
        """Delete a run tag (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        async with self.driver.transaction() as tx:
            await self._active_run(tx, run_id)
            n = await tx.execute("DELETE FROM trk_tags WHERE run_id = ? AND key = ?", [run_id, key])
        if n == 0:
            raise not_found(f"tag {key!r} of run {run_id}")

    async def log_inputs(
        self, run_id: str, datasets: Sequence[DatasetIn] = (), models: Sequence[str] = ()
    ) -> None:
        """Record datasets (deduplicated per experiment by name and digest) and model inputs."""
        for i, d in enumerate(datasets):
            check_text(d.name, f"datasets[{i}].dataset.name", MAX_NAME, empty=False)
            check_text(d.digest, f"datasets[{i}].dataset.digest", 36, empty=False)
            check_text(d.source_type, f"datasets[{i}].dataset.source_type", MAX_NAME)
            check_text(d.source, f"datasets[{i}].dataset.source", MAX_TEXT)
            check_text(d.schema, f"datasets[{i}].dataset.schema", 1 << 20)
            check_text(d.profile, f"datasets[{i}].dataset.profile", MAX_TEXT)
            for k, v in d.tags:
                check_key(k, f"datasets[{i}].tags.key")
                check_text(v, f"datasets[{i}].tags.value", MAX_TAG_VALUE)
        async with self.driver.transaction() as tx:
            await self._active_run(tx, run_id)
            rows = await tx.fetch("SELECT experiment_id FROM trk_runs WHERE run_id = ?", [run_id])
            eid = int(rows[0][0])
            for d in datasets:
                await tx.execute(
                    "INSERT INTO trk_datasets (experiment_id, name, digest, source_type, source, "
                    "schema_json, profile) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (experiment_id, name, digest) DO NOTHING",
                    [eid, d.name, d.digest, d.source_type, d.source, d.schema, d.profile],
                )
                found = await tx.fetch(
                    "SELECT dataset_id FROM trk_datasets WHERE experiment_id = ? AND name = ? "
                    "AND digest = ?",
                    [eid, d.name, d.digest],
                )
                tags = dict(d.tags)
                await tx.execute(
                    "INSERT INTO trk_run_inputs (run_id, dataset_id, context, tags_json) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (run_id, dataset_id) DO NOTHING",
                    [run_id, int(found[0][0]), tags.get("mlflow.data.context", ""),
                     json.dumps(tags)],
                )  # fmt: skip
            await tx.executemany(
                "INSERT INTO trk_run_models (run_id, model_id, direction, step) "
                "VALUES (?, ?, 'input', 0) ON CONFLICT DO NOTHING",
                [(run_id, m) for m in models],
            )

    async def log_outputs(self, run_id: str, models: Sequence[tuple[str, int]]) -> None:
        """Record models a run produced, each at a step."""
        async with self.driver.transaction() as tx:
            await self._active_run(tx, run_id)
            await tx.executemany(
                "INSERT INTO trk_run_models (run_id, model_id, direction, step) "
                "VALUES (?, ?, 'output', ?) ON CONFLICT (run_id, model_id, direction) "
                "DO UPDATE SET step = excluded.step",
                [(run_id, m, s) for m, s in models],
            )

    async def metric_history(
        self, run_id: str, key: str, max_results: Any = None, page_token: str | None = None
    ) -> tuple[list[tuple[int, int, float]], str | None]:
        """Return ``(step, timestamp, value)`` points of a metric by step, and the next token.

        The points are plain tuples rather than records: a history can hold millions.
        """
        limit = q.check_max_results(max_results, *HISTORY_PAGE)
        offset = q.decode_page_token(page_token)
        rows = await self.driver.fetch(
            "SELECT p.step, p.timestamp, p.value, p.is_nan FROM trk_metric_points p "
            "WHERE p.series_id = (SELECT series_id FROM trk_metric_series "
            "WHERE run_id = ? AND key = ?) "
            "ORDER BY p.step, p.timestamp, p.is_nan DESC, p.value LIMIT ? OFFSET ?",
            [run_id, key, limit + 1, offset],
        )
        token = q.encode_page_token(offset + limit) if len(rows) > limit else None
        nan = math.nan
        return [(s, t, nan if n else v) for s, t, v, n in rows[:limit]], token

    async def metric_history_bulk_interval(
        self,
        run_ids: Sequence[str],
        key: str,
        start_step: int | None,
        end_step: int | None,
        max_results: int,
    ) -> list[tuple[str, int, int, float]]:
        """Return ``(run_id, step, timestamp, value)`` sampled to ``max_results`` steps per run.

        Steps are chosen evenly over each run's steps in the range, the first and last always
        among them (the shape of a curve survives the sampling).
        """
        out: list[tuple[str, int, int, float]] = []
        lo = -(2**63) if start_step is None else start_step
        hi = 2**63 - 1 if end_step is None else end_step
        for run_id in run_ids:
            rows = await self.driver.fetch(
                "SELECT p.step, p.timestamp, p.value, p.is_nan FROM trk_metric_points p "
                "WHERE p.series_id = (SELECT series_id FROM trk_metric_series "
                "WHERE run_id = ? AND key = ?) AND p.step >= ? AND p.step <= ? "
                "ORDER BY p.step, p.timestamp, p.is_nan DESC, p.value",
                [run_id, key, lo, hi],
            )
            steps = sorted({int(r[0]) for r in rows})
            if len(steps) > max_results:
                n = len(steps)
                picked = {steps[round(i * (n - 1) / (max_results - 1))] for i in range(max_results)}
                if max_results == 1:
                    picked = {steps[0]}
            else:
                picked = set(steps)
            out += [
                (run_id, int(s), int(t), math.nan if n else float(v))
                for s, t, v, n in rows
                if s in picked
            ]
        return out

    async def search_runs(
        self,
        experiment_ids: Sequence[str],
        projects: Sequence[str] | None,
        filter_string: str | None = None,
        view_type: str | None = None,
        order_by: Sequence[str] | None = None,
        max_results: Any = None,
        page_token: str | None = None,
    ) -> tuple[list[Run], str | None]:
        """Search runs of experiments of ``projects`` (None: every project) with a filter.

        Experiments of other projects are silently left out: they do not exist for the caller.
        """
        limit = q.check_max_results(max_results, *RUNS_PAGE)
        offset = q.decode_page_token(page_token)
        stages = _view_stages(view_type, "run_view_type")
        eids = [
            int(e)
            for e in experiment_ids
            if isinstance(e, str) and e.isascii() and e.isdigit() and len(e) <= 18
        ]
        if not eids:
            return [], None
        pclause, params = _project_clause("r.project", projects)
        clauses = [
            pclause,
            f"r.experiment_id IN ({_marks(len(eids))})",
            f"r.lifecycle_stage IN ({_marks(len(stages))})",
        ]
        params += [*eids, *stages]
        for c in q.parse_filter(filter_string):
            sql, p = self._run_clause(c)
            clauses.append(sql)
            params += p
        order: list[str] = []
        oparams: list[Any] = []
        for o in q.parse_order_by(order_by):
            expr, p = self._run_order(o)
            order.append(_order_sql(expr, o.ascending))
            oparams += p * 2
        order += ["r.start_time DESC", "r.run_id ASC"]
        rows = await self.driver.fetch(
            f"SELECT {_RUN_COLS} FROM trk_runs r WHERE {' AND '.join(clauses)} "
            f"ORDER BY {', '.join(order)} LIMIT ? OFFSET ?",
            [*params, *oparams, limit + 1, offset],
        )
        token = q.encode_page_token(offset + limit) if len(rows) > limit else None
        return await self._runs(rows[:limit]), token

    @staticmethod
    def _run_clause(c: q.Comparison) -> tuple[str, list[Any]]:
        if c.entity == "attribute":
            return q.attribute_clause(_RUN_ATTRS, c, "filter")
        if c.entity == "metric":
            return q.keyed_exists(
                "FROM trk_metric_series s WHERE s.run_id = r.run_id AND s.last_is_nan = 0",
                "s.key",
                "s.last_value",
                c,
                True,
                "filter",
            )
        if c.entity in ("param", "tag"):
            table = "trk_params" if c.entity == "param" else "trk_tags"
            return q.keyed_exists(
                f"FROM {table} x WHERE x.run_id = r.run_id", "x.key", "x.value", c, False, "filter"
            )
        # datasets.name / datasets.digest / datasets.context
        cols = {"name": "d.name", "digest": "d.digest", "context": "i.context"}
        col = cols.get(c.key)
        if col is None:
            raise invalid("invalid filter: datasets have name, digest and context", "filter")
        sql, p = q.value_clause(col, c, False, "filter")
        return (
            "EXISTS (SELECT 1 FROM trk_run_inputs i JOIN trk_datasets d "
            f"ON d.dataset_id = i.dataset_id WHERE i.run_id = r.run_id AND {sql})",
            p,
        )

    @staticmethod
    def _run_order(o: q.OrderKey) -> tuple[str, list[Any]]:
        if o.entity == "attribute":
            col = _RUN_ATTRS.get(o.key)
            if col is None:
                raise invalid(f"invalid order_by: unknown attribute {o.key!r}", "order_by")
            return col.sql, []
        if o.entity == "metric":
            return (
                "(SELECT s.last_value FROM trk_metric_series s WHERE s.run_id = r.run_id "
                "AND s.key = ? AND s.last_is_nan = 0)",
                [o.key],
            )
        if o.entity in ("param", "tag"):
            table = "trk_params" if o.entity == "param" else "trk_tags"
            return (
                f"(SELECT x.value FROM {table} x WHERE x.run_id = r.run_id AND x.key = ?)",
                [o.key],
            )
        raise invalid(f"invalid order_by: cannot order runs by {o.entity}s", "order_by")

    # --- logged models ------------------------------------------------------------------------

    async def create_logged_model(
        self,
        experiment_id: str,
        name: str = "",
        model_type: str = "",
        source_run_id: str = "",
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> LoggedModel:
        """Create a PENDING logged model in an active experiment.

        Its files go under ``<experiment artifact location>/models/<model_id>/artifacts``.
        """
        name = name or _random_run_name()
        check_text(name, "name", MAX_NAME)
        check_text(model_type, "model_type", MAX_NAME)
        params, tags = dict(params or {}), dict(tags or {})
        for k, v in params.items():
            check_key(k, "params.key")
            check_text(v, "params.value", MAX_PARAM_VALUE)
        for k, v in tags.items():
            check_key(k, "tags.key")
            check_text(v, "tags.value", MAX_TAG_VALUE)
        eid = _id(experiment_id, "experiment_id", f"experiment {experiment_id!r}")
        model_id = f"m-{uuid.uuid4().hex}"
        t = now_ms()
        async with self.driver.transaction() as tx:
            rows = await tx.fetch(
                "SELECT project, artifact_location, lifecycle_stage FROM trk_experiments "
                "WHERE experiment_id = ?",
                [eid],
            )
            if not rows:
                raise not_found(f"experiment {experiment_id!r}")
            if rows[0][2] != ACTIVE:
                raise invalid(f"experiment {experiment_id} is deleted", "experiment_id")
            if source_run_id:
                run = await tx.fetch(
                    "SELECT experiment_id FROM trk_runs WHERE run_id = ?", [source_run_id]
                )
                if not run or int(run[0][0]) != eid:
                    raise not_found(f"run {source_run_id!r} in experiment {experiment_id}")
            location = f"{str(rows[0][1]).rstrip('/')}/models/{model_id}/artifacts"
            await tx.execute(
                "INSERT INTO trk_logged_models (model_id, experiment_id, project, name, "
                "artifact_location, creation_timestamp_ms, last_updated_timestamp_ms, status, "
                "status_message, model_type, source_run_id, lifecycle_stage) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'LOGGED_MODEL_PENDING', '', ?, ?, ?)",
                [model_id, eid, rows[0][0], name, location, t, t, model_type, source_run_id,
                 ACTIVE],
            )  # fmt: skip
            await tx.executemany(
                "INSERT INTO trk_logged_model_params (model_id, key, value) VALUES (?, ?, ?)",
                [(model_id, k, v) for k, v in params.items()],
            )
            await tx.executemany(
                "INSERT INTO trk_logged_model_tags (model_id, key, value) VALUES (?, ?, ?)",
                [(model_id, k, v) for k, v in tags.items()],
            )
        found = await self.get_logged_model(model_id)
        assert found is not None
        return found

    async def _logged_models(self, rows: Sequence[Row]) -> list[LoggedModel]:
        ids = [str(r[0]) for r in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        regs: dict[str, list[tuple[str, int]]] = {i: [] for i in ids}
        for chunk in _chunks(ids):
            m, ps = _marks(len(chunk)), list(chunk)
            for mid, k, v in await self.driver.fetch(
                f"SELECT model_id, key, value FROM trk_logged_model_params WHERE model_id IN ({m})"
                " ORDER BY key",
                ps,
            ):
                params[mid][k] = v
            for mid, k, v in await self.driver.fetch(
                f"SELECT model_id, key, value FROM trk_logged_model_tags WHERE model_id IN ({m})"
                " ORDER BY key",
                ps,
            ):
                tags[mid][k] = v
            for row in await self.driver.fetch(
                "SELECT model_id, key, value, is_nan, timestamp, step, run_id, dataset_name, "
                f"dataset_digest FROM trk_logged_model_metrics WHERE model_id IN ({m}) "
                "ORDER BY key, step",
                ps,
            ):
                entry = Metric(row[1], math.nan if row[3] else float(row[2]), row[4], row[5])
                js = entry.to_json() | {"run_id": row[6], "model_id": row[0]}
                if row[7]:
                    js |= {"dataset_name": row[7], "dataset_digest": row[8]}
                metrics[row[0]].append(js)
            for mid, name, version in await self.driver.fetch(
                "SELECT v.model_id, m.name, v.version FROM trk_model_versions v JOIN "
                f"trk_registered_models m ON m.model_pk = v.model_pk WHERE v.model_id IN ({m}) "
                "ORDER BY m.name, v.version",
                ps,
            ):
                regs[mid].append((name, int(version)))
        return [
            LoggedModel(
                str(r[0]),
                str(r[1]),
                r[2],
                r[3],
                r[4],
                int(r[5]),
                int(r[6]),
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
                params[r[0]],
                tags[r[0]],
                metrics[r[0]],
                regs[r[0]],
            )  # fmt: skip
            for r in rows
        ]

    async def get_logged_model(self, model_id: str) -> LoggedModel | None:
        """Return a logged model (None when unknown)."""
        rows = await self.driver.fetch(
            f"SELECT {_LM_COLS} FROM trk_logged_models l WHERE l.model_id = ?", [model_id]
        )
        found = await self._logged_models(rows)
        return found[0] if found else None

    async def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel:
        """Set a logged model's status (``LOGGED_MODEL_READY`` or ``..._UPLOAD_FAILED``)."""
        if status not in LOGGED_MODEL_STATUSES[1:]:
            raise invalid(f"status must be one of {', '.join(LOGGED_MODEL_STATUSES[1:])}", "status")
        async with self.driver.transaction() as tx:
            n = await tx.execute(
                "UPDATE trk_logged_models SET status = ?, last_updated_timestamp_ms = ? "
                "WHERE model_id = ? AND lifecycle_stage = ?",
                [status, now_ms(), model_id, ACTIVE],
            )
        if n == 0:
            raise not_found(f"logged model {model_id!r}")
        found = await self.get_logged_model(model_id)
        assert found is not None
        return found

    async def set_logged_model_tags(self, model_id: str, tags: Sequence[tuple[str, str]]) -> None:
        """Set (or replace) tags of a logged model."""
        for i, (k, v) in enumerate(tags):
            check_key(k, f"tags[{i}].key")
            check_text(v, f"tags[{i}].value", MAX_TAG_VALUE)
        async with self.driver.transaction() as tx:
            await self._touch_logged_model(tx, model_id)
            await tx.executemany(
                "INSERT INTO trk_logged_model_tags (model_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                [(model_id, k, v) for k, v in tags],
            )

    async def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """Delete a tag of a logged model (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        async with self.driver.transaction() as tx:
            await self._touch_logged_model(tx, model_id)
            n = await tx.execute(
                "DELETE FROM trk_logged_model_tags WHERE model_id = ? AND key = ?", [model_id, key]
            )
        if n == 0:
            raise not_found(f"tag {key!r} of logged model {model_id}")

    async def log_logged_model_params(
        self, model_id: str, params: Sequence[tuple[str, str]]
    ) -> None:
        """Add params to a logged model (an existing key keeps its first value)."""
        for i, (k, v) in enumerate(params):
            check_key(k, f"params[{i}].key")
            check_text(v, f"params[{i}].value", MAX_PARAM_VALUE)
        async with self.driver.transaction() as tx:
            await self._touch_logged_model(tx, model_id)
            await tx.executemany(
                "INSERT INTO trk_logged_model_params (model_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO NOTHING",
                [(model_id, k, v) for k, v in params],
            )

    async def _touch_logged_model(self, tx: Tx, model_id: str) -> None:
        n = await tx.execute(
            "UPDATE trk_logged_models SET last_updated_timestamp_ms = ? "
            "WHERE model_id = ? AND lifecycle_stage = ?",
            [now_ms(), model_id, ACTIVE],
        )
        if n == 0:
            raise not_found(f"logged model {model_id!r}")

    async def delete_logged_model(self, model_id: str) -> None:
        """Mark a logged model deleted (its registered versions stay)."""
        async with self.driver.transaction() as tx:
            await self._touch_logged_model(tx, model_id)
            await tx.execute(
                "UPDATE trk_logged_models SET lifecycle_stage = ? WHERE model_id = ?",
                [DELETED, model_id],
            )

    async def search_logged_models(
        self,
        experiment_ids: Sequence[str],
        projects: Sequence[str] | None,
        filter_string: str | None = None,
        order_by: Sequence[tuple[str, bool]] = (),
        max_results: Any = None,
        page_token: str | None = None,
    ) -> tuple[list[LoggedModel], str | None]:
        """Search active logged models of experiments (``order_by``: ``(field, ascending)``)."""
        limit = q.check_max_results(max_results, 100, 1000)
        offset = q.decode_page_token(page_token)
        eids = [int(e) for e in experiment_ids if e.isascii() and e.isdigit() and len(e) <= 18]
        if not eids:
            return [], None
        pclause, params = _project_clause("l.project", projects)
        clauses = [pclause, f"l.experiment_id IN ({_marks(len(eids))})", "l.lifecycle_stage = ?"]
        params += [*eids, ACTIVE]
        for c in q.parse_filter(filter_string):
            if c.entity == "attribute":
                sql, p = q.attribute_clause(_LM_ATTRS, c, "filter")
            elif c.entity in ("param", "tag"):
                table = f"trk_logged_model_{c.entity}s"
                sql, p = q.keyed_exists(
                    f"FROM {table} x WHERE x.model_id = l.model_id",
                    "x.key",
                    "x.value",
                    c,
                    False,
                    "filter",
                )
            elif c.entity == "metric":
                sql, p = q.keyed_exists(
                    "FROM trk_logged_model_metrics x WHERE x.model_id = l.model_id "
                    "AND x.is_nan = 0",
                    "x.key",
                    "x.value",
                    c,
                    True,
                    "filter",
                )
            else:
                raise invalid(f"invalid filter: logged models have no {c.entity}s", "filter")
            clauses.append(sql)
            params += p
        order = []
        for fname, asc in order_by:
            col = _LM_ATTRS.get(fname)
            if col is None:
                raise invalid(f"cannot order logged models by {fname!r}", "order_by")
            order.append(_order_sql(col.sql, asc))
        order += ["l.creation_timestamp_ms DESC", "l.model_id ASC"]
        rows, token = await self._page(
            f"SELECT {_LM_COLS} FROM trk_logged_models l", clauses, params, order, limit, offset
        )
        return await self._logged_models(rows), token

    # --- model registry -----------------------------------------------------------------------

    async def create_registered_model(
        self,
        project: str,
        name: str,
        user_id: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> RegisteredModel:
        """Create a registered model (``RESOURCE_ALREADY_EXISTS`` when the name is taken)."""
        check_name(name, "name")
        check_text(description, "description")
        tags = dict(tags or {})
        for k, v in tags.items():
            check_key(k, "tags.key")
            check_text(v, "tags.value", MAX_TAG_VALUE)
        t = now_ms()
        async with self.driver.transaction() as tx:
            if await tx.fetch(
                "SELECT 1 FROM trk_registered_models WHERE project = ? AND name = ?",
                [project, name],
            ):
                raise exists(f"registered model {name!r} already exists", "name")
            rows = await tx.fetch(
                "INSERT INTO trk_registered_models (project, name, creation_timestamp, "
                "last_updated_timestamp, user_id, description, next_version) "
                "VALUES (?, ?, ?, ?, ?, ?, 1) RETURNING model_pk",
                [project, name, t, t, user_id, description],
            )
            await tx.executemany(
                "INSERT INTO trk_registered_model_tags (model_pk, key, value) VALUES (?, ?, ?)",
                [(int(rows[0][0]), k, v) for k, v in tags.items()],
            )
        found = await self.get_registered_model(project, name)
        assert found is not None
        return found

    async def _model_pk(self, tx: Tx | None, project: str, name: str) -> int:
        sql = "SELECT model_pk FROM trk_registered_models WHERE project = ? AND name = ?"
        fetch = tx.fetch if tx is not None else self.driver.fetch
        rows = await fetch(sql, [project, name])
        if not rows:
            raise not_found(f"registered model {name!r}")
        return int(rows[0][0])

    async def _versions(self, rows: Sequence[Row]) -> list[ModelVersion]:
        keys = [(int(r[15]), int(r[1])) for r in rows]
        tags: dict[tuple[int, int], dict[str, str]] = {k: {} for k in keys}
        aliases: dict[tuple[int, int], list[str]] = {k: [] for k in keys}
        pks = sorted({k[0] for k in keys})
        for chunk in _chunks(pks):
            m = _marks(len(chunk))
            for pk, ver, k, v in await self.driver.fetch(
                "SELECT model_pk, version, key, value FROM trk_model_version_tags "
                f"WHERE model_pk IN ({m}) ORDER BY key",
                list(chunk),
            ):
                if (int(pk), int(ver)) in tags:
                    tags[(int(pk), int(ver))][k] = v
            for pk, alias, ver in await self.driver.fetch(
                "SELECT model_pk, alias, version FROM trk_model_aliases "
                f"WHERE model_pk IN ({m}) ORDER BY alias",
                list(chunk),
            ):
                if (int(pk), int(ver)) in aliases:
                    aliases[(int(pk), int(ver))].append(alias)
        return [
            ModelVersion(
                r[0],
                int(r[1]),
                r[2],
                int(r[3]),
                int(r[4]),
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
                r[12],
                r[13],
                r[14],
                tags[k],
                aliases[k],
            )  # fmt: skip
            for r, k in zip(rows, keys, strict=True)
        ]

    async def _registered(self, rows: Sequence[Row]) -> list[RegisteredModel]:
        pks = [int(r[0]) for r in rows]
        tags: dict[int, dict[str, str]] = {p: {} for p in pks}
        aliases: dict[int, dict[str, int]] = {p: {} for p in pks}
        latest: dict[int, list[ModelVersion]] = {p: [] for p in pks}
        for chunk in _chunks(pks):
            m, ps = _marks(len(chunk)), list(chunk)
            for pk, k, v in await self.driver.fetch(
                "SELECT model_pk, key, value FROM trk_registered_model_tags "
                f"WHERE model_pk IN ({m}) ORDER BY key",
                ps,
            ):
                tags[int(pk)][k] = v
            for pk, a, ver in await self.driver.fetch(
                "SELECT model_pk, alias, version FROM trk_model_aliases "
                f"WHERE model_pk IN ({m}) ORDER BY alias",
                ps,
            ):
                aliases[int(pk)][a] = int(ver)
            # The latest version of each stage, as MLflow lists it with a registered model.
            vrows = await self.driver.fetch(
                f"SELECT {_MV_COLS} FROM trk_model_versions v JOIN trk_registered_models m "
                f"ON m.model_pk = v.model_pk WHERE v.model_pk IN ({m}) AND v.version = "
                "(SELECT MAX(w.version) FROM trk_model_versions w WHERE w.model_pk = v.model_pk "
                "AND w.current_stage = v.current_stage) ORDER BY v.version",
                ps,
            )
            for r, mv in zip(vrows, await self._versions(vrows), strict=True):
                latest[int(r[15])].append(mv)
        return [
            RegisteredModel(
                r[1],
                r[2],
                int(r[3]),
                int(r[4]),
                r[5],
                r[6],
                tags[int(r[0])],
                aliases[int(r[0])],
                latest[int(r[0])],
            )  # fmt: skip
            for r in rows
        ]

    async def get_registered_model(self, project: str, name: str) -> RegisteredModel | None:
        """Return a project's registered model by name (None when unknown)."""
        rows = await self.driver.fetch(
            f"SELECT {_RM_COLS} FROM trk_registered_models m WHERE m.project = ? AND m.name = ?",
            [project, name],
        )
        found = await self._registered(rows)
        return found[0] if found else None

    async def registered_model_tags(self, project: str, name: str) -> dict[str, str]:
        """Return the tags of a registered model (``RESOURCE_DOES_NOT_EXIST`` when unknown)."""
        pk = await self._model_pk(None, project, name)
        rows = await self.driver.fetch(
            "SELECT key, value FROM trk_registered_model_tags WHERE model_pk = ?", [pk]
        )
        return {str(k): str(v) for k, v in rows}

    async def update_registered_model(
        self, project: str, name: str, description: str | None = None, new_name: str | None = None
    ) -> RegisteredModel:
        """Change a registered model's description, or rename it."""
        if description is not None:
            check_text(description, "description")
        if new_name is not None:
            check_name(new_name, "new_name")
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            if new_name is not None and new_name != name:
                if await tx.fetch(
                    "SELECT 1 FROM trk_registered_models WHERE project = ? AND name = ?",
                    [project, new_name],
                ):
                    raise exists(f"registered model {new_name!r} already exists", "new_name")
            await tx.execute(
                "UPDATE trk_registered_models SET description = COALESCE(?, description), "
                "name = COALESCE(?, name), last_updated_timestamp = ? WHERE model_pk = ?",
                [description, new_name, now_ms(), pk],
            )
        found = await self.get_registered_model(project, new_name or name)
        assert found is not None
        return found

    async def delete_registered_model(self, project: str, name: str) -> None:
        """Delete a registered model with its versions, tags and aliases."""
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            await tx.execute("DELETE FROM trk_model_aliases WHERE model_pk = ?", [pk])
            await tx.execute("DELETE FROM trk_model_version_tags WHERE model_pk = ?", [pk])
            await tx.execute("DELETE FROM trk_model_versions WHERE model_pk = ?", [pk])
            await tx.execute("DELETE FROM trk_registered_model_tags WHERE model_pk = ?", [pk])
            await tx.execute("DELETE FROM trk_registered_models WHERE model_pk = ?", [pk])

    async def set_registered_model_tag(self, project: str, name: str, key: str, value: str) -> None:
        """Set (or replace) a tag of a registered model."""
        check_key(key, "key")
        check_text(value, "value", MAX_TAG_VALUE)
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            await tx.execute(
                "INSERT INTO trk_registered_model_tags (model_pk, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (model_pk, key) DO UPDATE SET value = excluded.value",
                [pk, key, value],
            )

    async def delete_registered_model_tag(self, project: str, name: str, key: str) -> None:
        """Delete a tag of a registered model (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            n = await tx.execute(
                "DELETE FROM trk_registered_model_tags WHERE model_pk = ? AND key = ?", [pk, key]
            )
        if n == 0:
            raise not_found(f"tag {key!r} of registered model {name!r}")

    async def search_registered_models(
        self,
        projects: Sequence[str] | None,
        filter_string: str | None = None,
        order_by: Sequence[str] | None = None,
        max_results: Any = None,
        page_token: str | None = None,
    ) -> tuple[list[RegisteredModel], str | None]:
        """Search registered models (``name LIKE 'x%'``, ``tags.k = 'v'``)."""
        limit = q.check_max_results(max_results, *MODELS_PAGE)
        offset = q.decode_page_token(page_token)
        pclause, params = _project_clause("m.project", projects)
        clauses = [pclause]
        tags = "FROM trk_registered_model_tags t WHERE t.model_pk = m.model_pk"
        for c in q.parse_filter(filter_string):
            sql, p = _tag_clause(c, _RM_ATTRS, tags, "registered models", True)
            clauses.append(sql)
            params += p
        order = _order_clauses(order_by, _RM_ATTRS, "models")
        order += ["m.name ASC", "m.model_pk ASC"]
        rows, token = await self._page(
            f"SELECT {_RM_COLS} FROM trk_registered_models m", clauses, params, order, limit, offset
        )
        return await self._registered(rows), token

    async def create_model_version(
        self,
        project: str,
        name: str,
        source: str,
        user_id: str,
        storage_location: str,
        run_id: str = "",
        run_link: str = "",
        description: str = "",
        model_id: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Add the next version to a registered model.

        ``storage_location`` is the resolved place of the files (the caller resolves
        ``runs:/`` and ``models:/`` sources with :meth:`run_owner` and
        :meth:`logged_model_owner`, checking the caller may read them).
        """
        check_text(source, "source", 4096, empty=False)
        check_text(run_link, "run_link", 4096)
        check_text(description, "description")
        tags = dict(tags or {})
        for k, v in tags.items():
            check_key(k, "tags.key")
            check_text(v, "tags.value", MAX_TAG_VALUE)
        t = now_ms()
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            # The counter row is the lock: two versions created at once get different numbers.
            rows = await tx.fetch(
                "UPDATE trk_registered_models SET next_version = next_version + 1, "
                "last_updated_timestamp = ? WHERE model_pk = ? RETURNING next_version - 1",
                [t, pk],
            )
            version = int(rows[0][0])
            await tx.execute(
                "INSERT INTO trk_model_versions (model_pk, version, creation_timestamp, "
                "last_updated_timestamp, user_id, current_stage, description, source, run_id, "
                "run_link, status, status_message, storage_location, model_id) "
                "VALUES (?, ?, ?, ?, ?, 'None', ?, ?, ?, ?, 'READY', '', ?, ?)",
                [pk, version, t, t, user_id, description, source, run_id, run_link,
                 storage_location, model_id],
            )  # fmt: skip
            await tx.executemany(
                "INSERT INTO trk_model_version_tags (model_pk, version, key, value) "
                "VALUES (?, ?, ?, ?)",
                [(pk, version, k, v) for k, v in tags.items()],
            )
        found = await self.get_model_version(project, name, version)
        assert found is not None
        return found

    async def get_model_version(self, project: str, name: str, version: int) -> ModelVersion | None:
        """Return one version of a project's registered model (None when unknown)."""
        rows = await self.driver.fetch(
            f"SELECT {_MV_COLS} FROM trk_model_versions v JOIN trk_registered_models m "
            "ON m.model_pk = v.model_pk WHERE m.project = ? AND m.name = ? AND v.version = ?",
            [project, name, version],
        )
        found = await self._versions(rows)
        return found[0] if found else None

    async def _version_key(self, tx: Tx, project: str, name: str, version: int) -> int:
        pk = await self._model_pk(tx, project, name)
        if not await tx.fetch(
            "SELECT 1 FROM trk_model_versions WHERE model_pk = ? AND version = ?", [pk, version]
        ):
            raise not_found(f"version {version} of registered model {name!r}")
        return pk

    async def update_model_version(
        self, project: str, name: str, version: int, description: str
    ) -> ModelVersion:
        """Change a version's description."""
        check_text(description, "description")
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            await tx.execute(
                "UPDATE trk_model_versions SET description = ?, last_updated_timestamp = ? "
                "WHERE model_pk = ? AND version = ?",
                [description, now_ms(), pk, version],
            )
        found = await self.get_model_version(project, name, version)
        assert found is not None
        return found

    async def delete_model_version(self, project: str, name: str, version: int) -> None:
        """Delete a version with its tags and the aliases pointing at it."""
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            for table in ("trk_model_aliases", "trk_model_version_tags", "trk_model_versions"):
                await tx.execute(
                    f"DELETE FROM {table} WHERE model_pk = ? AND version = ?", [pk, version]
                )

    async def transition_stage(
        self, project: str, name: str, version: int, stage: str, archive_existing: bool
    ) -> ModelVersion:
        """Move a version to a stage (``archive_existing``: others in it go to Archived)."""
        canonical = {s.lower(): s for s in STAGES}.get(stage.lower() if stage else "")
        if canonical is None:
            raise invalid(f"stage must be one of {', '.join(STAGES)}", "stage")
        t = now_ms()
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            if archive_existing and canonical in ("Staging", "Production"):
                await tx.execute(
                    "UPDATE trk_model_versions SET current_stage = 'Archived', "
                    "last_updated_timestamp = ? WHERE model_pk = ? AND current_stage = ? "
                    "AND version != ?",
                    [t, pk, canonical, version],
                )
            await tx.execute(
                "UPDATE trk_model_versions SET current_stage = ?, last_updated_timestamp = ? "
                "WHERE model_pk = ? AND version = ?",
                [canonical, t, pk, version],
            )
        found = await self.get_model_version(project, name, version)
        assert found is not None
        return found

    async def latest_versions(
        self, project: str, name: str, stages: Sequence[str] = ()
    ) -> list[ModelVersion]:
        """Return the latest version of each stage (of the given stages, or of all)."""
        pk = await self._model_pk(None, project, name)
        wanted: list[str] = []
        for s in stages:
            canonical = {x.lower(): x for x in STAGES}.get(s.lower())
            if canonical is None:
                raise invalid(f"stages must be among {', '.join(STAGES)}", "stages")
            wanted.append(canonical)
        rows = await self.driver.fetch(
            f"SELECT {_MV_COLS} FROM trk_model_versions v JOIN trk_registered_models m "
            "ON m.model_pk = v.model_pk WHERE v.model_pk = ? AND v.version = "
            "(SELECT MAX(w.version) FROM trk_model_versions w WHERE w.model_pk = v.model_pk "
            "AND w.current_stage = v.current_stage) ORDER BY v.version",
            [pk],
        )
        return [v for v in await self._versions(rows) if not wanted or v.current_stage in wanted]

    async def search_model_versions(
        self,
        projects: Sequence[str] | None,
        filter_string: str | None = None,
        order_by: Sequence[str] | None = None,
        max_results: Any = None,
        page_token: str | None = None,
    ) -> tuple[list[ModelVersion], str | None]:
        """Search versions (``name = 'x'``, ``run_id IN (...)``, ``tags.k = 'v'``)."""
        limit = q.check_max_results(max_results, *VERSIONS_PAGE)
        offset = q.decode_page_token(page_token)
        pclause, params = _project_clause("m.project", projects)
        clauses = [pclause]
        tags = (
            "FROM trk_model_version_tags t WHERE t.model_pk = v.model_pk AND t.version = v.version"
        )
        for c in q.parse_filter(filter_string):
            if c.entity == "attribute" and c.key == "version_number" and isinstance(c.value, str):
                if c.value.isdigit():
                    c = q.Comparison(c.entity, c.key, c.op, float(c.value))
            sql, p = _tag_clause(c, _MV_ATTRS, tags, "model versions", True)
            clauses.append(sql)
            params += p
        order = _order_clauses(order_by, _MV_ATTRS, "versions")
        order += ["m.name ASC", "v.version DESC"]
        source = (
            f"SELECT {_MV_COLS} FROM trk_model_versions v "
            "JOIN trk_registered_models m ON m.model_pk = v.model_pk"
        )
        rows, token = await self._page(source, clauses, params, order, limit, offset)
        return await self._versions(rows), token

    async def set_model_version_tag(
        self, project: str, name: str, version: int, key: str, value: str
    ) -> None:
        """Set (or replace) a tag of a version."""
        check_key(key, "key")
        check_text(value, "value", MAX_TAG_VALUE)
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            await tx.execute(
                "INSERT INTO trk_model_version_tags (model_pk, version, key, value) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (model_pk, version, key) "
                "DO UPDATE SET value = excluded.value",
                [pk, version, key, value],
            )

    async def delete_model_version_tag(
        self, project: str, name: str, version: int, key: str
    ) -> None:
        """Delete a tag of a version (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            n = await tx.execute(
                "DELETE FROM trk_model_version_tags WHERE model_pk = ? AND version = ? AND key = ?",
                [pk, version, key],
            )
        if n == 0:
            raise not_found(f"tag {key!r} of version {version} of {name!r}")

    async def set_alias(self, project: str, name: str, alias: str, version: int) -> None:
        """Point an alias (``champion``) at a version, moving it if it pointed elsewhere."""
        if not isinstance(alias, str) or not _ALIAS.match(alias) or len(alias) > MAX_KEY:
            raise invalid(
                "alias must start with a letter or _ and hold only letters, digits, _ and -",
                "alias",
            )
        if _VERSION_ALIAS.match(alias) or alias.lower() == "latest":
            raise invalid(f"alias {alias!r} is reserved (v<number> and latest)", "alias")
        async with self.driver.transaction() as tx:
            pk = await self._version_key(tx, project, name, version)
            await tx.execute(
                "INSERT INTO trk_model_aliases (model_pk, alias, version) VALUES (?, ?, ?) "
                "ON CONFLICT (model_pk, alias) DO UPDATE SET version = excluded.version",
                [pk, alias, version],
            )

    async def delete_alias(self, project: str, name: str, alias: str) -> None:
        """Remove an alias (``RESOURCE_DOES_NOT_EXIST`` when absent)."""
        async with self.driver.transaction() as tx:
            pk = await self._model_pk(tx, project, name)
            n = await tx.execute(
                "DELETE FROM trk_model_aliases WHERE model_pk = ? AND alias = ?", [pk, alias]
            )
        if n == 0:
            raise not_found(f"alias {alias!r} of registered model {name!r}")

    async def version_by_alias(self, project: str, name: str, alias: str) -> ModelVersion:
        """Return the version an alias points at (``RESOURCE_DOES_NOT_EXIST`` otherwise)."""
        pk = await self._model_pk(None, project, name)
        rows = await self.driver.fetch(
            "SELECT version FROM trk_model_aliases WHERE model_pk = ? AND alias = ?", [pk, alias]
        )
        if not rows:
            raise not_found(f"alias {alias!r} of registered model {name!r}")
        found = await self.get_model_version(project, name, int(rows[0][0]))
        assert found is not None
        return found
