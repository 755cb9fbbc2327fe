"""``/openapi.json`` built from the route table, and a page rendering it."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from cplat_server import schemas as s
from cplat_server.routes import ROUTES

_REASONS = {
    400: "Invalid input (the field is named)",
    401: "Missing, forged or expired token",
    403: "Role too weak",
    404: "Not found (or another project's)",
    409: "Wrong state",
    413: "Body too large",
    415: "Body is not JSON",
    429: "Over an operator limit (streams per user, submissions per token); see Retry-After",
}
_PATH_PARAMS = {
    "id": {"type": "integer", "minimum": 1, "maximum": s.MAX_INT},
    "name": {"type": "string", "pattern": s.NAME},
    "project": {"type": "string", "pattern": s.NAME},
}


def spec(version: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the service."""
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower())}",
            "tags": [r.tag],
            "security": [{"bearer": []}],
        }
        params = [
            {"name": p, "in": "path", "required": True, "schema": _PATH_PARAMS[p]}
            for p in re.findall(r"{(\w+)}", r.path)
        ]
        params += [
            {"name": q.name, "in": where, "required": False, "schema": q.schema}
            | ({"description": q.description} if q.description else {})
            for where, qs in (("query", r.query), ("header", r.headers))
            for q in qs
        ]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": r.body}},
            }
        answers: dict[str, Any] = {}
        if r.status == 204:
            answers["204"] = {"description": "Done"}
        elif r.content == "application/json":
            answers[str(r.status)] = {
                "description": "OK",
                "content": {"application/json": {"schema": r.answer or {"type": "object"}}},
            }
        else:
            answers[str(r.status)] = {
                "description": "OK",
                "content": {r.content: {"schema": {"type": "string"}}},
            }
        for code in r.also:
            answers[str(code)] = {
                "description": "Created" if code == 201 else "OK",
                "content": {"application/json": {"schema": r.answer or {"type": "object"}}},
            }
        for code in r.errors:
            answers[str(code)] = {
                "description": _REASONS[code],
                "content": {"application/json": {"schema": s.ERROR}},
            }
        op["responses"] = answers
        paths.setdefault(r.path, {})[r.method.lower()] = op
    plain = {
        "/healthz": ("Liveness and store health", {"type": "object"}, "application/json"),
        "/metrics": ("Prometheus metrics", {"type": "string"}, "text/plain"),
        "/openapi.json": ("This document", {"type": "object"}, "application/json"),
        "/docs": ("This document, rendered", {"type": "string"}, "text/html"),
    }
    for path, (summary, schema, ctype) in plain.items():
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": f"get_{path.strip('/').replace('.', '_')}",
                "tags": ["service"],
                "security": [],
                "responses": {"200": {"description": "OK", "content": {ctype: {"schema": schema}}}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cplat",
            "version": version,
            "description": "The cplat control plane: jobs, nodes and their agents, pools, "
            "quotas, the cluster's state and the audit log. Every /v1 call needs a bearer "
            "token (`cplat token create`). Errors are "
            '`{"error": {"code", "message", "field"}}`. Bodies are UTF-8 JSON nested at '
            f"most {s.MAX_DEPTH} levels deep; anywhere in them, text must be valid Unicode "
            "without NUL (no lone surrogates) and numbers finite (no NaN or Infinity), or the "
            "answer is 400 naming the field by its dotted path. Ids in paths and queries are "
            "ASCII digits.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
        "paths": paths,
    }


def docs_page() -> str:
    """Return a self-contained HTML page listing every operation with its schemas."""
    doc = spec("")
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(
                f"<section><h3><code>{method.upper()} {escape(path)}</code></h3>"
                f"<p>{escape(op['summary'])}</p>"
                + (f"<p>Parameters: <code>{escape(params)}</code></p>" if params else "")
                + (
                    "<details><summary>Request body</summary><pre>"
                    f"{escape(json.dumps(body.get('schema'), indent=2))}</pre></details>"
                    if body
                    else ""
                )
                + "<p>Answers: "
                + ", ".join(
                    f"<b>{code}</b> {escape(a['description'])}"
                    for code, a in op["responses"].items()
                )
                + "</p></section>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cplat API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "pre{background:#f4f4f4;padding:1em;overflow:auto}</style></head><body>"
        f"<h1>cplat API</h1><p>{escape(doc['info']['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"
        + "".join(rows)
        + "</body></html>"
    )
