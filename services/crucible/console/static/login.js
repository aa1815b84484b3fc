// Login page: send the token once (CSRF header + same-origin), then go where the user was headed.
"use strict";
(() => {
  const { api, showError, params } = Console;
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("/api/login", { method: "POST", json: { token: document.getElementById("token").value } });
      const next = params().get("next") || "/jobs";
      location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/jobs";
    } catch (err) { showError(document.getElementById("login-error"), err); }
  });
})();
