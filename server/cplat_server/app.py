"""``create_app(config)``: the aiohttp application of ``cplat serve``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cplat.config import load_scheduler_config
from cplat.errors import InputError
from cplat.ml.tracking.jobs import run_claim
from cplat.runtime.live import LiveCluster
from cplat.store import open_store
from cplat.store.base import JobRecord, Store
from cplat_server import auth
from cplat_server.config import ServiceConfig, jwt_secret
from cplat_server.errors import ApiError, error_response
from cplat_server.job_runs import job_runs_context
from cplat_server.keys import (
    AUDITED,
    CONFIG,
    CONTROLLER,
    METRICS,
    PRINCIPAL,
    SECRET,
    STORE,
    audit_entry,
    json_response,
    route_name,
)
from cplat_server.limits import LIMITS, Limits
from cplat_server.loop import Controller
from cplat_server.metrics import Metrics
from cplat_server.openapi import docs_page, spec
from cplat_server.routes import MLFLOW_ROUTES, PAGES, ROUTES, UNAUDITED
from cplat_server.views.mlflow_compat.artifacts import ARTIFACTS, open_artifact_store
from cplat_server.views.mlflow_compat.routes import tracking_context
from cplat_server.views.studies import studies_context
from cplat_server.views.tokens import REVOKED, keep_revocations_fresh, load_revocations

log = logging.getLogger("cplat.server")
VERSION = "0.1.0"
_MUTATIONS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
#: Headers of an HTTP exception that describe its own body, replaced by the JSON error's.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors for everything, metrics for every answer."""
    started = time.perf_counter()
    metrics = request.app[METRICS]
    route = route_name(request)
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = exc.response()
    except web.HTTPRequestEntityTooLarge as exc:
        resp = error_response(413, "too_large", exc.text or "body too large", "body")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        # Keep what the exception says beyond its body: a 405's Allow, a 429's Retry-After.
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        resp = error_response(exc.status, code, exc.reason, headers=kept)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        resp = error_response(500, "internal", "internal error; the server log has details")
    metrics.requests.labels(request.method, route, str(resp.status)).inc()
    metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /v1 call needs a valid token; every mutation goes to the audit log."""
    if not request.path.startswith("/v1/") and request.path != "/v1":
        return await handler(request)
    who = auth.verify(
        request.app[SECRET], request.headers.get("Authorization"), request.app[REVOKED]
    )
    request[PRINCIPAL] = who
    route = route_name(request)
    if request.method == "POST" and route == "/v1/jobs" and not who.cluster_admin:
        # Before the audit entry: a flood of refused submissions must not become a flood of
        # durable writes.
        request.app[LIMITS].admit_submission(request.headers["Authorization"])
    if request.method not in _MUTATIONS or route in UNAUDITED or route == "unmatched":
        return await handler(request)
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if not request.get(AUDITED, False):
            # Durable before the answer leaves, like the change it records.
            await request.app[STORE].append_audit([audit_entry(request, status)])


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the store answers and the loop runs."""
    ctrl = request.app[CONTROLLER]
    try:
        await asyncio.wait_for(request.app[STORE].list_pools(), timeout=5)
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        return json_response({"status": "unhealthy", "store": str(exc)}, status=503)
    return json_response(
        {
            "status": "ok",
            "version": VERSION,
            "uptime": time.time() - ctrl.started,
            "nodes": len(ctrl.nodes),
        }
    )


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text format (cluster gauges refreshed at scrape time)."""
    if CONTROLLER in request.app:
        request.app[CONTROLLER].cluster_summary()
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_view(request: web.Request) -> web.Response:
    """Serve the OpenAPI document."""
    return json_response(spec(VERSION))


async def docs_view(request: web.Request) -> web.Response:
    """Serve the OpenAPI document as a page."""
    return web.Response(text=docs_page(), content_type="text/html")


def _scheduler_parts(cfg: ServiceConfig) -> LiveCluster:
    if cfg.profile:
        sc = load_scheduler_config(cfg.profile)
        if sc.quotas is not None:
            raise InputError(
                "quotas of the live service are set through /v1/quotas, not the profile",
                source=cfg.profile,
                field="quota",
            )
        return LiveCluster.from_config(sc)
    return LiveCluster.from_config(None)


def create_app(cfg: ServiceConfig, store: Store | None = None) -> web.Application:
    """Build the service.

    Parameters
    ----------
    cfg
        Settings.
    store
        An open store to use (tests); by default the app opens ``cfg.store_url`` on start
        and closes it on shutdown.
    """
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=cfg.max_body
    )
    app[CONFIG] = cfg
    app[METRICS] = Metrics()
    app[LIMITS] = Limits(app[METRICS], cfg.max_streams_per_user, cfg.submit_rate, cfg.submit_burst)
    app[SECRET] = jwt_secret(cfg)
    app[REVOKED] = auth.Revocations()
    app[ARTIFACTS] = open_artifact_store(cfg)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
    app.router.add_get("/docs", docs_view)
    for path, page in PAGES:
        app.router.add_get(path, page)
    for method, path, handler in MLFLOW_ROUTES:
        app.router.add_route(method, path, handler)
    cluster = _scheduler_parts(cfg)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own = store is None
        st = store if store is not None else await open_store(cfg.store_url)
        app[STORE] = st

        # Before the first request: a restarted server must not accept a revoked token even
        # for the moment until its first refresh.
        await load_revocations(st, app[REVOKED])

        def job_token(rec: JobRecord, runtime: int) -> str:
            # Bounded by the job's run time, the service's maximum, and the token that
            # submitted the job (whose id it carries, to be revoked with it).
            now = time.time()
            exp = auth.job_token_expiry(now, runtime, rec.token_expires_at, cfg.max_job_token_ttl)
            return auth.create_job_token(
                app[SECRET],
                rec.user,
                rec.project,
                exp,
                parent_id=rec.token_id,
                now=now,
                # A job with a tracking run gets a token that writes to that run only.
                run_id=run_claim(rec.spec),
            )

        ctrl = Controller(
            st,
            cluster,
            app[METRICS],
            job_token,
            node_timeout=cfg.node_timeout,
            tick=cfg.tick,
            server_url=cfg.server_url,
            lease=cfg.lease,
            grace=cfg.grace,
        )
        app[CONTROLLER] = ctrl
        await ctrl.start()
        refresher = asyncio.create_task(
            keep_revocations_fresh(st, app[REVOKED]), name="cplat-revocations"
        )
        agent_task = _start_local_agent(cfg, app[SECRET]) if cfg.local_agent else None
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if agent_task is not None:
                agent_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await agent_task
            await ctrl.stop()
            if own:
                await st.close()

    async def on_shutdown(app: web.Application) -> None:
        if CONTROLLER in app:
            app[CONTROLLER].begin_shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(tracking_context)
    app.cleanup_ctx.append(job_runs_context)
    app.cleanup_ctx.append(studies_context)
    app.on_shutdown.append(on_shutdown)
    return app


def _own_certificate(cfg: ServiceConfig) -> aiohttp.Fingerprint | None:
    """How the local agent trusts this server over HTTPS: by its exact certificate.

    The agent connects to its own process (often as 127.0.0.1, a name the certificate need
    not carry), so it pins the certificate's SHA-256 instead of checking names and issuers.
    """
    if not cfg.tls_cert:
        return None
    pem = Path(cfg.tls_cert).read_text(encoding="ascii", errors="replace")
    end = "-----END CERTIFICATE-----"
    der = ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])
    return aiohttp.Fingerprint(hashlib.sha256(der).digest())


def _start_local_agent(cfg: ServiceConfig, secret: str) -> asyncio.Task[None]:
    """Run the agent of this machine in the server's loop.

    It is cancelled with the server (its tasks are stopped; their exits are reported by the
    next start) and leaves signal handling to the server.
    """
    from cplat.runtime.agent import Agent

    token = auth.create_token(
        secret, "local-agent", "system", "admin", cluster_admin=True, ttl=10 * 365 * 86400
    )
    agent = Agent(
        cfg.server_url,
        token,
        work_dir=cfg.data_dir / "agent",
        stop_grace=cfg.grace,
        tls=_own_certificate(cfg),
        task_user=cfg.task_user or None,
    )
    task = asyncio.create_task(agent.run(), name="cplat-local-agent")
    task.add_done_callback(_report_agent_end)
    return task


def _report_agent_end(task: asyncio.Task[None]) -> None:
    # Nobody awaits the local agent until shutdown: a failed start (say, task isolation the
    # machine cannot give) must still reach the operator.
    if not task.cancelled() and task.exception() is not None:
        log.error("the local agent stopped: %s", task.exception())
