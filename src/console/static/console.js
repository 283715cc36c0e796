// The little script the console needs: Copy, and live recent deliveries
// and health.
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

  // Redraws `element` from its data-fragment at most every `gap` ms.
  const redrawer = (element, gap) => {
    let pending = null;
    return () => {
      if (!element || pending) return;
      pending = setTimeout(async () => {
        pending = null;
        const response = await fetch(element.dataset.fragment, { credentials: "same-origin" });
        if (response.ok) element.innerHTML = await response.text();
      }, gap);
    };
  };
  const list = document.getElementById("deliveries");
  if (list && window.EventSource) {
    const redrawList = redrawer(list, 300);
    // The health section reads up to 1,000 deliveries: not more than every 3 s.
    const redrawHealth = redrawer(document.getElementById("health"), 3000);
    const source = new EventSource(list.dataset.live);
    source.addEventListener("changed", () => { redrawList(); redrawHealth(); });
  }
});
