// sleuth serve: keep the runs table live. Polls /api/runs and rebuilds the rows with
// textContent only (no HTML from the data is ever parsed).
"use strict";
(function () {
  var body = document.querySelector("#runs tbody");
  var stamp = document.getElementById("refreshed");

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text === null || text === undefined ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function render(data) {
    var rows = [];
    data.runs.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-run", r.id);
      var id = cell(tr, "");
      var code = document.createElement("code");
      code.textContent = r.id;
      id.appendChild(code);
      var st = cell(tr, "");
      var badge = document.createElement("span");
      var status = r.damaged ? "DAMAGED" : (r.status || "");
      badge.className = "badge status-" + status.replace(/[^A-Za-z_]/g, "");
      badge.textContent = status;
      st.appendChild(badge);
      if (r.damaged) {
        var why = document.createElement("span");
        why.className = "small";
        why.textContent = " " + r.damaged;
        st.appendChild(why);
      }
      cell(tr, r.model_id);
      cell(tr, r.question);
      cell(tr, r.supported, "num");
      cell(tr, r.refuted, "num");
      cell(tr, r.inconclusive, "num");
      cell(tr, r.cost ? r.cost.experiments : "", "num");
      cell(tr, r.cost ? r.cost.wall_s.toFixed(1) : "", "num");
      var link = cell(tr, "");
      if (r.report && r.report.indexOf("/runs/") === 0) {
        var a = document.createElement("a");
        a.href = r.report;
        a.textContent = "report";
        link.appendChild(a);
      }
      rows.push(tr);
    });
    body.replaceChildren.apply(body, rows);
    stamp.textContent = "live; refreshed " + new Date().toLocaleTimeString();
  }

  function poll() {
    fetch("/api/runs", { cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) render(data); })
      .catch(function () { stamp.textContent = "server not reachable; retrying"; })
      .finally(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
