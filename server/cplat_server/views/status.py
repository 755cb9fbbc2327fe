"""``GET /``: a small status page (cluster, queue, recent jobs) for people with a browser.

The page is static: it carries no data, so an unauthenticated caller learns nothing from it,
not even another project's job names. A small inline script asks for a token, keeps it in the
tab's ``sessionStorage`` (gone when the tab closes, never sent anywhere but this server's
``Authorization`` header) and reads ``/v1/cluster`` and ``/v1/jobs`` with it, so the API's own
project scoping decides what each person sees. ``/#token=...`` seeds the token for scripts (a
fragment never reaches the server or its logs) and is wiped from the address bar at once.

The Content-Security-Policy allows only this page's own script and style (by hash) and
requests to this origin: no external scripts, fonts, images or frames.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:70em;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
#error{color:#a00}.muted{color:#777}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#555}dd{margin:0}
"""

# Rendering uses textContent only (never innerHTML): job names and reasons are user input.
_SCRIPT = """
"use strict";
const KEY = "cplat-token";
const $ = (id) => document.getElementById(id);
const m = /^#token=([^&]+)$/.exec(location.hash);
if (m) {
  sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname);
}
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}
function when(t) {
  return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-";
}
function pct(a, b) { return b ? (100 * a / b).toFixed(1) + " %" : "-"; }
async function api(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + sessionStorage.getItem(KEY)},
                               cache: "no-store"});
  if (r.status === 401) throw new Error("the token was refused (expired, revoked or forged)");
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}
function fill(tbody, jobs, cols) {
  tbody.replaceChildren();
  for (const j of jobs) {
    const tr = document.createElement("tr");
    for (const [key, cls] of cols) cell(tr, key(j), cls);
    tbody.appendChild(tr);
  }
  if (!jobs.length) {
    const tr = document.createElement("tr");
    cell(tr, "none", "muted");
    tbody.appendChild(tr);
  }
}
async function recentJobs() {
  // /v1/jobs pages in ascending id order: follow the cursor (a bounded number of pages) and
  // keep the newest ones.
  let cursor = null, jobs = [];
  for (let page = 0; page < 20; page++) {
    const q = "/v1/jobs?limit=1000" + (cursor ? "&cursor=" + cursor : "");
    const data = await api(q);
    jobs = jobs.concat(data.jobs).slice(-20);
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return jobs.reverse();
}
async function refresh() {
  if (!sessionStorage.getItem(KEY)) {
    $("login").hidden = false;
    $("data").hidden = true;
    return;
  }
  try {
    const [c, queue, recent] = await Promise.all(
      [api("/v1/cluster"), api("/v1/jobs?state=PENDING&limit=100"), recentJobs()]);
    const cap = c.capacity, alloc = c.allocated;
    const facts = {
      "nodes": c.nodes.total + " (" + c.nodes.up + " up, " + c.nodes.cordoned + " cordoned, " +
               c.nodes.draining + " draining, " + c.nodes.down + " down)",
      "GPUs": c.gpus.total + " (" + c.gpus.unhealthy + " unhealthy, " + c.gpus.mig_mode +
              " in MIG mode)",
      "CPU allocated": (alloc.cpu_milli / 1000) + " of " + (cap.cpu_milli / 1000) +
                       " cores (" + pct(alloc.cpu_milli, cap.cpu_milli) + ")",
      "memory allocated": alloc.memory_mib + " of " + cap.memory_mib + " MiB (" +
                          pct(alloc.memory_mib, cap.memory_mib) + ")",
      "GPU allocated": (alloc.gpu_milli / 1000) + " of " + (cap.gpu_milli / 1000) + " (" +
                       pct(alloc.gpu_milli, cap.gpu_milli) + ")",
      "jobs": c.jobs.pending + " pending, " + c.jobs.running + " running",
    };
    const dl = $("cluster");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(facts)) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      dd.dataset.fact = k;
      dl.append(dt, dd);
    }
    fill($("queue"), queue.jobs, [[(j) => j.id, "n"], [(j) => j.name], [(j) => j.project],
                                  [(j) => j.user], [(j) => when(j.submitted_at)],
                                  [(j) => j.reason]]);
    fill($("recent"), recent, [[(j) => j.id, "n"], [(j) => j.name], [(j) => j.project],
                               [(j) => j.state], [(j) => when(j.submitted_at)]]);
    $("updated").textContent = "updated " + when(Date.now() / 1000);
    $("error").textContent = "";
    $("login").hidden = true;
    $("data").hidden = false;
  } catch (e) {
    $("error").textContent = String(e.message || e);
  }
}
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); refresh(); });
refresh();
setInterval(refresh, 10000);
"""

_BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cplat status</title><style>{style}</style></head>
<body><h1>cplat status</h1>
<p class="muted">Data comes from the API with your token, which stays in this browser tab.
Get one with <code>cplat token create</code>. The API itself: <a href="/docs">/docs</a>.</p>
<form id="login" hidden><label>Token <input id="token" type="password" autocomplete="off"
 size="60"></label> <button>Show status</button></form>
<p id="error" role="alert"></p>
<div id="data" hidden>
<p><span id="updated" class="muted"></span> <button id="forget" type="button">Forget token</button>
</p>
<h2>Cluster</h2><dl id="cluster"></dl>
<h2>Queue (pending jobs)</h2>
<table><thead><tr><th class="n">id</th><th>name</th><th>project</th><th>user</th>
<th>submitted</th><th>why waiting</th></tr></thead><tbody id="queue"></tbody></table>
<h2>Recent jobs</h2>
<table><thead><tr><th class="n">id</th><th>name</th><th>project</th><th>state</th>
<th>submitted</th></tr></thead><tbody id="recent"></tbody></table>
</div>
<script>{script}</script></body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = _BODY.replace("{style}", _STYLE).replace("{script}", _SCRIPT)
#: Only this page's own script and style run; fetches go to this origin alone.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def page(request: web.Request) -> web.Response:
    """``GET /``: the status page (static HTML; its script reads the API with a token)."""
    return web.Response(text=PAGE, content_type="text/html", headers=_HEADERS)
