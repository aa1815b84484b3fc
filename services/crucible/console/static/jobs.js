// Jobs page: ListJobs with state/provider/scope filters, newest first, refreshed every few seconds.
"use strict";
(() => {
  const { api, el, clear, showError, usd, when, stateBadge, header, failureReason } = Console;
  header("jobs");
  const form = document.getElementById("filters");
  const body = document.querySelector("#jobs tbody");
  const more = document.getElementById("more");
  let nextToken = "";

  function row(j) {
    const p = j.progress || {};
    // A job that succeeded is done, whatever its last logged step was (nanoGPT logs 299 of 300).
    const frac = j.state === "succeeded" ? 1 : p.total_steps ? Math.min(1, (p.step || 0) / p.total_steps) : 0;
    const bar = el("div", { class: "bar" }, el("div", {}));
    bar.firstChild.style.width = (frac * 100).toFixed(1) + "%";
    const reason = failureReason(j);
    return el("tr", { "data-job": j.job_id },
      el("td", { class: "mono nowrap" }, el("a", { href: "/jobs/" + encodeURIComponent(j.job_id) }, j.job_id)),
      el("td", {}, j.spec.display_name || "-"),
      el("td", {}, stateBadge(j.state), reason ? el("div", { class: j.state === "failed" ? "reason" : "reason muted", "data-reason": "" }, reason) : null),
      el("td", {}, j.provider || "-"),
      el("td", {}, p.total_steps ? bar : null, el("span", { class: "muted" }, Console.progressText(p, j.state))),
      el("td", { class: "num" }, usd(j.cost && j.cost.spent_usd, 6)),
      el("td", { class: "num" }, usd(j.cost && j.cost.estimated_usd, 6)), el("td", { class: "nowrap" }, when(j.create_time)),
      el("td", {}, Console.TERMINAL.has(j.state) ? Console.deleteButton(el("button", { type: "button",
        class: "secondary small", "data-delete": j.job_id }, "Delete"), j.job_id, document.getElementById("jobs-error"),
      () => load(false)) : null));
  }

  async function load(append) {
    const q = new URLSearchParams();
    for (const n of ["state", "provider", "scope"]) if (form.elements[n].value) q.set(n, form.elements[n].value);
    if (append && nextToken) q.set("page_token", nextToken);
    try {
      const r = await api("/api/jobs?" + q);
      if (!append) clear(body);
      clear(document.getElementById("jobs-error"));
      for (const j of r.jobs) body.appendChild(row(j));
      if (!append && !r.jobs.length) body.appendChild(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no jobs")));
      nextToken = r.next_page_token;
      more.classList.toggle("hidden", !nextToken);
    } catch (err) { showError(document.getElementById("jobs-error"), err); }
  }

  form.addEventListener("change", () => load(false));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(false); });
  more.addEventListener("click", () => load(true));
  const deleteArmed = () => body.querySelector("button[data-delete].danger") !== null;  // waiting for "Confirm delete"
  setInterval(() => { if (document.getElementById("auto").checked && !nextToken && !deleteArmed()) load(false); }, 3000);
  load(false);
})();
