// The playground: student and teacher side by side, live figures, the artifact's gate.
// Plain DOM, no framework and no build step. Everything the server sends is put on the
// page with textContent (never innerHTML), and an error shows only the JSON error's message.
"use strict";

(() => {
  const ENCODERS = ["student", "teacher"];
  const STATS_EVERY_MS = 5000;
  const $ = (id) => document.getElementById(id);
  let token = "";      // the admin token, if the user gives one: this tab's memory only
  let searchSeq = 0;   // answers to an older search are dropped when a newer one was sent

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // One request. Never throws: {ok, status, data} or {ok: false, status, message}, where the
  // message is the service's own sentence, or a plain one when the body is not its JSON error.
  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      return { ok: false, status: 0, message: "The service cannot be reached (is it running?)." };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (response.ok && data !== null) return { ok: true, status: response.status, data };
    const message = data && data.error && typeof data.error.message === "string"
      ? data.error.message
      : `The server answered HTTP ${response.status}.`;
    return { ok: false, status: response.status, message };
  }

  function showMessage(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.className = "message" + (kind ? " " + kind : "");
    box.hidden = !text;
  }

  const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

  // ---- search ----

  function clearColumn(name) {
    $("r-" + name).replaceChildren();
    $("t-" + name).textContent = "";
    $("p-" + name).textContent = "";
    const err = $("e-" + name);
    err.textContent = "";
    err.hidden = true;
  }

  function renderColumn(name, answer, shared, roundTripMs) {
    clearColumn(name);
    const list = $("r-" + name);
    if (!answer.ok) {
      const err = $("e-" + name);
      err.textContent = answer.message;
      err.hidden = false;
      list.dataset.count = "0";
      return;
    }
    const body = answer.data;
    const result = body.results[0];
    $("p-" + name).textContent = body.precision ? `(${body.precision})` : "";
    const t = body.timings || {};
    $("t-" + name).textContent =
      `server ${fmt(t.total_ms)} ms (queue ${fmt(t.queue_ms)}, encode ${fmt(t.encode_ms)}, index ${fmt(t.index_ms)})` +
      ` · round trip ${fmt(roundTripMs, 1)} ms` + (result.truncated ? " · query truncated to the token limit" : "");
    for (const hit of result.keywords) {
      const both = shared.has(hit.id);
      const item = el("li", { class: both ? "hit shared" : "hit", "data-id": hit.id },
        el("span", { class: "kw" }, hit.text),
        both ? el("span", { class: "badge", title: "also in the other encoder's top k" }, "both") : null,
        el("span", { class: "score", title: "cosine similarity" }, fmt(hit.score, 3)),
        el("span", { class: "id" }, hit.id));
      list.append(item);
    }
    list.dataset.count = String(result.keywords.length);
    if (!result.keywords.length) {
      list.append(el("li", { class: "hit empty" }, "No keywords matched."));
    }
  }

  function ids(answer) {
    return answer.ok ? answer.data.results[0].keywords.map((h) => h.id) : [];
  }

  async function search(event) {
    event.preventDefault();
    const query = $("query").value.trim();
    const seq = ++searchSeq;
    if (!query) {
      ENCODERS.forEach(clearColumn);
      $("overlap").hidden = true;
      showMessage("Type a query first: the query box is empty.", "warn");
      $("query").focus();
      return;
    }
    const body = { query };
    const kText = $("k").value.trim();
    if (kText) {
      const k = Number(kText);
      if (!Number.isInteger(k)) {
        showMessage("k must be a whole number, such as 10.", "warn");
        $("k").focus();
        return;
      }
      body.k = k;  // its range is the server's to judge: its message says the limit
    }
    const filterText = $("filter").value.trim();
    if (filterText) {
      let filter;
      try {
        filter = JSON.parse(filterText);
      } catch (err) {
        showMessage('The filter is not valid JSON; write an object such as {"source": "hd"}.', "warn");
        $("filter").focus();
        return;
      }
      if (filter === null || typeof filter !== "object" || Array.isArray(filter)) {
        showMessage('The filter must be a JSON object, such as {"source": "hd"}.', "warn");
        $("filter").focus();
        return;
      }
      body.filter = filter;
    }
    showMessage("Searching…", "busy");
    $("compare").setAttribute("aria-busy", "true");
    // Both encoders at once: the two requests travel together, each timed on its own.
    const timed = ENCODERS.map(async (encoder) => {
      const t0 = performance.now();
      const answer = await call("POST", "/v1/search", { ...body, encoder });
      return [answer, performance.now() - t0];
    });
    const [[student, studentMs], [teacher, teacherMs]] = await Promise.all(timed);
    if (seq !== searchSeq) return;
    $("compare").removeAttribute("aria-busy");
    const sIds = ids(student), tIds = ids(teacher);
    const tSet = new Set(tIds);
    const shared = new Set(sIds.filter((id) => tSet.has(id)));
    renderColumn("student", student, shared, studentMs);
    renderColumn("teacher", teacher, shared, teacherMs);
    const overlap = $("overlap");
    if (student.ok && teacher.ok && tIds.length) {
      // overlap@k as the service's shadow metric defines it: shared / the teacher's k.
      const value = shared.size / tIds.length;
      overlap.dataset.shared = String(shared.size);
      overlap.dataset.k = String(tIds.length);
      overlap.dataset.value = value.toFixed(4);
      overlap.textContent = `overlap@${tIds.length}: ${shared.size} of ${tIds.length} keywords shared (${value.toFixed(2)})`;
      overlap.hidden = false;
    } else {
      overlap.hidden = true;
    }
    if (!student.ok && !teacher.ok && student.message === teacher.message) {
      showMessage(student.message, "error");
    } else if (!student.ok || !teacher.ok) {
      showMessage("One encoder could not answer; its column says why.", "warn");
    } else {
      showMessage("");
    }
    refreshStats();
  }

  // ---- live figures ----

  function sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const values = points.map((p) => p.p99_ms).filter((v) => v !== null && v !== undefined);
    svg.setAttribute("aria-label", values.length ? `p99 over the window, last ${fmt(values[values.length - 1])} ms` : "no traffic yet");
    if (values.length < 2) return svg;
    const top = Math.max(...values) || 1;
    const step = 100 / (points.length - 1);
    const coords = [];
    points.forEach((p, i) => {
      if (p.p99_ms !== null && p.p99_ms !== undefined) coords.push(`${(i * step).toFixed(1)},${(23 - (p.p99_ms / top) * 21).toFixed(1)}`);
    });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coords.join(" "));
    svg.append(line);
    return svg;
  }

  async function refreshStats() {
    const answer = await call("GET", "/v1/stats");
    const note = $("stats-note"), table = $("stats-table");
    if (!answer.ok) {
      table.hidden = true;
      note.textContent = answer.status === 401 ? "admin token needed (give it under “Admin token” below)." : answer.message;
      note.className = "note warn";
      return;
    }
    const s = answer.data;
    const minutes = s.window_s >= 90 ? `${fmt(s.window_s / 60, 1)} min` : `${fmt(s.window_s, 0)} s`;
    note.textContent = `Served requests over the last ${minutes} (target window ${fmt(s.target_window_s / 60, 0)} min), ` +
      "from the service's own request histogram (p50/p99 of answers with status 200).";
    note.className = "note";
    const rows = ENCODERS.map((name) => {
      const e = s.encoders[name] || {};
      return el("tr", { "data-encoder": name },
        el("th", { scope: "row" }, name),
        el("td", { class: "num", "data-field": "served_rps" }, fmt(e.served_rps, 2)),
        el("td", { class: "num" }, e.p50_ms === null ? "–" : fmt(e.p50_ms) + " ms"),
        el("td", { class: "num" }, e.p99_ms === null ? "–" : fmt(e.p99_ms) + " ms"),
        el("td", { class: "num", "data-field": "served" }, String(e.served ?? 0)),
        el("td", { class: "num", "data-field": "refused" }, String(e.refused ?? 0)),
        el("td", { class: "num" }, String(e.errors ?? 0)),
        el("td", {}, sparkline((s.series && s.series[name]) || [])));
    });
    $("stats-body").replaceChildren(...rows);
    table.hidden = false;
  }

  // ---- artifact ----

  // Numeric and short text leaves of the manifest's eval, as "a › b › c" rows.
  function leaves(obj, path, out, depth) {
    for (const [key, value] of Object.entries(obj || {})) {
      if (key === "gate") continue;  // shown on its own above
      const here = path.concat(key);
      if (value !== null && typeof value === "object" && !Array.isArray(value)) {
        if (depth < 4) leaves(value, here, out, depth + 1);
      } else if (typeof value === "number" || typeof value === "boolean" || (typeof value === "string" && value.length < 80)) {
        out.push([here.join(" › "), value]);
      }
    }
    return out;
  }

  function renderGate(gate) {
    const box = $("gate");
    box.replaceChildren();
    if (!gate) {
      box.textContent = "The manifest records no quality gate.";
      box.className = "gate";
      return;
    }
    const passed = gate.passed === true;
    const verdict = passed ? "passes the quality gate" : "fails the quality gate";
    const ratio = typeof gate.ratio === "number" ? ` (${gate.metric || "score"}: ${fmt(gate.ratio, 3)} of the teacher's, ` +
      `${fmt(gate.required, 2)} required)` : "";
    box.append(el("strong", {}, `The student ${verdict}`), ratio + ". ");
    if (!passed && gate.overridden) box.append("It is served anyway: the builder overrode the gate, and the manifest records it.");
    box.className = "gate " + (passed ? "ok" : gate.overridden ? "warn" : "bad");
    box.dataset.passed = String(passed);
  }

  async function refreshInfo() {
    const answer = await call("GET", "/v1/info");
    const note = $("info-note");
    if (!answer.ok) {
      $("info").hidden = true;
      note.hidden = false;
      note.textContent = answer.status === 401 ? "admin token needed (give it under “Admin token” below)." : answer.message;
      note.className = "note warn";
      return;
    }
    const info = answer.data;
    note.hidden = true;
    renderGate(info.gate || (info.eval && info.eval.gate));
    const facts = $("artifact-facts");
    const a = info.artifact || {}, enc = info.encoders || {}, idx = info.index || {};
    const pairs = [
      ["artifact", `${a.name || "?"} · sha256 ${(a.sha256 || "?").slice(0, 12)}…`],
      ["student", `${(enc.student || {}).model || "?"} (${(enc.student || {}).precision || "?"})`],
      ["teacher", `${(enc.teacher || {}).model || "?"} (${(enc.teacher || {}).precision || "?"})`],
      ["index", `${idx.count ?? "?"} keywords, ${idx.dim ?? "?"}-d, ${idx.library || "?"} M=${idx.M ?? "?"}, ef ${idx.default_ef ?? "?"}`],
    ];
    facts.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const rows = leaves(info.eval, [], [], 0).map(([k, v]) =>
      el("tr", {}, el("th", { scope: "row" }, k), el("td", { class: "num" }, typeof v === "number" ? String(Math.round(v * 10000) / 10000) : String(v))));
    $("eval-body").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {}, "No eval figures in the manifest."))]));
    $("info").hidden = false;
    // The k field's bound is the server's limit.
    if (info.limits && info.limits.max_k) $("k").max = String(info.limits.max_k);
  }

  async function refreshReady() {
    const answer = await call("GET", "/readyz");
    const pill = $("ready");
    const status = answer.ok ? "ready" : (answer.status === 503 ? "not ready" : "unreachable");
    pill.textContent = status;
    pill.className = "pill " + (answer.ok ? "ok" : "warn");
  }

  function useToken(event) {
    event.preventDefault();
    token = $("token").value.trim();
    refreshInfo();
    refreshStats();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("search-form").addEventListener("submit", search);
    $("token-form").addEventListener("submit", useToken);
    refreshReady();
    refreshInfo();
    refreshStats();
    setInterval(() => { if (!document.hidden) refreshStats(); }, STATS_EVERY_MS);
  });
})();
