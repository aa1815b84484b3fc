// Submit page: EstimateRequirements with its arithmetic, provider choice, a validate-only CreateJob for the
// estimate, then CreateJob with the code uploaded as `code_archive` (an archive, or a folder packed by the console).
"use strict";
(() => {
  const { api, el, clear, showError, usd, gib, hours, header, loadSession } = Console;
  header("submit");
  const form = document.getElementById("job-form");
  const picked = [];
  const NO_CODE = "No code to run: choose a code archive (.zip or .tar.gz) or a code folder above, " +
    "or tick \"the command needs no code\".";

  loadSession().then((s) => {
    document.getElementById("upload-limit").textContent =
      `Uploads up to ${(s.max_upload_bytes / 2 ** 20).toFixed(0)} MiB; the console checks the archive and never sends a server path.`;
  });

  api("/api/scheduler/providers").then((providers) => {
    const box = document.getElementById("providers");
    for (const p of providers) {
      const usable = !p.unavailable_reason;
      const cb = el("input", { type: "checkbox", value: p.name, disabled: !usable, "data-provider": p.name,
        onchange: (ev) => { const i = picked.indexOf(p.name); if (ev.target.checked && i < 0) picked.push(p.name);
          if (!ev.target.checked && i >= 0) picked.splice(i, 1); } });
      box.appendChild(el("label", { class: "inline", title: p.unavailable_reason || "usable" }, cb, p.name,
        usable ? null : el("span", { class: "muted" }, ` (${p.unavailable_reason})`)));
    }
  }).catch((err) => showError(document.getElementById("providers"), err));

  document.getElementById("estimate-req").addEventListener("click", async () => {
    const target = clear(document.getElementById("req-result"));
    const body = {};
    for (const n of ["workload", "parameter_count", "n_layer", "n_head", "n_embd", "vocab_size", "block_size", "batch_size",
      "precision", "optimizer"]) body[n] = form.elements[n].value;
    try {
      const r = await api("/api/requirements", { method: "POST", json: body });
      const need = Math.ceil((r.total_bytes / 2 ** 30) * 10) / 10;
      target.appendChild(el("p", {}, `Needs ${gib(r.total_bytes)} per GPU for ${r.parameter_count.toLocaleString()} parameters: `,
        `weights ${gib(r.weights_bytes)}, gradients ${gib(r.gradients_bytes)}, optimizer ${gib(r.optimizer_state_bytes)}, `,
        `activations ${gib(r.activations_bytes)}.`));
      target.appendChild(el("pre", { class: "arith", id: "arithmetic" }, r.arithmetic.join("\n")));
      // Every field the estimate implies: the memory per GPU, and at least one GPU to put it on.
      document.getElementById("min-mem").value = String(need);
      const count = document.getElementById("gpu-count");
      if (!(Number(count.value) >= 1)) count.value = "1";
      target.appendChild(el("p", { class: "muted", id: "req-filled" },
        `Set "Min GPU memory" to ${need} GiB and "GPUs per instance" to ${count.value}.`));
    } catch (err) { showError(target, err); }
  });

  function formData(validateOnly) {
    const data = new FormData();
    for (const n of ["name", "scope", "command", "gpu_names", "gpu_count", "min_gpu_memory_gib", "policy",
      "expected_minutes", "max_minutes", "max_cost_usd"]) data.set(n, form.elements[n].value);
    if (form.elements.spot.checked) data.set("spot", "1");
    data.set("providers", picked.join(","));
    const archive = document.getElementById("code-archive").files[0];
    if (archive) data.set("code_archive", archive, archive.name);
    for (const f of document.getElementById("code-folder").files) data.append("code_files", f, f.webkitRelativePath || f.name);
    if (document.getElementById("no-code").checked) data.set("no_code", "1");
    if (validateOnly) data.set("validate_only", "1");
    return data;
  }

  function hasCode() {
    return document.getElementById("code-archive").files.length > 0 || document.getElementById("code-folder").files.length > 0
      || document.getElementById("no-code").checked;
  }

  function showPreview(job) {
    const target = clear(document.getElementById("preview-result"));
    const o = job.offer || {};
    const priced = o.price_source && !o.price_source.startsWith("unknown");
    target.appendChild(el("table", { id: "preview-table" }, el("tbody", {},
      el("tr", {}, el("th", {}, "provider / offer"), el("td", { class: "mono" }, `${job.provider || "-"} · ${o.offer_id || "-"}`)),
      el("tr", {}, el("th", {}, "machine"), el("td", {}, o.gpu_count ? `${o.gpu_count}x ${o.gpu_name}` : "CPU")),
      el("tr", {}, el("th", {}, "price"), el("td", {}, priced ? `${usd(o.price_usd_per_hour, 4)}/h (${o.price_source})` : "unknown")),
      el("tr", {}, el("th", {}, "expected runtime"), el("td", {}, hours(job.spec.expected_duration))),
      el("tr", {}, el("th", {}, "estimated cost"), el("td", { id: "estimated-cost" }, priced ? usd(job.cost.estimated_usd, 6) : "unknown")),
      el("tr", {}, el("th", {}, "admission"), el("td", {}, (job.transitions[0] || {}).reason || "-")))));
  }

  document.getElementById("preview").addEventListener("click", async () => {
    clear(document.getElementById("submit-error"));
    clear(document.getElementById("preview-result"));
    try { showPreview(await api("/api/jobs", { method: "POST", form: formData(true) })); }
    catch (err) { showError(document.getElementById("preview-result"), err); }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = document.getElementById("submit");
    const errors = clear(document.getElementById("submit-error"));
    if (!hasCode()) {  // the server refuses it too; say so before uploading anything
      showError(errors, new Error(NO_CODE));
      return;
    }
    button.disabled = true;
    try {
      const job = await api("/api/jobs", { method: "POST", form: formData(false) });
      location.href = "/jobs/" + encodeURIComponent(job.job_id);
    } catch (err) { showError(document.getElementById("submit-error"), err); button.disabled = false; }
  });
})();
