// Job page: live state, timeline and cost from WatchJob (SSE), every progress point from ListJobProgress drawn with
// uPlot, live logs (follow, search, stdout/stderr) from StreamJobLogs (SSE), artifacts, cancel.
// Everything the job produced is shown with textContent: a job printing HTML shows it as text.
"use strict";
(() => {
  const { api, el, clear, showError, usd, when, stateBadge, header, loadSession } = Console;
  header("jobs");
  const jobId = decodeURIComponent(location.pathname.split("/").pop());
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const HIDDEN_BY_DEFAULT = new Set(["iter_time_ms", "mfu_percent"]);
  const MAX_LOG_CHARS = 2_000_000;
  document.getElementById("job-id").textContent = jobId;
  document.title = jobId + " · Crucible console";

  // ---- chart --------------------------------------------------------------------------------------------------
  const series = new Map();  // metric -> Map(step -> value)
  const shown = new Map();   // metric -> bool
  let pointCount = 0, plot = null, plotKeys = "", drawPending = false;
  const chartBox = document.getElementById("chart");

  loadSession().then((s) => {
    if (!s.chart_available || typeof window.uPlot === "undefined") {
      chartBox.appendChild(el("div", { class: "notice", id: "chart-missing" },
        "The chart library (uPlot) was not built into this installation: run `make console-assets` (npm) and reload. ",
        "Progress points are still counted below."));
    }
  });

  function addPoints(points) {
    for (const p of points) {
      for (const [k, v] of Object.entries(p.metrics || {})) {
        if (!series.has(k)) { series.set(k, new Map()); shown.set(k, !HIDDEN_BY_DEFAULT.has(k)); addToggle(k); }
        series.get(k).set(Number(p.step), v);
      }
    }
    pointCount += points.length;
    document.getElementById("point-count").textContent = `${pointCount} points`;
    document.getElementById("point-count").setAttribute("data-points", String(pointCount));
    scheduleDraw();
  }

  function addToggle(k) {
    const cb = el("input", { type: "checkbox", "data-metric": k, checked: shown.get(k),
      onchange: (ev) => { shown.set(k, ev.target.checked); plotKeys = ""; scheduleDraw(); } });
    document.getElementById("metric-toggles").appendChild(el("label", {}, cb, k));
  }

  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  const COLORS = ["#2f5fd0", "#c23b32", "#1f8a4c", "#b7791f", "#7a3fc2", "#0f8a94", "#555"];
  function draw() {
    if (typeof window.uPlot === "undefined") return;
    const keys = [...series.keys()].filter((k) => shown.get(k));
    const steps = [...new Set(keys.flatMap((k) => [...series.get(k).keys()]))].sort((a, b) => a - b);
    const data = [steps, ...keys.map((k) => steps.map((s) => (series.get(k).has(s) ? series.get(k).get(s) : null)))];
    const signature = keys.join("|");
    if (!plot || signature !== plotKeys) {
      if (plot) plot.destroy();
      plot = new window.uPlot({
        width: Math.max(320, chartBox.clientWidth || 560), height: 280,
        scales: { x: { time: false } }, axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length], width: 2,
          spanGaps: true, points: { show: steps.length < 60 } }))],
      }, data, chartBox);
      plotKeys = signature;
    } else {
      plot.setData(data);
    }
  }

  // ---- job state --------------------------------------------------------------------------------------------
  let job = null, budgetsLoaded = false, artifactsLoadedFor = "";

  function renderJob(j) {
    job = j;
    document.getElementById("job-name").textContent = j.spec.display_name || "";
    clear(document.getElementById("job-state")).appendChild(stateBadge(j.state));
    document.getElementById("job-state").setAttribute("data-state", j.state);
    document.getElementById("cancel").disabled = TERMINAL.has(j.state) || j.state === "cancelling";
    document.getElementById("delete").classList.toggle("hidden", !TERMINAL.has(j.state));
    const o = j.offer || {};
    document.getElementById("job-where").textContent =
      `${j.provider || "no provider yet"} · ${o.offer_id || "-"} · created ${when(j.create_time)}` +
      (j.spec.budget_scope ? ` · scope ${j.spec.budget_scope}` : "");
    const tl = clear(document.getElementById("timeline"));
    for (const t of j.transitions) {
      tl.appendChild(el("li", {}, el("b", {}, t.to_state), " ", el("span", { class: "muted" }, when(t.time)),
        el("div", {}, t.reason)));
    }
    document.getElementById("progress-line").textContent = Console.progressText(j.progress || {}, j.state);
    document.getElementById("job-reason").textContent = Console.failureReason(j);
    document.getElementById("job-reason").classList.toggle("muted", j.state !== "failed");
    renderCost(j);
    if (!budgetsLoaded) { budgetsLoaded = true; loadBudget(j); }
    if (TERMINAL.has(j.state) && artifactsLoadedFor !== j.state) { artifactsLoadedFor = j.state; loadArtifacts(); }
  }

  let budget = null;
  function renderCost(j) {
    const priced = j.offer && j.offer.price_source && !j.offer.price_source.startsWith("unknown");
    const spent = j.cost ? j.cost.spent_usd : 0, est = j.cost ? j.cost.estimated_usd : 0;
    document.getElementById("spent").textContent = priced ? usd(spent, 6) : "unknown";
    document.getElementById("estimated").textContent = priced ? usd(est, 6) : "unknown";
    const limit = budget ? budget.limit_usd : 0;
    const scale = Math.max(spent, est, limit, 1e-9) * 1.05;
    const meter = document.getElementById("meter");
    meter.querySelector(".spent").style.width = ((spent / scale) * 100).toFixed(2) + "%";
    meter.querySelector(".estimate").style.left = ((est / scale) * 100).toFixed(2) + "%";
    const mark = meter.querySelector(".budget");
    mark.classList.toggle("hidden", !budget);
    if (budget) mark.style.left = ((limit / scale) * 100).toFixed(2) + "%";
  }

  async function loadBudget(j) {
    try {
      const budgets = await api("/api/budgets?scope=" + encodeURIComponent(j.spec.budget_scope || "global"));
      if (!budgets.length) return;
      budget = budgets[0];
      document.getElementById("budget-text").textContent =
        `budget ${budget.scope}: ${usd(budget.spent_usd, 4)} of ${usd(budget.limit_usd, 2)} (${budget.enforcement})` +
        (budgets.length > 1 ? ` and ${budgets.length - 1} more` : "");
      renderCost(j);
    } catch (err) { /* budgets are optional on this page */ }
  }

  async function loadArtifacts() {
    const body = clear(document.querySelector("#artifacts tbody"));
    try {
      const items = await api(`/api/jobs/${encodeURIComponent(jobId)}/artifacts`);
      for (const a of items) {
        const href = `/api/jobs/${encodeURIComponent(jobId)}/download?path=${encodeURIComponent(a.path)}`;
        body.appendChild(el("tr", {}, el("td", { class: "mono" }, a.path, a.checkpoint ? el("span", { class: "badge" }, " checkpoint") : null),
          el("td", { class: "num" }, a.size_bytes.toLocaleString()), el("td", {}, when(a.modify_time)),
          el("td", {}, el("a", { href, download: a.path.split("/").pop() }, "download"))));
      }
      if (!items.length) body.appendChild(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no artifacts")));
    } catch (err) { showError(document.getElementById("job-error"), err); }
  }

  document.getElementById("cancel").addEventListener("click", async () => {
    document.getElementById("cancel").disabled = true;
    try { renderJob(await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" })); }
    catch (err) { showError(document.getElementById("job-error"), err); }
  });

  Console.deleteButton(document.getElementById("delete"), jobId, document.getElementById("job-error"),
    () => { location.href = "/jobs"; });

  const events = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
  events.addEventListener("reset", () => { series.clear(); pointCount = 0; plotKeys = "";
    clear(document.getElementById("job-error"));
    clear(document.getElementById("metric-toggles")); shown.clear(); });
  events.addEventListener("job", (ev) => renderJob(JSON.parse(ev.data)));
  events.addEventListener("progress", (ev) => addPoints(JSON.parse(ev.data)));
  events.addEventListener("end", () => events.close());
  events.addEventListener("failure", (ev) => { const f = JSON.parse(ev.data);
    showError(document.getElementById("job-error"), new Error(`live updates interrupted (${f.code}: ${f.message}); reconnecting`)); });
  events.onerror = () => {
    if (job && TERMINAL.has(job.state)) { events.close(); return; }
    api(`/api/jobs/${encodeURIComponent(jobId)}`).catch((err) => { showError(document.getElementById("job-error"), err);
      events.close(); });
  };

  // ---- logs -------------------------------------------------------------------------------------------------
  const logBox = document.getElementById("log");
  const chunks = [];  // {stream, text}
  let logChars = 0;

  function appendLog(stream, text) {
    chunks.push({ stream, text });
    logChars += text.length;
    logBox.appendChild(el("span", { class: stream }, text));
    while (logChars > MAX_LOG_CHARS && chunks.length > 1) {
      logChars -= chunks.shift().text.length;
      logBox.removeChild(logBox.firstChild);
      document.getElementById("log-status").textContent = "older output trimmed from view (crucible jobs logs has all)";
    }
    if (document.getElementById("search").value) renderSearch();
    else if (document.getElementById("follow").checked) logBox.scrollTop = logBox.scrollHeight;
  }

  function renderSearch() {
    const q = document.getElementById("search").value;
    if (!q) {
      clear(logBox);
      for (const c of chunks) logBox.appendChild(el("span", { class: c.stream }, c.text));
      document.getElementById("search-count").textContent = "";
      return;
    }
    clear(logBox);
    let hits = 0;
    const lines = { stdout: "", stderr: "" };
    for (const c of chunks) {
      const parts = (lines[c.stream] + c.text).split("\n");
      lines[c.stream] = parts.pop();
      for (const line of parts) if (line.includes(q)) { hits++; logBox.appendChild(el("span", { class: c.stream + " hit-line" }, line + "\n")); }
    }
    for (const s of ["stdout", "stderr"]) if (lines[s].includes(q)) { hits++; logBox.appendChild(el("span", { class: s }, lines[s] + "\n")); }
    document.getElementById("search-count").textContent = `${hits} matching lines`;
  }

  document.getElementById("search").addEventListener("input", renderSearch);
  for (const s of ["stdout", "stderr"]) {
    document.getElementById("show-" + s).addEventListener("change", (ev) => logBox.classList.toggle("hide-" + s, !ev.target.checked));
  }

  const logs = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/logs`);
  logs.addEventListener("open", () => { document.getElementById("log-status").textContent = "streaming"; });
  logs.addEventListener("log", (ev) => { const c = JSON.parse(ev.data); appendLog(c.stream, c.text); });
  logs.addEventListener("failure", (ev) => { const f = JSON.parse(ev.data);
    document.getElementById("log-status").textContent = `interrupted (${f.code}); reconnecting`; });
  logs.addEventListener("end", () => { logs.close(); document.getElementById("log-status").textContent = "ended (job finished)"; });
  logs.onerror = () => { if (job && TERMINAL.has(job.state)) logs.close(); };
})();
