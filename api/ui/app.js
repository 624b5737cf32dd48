// Wharf's status page: reads /api/v1 as the signed-in user, every two
// seconds, and shows what that user may see. No framework, no network
// but this Wharf.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const bytes = (n) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  for (n = Number(n); n >= 1024 && i < u.length - 1; i++) n /= 1024;
  return (i ? n.toFixed(1) : n) + " " + u[i];
};
const when = (t) => (t ? new Date(t).toLocaleTimeString() : "-");

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...opts };
  if (opts.body !== undefined) init.headers["Content-Type"] = "application/json";
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const msg = data?.errors?.[0]?.message || resp.statusText;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return { data, link: resp.headers.get("Link") };
}

// show fills a section, or says why it cannot: a missing right is
// a message, not a failure of the page.
async function show(id, path, render) {
  const body = $(`#${id} .body`);
  try {
    const r = await api(path);
    body.innerHTML = render(r.data, r);
    body.dataset.state = "ok";
  } catch (e) {
    body.dataset.state = e.status === 401 || e.status === 403 ? "denied" : "error";
    body.innerHTML = `<p class="${e.status === 401 || e.status === 403 ? "muted" : "error"}">${esc(e.message)}</p>`;
  }
}

function health(list, kind) {
  if (!list.length) return `<p class="muted">no ${kind} configured</p>`;
  return `<table><tr><th>name</th><th>state</th><th>failures</th><th>rate limit left</th><th>last error</th></tr>` +
    list.map((h) => `<tr data-name="${esc(h.name)}"><td>${esc(h.name)}</td>` +
      `<td class="${h.state === "closed" ? "ok" : "bad"}" data-field="state">${esc(h.state === "closed" ? "healthy" : h.state)}</td>` +
      `<td class="num">${h.consecutiveFailures}</td>` +
      `<td class="num">${h.rateLimitRemaining >= 0 ? `${h.rateLimitRemaining} / ${h.rateLimitLimit}` : "-"}</td>` +
      `<td class="muted">${esc(h.lastError || "")}</td></tr>`).join("") + `</table>`;
}

function chart(minutes) {
  // One bar per minute of the last hour: hits over all reads.
  const w = 6, h = 40, now = Date.now(), start = now - 60 * 60e3;
  let bars = "";
  for (const m of minutes) {
    const total = m.hits + m.misses;
    if (!total) continue;
    const x = Math.floor((new Date(m.start) - start) / 60e3) * w;
    const hh = Math.round((m.hits / total) * h);
    bars += `<rect class="hit" x="${x}" y="${h - hh}" width="${w - 1}" height="${hh}"><title>${when(m.start)}: ${m.hits} hits, ${m.misses} misses</title></rect>`;
    bars += `<rect class="miss" x="${x}" y="0" width="${w - 1}" height="${h - hh}"></rect>`;
  }
  return `<svg class="chart" width="${60 * w}" height="${h}" viewBox="0 0 ${60 * w} ${h}" role="img" aria-label="hit ratio per minute, last hour">${bars}</svg>`;
}

function repos(list, field) {
  if (!list.length) return `<p class="muted">nothing served yet</p>`;
  return `<table><tr><th>repository</th><th>${field}</th></tr>` + list.map((r) =>
    `<tr><td>${esc(r.upstream)}/${esc(r.repository)}</td><td class="num" data-value="${r[field]}">${field === "bytes" ? bytes(r.bytes) : r.pulls}</td></tr>`).join("") + `</table>`;
}

function cache(s) {
  const hits = s.minutes.reduce((a, m) => a + m.hits, 0), misses = s.minutes.reduce((a, m) => a + m.misses, 0);
  const ratio = hits + misses ? ((100 * hits) / (hits + misses)).toFixed(1) + " %" : "-";
  const reps = s.replicas.map((r) => {
    const pct = r.max_size_bytes ? Math.min(100, (100 * r.size_bytes) / r.max_size_bytes) : 0;
    return `<tr data-replica="${esc(r.replica)}"><td>${esc(r.replica || "this replica")}</td>` +
      `<td class="num" data-field="size_bytes" data-value="${r.size_bytes}">${bytes(r.size_bytes)}</td>` +
      `<td class="num" data-field="max_size_bytes" data-value="${r.max_size_bytes}">${r.max_size_bytes ? bytes(r.max_size_bytes) : "unbounded"}</td>` +
      `<td>${r.max_size_bytes ? `<meter min="0" max="100" high="90" value="${pct.toFixed(1)}"></meter>` : ""}</td>` +
      `<td class="num" data-field="blobs" data-value="${r.blobs}">${r.blobs}</td>` +
      `<td class="num" data-field="fills_in_flight" data-value="${r.fills_in_flight}">${r.fills_in_flight}</td></tr>`;
  }).join("");
  const missing = s.unreachable?.length ? `<p class="warn">not answering: ${s.unreachable.map(esc).join(", ")}</p>` : "";
  return `<div class="figures"><div>hit ratio, last hour<b id="hit-ratio" data-hits="${hits}" data-misses="${misses}">${ratio}</b></div>` +
    `<div>${chart(s.minutes)}</div></div>` +
    `<table><tr><th>replica</th><th>size</th><th>max size</th><th></th><th>blobs</th><th>fills</th></tr>${reps}</table>${missing}` +
    `<h3>Most bytes served</h3><div id="top-bytes">${repos(s.top_by_bytes, "bytes")}</div>` +
    `<h3>Most pulls</h3><div id="top-pulls">${repos(s.top_by_pulls, "pulls")}</div>`;
}

// Jobs: newest first, 20 a page, pages followed through the API's Link.
const jobsPage = { stack: [], last: "" };

function jobs(list, r) {
  const next = r.link ? new URL(r.link.match(/<([^>]+)>/)[1], location.href).searchParams.get("last") : "";
  $("#jobs-older").disabled = !next;
  $("#jobs-older").dataset.last = next || "";
  $("#jobs-newer").disabled = !jobsPage.stack.length;
  if (!list.jobs.length) return `<p class="muted">no jobs</p>`;
  return `<table><tr><th>job</th><th>state</th><th>progress</th><th>images</th><th>failed</th><th>rule</th><th>owner</th><th>created</th><th></th></tr>` +
    list.jobs.map((j) => {
      const pct = j.bytes_total ? Math.floor((100 * j.bytes_done) / j.bytes_total) : (j.state === "done" ? 100 : 0);
      const ended = ["done", "failed", "partial", "cancelled"].includes(j.state);
      const mayAct = rights.admin || (rights.prefetch && j.owner && j.owner === meUser);
      const act = !mayAct ? "" : !ended ? `<button data-act="cancel" data-job="${esc(j.id)}">cancel</button>` :
        j.images_failed ? `<button data-act="retry" data-job="${esc(j.id)}">retry failed</button>` : "";
      return `<tr data-job="${esc(j.id)}"><td><a href="#" data-detail="${esc(j.id)}">${esc(j.id)}</a></td>` +
        `<td class="${j.state === "done" ? "ok" : j.state === "failed" || j.state === "partial" ? "bad" : ""}" data-field="state">${esc(j.state)}</td>` +
        `<td><progress max="100" value="${pct}" title="${bytes(j.bytes_done)} of ${bytes(j.bytes_total)}"></progress></td>` +
        `<td class="num" data-field="images_done" data-value="${j.images_done}" data-bytes-done="${j.bytes_done}" data-bytes-total="${j.bytes_total}">${j.images_done} / ${j.images}</td>` +
        `<td class="num" data-field="images_failed">${j.images_failed}</td>` +
        `<td>${esc(j.rule || "")}</td><td>${esc(j.owner || "")}</td><td>${when(j.created)}</td><td>${act}</td></tr>`;
    }).join("") + `</table>` +
    (list.unreachable?.length ? `<p class="warn">not answering: ${list.unreachable.map(esc).join(", ")}</p>` : "");
}

async function jobDetail(id) {
  const el = $("#job-detail");
  try {
    const r = await api(`/api/v1/jobs/${encodeURIComponent(id)}/images?state=failed&n=50`);
    el.innerHTML = `<h3>Failed images of ${esc(id)}</h3>` + (r.data.images.length ?
      `<table><tr><th>image</th><th>error</th></tr>` + r.data.images.map((i) =>
        `<tr><td>${esc(i.source)}</td><td class="error">${esc(i.error)}</td></tr>`).join("") + `</table>` :
      `<p class="muted">none failed</p>`);
  } catch (e) {
    el.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function rules(list) {
  if (!list.rules.length) return `<p class="muted">no replication rules</p>`;
  return `<table><tr><th>rule</th><th>target</th><th>owner</th><th>next run</th><th>pending</th><th>lag</th><th>last runs</th></tr>` +
    list.rules.map((r) => `<tr data-rule="${esc(r.name)}"><td>${esc(r.name)}</td><td>${esc(r.target)}</td><td>${esc(r.replica || "this replica")}</td>` +
      `<td>${when(r.next_run)}</td><td class="num" data-field="pending">${r.pending}</td><td class="num">${r.lag_seconds ? r.lag_seconds.toFixed(0) + " s" : "-"}</td>` +
      `<td>${(r.last_runs || []).map((x) => `${esc(x.trigger)}: ${esc(x.state)} (${x.images}) ${when(x.at)}`).join("<br>")}</td></tr>`).join("") + `</table>`;
}

// rights are the caller's, from /api/v1/me: a section the caller may not
// see is not asked for, and says which right it needs.
let rights = null, meUser = "";

function denied(id, right) {
  const body = $(`#${id} .body`);
  body.dataset.state = "denied";
  body.innerHTML = `<p class="muted">needs the ${right} right</p>`;
}

async function refresh() {
  if (!rights) {
    try {
      const me = (await api("/api/v1/me")).data;
      rights = me.rights;
      meUser = me.user || "";
      $("#user").textContent = me.user || (me.token ? "API token" : "local");
    } catch (e) {
      document.querySelectorAll("section .body").forEach((b) => { b.innerHTML = `<p class="error">${esc(e.message)}</p>`; });
      return;
    }
  }
  const page = `/api/v1/jobs?n=20${jobsPage.last ? "&last=" + encodeURIComponent(jobsPage.last) : ""}`;
  const admin = rights.admin, seesJobs = rights.jobs || rights.prefetch;
  await Promise.all([
    show("cache", "/api/v1/cache", cache),
    admin ? show("upstreams", "/api/v1/upstreams", (d) => health(d.upstreams, "upstreams")) : denied("upstreams", "admin"),
    admin ? show("targets", "/api/v1/targets", (d) => health(d.targets, "targets")) : denied("targets", "admin"),
    seesJobs ? show("jobs", page, jobs) : denied("jobs", "jobs or prefetch"),
    rights.jobs ? show("rules", "/api/v1/replication", rules) : denied("rules", "jobs"),
  ]);
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

document.addEventListener("click", async (ev) => {
  const t = ev.target;
  if (t.dataset.detail) {
    ev.preventDefault();
    jobDetail(t.dataset.detail);
  } else if (t.dataset.act) {
    const id = encodeURIComponent(t.dataset.job);
    try {
      if (t.dataset.act === "cancel") await api(`/api/v1/jobs/${id}`, { method: "DELETE" });
      else await api(`/api/v1/jobs/${id}/retry`, { method: "POST", body: "" });
    } catch (e) {
      $("#job-detail").innerHTML = `<p class="error">${esc(e.message)}</p>`;
    }
    refresh();
  } else if (t.id === "jobs-older") {
    jobsPage.stack.push(jobsPage.last);
    jobsPage.last = t.dataset.last;
    refresh();
  } else if (t.id === "jobs-newer") {
    jobsPage.last = jobsPage.stack.pop() || "";
    refresh();
  }
});

refresh();
setInterval(refresh, 2000);
