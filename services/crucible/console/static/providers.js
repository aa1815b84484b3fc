// Providers page: CompareProviders for a requirement (ranked by the selection policy, recommended marked) and
// EstimateCost over a runtime range for the selected offer (compute, storage, billing granularity, low/high).
"use strict";
(() => {
  const { api, el, clear, showError, usd, hours, short, header } = Console;
  header("providers");
  const form = document.getElementById("req");
  const body = document.querySelector("#offers tbody");

  function query(names) {
    const q = new URLSearchParams();
    for (const n of names) {
      const input = form.elements[n];
      if (!input) continue;
      if (input.type === "checkbox") { if (input.checked) q.set(n, "1"); } else if (input.value !== "") q.set(n, input.value);
    }
    return q;
  }

  async function estimate(offerId) {
    document.getElementById("estimate-offer").textContent = offerId;
    const target = clear(document.getElementById("estimate"));
    const q = query(["hours_low", "hours_high", "storage_gb_hours"]);
    q.set("offer_id", offerId);
    try {
      const e = await api("/api/estimate?" + q);
      const row = (label, key) => el("tr", {}, el("th", {}, label),
        el("td", { class: "num" }, key(e.low)), el("td", { class: "num" }, key(e.high)));
      target.appendChild(el("table", { id: "estimate-table" },
        el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { class: "num" }, "low"), el("th", { class: "num" }, "high"))),
        el("tbody", {},
          row("runtime", (c) => hours(c.runtime)),
          row("billed (granularity " + short(e.offer.billing_granularity).toLowerCase() + ")", (c) => hours(c.billed_duration)),
          row("compute", (c) => usd(c.compute_usd)), row("storage", (c) => usd(c.storage_usd)),
          row("network", (c) => usd(c.network_usd)), row("total", (c) => usd(c.total_usd)))));
      target.appendChild(el("ul", { class: "muted" }, e.assumptions.map((a) => el("li", {}, a))));
    } catch (err) { showError(target, err); }
  }

  async function compare(ev) {
    if (ev) ev.preventDefault();
    clear(body);
    clear(document.getElementById("result-error"));
    try {
      const r = await api("/api/compare?" + query(["gpu_names", "gpu_count", "min_gpu_memory_gib", "hours", "spot",
        "objective", "storage_gb_hours", "max_cost_usd", "reference_gpu_name"]));
      document.getElementById("reason").textContent = r.recommendation_reason ? "— " + r.recommendation_reason : "";
      document.getElementById("assumptions").textContent = (r.assumptions || []).join(" ");
      for (const ro of r.offers) {
        const o = ro.offer, c = ro.cost;
        const recommended = o.offer_id === r.recommended_offer_id;
        const tr = el("tr", { class: "clickable" + (recommended ? " recommended" : ""), "data-offer": o.offer_id,
          onclick: () => { body.querySelectorAll("tr").forEach((t) => t.classList.remove("selected"));
            tr.classList.add("selected"); estimate(o.offer_id); } },
          el("td", {}, String(ro.rank), recommended ? el("span", { class: "badge recommended" }, " recommended") : null),
          el("td", {}, o.provider), el("td", { class: "mono" }, o.instance_type), el("td", {}, o.region || "-"),
          el("td", {}, o.gpu_name || "CPU"), el("td", { class: "num" }, String(o.gpu_count)),
          el("td", { class: "num" }, o.gpu_memory_gib ? String(o.gpu_memory_gib) : "-"), el("td", {}, o.spot ? "spot" : ""),
          el("td", { class: "num" }, usd(o.price_usd_per_hour, 3)), el("td", {}, short(o.billing_granularity).toLowerCase()),
          el("td", { class: "num" }, hours(c.runtime)), el("td", { class: "num" }, hours(c.billed_duration)),
          el("td", { class: "num" }, usd(c.compute_usd)), el("td", { class: "num" }, usd(c.storage_usd)),
          el("td", { class: "num" }, usd(c.total_usd)),
          el("td", { class: "muted source" }, `${o.price_source} (${o.price_observed_at ? o.price_observed_at.slice(0, 10) : "?"})`));
        body.appendChild(tr);
        if (recommended) { tr.classList.add("selected"); estimate(o.offer_id); }
      }
      if (!r.offers.length) body.appendChild(el("tr", {}, el("td", { colspan: 16, class: "muted" }, "no feasible offer")));
    } catch (err) { showError(document.getElementById("result-error"), err); }
  }

  form.addEventListener("submit", compare);
  compare();
})();
