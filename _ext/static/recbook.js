// Marks the page with how many code cells still need a sideways scroll bar (0 when every line fits or wraps), so that
// the site's browser test can check the layout that a reader's browser computes.
window.addEventListener("load", () => {
  const clipped = [...document.querySelectorAll("div.cell_input div.highlight pre")]
    .filter((pre) => pre.scrollWidth > pre.clientWidth + 1);
  document.body.dataset.clippedCodeCells = String(clipped.length);
});
