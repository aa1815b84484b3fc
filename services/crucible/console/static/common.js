// Shared helpers of the console pages: the session (CSRF token), JSON calls, safe DOM building, formatting.
// Job data is only ever put in the page with textContent / text nodes, never as HTML.
"use strict";

const Console = (() => {
  let session = null;

  async function loadSession() {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    session = await r.json();
    return session;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status; this.code = e.code || ""; this.reason = e.reason || ""; this.fields = e.fields || [];
    }
  }

  async function api(path, { method = "GET", json, form } = {}) {
    if (!session) await loadSession();
    const headers = {};
    let body;
    if (method !== "GET") headers["X-CSRF-Token"] = session.csrf_token;
    if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    if (form !== undefined) body = form;
    const r = await fetch(path, { method, headers, body, credentials: "same-origin" });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401 && location.pathname !== "/login") {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  // el("td", {class: "num"}, "text", childNode, ...): strings become text nodes (never parsed as HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  // One box per error, each sentence once: a field violation the message already says is not repeated.
  function showError(container, err) {
    const message = err.message || String(err);
    const box = el("div", { class: "error", role: "alert" }, message);
    if (err.reason) box.appendChild(el("span", { class: "muted" }, ` [${err.reason}]`));
    for (const f of err.fields || []) {
      if (!message.includes(f.description)) box.appendChild(el("div", {}, `${f.field}: ${f.description}`));
    }
    clear(container).appendChild(box);
  }

  function usd(v, digits = 4) {
    if (v === null || v === undefined) return "-";
    const n = Number(v);
    return "$" + (n !== 0 && Math.abs(n) < 10 ** -digits ? n.toPrecision(2) : n.toFixed(digits));
  }
  function gib(bytes) {
    return bytes >= 2 ** 30 ? (bytes / 2 ** 30).toFixed(2) + " GiB" : (bytes / 2 ** 20).toFixed(1) + " MiB";
  }
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "-");
  const short = (s) => (s || "").replace(/^.*_/, "");
  function hours(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 120) return seconds.toFixed(0) + " s";
    if (seconds < 7200) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(2) + " h";
  }
  function stateBadge(state) { return el("span", { class: "state state-" + state }, state || "-"); }

  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  // "120/300 loss 1.2345 · ETA 41 s" while running; "final step 299 of 300 loss ..." once the job has ended (no ETA).
  function progressText(p, state) {
    if (!p || p.step === null || p.step === undefined) return "-";
    const ended = TERMINAL.has(state);
    let text = ended ? (p.total_steps ? `final step ${p.step} of ${p.total_steps}` : `final step ${p.step}`)
      : (p.total_steps ? `${p.step}/${p.total_steps}` : `step ${p.step}`);
    const loss = p.metrics && (p.metrics.loss ?? p.metrics.train_loss);
    if (loss !== undefined) text += ` loss ${Number(loss).toFixed(4)}`;
    if (!ended && p.eta) text += ` · ETA ${hours(p.eta)}`;
    return text;
  }

  // Why a job ended badly: the reason of its last transition (e.g. "exit status 1"), "" otherwise.
  function failureReason(j) {
    if (j.state !== "failed" && j.state !== "cancelled") return "";
    const last = (j.transitions || [])[j.transitions.length - 1];
    return (last && last.reason) || "";
  }

  function header(active) {
    const nav = el("nav", {},
      ["providers", "submit", "jobs", "budgets"].map((p) =>
        el("a", { href: "/" + p, class: p === active ? "active" : "" }, p[0].toUpperCase() + p.slice(1))));
    const right = el("span", { class: "right" });
    const bar = el("header", {}, el("span", { class: "brand" }, "Crucible console"), nav, right);
    document.body.prepend(bar);
    loadSession().then((s) => {
      if (s.logged_in) {
        right.appendChild(el("button", { onclick: async () => { await api("/api/logout", { method: "POST" });
          location.href = "/login"; } }, "Log out"));
      }
    });
  }

  function params() { return new URLSearchParams(location.search); }

  // A Delete button for an ended job: the first click asks, the second deletes (DeleteJob); then `done()`.
  function deleteButton(button, jobId, errorBox, done) {
    let armed = false;
    button.addEventListener("click", async (ev) => {
      ev.stopPropagation();
      if (!armed) { armed = true; button.textContent = "Confirm delete"; button.classList.add("danger"); return; }
      button.disabled = true;
      try { await api(`/api/jobs/${encodeURIComponent(jobId)}/delete`, { method: "POST" }); done(); }
      catch (err) { showError(errorBox, err); button.disabled = false; }
    });
    return button;
  }

  return { api, el, clear, showError, usd, gib, when, hours, short, stateBadge, progressText, failureReason, header, params,
           loadSession, deleteButton, TERMINAL, get session() { return session; } };
})();
