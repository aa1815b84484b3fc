// Budgets page: spend vs limit per scope (ListBudgets), kept live and with alerts from WatchBudget (SSE).
"use strict";
(() => {
  const { api, el, clear, showError, usd, when, short, header } = Console;
  header("budgets");
  const rows = new Map();

  function render(b) {
    const frac = b.limit_usd ? Math.min(1, b.spent_usd / b.limit_usd) : 0;
    const bar = el("div", { class: "bar" }, el("div", {}));
    bar.firstChild.style.width = (frac * 100).toFixed(1) + "%";
    if (frac >= 1) bar.firstChild.style.background = "var(--bad)";
    const tr = el("tr", { "data-budget": b.budget_id },
      el("td", { class: "mono" }, b.scope), el("td", {}, b.display_name || "-"), el("td", {}, b.enforcement),
      el("td", {}, bar, el("span", { class: "muted" }, `${(frac * 100).toFixed(1)}%`)),
      el("td", { class: "num" }, usd(b.spent_usd, 4)), el("td", { class: "num" }, usd(b.limit_usd, 2)),
      el("td", {}, (b.crossed_thresholds_percent || []).map((t) => t + "%").join(", ") || "-"));
    const old = rows.get(b.budget_id);
    if (old) old.replaceWith(tr); else document.querySelector("#budgets tbody").appendChild(tr);
    rows.set(b.budget_id, tr);
  }

  async function load() {
    try {
      const budgets = await api("/api/budgets");
      for (const b of budgets) render(b);
      if (!budgets.length) document.querySelector("#budgets tbody").appendChild(
        el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no budgets")));
    } catch (err) { showError(document.getElementById("budgets-error"), err); }
  }

  function watch() {
    const events = new EventSource("/api/budgets/events");
    events.addEventListener("ready", () => { document.getElementById("watch-status").textContent = "watching"; });
    events.addEventListener("budget", (ev) => render(JSON.parse(ev.data)));
    events.addEventListener("alert", (ev) => {
      const a = JSON.parse(ev.data);
      const none = document.getElementById("no-alerts");
      if (none) none.remove();
      document.getElementById("alerts").prepend(el("li", {}, el("b", {}, `${a.scope} crossed ${a.threshold_percent}%`),
        ` — ${usd(a.spent_usd, 4)} of ${usd(a.limit_usd, 2)} (${short(a.enforcement).toLowerCase()}) by job `,
        el("a", { href: "/jobs/" + encodeURIComponent(a.job_id) }, a.job_id), el("span", { class: "muted" }, " " + when(a.time))));
    });
    events.addEventListener("failure", (ev) => { const f = JSON.parse(ev.data);
      document.getElementById("watch-status").textContent = `interrupted (${f.code}: ${f.message}); reconnecting`; });
    events.onerror = () => { document.getElementById("watch-status").textContent = "reconnecting…"; };
    return events;
  }

  document.getElementById("new-budget").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    try {
      await api("/api/budgets", { method: "POST", json: { scope: f.scope.value, display_name: f.display_name.value,
        limit_usd: f.limit_usd.value, enforcement: f.enforcement.value,
        alert_thresholds_percent: f.thresholds.value.split(",").map((x) => x.trim()).filter(Boolean) } });
      location.reload();  // the watch covers the budgets that exist when it starts
    } catch (err) { showError(document.getElementById("create-error"), err); }
  });

  load().then(watch);
})();
