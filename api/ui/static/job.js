// Live job page: one EventSource; the server reads Postgres every 500 ms and sends what changed.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || !window.EventSource) { return; }
  var $ = function (id) { return document.getElementById(id); };
  var lastCounts = null;

  function setText(id, value) { var el = $(id); if (el && el.textContent !== String(value)) { el.textContent = value; } }

  function badge(cls, text) {
    var s = document.createElement("span"); s.className = "badge " + cls; s.textContent = text; return s;
  }

  function onProgress(p) {
    var bar = $("job-bar");
    if (bar) {
      bar.setAttribute("aria-valuemax", p.total);
      bar.setAttribute("aria-valuenow", p.done);
      bar.setAttribute("aria-valuetext", p.done + " of " + p.total + " done: " + p.sent + " sent, " + p.failed + " failed, " + p.pending + " pending");
      var sent = bar.querySelector(".seg-sent"), failed = bar.querySelector(".seg-failed");
      sent.setAttribute("width", p.sent_pct);
      failed.setAttribute("x", p.sent_pct);
      failed.setAttribute("width", p.failed_pct);
    }
    setText("sent-count", p.sent); setText("failed-count", p.failed); setText("pending-count", p.pending);
    setText("suppressed-count", p.suppressed);
    setText("total-count", p.total); setText("percent", p.percent); setText("rate", p.rate);
    setText("started", p.started || "–"); setText("finished", p.finished || "–"); setText("pacing", p.pacing || "–");
    var status = $("status");
    if (status) {
      status.replaceChildren(badge("badge-" + p.status, p.status));
      if (p.cancel_requested) { status.append(" ", badge("badge-cancel-requested", "cancel requested")); }
    }
    var retry = $("retry-button"), cancel = $("cancel-button");
    if (retry) { retry.disabled = !p.can_retry; retry.setAttribute("aria-disabled", String(!p.can_retry)); }
    if (cancel) { cancel.disabled = !p.can_cancel; cancel.setAttribute("aria-disabled", String(!p.can_cancel)); }
    var hint = $("retry-hint");
    if (hint) { hint.textContent = p.can_retry ? "Sends the chosen failures again as a new run." : "Available once the job has completed with failures."; }
    var errors = $("errors"), list = $("error-list");
    if (errors && list && p.errors) {
      errors.hidden = p.errors.length === 0;
      list.replaceChildren.apply(list, p.errors.map(function (e) {
        var li = document.createElement("li"), c = document.createElement("span");
        c.className = "count"; c.textContent = e.count + "\u00d7"; li.append(c, " " + e.message);
        if (e.retryable) { li.append(" ", badge("", "retryable")); }
        return li;
      }));
    }
    var counts = p.sent + "/" + p.failed;
    if (lastCounts !== null && counts !== lastCounts) { var stale = $("recipients-stale"); if (stale) { stale.hidden = false; } }
    lastCounts = counts;
  }

  function onHistory(h) {
    var list = $("history"); if (!list) { return; }
    var empty = $("history-empty"); if (empty) { empty.remove(); }
    var li = document.createElement("li");
    var t = document.createElement("time"); t.textContent = h.at;
    var ev = document.createElement("span"); ev.className = "event"; ev.textContent = h.type;
    li.append(t, " ", ev);
    if (h.actor) { var a = document.createElement("span"); a.className = "actor"; a.textContent = "by " + h.actor; li.append(" ", a); }
    var s = document.createElement("div"); s.className = "summary"; s.textContent = h.summary; li.append(s);
    list.append(li);
  }

  var live = $("live-state");
  var es = new EventSource(root.dataset.stream + "?after=" + encodeURIComponent(root.dataset.lastEvent || "0"));
  es.addEventListener("open", function () { if (live) { live.className = "live-dot on"; live.textContent = "live"; } });
  es.addEventListener("error", function () { if (live) { live.className = "live-dot off"; live.textContent = "reconnecting"; } });
  es.addEventListener("progress", function (e) { onProgress(JSON.parse(e.data)); });
  es.addEventListener("history", function (e) { onHistory(JSON.parse(e.data)); });
  es.addEventListener("signed-out", function () { es.close(); window.location.reload(); });
})();
