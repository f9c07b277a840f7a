/* Slide grid: filter by status and text, sort by a data attribute. No network, no libraries. */
(function () {
  "use strict";
  var grid = document.getElementById("slide-grid");
  if (grid) {
    var cards = Array.prototype.slice.call(grid.querySelectorAll(".slide"));
    var q = document.getElementById("slide-filter");
    var st = document.getElementById("slide-status");
    var so = document.getElementById("slide-sort");
    var shown = document.getElementById("slide-shown");
    var apply = function () {
      var text = (q.value || "").trim().toLowerCase();
      var status = st.value;
      var n = 0;
      cards.forEach(function (c) {
        var hit = (!status || c.dataset.status === status) &&
          (!text || c.dataset.search.indexOf(text) !== -1);
        c.hidden = !hit;
        if (hit) n += 1;
      });
      var parts = so.value.split(":");
      var key = parts[0], dir = parts[1] === "desc" ? -1 : 1, numeric = key === "patches" || key === "candidates";
      cards.slice().sort(function (a, b) {
        var x = a.dataset[key], y = b.dataset[key];
        if (numeric) { x = parseFloat(x) || 0; y = parseFloat(y) || 0; }
        if (x < y) return -dir;
        if (x > y) return dir;
        return a.dataset.slide < b.dataset.slide ? -1 : 1;
      }).forEach(function (c) { grid.appendChild(c); });
      shown.value = n + " of " + cards.length + " slides shown";
    };
    [q, st, so].forEach(function (el) { el.addEventListener("input", apply); el.addEventListener("change", apply); });
    apply();
  }
  /* Print everything: open collapsed details while printing, restore afterwards. */
  var closed = [];
  window.addEventListener("beforeprint", function () {
    closed = Array.prototype.filter.call(document.querySelectorAll("details"), function (d) { return !d.open; });
    closed.forEach(function (d) { d.open = true; });
  });
  window.addEventListener("afterprint", function () {
    closed.forEach(function (d) { d.open = false; });
    closed = [];
  });
})();
