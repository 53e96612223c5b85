/* Draw every chart of the page from the JSON blob; record the outcome for people and for tests:
   <html data-charts="done|failed">, window.__chartsDone = true when every vegaEmbed promise settled,
   window.__chartErrors lists the charts that failed (also logged to the console). */
(function () {
  "use strict";
  var errors = [];
  window.__chartErrors = errors;
  window.__chartsDone = false;
  var specs = {};
  try {
    specs = JSON.parse(document.getElementById("sftreport-specs").textContent);
  } catch (e) {
    errors.push("chart data: " + e);
  }
  var options = {
    renderer: "svg",
    actions: { export: true, source: false, compiled: false, editor: false },
    tooltip: { theme: "light" },
    downloadFileName: "sftreport-chart"
  };
  /* Accessibility (axe-core): the chart's container has no role of its own, because it holds the actions
     menu (a <details>, interactive) next to the drawing. The drawing is Vega's own ARIA tree (role
     graphics-document, a label per axis, legend and mark); `patch` names it after the chart instead of
     "Vega visualization" and gives every mark container a name, which an empty one (an epoch with nothing
     to draw) otherwise lacks. The icon that opens the actions menu gets a name once drawn. */
  var nameMarks = function (marks) {
    (marks || []).forEach(function (m) {
      if (m.type === "group") {
        nameMarks(m.marks);
      } else if (m.description == null && m.aria !== false) {
        m.description = m.type + " marks";
      }
    });
  };
  var chartOptions = function (title) {
    var o = {};
    Object.keys(options).forEach(function (k) { o[k] = options[k]; });
    o.patch = function (vg) {
      if (vg.description == null) { vg.description = title; }
      nameMarks(vg.marks);
      return vg;
    };
    return o;
  };
  var nameActions = function (el, title) {
    var summary = el.querySelector("details > summary");
    if (summary && !summary.hasAttribute("aria-label")) {
      summary.setAttribute("aria-label", "Save the chart \u201c" + title + "\u201d as SVG or PNG");
    }
  };
  var jobs = [];
  var nodes = document.querySelectorAll("[data-chart]");
  Array.prototype.forEach.call(nodes, function (el) {
    var id = el.getAttribute("data-chart");
    var fail = function (err) {
      var msg = id + ": " + (err && err.message ? err.message : err);
      errors.push(msg);
      el.classList.add("chart-failed");
      el.textContent = "This chart could not be drawn (" + msg + ").";
      console.error("sftreport chart failed: " + msg);
    };
    if (!Object.prototype.hasOwnProperty.call(specs, id)) { fail("no chart data"); return; }
    var title = el.getAttribute("data-title") || id;
    try {
      jobs.push(vegaEmbed(el, specs[id], chartOptions(title)).then(function () {
        nameActions(el, title);
        el.setAttribute("data-drawn", "true");
      }, fail));
    } catch (e) {
      fail(e);
    }
  });
  Promise.all(jobs).then(function () {
    window.__chartsDone = true;
    document.documentElement.setAttribute("data-charts", errors.length ? "failed" : "done");
  });
})();
