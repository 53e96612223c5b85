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
    try {
      jobs.push(vegaEmbed(el, specs[id], options).then(function () {
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
