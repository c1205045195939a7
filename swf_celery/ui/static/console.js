// swf-celery console: live updates. Pages are complete without this script; it recolours
// steps as workflow events arrive (Server-Sent Events) and re-reads the live sections.
(function () {
  "use strict";
  var body = document.body;
  var timer = null;

  function refresh() {
    timer = null;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll(".live[id]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (!fresh || el.contains(document.activeElement)) { return; }
          el.replaceWith(document.importNode(fresh, true));
        });
        if (doc.body.dataset.finished) { body.dataset.finished = "1"; }
        body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
      })
      .catch(function () {});
  }

  // A run page re-reads quickly (a big run less often: the page is big); the runs list at
  // most once a second under a busy engine.
  var delay = body.dataset.refresh === "runs" ? 1000
    : (Number(body.dataset.steps || 0) > 200 ? 2000 : 250);

  function later() {
    if (timer === null) { timer = window.setTimeout(refresh, delay); }
  }

  function recolour(step, status) {
    document.querySelectorAll('[data-step]').forEach(function (el) {
      if (el.getAttribute("data-step") !== step) { return; }
      if (el.classList.contains("step") || el.classList.contains("bar")) {
        Array.prototype.slice.call(el.classList).forEach(function (c) {
          if (c.indexOf("state-") === 0) { el.classList.remove(c); }
        });
        el.classList.add("state-" + status);
        var label = el.querySelector("text.status");
        if (label) { label.textContent = status; }
      } else if (el.classList.contains("step-status")) {
        var badge = el.querySelector(".badge");
        if (badge) { badge.className = "badge state-" + status; badge.textContent = status; }
      }
    });
  }

  if (body.dataset.events && !body.dataset.finished && window.EventSource) {
    var source = new EventSource(body.dataset.events);
    source.addEventListener("ready", function () { body.dataset.live = "1"; later(); });
    source.addEventListener("gap", later);
    source.addEventListener("step", function (e) {
      var data = JSON.parse(e.data);
      recolour(data.step, data.status);
      later();
    });
    source.addEventListener("run", function (e) {
      var data = JSON.parse(e.data);
      later();
      if (data.finished) { source.close(); body.dataset.live = ""; }
    });
  }

  if (body.dataset.poll) {
    window.setInterval(refresh, 1000 * Number(body.dataset.poll));
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });
})();
