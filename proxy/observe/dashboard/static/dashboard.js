// The dashboard's script. Every value from the server is written as text (textContent),
// never parsed as HTML; nothing is loaded from anywhere but this admin port.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const MAX_INPUT = 1 << 20;
  let pollMs = 5000;

  function $(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function number(n) { return Number(n).toLocaleString("en-US"); }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // Counts and chart ---------------------------------------------------------------------

  function showCounts(counts) {
    for (const key of ["received", "forwarded", "accepted", "dropped", "lost"]) {
      $("count-" + key).textContent = number(counts[key]);
    }
    const body = $("reasons").tBodies[0];
    clear(body);
    const reasons = Object.entries(counts.dropped_by_reason);
    $("reasons-empty").hidden = reasons.length > 0;
    for (const [reason, n] of reasons) {
      const row = body.insertRow();
      row.appendChild(el("td", reason, "reason"));
      row.appendChild(el("td", number(n), "num"));
    }
  }

  // Per-interval increases of each total, from the history the server samples at a steady
  // pace (the live counts above are read at each poll).
  function drawChart(points) {
    const svg = $("chart");
    clear(svg);
    const deltas = [];
    for (let i = 1; i < points.length; i++) {
      deltas.push([1, 2, 3].map((k) => Math.max(0, points[i][k] - points[i - 1][k])));
    }
    // Drawn at the element's own size, so lines span it and text is not stretched.
    const width = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 600);
    const height = 160, pad = 6, top = 20;
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    const note = $("chart-note");
    if (deltas.length < 2) {
      note.textContent = "· collecting history…";
      return;
    }
    const span = Math.round((points[points.length - 1][0] - points[0][0]) / 60);
    note.textContent = "· last " + (span < 1 ? "minute" : span + " min");
    const peak = Math.max(1, ...deltas.map((d) => Math.max(...d)));
    const x = (i) => pad + (i * (width - 2 * pad)) / (deltas.length - 1);
    const y = (v) => height - pad - (v * (height - pad - top)) / peak;
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("x1", pad); base.setAttribute("x2", width - pad);
    base.setAttribute("y1", height - pad); base.setAttribute("y2", height - pad);
    base.setAttribute("class", "axis");
    svg.appendChild(base);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", pad); label.setAttribute("y", 14);
    label.setAttribute("class", "peak");
    label.textContent = "peak " + number(peak) + " per " + Math.round(pollMs / 1000) + " s";
    svg.appendChild(label);
    ["received", "forwarded", "dropped"].forEach((name, k) => {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", deltas.map((d, i) => x(i).toFixed(1) + "," + y(d[k]).toFixed(1)).join(" "));
      line.setAttribute("class", "series " + name);
      svg.appendChild(line);
    });
  }

  // Audit records (proxy/observe/audit/): codes and known names only, never values.
  const AUDIT_COLUMNS = [
    ["minute"], ["tid"], ["decision"], ["reason"], ["consent"], ["regime"], ["location"],
  ];

  function auditParams(record, used) {
    const params = record.params || record.parameters || record.changes;
    if (Array.isArray(params)) {
      return params.map((p) => {
        if (p && typeof p === "object") {
          const name = p.name || p.param || "?";
          const detail = Array.isArray(p.detail) && p.detail.length ? "[" + p.detail.join(", ") + "]" : "";
          const count = p.count > 1 ? " ×" + p.count : "";
          return name + count + ": " + [p.action, p.rule, detail].filter(Boolean).join(" ");
        }
        return String(p);
      }).join(" · ");
    }
    if (params && typeof params === "object") {
      return Object.entries(params).map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
    }
    const rest = {};
    for (const [k, v] of Object.entries(record)) if (!used.has(k)) rest[k] = v;
    return Object.keys(rest).length ? JSON.stringify(rest) : "";
  }

  function showAudit(audit) {
    const table = $("audit-table"), empty = $("audit-empty");
    const body = table.tBodies[0];
    clear(body);
    const records = audit.records || [];
    empty.textContent = audit.available ? "no records" : "audit records unavailable";
    empty.hidden = records.length > 0;
    table.hidden = records.length === 0;
    for (const record of records) {
      const row = body.insertRow();
      const used = new Set(["params", "parameters", "changes"]);
      for (const names of AUDIT_COLUMNS) {
        const key = names.find((n) => n in record);
        if (key) used.add(key);
        let value = key ? record[key] : "";
        if (key === "consent" && value && typeof value === "object") {
          value = [value.verdict, value.source ? "by " + value.source : ""].filter(Boolean).join(" ");
        } else if (value && typeof value === "object") {
          value = JSON.stringify(value);
        }
        const cell = el("td", value);
        if (names[0] === "decision") cell.className = "decision " + String(value);
        row.appendChild(cell);
      }
      if ("verdict" in record) used.add("verdict");
      row.appendChild(el("td", auditParams(record, used), "params"));
    }
  }

  async function refresh() {
    try {
      const summary = await getJson("api/summary");
      pollMs = Math.max(1000, (summary.history.interval || 5) * 1000);
      showCounts(summary.counts);
      drawChart(summary.history.samples);
      showAudit(summary.audit);
      $("status").textContent = "updated " + new Date(summary.now * 1000).toLocaleTimeString();
      $("status").className = "status live";
    } catch (err) {
      $("status").textContent = "not updating: " + err.message;
      $("status").className = "status stale";
    }
    window.setTimeout(refresh, pollMs);
  }

  // Policy --------------------------------------------------------------------------------

  async function loadPolicy() {
    const target = $("policy-sections");
    try {
      const policy = await getJson("api/policy");
      for (const section of policy.sections) {
        const block = el("div", null, "policy-block");
        block.appendChild(el("h3", section.title));
        const list = el("ul");
        for (const line of section.lines) list.appendChild(el("li", line));
        block.appendChild(list);
        target.appendChild(block);
      }
    } catch (err) {
      target.appendChild(el("p", "policy unavailable: " + err.message, "error"));
    }
  }

  // Try a beacon ----------------------------------------------------------------------------

  function mode() {
    return document.querySelector("input[name=mode]:checked").value;
  }

  function showResult(result) {
    const box = el("article", null, "result " + result.decision);
    const head = el("p", null, "verdict");
    head.appendChild(el("strong", result.decision === "forward" ? "FORWARD" : "DROP", "decision"));
    let why = result.reason + (result.detail ? " (" + result.detail + ")" : "");
    if (result.source) why += " by " + result.source;
    head.appendChild(el("span", why, "reason"));
    if (result.regime) {
      const place = result.place || {};
      const found = [place.country, place.region].filter(Boolean).join("-") || "unknown";
      head.appendChild(el("span", "place: " + found + " · regime: " + result.regime, "muted"));
    }
    box.appendChild(head);
    const signals = Object.entries(result.consent || {}).filter(([, v]) => v !== "abstain");
    if (Object.keys(result.consent || {}).length) {
      box.appendChild(el("p", "consent signals: " +
        (signals.length ? signals.map(([k, v]) => k + "=" + v).join("  ") : "none (every source abstained)"), "signals"));
    }
    if (result.forwarded) {
      box.appendChild(el("p", "What Google receives:", "muted"));
      const req = el("pre", "POST " + result.forwarded.url +
        (result.forwarded.body ? "\n" + result.forwarded.body : "") + "\n" +
        Object.entries(result.forwarded.headers).map(([k, v]) => k + ": " + v).join("\n"), "request");
      box.appendChild(req);
    }
    const changes = (result.changes || []).filter((c) => c.action !== "kept");
    const kept = (result.changes || []).filter((c) => c.action === "kept");
    if (changes.length) {
      const table = el("table", null, "changes");
      const head = table.createTHead().insertRow();
      for (const name of ["where", "parameter", "action", "rule", "before", "", "after"]) head.appendChild(el("th", name));
      const body = table.createTBody();
      for (const c of changes) {
        const row = body.insertRow();
        row.className = "action-" + c.action;
        row.appendChild(el("td", c.scope));
        row.appendChild(el("td", c.param, "param"));
        row.appendChild(el("td", c.action, "action"));
        row.appendChild(el("td", c.rule + (c.detail && c.detail.length ? " [" + c.detail.join(", ") + "]" : "")));
        row.appendChild(el("td", c.before === null ? "∅" : c.before, "value"));
        row.appendChild(el("td", "→", "arrow"));
        row.appendChild(el("td", c.after === null ? "∅" : c.after, "value"));
      }
      box.appendChild(table);
    }
    if (kept.length) {
      box.appendChild(el("p", "Kept as sent (" + kept.length + "): " +
        kept.map((c) => c.param + "=" + (c.before === null ? "" : c.before)).join("  "), "kept"));
    }
    const details = el("details");
    details.appendChild(el("summary", "as text (analytics-proxy explain)"));
    details.appendChild(el("pre", result.text));
    box.appendChild(details);
    return box;
  }

  async function explain(event) {
    event.preventDefault();
    const error = $("explain-error"), out = $("explain-results"), button = $("explain-button");
    error.hidden = true;
    clear(out);
    const input = mode() === "har"
      ? { har: $("beacon-har").value }
      : {
        url: $("beacon-url").value, cookie: $("beacon-cookie").value,
        client_ip: $("beacon-ip").value, country: $("beacon-country").value,
        user_agent: $("beacon-ua").value, body: $("beacon-body").value,
      };
    const payload = JSON.stringify(input);
    if (payload.length > MAX_INPUT) {
      error.textContent = "input over 1 MiB";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const response = await fetch("api/explain", {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json" }, body: payload,
      });
      const answer = await response.json().catch(() => ({ error: "HTTP " + response.status }));
      if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
      if (answer.total > answer.shown) {
        out.appendChild(el("p", "The first " + answer.shown + " of " + answer.total + " beacons:", "muted"));
      }
      for (const result of answer.results) out.appendChild(showResult(result));
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  function switchMode() {
    const har = mode() === "har";
    $("url-fields").hidden = har;
    $("har-fields").hidden = !har;
  }

  async function loadHarFile() {
    const file = $("har-file").files[0];
    if (!file) return;
    if (file.size > MAX_INPUT) {
      $("explain-error").textContent = "HAR file over 1 MiB: save fewer requests";
      $("explain-error").hidden = false;
      return;
    }
    $("beacon-har").value = await file.text();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("explain-form").addEventListener("submit", explain);
    for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", switchMode);
    $("har-file").addEventListener("change", loadHarFile);
    loadPolicy();
    refresh();
  });
})();
