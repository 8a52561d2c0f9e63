// The console's only script: confirmations, and a job page that follows its job live over the
// job stream (WS /jobs/stream, signed in by the session cookie), refreshing itself on each event.
"use strict";

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});

document.addEventListener("keydown", (event) => {
  // "/" jumps to the first filter field, as in most consoles
  if (event.key !== "/" || ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  const field = document.querySelector("form.filters select, form.filters input");
  if (field) { event.preventDefault(); field.focus(); }
});

document.addEventListener("formdata", (event) => {
  // a filter's address names only the filters given (bookmarkable): no empty fields, and no
  // tenant when it is the key's own
  if (!event.target.matches("form.filters")) return;
  const own = event.target.querySelector("[data-own-tenant]");
  for (const [name, value] of [...event.formData.entries()]) {
    if (value === "" || (own && name === "tenant" && value === own.dataset.ownTenant)) event.formData.delete(name);
  }
});

function followJob(region) {
  const jobId = region.dataset.liveJob;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let tries = 0;
  let refreshing = false;
  const refresh = async () => {
    if (refreshing) return;
    refreshing = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("live");
      const current = document.getElementById("live");
      if (fresh && current) current.replaceWith(fresh);
      if (fresh && !fresh.dataset.liveJob && socket) socket.close(1000, "job finished");
    } finally {
      refreshing = false;
    }
  };
  let socket = null;
  const open = () => {
    socket = new WebSocket(`${scheme}//${location.host}/jobs/stream?job_id=${encodeURIComponent(jobId)}`);
    socket.addEventListener("open", () => { tries = 0; refresh(); });  // what happened while it opened
    socket.addEventListener("message", refresh);
    socket.addEventListener("close", (event) => {
      const still = document.getElementById("live");
      if (event.code >= 4400 && event.code < 4500) return;  // refused: signed out or no access
      if (still && still.dataset.liveJob && tries < 10) { tries += 1; setTimeout(open, 1000 * tries); }
    });
  };
  open();
}

const live = document.querySelector("[data-live-job]");
if (live) followJob(live);
