// Live refresh: ask for this page's live part every second and swap it in.
// The server renders everything; this file only moves HTML it sent.
"use strict";
(function () {
  const live = document.getElementById("live");
  const offline = document.getElementById("offline");
  if (!live || live.dataset.live !== "True") return;
  let busy = false;
  async function refresh() {
    // A person typing in a form of the live part keeps what they typed.
    const focus = document.activeElement;
    if (busy || (focus && live.contains(focus) && focus.matches("input, select, textarea"))) return;
    busy = true;
    try {
      const answer = await fetch(location.href, {
        headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store",
      });
      if (answer.status === 403) { location.reload(); return; }
      live.innerHTML = await answer.text();
      offline.hidden = true;
    } catch (error) {
      offline.hidden = false;
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, 1000);
})();
