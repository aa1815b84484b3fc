// Providers page: CompareProviders for a requirement, one row per provider x GPU type (the SDK's group_offers, done
// by the console: the cheapest region and how many regions share its price, expandable to every region), the
// recommended one marked, and EstimateCost over a runtime range for the row picked, drawn beside the table.
"use strict";
(() => {
  const { api, el, clear, showError, usd, hours, short, header } = Console;
  header("providers");
  const ROWS_SHOWN = 12;  // the page stays readable with no filter; "show all" lists every group
  const form = document.getElementById("req");
  const body = document.querySelector("#offers tbody");
  const showAll = document.getElementById("show-all");
  let groups = [], expanded = new Set(), selected = "", everything = false;

  function query(names) {
    const q = new URLSearchParams();
    for (const n of names) {
      const input = form.elements[n];
      if (!input) continue;
      if (input.type === "checkbox") { if (input.checked) q.set(n, "1"); } else if (input.value !== "") q.set(n, input.value);
    }
    return q;
  }

  // A price source as a short link with its date: a site name (the full source in the tooltip), never a long URL.
  function source(o) {
    const date = o.price_observed_at ? o.price_observed_at.slice(0, 10) : "date unknown";
    const text = o.price_source || "unknown";
    let node = null;
    try {
      const url = new URL(text);
      if (url.protocol === "https:" || url.protocol === "http:") {
        node = el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", title: text },
          url.hostname.replace(/^www\./, ""));
      }
    } catch (_) { /* not a URL: "github.com/org/catalog@sha", "provider API", "configured rate: ..." */ }
    const pinned = /^github\.com\/([\w.-]+\/[\w.-]+)@([0-9a-f]{7,40}):([\w./-]+)$/.exec(text);  // a catalog file at a commit
    if (!node && pinned) {
      node = el("a", { href: `https://github.com/${pinned[1]}/blob/${pinned[2]}/${pinned[3]}`, target: "_blank",
        rel: "noopener noreferrer", title: text }, "github.com");
    }
    if (!node) {
      const site = /^((?:[a-z0-9-]+\.)+[a-z]{2,})\//i.exec(text);
      let label = site ? site[1] : text.split(/[:(]/)[0].trim();
      if (label.length > 24) label = label.slice(0, 23) + "…";
      node = el("span", { title: text }, label);
    }
    return el("td", { class: "source" }, node, el("span", { class: "muted" }, " · " + date));
  }

  function gpuText(o) {
    return o.gpu_count ? `${o.gpu_count}x ${o.gpu_name}` + (o.gpu_memory_gib ? ` ${o.gpu_memory_gib} GiB` : "") : "CPU";
  }

  function pick(offerId, label) {
    selected = offerId;
    for (const tr of body.querySelectorAll("tr")) tr.classList.toggle("selected", tr.getAttribute("data-offer") === offerId);
    estimate(offerId, label);
  }

  // One row per provider x GPU type: its cheapest region, how many regions share that price, a toggle to every offer.
  function groupRow(g, index) {
    const ro = g.best, o = ro.offer, c = ro.cost;
    const key = `${g.provider}|${g.gpu_name}|${g.gpu_count}|${g.spot}`;
    const open = expanded.has(key);
    const regions = g.members.length > 1
      ? el("button", { type: "button", class: "link", "data-expand": key,
        title: `${g.regions_at_price} region(s) at ${usd(o.price_usd_per_hour, 3)}/h; ${g.members.length} offers in ${g.region_count} region(s) in all`,
        onclick: (ev) => { ev.stopPropagation(); if (open) expanded.delete(key); else expanded.add(key); render(); } },
        `${open ? "▾" : "▸"} ${g.regions_at_price} at this price`)
      : el("span", { class: "muted" }, String(g.regions_at_price));
    const label = `${g.provider} · ${gpuText(o)} · ${o.region || "no region"}`;
    const tr = el("tr", { class: "clickable group" + (g.recommended ? " recommended" : ""), "data-offer": o.offer_id,
      "data-group": key, "data-provider": g.provider, "data-gpu": `${g.gpu_count}x ${g.gpu_name}`,
      onclick: () => pick(o.offer_id, label) },
      el("td", {}, String(index + 1)),
      el("td", {}, g.provider, g.recommended ? el("span", { class: "badge recommended" }, "recommended") : null),
      el("td", { title: o.instance_type }, gpuText(o), o.spot ? el("span", { class: "badge" }, "spot") : null),
      el("td", {}, o.region || "-"), el("td", {}, regions),
      el("td", { class: "num" }, usd(o.price_usd_per_hour, 3)), el("td", { class: "num" }, usd(c.total_usd)), source(o));
    const rows = [tr];
    if (open) {
      for (const m of g.members) {
        const mo = m.offer;
        rows.push(el("tr", { class: "clickable member", "data-offer": mo.offer_id,
          onclick: () => pick(mo.offer_id, `${g.provider} · ${gpuText(mo)} · ${mo.region || "no region"}`) },
          el("td", {}, ""), el("td", { class: "muted" }, "└"), el("td", { class: "mono", title: mo.instance_type },
            mo.instance_type.length > 22 ? mo.instance_type.slice(0, 21) + "…" : mo.instance_type),
          el("td", {}, mo.region || "-"), el("td", {}, ""), el("td", { class: "num" }, usd(mo.price_usd_per_hour, 3)),
          el("td", { class: "num" }, usd(m.cost.total_usd)), source(mo)));
      }
    }
    return rows;
  }

  function render() {
    clear(body);
    const shown = everything ? groups : groups.slice(0, ROWS_SHOWN);
    shown.forEach((g, i) => { for (const tr of groupRow(g, i)) body.appendChild(tr); });
    if (!groups.length) body.appendChild(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no feasible offer")));
    showAll.classList.toggle("hidden", groups.length <= ROWS_SHOWN);
    showAll.textContent = everything ? `Show the first ${ROWS_SHOWN}` : `Show all ${groups.length} rows`;
    for (const tr of body.querySelectorAll("tr")) tr.classList.toggle("selected", tr.getAttribute("data-offer") === selected);
  }

  async function estimate(offerId, label) {
    document.getElementById("estimate-offer").textContent = offerId;
    document.getElementById("estimate-title").textContent = label || "";
    const target = clear(document.getElementById("estimate"));
    const q = query(["hours_low", "hours_high", "storage_gb_hours"]);
    q.set("offer_id", offerId);
    try {
      const e = await api("/api/estimate?" + q);
      if (selected !== offerId) return;  // another row was picked meanwhile
      const row = (text, key) => el("tr", {}, el("th", {}, text),
        el("td", { class: "num" }, key(e.low)), el("td", { class: "num" }, key(e.high)));
      target.appendChild(el("table", { id: "estimate-table" },
        el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { class: "num" }, "low"), el("th", { class: "num" }, "high"))),
        el("tbody", {},
          row("runtime", (c) => hours(c.runtime)),
          row("billed (" + short(e.offer.billing_granularity).toLowerCase() + ")", (c) => hours(c.billed_duration)),
          row("compute", (c) => usd(c.compute_usd)), row("storage", (c) => usd(c.storage_usd)),
          row("network", (c) => usd(c.network_usd)), row("total", (c) => usd(c.total_usd)))));
      target.appendChild(el("ul", { class: "muted small" }, e.assumptions.map((a) => el("li", {}, a))));
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
      document.getElementById("grouping").textContent = `${r.offer_count} offers in ${r.groups.length} rows: one per ` +
        "provider and GPU type at its cheapest region (best first); expand a row for every region.";
      document.getElementById("assumptions").textContent = (r.assumptions || []).join(" ");
      groups = r.groups; expanded = new Set(); everything = false; selected = "";
      render();
      const best = groups.find((g) => g.recommended);
      if (best) pick(r.recommended_offer_id, `${best.provider} · ${gpuText(best.best.offer)} · recommended`);
    } catch (err) { showError(document.getElementById("result-error"), err); }
  }

  showAll.addEventListener("click", () => { everything = !everything; render(); });
  form.addEventListener("submit", compare);
  compare();
})();
