// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
});
document.addEventListener("toggle", (event) => {
  // Only one "Range" menu open at a time.
  const opened = event.target;
  if (opened.tagName === "DETAILS" && opened.open) {
    document.querySelectorAll("details.more[open]").forEach((d) => { if (d !== opened) d.open = false; });
  }
}, true);
