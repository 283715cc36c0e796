// The little script the console needs: Copy, and live recent deliveries.
// Everything else works without JavaScript.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Back goes back where there is history (the CSP forbids javascript: links).
  for (const back of document.querySelectorAll("a[data-back]")) {
    back.addEventListener("click", (event) => {
      if (history.length > 1) { event.preventDefault(); history.back(); }
    });
  }

  const copy = document.getElementById("copy");
  if (copy) {
    copy.addEventListener("click", async () => {
      const response = await fetch(copy.dataset.copyUrl, { credentials: "same-origin" });
      if (!response.ok) { copy.textContent = "Not copied"; return; }
      await navigator.clipboard.writeText(await response.text());
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 2000);
    });
  }

  const list = document.getElementById("deliveries");
  if (list && window.EventSource) {
    let pending = null;
    const refresh = async () => {
      pending = null;
      const response = await fetch(list.dataset.fragment, { credentials: "same-origin" });
      if (response.ok) list.innerHTML = await response.text();
    };
    const source = new EventSource(list.dataset.live);
    source.addEventListener("changed", () => {
      if (!pending) pending = setTimeout(refresh, 300);
    });
  }
});
