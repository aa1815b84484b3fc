// Login page: send the token once (CSRF header + same-origin), then go where the user was headed.
// The server answers with a same-origin path (it refuses every other `next`); the page parses it as a URL again and
// leaves the site for nothing: another origin, a scheme or a browser-rewritten `/\host` all land on "/".
"use strict";
(() => {
  const { api, showError, params } = Console;

  function sameOrigin(target) {
    try {
      const url = new URL(target, location.origin);
      return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
    } catch (_) { return "/"; }
  }

  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("/api/login", { method: "POST",
        json: { token: document.getElementById("token").value, next: params().get("next") || "/" } });
      location.href = sameOrigin(r.redirect || "/");
    } catch (err) { showError(document.getElementById("login-error"), err); }
  });
})();
