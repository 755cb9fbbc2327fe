"""The MLflow artifact proxy: ``/api/2.0/mlflow-artifacts/artifacts``.

The shapes are those the MLflow client's ``HttpArtifactRepository`` (``mlflow-artifacts:``
URIs) uses:

- ``GET .../artifacts/<path>`` streams a file (``Content-Disposition: attachment``);
- ``PUT .../artifacts/<path>`` stores the request body as a file, streamed to storage and
  capped at the ``max_artifact_upload`` setting (413 past it); answers ``{}``;
- ``DELETE .../artifacts/<path>`` deletes a file or a folder; answers ``{}``;
- ``GET .../artifacts?path=<path>`` lists a folder:
  ``{"files": [{"path": name, "is_dir": bool, "file_size": n}, ...]}``.

The client uploads every file with one ``PUT``; it uses multipart uploads only when the server
announces them, which this one does not, so none are served.

Tenancy: every path starts with an experiment id (a run's files are
``<experiment_id>/<run_id>/artifacts/...``, a logged model's
``<experiment_id>/models/<model_id>/artifacts/...``). The tracking store says which project owns
that experiment; the caller's cplat token (``Authorization: Bearer``) must be a viewer there to
read and a member to write. An experiment of another project, or none, answers
``RESOURCE_DOES_NOT_EXIST`` (404), so artifact paths reveal nothing about other projects.
Uploads and deletions go to the audit log, refused ones included.

Storage is :mod:`cplat.ml.tracking.artifacts`: ``<data_dir>/artifacts`` by default, another folder
(``artifact_root``) or an S3-compatible bucket (``artifact_s3_*``) as configured.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from urllib.parse import quote, urlsplit

from aiohttp import ClientPayloadError, web

from cplat.errors import InputError
from cplat.ml.tracking import TrackingError
from cplat.ml.tracking.artifacts import (
    CHUNK,
    ArtifactNotFoundError,
    ArtifactPathError,
    ArtifactStore,
    ArtifactTooLargeError,
    LocalArtifactStore,
    S3ArtifactStore,
    split_path,
)
from cplat.ml.tracking.jobs import check_run_scope, run_scope_target
from cplat_server.auth import Principal
from cplat_server.config import ServiceConfig
from cplat_server.errors import ApiError
from cplat_server.keys import AUDIT_PROJECT, CONFIG, STORE, audit_entry
from cplat_server.views.mlflow_compat.common import (
    TRACKING,
    MlflowError,
    caller,
    error_response,
    missing,
)

__all__ = [
    "ARTIFACTS",
    "ROOT",
    "ROUTES",
    "check_artifact_settings",
    "delete_artifact",
    "download_artifact",
    "list_artifacts",
    "open_artifact_store",
    "upload_artifact",
]

#: The open artifact storage of the app.
ARTIFACTS = web.AppKey("artifacts", ArtifactStore)
#: Where the proxy's routes start.
ROOT = "/api/2.0/mlflow-artifacts/artifacts"
#: Largest upload limit the settings accept: 5 TiB, the largest S3 object.
MAX_UPLOAD_LIMIT = 5 << 40
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


# --- settings ---------------------------------------------------------------------------------


def check_artifact_settings(cfg: ServiceConfig) -> None:
    """Refuse artifact settings that cannot work, naming the setting.

    Raises
    ------
    InputError
        For a non-positive or absurd ``max_artifact_upload``; both a local ``artifact_root``
        and a bucket; S3 settings without a bucket; a malformed bucket name, key prefix or
        endpoint URL (one carrying credentials included: URLs end up in logs); only one of
        the access key id and the secret.
    """
    if not 0 < cfg.max_artifact_upload <= MAX_UPLOAD_LIMIT:
        raise InputError(
            f"max_artifact_upload must be a number of bytes in 1..{MAX_UPLOAD_LIMIT} (5 TiB)",
            field="max_artifact_upload",
        )
    s3 = {
        "artifact_s3_prefix": cfg.artifact_s3_prefix,
        "artifact_s3_endpoint": cfg.artifact_s3_endpoint,
        "artifact_s3_region": cfg.artifact_s3_region,
        "artifact_s3_access_key_id": cfg.artifact_s3_access_key_id,
        "artifact_s3_secret_access_key": cfg.artifact_s3_secret_access_key,
    }
    if not cfg.artifact_s3_bucket:
        for name, value in s3.items():
            if value:
                raise InputError(f"{name} needs artifact_s3_bucket as well", field=name)
        return
    if cfg.artifact_root:
        raise InputError(
            "set either artifact_root (a folder) or artifact_s3_bucket, not both",
            field="artifact_root",
        )
    if not _BUCKET.match(cfg.artifact_s3_bucket):
        raise InputError(
            "not a bucket name (3-255 letters, digits, '.', '_' or '-')",
            field="artifact_s3_bucket",
        )
    try:
        split_path(cfg.artifact_s3_prefix, allow_root=True)
    except ArtifactPathError as exc:
        raise InputError(
            f"not a usable key prefix: {exc.message}", field="artifact_s3_prefix"
        ) from None
    if cfg.artifact_s3_endpoint:
        url = urlsplit(cfg.artifact_s3_endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InputError(
                "expected the object store's http(s) URL, e.g. https://minio.example:9000",
                field="artifact_s3_endpoint",
            )
        if url.username or url.password:
            raise InputError(
                "give the credentials as artifact_s3_access_key_id and "
                "artifact_s3_secret_access_key, not in the URL",
                field="artifact_s3_endpoint",
            )
    if bool(cfg.artifact_s3_access_key_id) != bool(cfg.artifact_s3_secret_access_key):
        missing_one = (
            "artifact_s3_secret_access_key"
            if cfg.artifact_s3_access_key_id
            else "artifact_s3_access_key_id"
        )
        raise InputError(
            "set both the access key id and the secret access key, or neither (boto3's own "
            "chain: AWS_ACCESS_KEY_ID, profiles, roles)",
            field=missing_one,
        )


def open_artifact_store(cfg: ServiceConfig) -> ArtifactStore:
    """Return the artifact storage the settings name (a local folder by default).

    Raises
    ------
    InputError
        When the settings are invalid or the local folder cannot be created.
    """
    check_artifact_settings(cfg)
    if cfg.artifact_s3_bucket:
        return S3ArtifactStore(
            cfg.artifact_s3_bucket,
            prefix=cfg.artifact_s3_prefix,
            endpoint_url=cfg.artifact_s3_endpoint,
            region=cfg.artifact_s3_region,
            access_key_id=cfg.artifact_s3_access_key_id,
            secret_access_key=cfg.artifact_s3_secret_access_key,
        )
    return LocalArtifactStore(cfg.artifact_root or cfg.data_dir / "artifacts")


# --- access -----------------------------------------------------------------------------------


class _RefusedError(Exception):
    """An answer other than MLflow's codes allow (413), carried out of the handler."""

    def __init__(self, status: int, message: str, field: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


async def _owner(request: web.Request, who: Principal, path: str, role: str) -> str:
    """Check ``path`` and the caller's ``role`` on its experiment; return the project.

    Raises
    ------
    MlflowError
        ``INVALID_PARAMETER_VALUE`` for a bad path, ``RESOURCE_DOES_NOT_EXIST`` for an
        experiment that does not exist or belongs to another project, ``PERMISSION_DENIED``
        for a role too weak in the caller's own project.
    """
    try:
        parts = split_path(path)
    except ArtifactPathError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message, "path") from None
    experiment_id = parts[0]
    what = f"experiment {experiment_id!r} of artifact path {path!r}"
    project = await request.app[TRACKING].experiment_project(experiment_id)
    if project is None or not who.can_see(project):
        raise missing(what)
    # From here on the audit names the experiment's project (the caller may see it).
    request[AUDIT_PROJECT] = project
    try:
        who.require(project, role, "artifacts")
    except ApiError as exc:
        raise MlflowError("PERMISSION_DENIED", exc.message) from None
    return project


def _printable(text: str, limit: int = 2048) -> str:
    """``text`` with control characters, NUL and lone surrogates escaped, for the audit log.

    Refused paths may hold any of them, and PostgreSQL stores none in text or JSON.
    """
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in safe)[:limit]


Op = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def _view(write: bool, op: Op) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate, run ``op``, answer MLflow's errors, and audit writes (refused too)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        who: Principal | None = None
        try:
            who = caller(request)
            if write and who.run_id:
                # A job's token writes to the job's run only (cplat.ml.tracking.jobs).
                target = await run_scope_target(request.path, {}, request.app[TRACKING])
                try:
                    check_run_scope(who.run_id, target, f"artifact path {request.path!r}")
                except TrackingError as exc:
                    raise MlflowError(exc.code, exc.message) from None
            resp = await op(request, who)
        except MlflowError as exc:
            resp = error_response(exc.code, exc.message, exc.field)
        except _RefusedError as exc:
            resp = error_response("INVALID_PARAMETER_VALUE", exc.message, exc.field)
            resp.set_status(exc.status)
        if write and who is not None:
            # Another project's refusal is logged under the caller's project: the entry must
            # not tell that project's admins (or anyone reading this one's) what exists.
            entry = audit_entry(
                request,
                resp.status,
                target=_printable(f"artifact/{request.match_info.get('path', '')}"),
                project=request.get(AUDIT_PROJECT, who.project),
            )
            detail = {**entry.detail, "path": _printable(request.path)}
            await request.app[STORE].append_audit([replace(entry, detail=detail)])
        return resp

    handler.__doc__ = op.__doc__
    handler.__name__ = op.__name__.lstrip("_")
    return handler


# --- the views --------------------------------------------------------------------------------


def _attachment(name: str) -> str:
    """``Content-Disposition`` of a download (RFC 6266; any name, safely quoted)."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _download(request: web.Request, who: Principal) -> web.StreamResponse:
    """Stream one artifact file."""
    path = request.match_info["path"]
    await _owner(request, who, path, "viewer")
    store = request.app[ARTIFACTS]
    try:
        stream = await store.open(path)
    except ArtifactNotFoundError:
        raise missing(f"artifact {path!r}") from None
    except ArtifactPathError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message, "path") from None
    async with stream:
        name = path.rstrip("/").rpartition("/")[2]
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        resp = web.StreamResponse(
            headers={
                "Content-Type": ctype,
                "Content-Disposition": _attachment(name),
                # Served as a file to save, never as a page of this origin.
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox",
                "Cache-Control": "no-cache",
            }
        )
        resp.content_length = stream.size
        await resp.prepare(request)
        async for chunk in stream:
            await resp.write(chunk)
        await resp.write_eof()
    return resp


async def _upload(request: web.Request, who: Principal) -> web.StreamResponse:
    """Store the request body as an artifact file (streamed, capped)."""
    path = request.match_info["path"]
    await _owner(request, who, path, "member")
    limit = request.app[CONFIG].max_artifact_upload
    if request.content_length is not None and request.content_length > limit:
        raise _RefusedError(
            413,
            f"the artifact is {request.content_length} bytes; uploads are limited to {limit} "
            "bytes (the max_artifact_upload setting)",
            "body",
        )
    try:
        await request.app[ARTIFACTS].put(path, request.content.iter_chunked(CHUNK), limit)
    except ArtifactTooLargeError:
        raise _RefusedError(
            413,
            f"the artifact is larger than the upload limit of {limit} bytes (the "
            "max_artifact_upload setting)",
            "body",
        ) from None
    except ArtifactPathError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message, "path") from None
    except (ConnectionResetError, ClientPayloadError):
        # The client went away mid-upload: nothing was stored. Answered (to no one) rather
        # than raised, so that the refused write is audited and no traceback is logged.
        raise MlflowError(
            "INVALID_PARAMETER_VALUE", "the upload ended before its body was complete", "body"
        ) from None
    return web.json_response({})


async def _delete(request: web.Request, who: Principal) -> web.StreamResponse:
    """Delete an artifact file or folder."""
    path = request.match_info["path"]
    await _owner(request, who, path, "member")
    try:
        await request.app[ARTIFACTS].delete(path)
    except ArtifactPathError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message, "path") from None
    return web.json_response({})


async def _list(request: web.Request, who: Principal) -> web.StreamResponse:
    """List an artifact folder."""
    path = request.query.get("path", "")
    if not path.strip("/"):
        raise MlflowError(
            "INVALID_PARAMETER_VALUE",
            "path must name a folder inside an experiment (<experiment_id>/...)",
            "path",
        )
    await _owner(request, who, path, "viewer")
    try:
        entries = await request.app[ARTIFACTS].list_dir(path)
    except ArtifactPathError as exc:
        raise MlflowError("INVALID_PARAMETER_VALUE", exc.message, "path") from None
    files = [
        {"path": e.name, "is_dir": True}
        if e.is_dir
        else {"path": e.name, "is_dir": False, "file_size": e.size}
        for e in entries
    ]
    return web.json_response({"files": files})


download_artifact = _view(False, _download)
upload_artifact = _view(True, _upload)
delete_artifact = _view(True, _delete)
list_artifacts = _view(False, _list)

#: ``(method, path, handler)`` of the proxy, for the app's router.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", ROOT, list_artifacts),
    ("GET", ROOT + "/{path:.+}", download_artifact),
    ("PUT", ROOT + "/{path:.+}", upload_artifact),
    ("DELETE", ROOT + "/{path:.+}", delete_artifact),
)
