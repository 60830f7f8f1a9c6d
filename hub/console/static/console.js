// The console's only script: live updates of the overview over server-sent events,
// the language selector and the print button. No build step, no framework.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  for (const button of document.querySelectorAll("button[data-print]")) {
    button.addEventListener("click", () => window.print());
  }
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const target = document.getElementById(live.dataset.target);
  const source = new EventSource(live.dataset.live);
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  source.addEventListener("change", async () => {
    const answer = await fetch(live.dataset.fragment + window.location.search,
                               { credentials: "same-origin" });
    if (answer.ok) {
      target.innerHTML = await answer.text();
      live.dataset.updated = String(Date.now());
    }
  });
});
