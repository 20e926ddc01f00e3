// The playground: student and teacher side by side for relevance work, live figures, the
// artifact's gate and evaluation. Plain DOM, no framework and no build step. Everything the
// server sends is put on the page with textContent (never innerHTML), and an error shows only
// the JSON error's message.
"use strict";

(() => {
  const ENCODERS = ["student", "teacher"];
  const OTHER = { student: "teacher", teacher: "student" };
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
  const count = (n) => Number(n || 0).toLocaleString("en-US");

  // nDCG@k as models/eval/metrics.py defines it: gain = relevance - 1, an unjudged keyword 0,
  // the ideal from the query's labels (here: those of the judged products this index holds).
  function ndcg(ids, labels, k) {
    const dcg = (gains) => gains.reduce((sum, g, i) => sum + g / Math.log2(i + 2), 0);
    const ideal = dcg(Object.values(labels).map((r) => r - 1).sort((a, b) => b - a).slice(0, k));
    if (ideal <= 0) return null;
    return dcg(ids.slice(0, k).map((id) => Math.max((labels[id] ?? 1) - 1, 0))) / ideal;
  }

  // ---- the form and the address bar ----

  // The form's fields, checked: {body, params} or null (the message says what is wrong).
  function readForm() {
    const query = $("query").value.trim();
    if (!query) {
      ENCODERS.forEach(clearColumn);
      $("overlap").hidden = true;
      $("judged").hidden = true;
      showMessage("Type a query first: the query box is empty.", "warn");
      $("query").focus();
      return null;
    }
    const body = { query, attributes: true };
    const params = new URLSearchParams({ q: query });
    // Numbers: the form checks their kind; their range is the server's to judge (its message says the limit).
    const numbers = [["k", "k", "k", Number.isInteger, "k must be a whole number, such as 10."],
                     ["prior", "length_prior", "lp", Number.isFinite, "The length prior must be a number, such as 0.02."]];
    for (const [id, field, param, valid, problem] of numbers) {
      const text = $(id).value.trim();
      if (!text) continue;
      if (!valid(Number(text))) {
        showMessage(problem, "warn");
        $(id).focus();
        return null;
      }
      body[field] = Number(text);
      params.set(param, text);
    }
    const filterText = $("filter").value.trim();
    if (filterText) {
      let filter;
      try {
        filter = JSON.parse(filterText);
      } catch (err) {
        showMessage('The filter is not valid JSON; write an object such as {"source": "hd"}.', "warn");
        $("filter").focus();
        return null;
      }
      if (filter === null || typeof filter !== "object" || Array.isArray(filter)) {
        showMessage('The filter must be a JSON object, such as {"source": "hd"}.', "warn");
        $("filter").focus();
        return null;
      }
      body.filter = filter;
      params.set("filter", filterText);
    }
    return { body, params };
  }

  // The address bar's ?q=&k=&lp=&filter= into the form; true when it names a query.
  function fillFromAddress() {
    const params = new URLSearchParams(window.location.search);
    if (!params.has("q")) return false;
    $("query").value = params.get("q");
    $("k").value = params.get("k") || "10";
    $("prior").value = params.get("lp") || "";
    $("filter").value = params.get("filter") || "";
    return true;
  }

  // ---- search ----

  function clearColumn(name) {
    $("r-" + name).replaceChildren();
    $("t-" + name).textContent = "";
    $("p-" + name).textContent = "";
    $("tab-" + name).textContent = name === "student" ? "Student" : "Teacher";
    const err = $("e-" + name);
    err.textContent = "";
    err.hidden = true;
  }

  function hitIds(answer) {
    return answer.ok ? answer.data.results[0].keywords.map((h) => h.id) : [];
  }

  function labelChip(relevance) {
    if (relevance === undefined) return el("span", { class: "label unjudged", title: "no human label for this keyword" }, "unjudged");
    const band = relevance >= 2.5 ? "rel-3" : relevance >= 1.75 ? "rel-2" : "rel-1";
    return el("span", { class: "label " + band, title: "human relevance label: 1 irrelevant to 3 highly relevant" },
      fmt(relevance, 2));
  }

  function renderColumn(name, answer, roundTripMs, otherIds, labels) {
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
      `this request: server ${fmt(t.total_ms)} ms (queue ${fmt(t.queue_ms)}, encode ${fmt(t.encode_ms)}, ` +
      `index ${fmt(t.index_ms)}) · round trip ${fmt(roundTripMs, 1)} ms` +
      (result.truncated ? " · query truncated to the token limit" : "");
    const rankInOther = new Map(otherIds.map((id, i) => [id, i + 1]));
    for (const hit of result.keywords) {
      const other = rankInOther.get(hit.id);
      const attrs = Object.entries(hit.attributes || {}).map(([key, value]) =>
        el("span", { class: "attr" }, `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`));
      const item = el("li", { class: other ? "hit shared" : "hit", "data-id": hit.id, "data-other-rank": other ? String(other) : "" },
        el("span", { class: "kw" }, hit.text),
        other ? el("span", { class: "badge", title: "also in the other encoder's top k" }, "both") : null,
        el("span", { class: "score", title: "cosine similarity" }, fmt(hit.score, 3)),
        el("span", { class: "hit-meta" },
          el("span", { class: "other", title: `rank in the ${OTHER[name]}'s list` },
            other ? `${OTHER[name]} #${other}` : "only here"),
          labels ? labelChip(labels[hit.id]) : null,
          ...attrs,
          el("span", { class: "id" }, hit.id)));
      if (labels && labels[hit.id] !== undefined) item.dataset.label = String(labels[hit.id]);
      list.append(item);
    }
    list.dataset.count = String(result.keywords.length);
    $("tab-" + name).textContent = `${name === "student" ? "Student" : "Teacher"} (${result.keywords.length})`;
    if (!result.keywords.length) {
      list.append(el("li", { class: "hit empty" }, "No keywords matched."));
    }
  }

  async function timedSearch(body, encoder) {
    const t0 = performance.now();
    const answer = await call("POST", "/v1/search", { ...body, encoder });
    return [answer, performance.now() - t0];
  }

  async function judgmentsOf(query) {
    const answer = await call("GET", "/v1/judgments?query=" + encodeURIComponent(query));
    return answer.ok ? answer.data : null;
  }

  function renderJudged(judged, answers) {
    const box = $("judged");
    box.replaceChildren();
    delete box.dataset.studentNdcg;
    delete box.dataset.teacherNdcg;
    if (!judged || !judged.available) {
      box.textContent = judged ? judged.note : "";
      box.hidden = !judged;
      box.className = "judged note";
      return;
    }
    if (!judged.judged) {
      box.textContent = "Not a judged dev query: no relevance labels (the query box suggests the judged ones).";
      box.className = "judged note";
      box.hidden = false;
      return;
    }
    const labelled = Object.keys(judged.labels).length;
    box.className = "judged";
    box.dataset.labelled = String(labelled);
    box.append(el("strong", {}, "Judged dev query"), ` (${labelled} labelled products in this index): `);
    ENCODERS.forEach((name, i) => {
      const answer = answers[name];
      if (!answer.ok) return;
      const k = answer.data.k;
      const value = ndcg(hitIds(answer), judged.labels, k);
      box.dataset[name + "Ndcg"] = value === null ? "" : value.toFixed(4);
      box.append(i ? " · " : "", `${name} nDCG@${k} `, el("strong", {}, fmt(value, 3)));
    });
    box.hidden = false;
  }

  async function search(event, fromAddress) {
    if (event) event.preventDefault();
    const form = readForm();
    if (!form) return;
    const seq = ++searchSeq;
    if (!fromAddress) {
      const address = "?" + form.params.toString();
      if (window.location.search !== address) window.history.pushState(null, "", address);
    }
    showMessage("Searching…", "busy");
    $("compare").setAttribute("aria-busy", "true");
    // One after the other: sent together they competed for the same cores, and each one's
    // time said as much about the other as about itself.
    const answers = {}, roundTrips = {};
    for (const encoder of ENCODERS) {
      [answers[encoder], roundTrips[encoder]] = await timedSearch(form.body, encoder);
      if (seq !== searchSeq) return;
    }
    const judged = answers.student.ok || answers.teacher.ok ? await judgmentsOf(form.body.query) : null;
    if (seq !== searchSeq) return;
    $("compare").removeAttribute("aria-busy");
    const ids = { student: hitIds(answers.student), teacher: hitIds(answers.teacher) };
    const labels = judged && judged.judged ? judged.labels : null;
    for (const name of ENCODERS) renderColumn(name, answers[name], roundTrips[name], ids[OTHER[name]], labels);
    const shared = ids.student.filter((id) => ids.teacher.includes(id)).length;
    const overlap = $("overlap");
    if (answers.student.ok && answers.teacher.ok && ids.teacher.length) {
      // overlap@k as the service's shadow metric defines it: shared / the teacher's k.
      const value = shared / ids.teacher.length;
      overlap.dataset.shared = String(shared);
      overlap.dataset.k = String(ids.teacher.length);
      overlap.dataset.value = value.toFixed(4);
      overlap.textContent = `overlap@${ids.teacher.length}: ${shared} of ${ids.teacher.length} keywords shared (${value.toFixed(2)})`;
      overlap.hidden = false;
    } else {
      overlap.hidden = true;
    }
    renderJudged(judged, answers);
    const warnings = [...new Set(ENCODERS.flatMap((n) => (answers[n].ok && answers[n].data.warnings) || []))];
    if (!answers.student.ok && !answers.teacher.ok && answers.student.message === answers.teacher.message) {
      showMessage(answers.student.message, "error");
    } else if (!answers.student.ok || !answers.teacher.ok) {
      showMessage("One encoder could not answer; its column says why.", "warn");
    } else if (warnings.length) {
      showMessage(warnings.join(" "), "warn");
    } else {
      showMessage("");
    }
    refreshStats();
  }

  // ---- the two lists on a narrow screen ----

  function showList(name) {
    document.querySelector(".columns").dataset.show = name;
    for (const other of ENCODERS) $("tab-" + other).setAttribute("aria-selected", String(other === name));
  }

  // ---- live figures ----

  function sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const values = points.map((p) => p.p99_ms).filter((v) => v !== null && v !== undefined);
    svg.setAttribute("aria-label", values.length ? `p99 per interval, last ${fmt(values[values.length - 1])} ms` : "no traffic yet");
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

  // A latency with the number of requests it comes from: a p99 of 12 requests is not one of 12,000.
  function latencyCell(ms, served, field) {
    return el("td", { class: "num", "data-field": field },
      ms === null || ms === undefined ? "–" : fmt(ms) + " ms", " ", el("span", { class: "n" }, `n=${count(served)}`));
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
    note.textContent = `Every request the service answered over the last ${minutes} (target window ` +
      `${fmt(s.target_window_s / 60, 0)} min), this page's and everyone else's, from its own request histogram: ` +
      "p50/p99 of the answers with status 200, n of them.";
    note.className = "note";
    const rows = ENCODERS.map((name) => {
      const e = s.encoders[name] || {};
      return el("tr", { "data-encoder": name },
        el("th", { scope: "row" }, name),
        el("td", { class: "num", "data-field": "served_rps" }, fmt(e.served_rps, 2), " ",
          el("span", { class: "n" }, `n=${count(e.served)}`)),
        latencyCell(e.p50_ms, e.served, "p50"),
        latencyCell(e.p99_ms, e.served, "p99"),
        el("td", { class: "num", "data-field": "served" }, count(e.served)),
        el("td", { class: "num", "data-field": "refused" }, count(e.refused)),
        el("td", { class: "num" }, count(e.errors)),
        el("td", {}, sparkline((s.series && s.series[name]) || [])));
    });
    $("stats-body").replaceChildren(...rows);
    table.hidden = false;
  }

  // ---- artifact ----

  function renderGate(gate) {
    const box = $("gate");
    box.replaceChildren();
    if (!gate) {
      box.textContent = "The manifest records no quality gate.";
      box.className = "gate";
      return;
    }
    const passed = gate.passed === true;
    const metric = gate.metric === "ndcg_at_10" ? "nDCG@10" : gate.metric || "score";
    box.append(el("strong", {}, `The student ${passed ? "passes" : "fails"} the quality gate`));
    if (typeof gate.student === "number" && typeof gate.teacher === "number") {
      box.dataset.student = String(gate.student);
      box.dataset.teacher = String(gate.teacher);
      box.append(`: judged dev ${metric} `, el("strong", { class: "gate-student" }, fmt(gate.student, 4)),
        " for the student, ", el("strong", { class: "gate-teacher" }, fmt(gate.teacher, 4)), " for the teacher: ",
        `${fmt(gate.ratio, 3)}× the teacher's, ${fmt(gate.required, 2)}× required. `);
    } else {
      box.append(". ");
    }
    if (!passed && gate.overridden) box.append("It is served anyway: the builder overrode the gate, and the manifest records it.");
    box.className = "gate " + (passed ? "ok" : gate.overridden ? "warn" : "bad");
    box.dataset.passed = String(passed);
  }

  const pct = (x) => (typeof x === "number" ? `${fmt(x * 100, 1)} %` : "–");
  const num = (x, d = 4) => (typeof x === "number" ? String(Math.round(x * 10 ** d) / 10 ** d) : "–");

  // The manifest's eval as labelled rows in sections; what no section names lands in the last one.
  function evalSections(ev) {
    const used = new Set(["gate", "k"]);
    const take = (key) => { used.add(key); return ev[key]; };
    const sections = [];
    const k = ev.k || 10;
    const agreement = [];
    for (const [key, label] of [["student_fp32", "student fp32"], ["student_int8", "student int8"]]) {
      const row = take(key);
      if (!row) continue;
      agreement.push([`overlap@${k} with the teacher, ${label}`, pct(row.overlap_at_10)]);
      agreement.push([`mean cosine to the teacher's vector, ${label}`, num(row.mean_cosine, 3)]);
    }
    if ("chance_overlap_at_10" in ev) agreement.push([`overlap@${k} two random lists would have`, pct(take("chance_overlap_at_10"))]);
    if (agreement.length) {
      sections.push([`Agreement with the teacher on ${count(take("heldout_queries"))} held-out queries`, agreement]);
    }
    const index = [];
    if ("hnsw_recall_at_10" in ev) index.push(["recall@10 of the HNSW graph against exact search", pct(take("hnsw_recall_at_10"))]);
    if ("hnsw_ef_for_recall_0_99" in ev) index.push(["ef that reaches recall@10 ≥ 0.99", String(take("hnsw_ef_for_recall_0_99"))]);
    if (index.length) sections.push(["Index", index]);
    const parity = take("parity");
    if (parity) {
      const names = { teacher_onnx_vs_torch: "teacher: ONNX vs PyTorch", student_onnx_vs_torch: "student: ONNX vs PyTorch",
        student_int8_vs_fp32: "student: int8 vs fp32" };
      sections.push(["Export parity (cosine of the same texts' vectors)", Object.entries(parity).map(([key, p]) =>
        [names[key] || key, `mean ${num(p.mean_cosine, 5)}, min ${num(p.min_cosine, 5)} over ${count(p.texts)} texts`])]);
    }
    const phase1 = take("phase1");
    if (phase1 && phase1.original && phase1.finetuned) {
      sections.push(["Phase 1: the teacher fine-tuned on judged train pairs", [
        ["dev nDCG@10, packaged teacher", num(phase1.original.ndcg_at_10)],
        ["dev nDCG@10, fine-tuned (step " + (phase1.step ?? "?") + ")", num(phase1.finetuned.ndcg_at_10)],
        ["adopted", phase1.adopt ? "yes: the index and the student use it" : "no: the packaged teacher stays"]]]);
    }
    const rest = [];
    (function leaves(obj, path, depth) {
      for (const [key, value] of Object.entries(obj || {})) {
        if (!path.length && used.has(key)) continue;
        const here = path.concat(key);
        if (value !== null && typeof value === "object" && !Array.isArray(value)) {
          if (depth < 3) leaves(value, here, depth + 1);
        } else if (typeof value === "number" || typeof value === "boolean" || (typeof value === "string" && value.length < 80)) {
          rest.push([here.join(" › "), typeof value === "number" ? num(value) : String(value)]);
        }
      }
    })(ev, [], 0);
    if (rest.length) sections.push(["Other recorded figures", rest]);
    return sections;
  }

  function renderEval(ev) {
    const sections = ev ? evalSections(ev) : [];
    const rows = sections.flatMap(([title, pairs]) => [
      el("tr", { class: "section" }, el("th", { scope: "colgroup", colspan: "2" }, title)),
      ...pairs.map(([label, value]) => el("tr", {}, el("th", { scope: "row" }, label), el("td", { class: "num" }, value)))]);
    $("eval-body").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {}, "No eval figures in the manifest."))]));
  }

  function renderFilterable(filters) {
    const box = $("filterable");
    box.replaceChildren();
    if (!filters) { box.hidden = true; return; }
    if (!filters.listed) {
      box.textContent = "Filterable attributes: not listed by this index (" + filters.note + ").";
      box.hidden = false;
      return;
    }
    const names = Object.entries(filters.attributes || {});
    if (!names.length) { box.textContent = "No keyword carries an attribute: nothing to filter on."; box.hidden = false; return; }
    box.append("Filter on: ");
    names.forEach(([name, about], i) => {
      if (i) box.append(" · ");
      box.append(el("code", {}, name), " = ");
      about.values.forEach((v, j) => {
        const button = el("button", { type: "button", class: "chip", "data-filter": JSON.stringify({ [name]: v.value }) },
          `${typeof v.value === "string" ? v.value : JSON.stringify(v.value)} (${count(v.keywords)})`);
        button.addEventListener("click", () => { $("filter").value = button.dataset.filter; $("query").focus(); });
        box.append(j ? " " : "", button);
      });
      if (about.distinct > about.values.length) box.append(` and ${count(about.distinct - about.values.length)} more`);
    });
    box.hidden = false;
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
    const encoder = (e) => `${e.id || "?"} (${e.precision || "?"}): ${e.model || "?"}`;
    const pairs = [
      ["artifact", `${a.name || "?"} · sha256 ${(a.sha256 || "?").slice(0, 12)}… · built ${a.created_utc || "?"}`],
      ["student", encoder(enc.student || {})],
      ["teacher", encoder(enc.teacher || {})],
      ["index", `${count(idx.count)} keywords, ${idx.dim ?? "?"}-d, ${idx.library || "?"} M=${idx.M ?? "?"}, ef ${idx.default_ef ?? "?"}`],
    ];
    facts.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    renderEval(info.eval);
    renderFilterable(info.filters);
    $("info").hidden = false;
    // The k field's bound is the server's limit.
    if (info.limits && info.limits.max_k) $("k").max = String(info.limits.max_k);
  }

  async function loadJudgedQueries() {
    const answer = await call("GET", "/v1/judgments");
    const hint = $("judged-hint");
    if (!answer.ok || !answer.data.available) {
      hint.textContent = answer.ok ? "(this artifact carries no judged queries)" : "";
      return;
    }
    $("judged-queries").replaceChildren(...answer.data.queries.map((q) => el("option", { value: q })));
    hint.textContent = `(suggests the ${count(answer.data.count)} judged dev queries, which show relevance labels)`;
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
    $("search-form").addEventListener("submit", (event) => search(event, false));
    $("token-form").addEventListener("submit", useToken);
    for (const name of ENCODERS) $("tab-" + name).addEventListener("click", () => showList(name));
    // Back and forward walk the searches made here: each one's query, k and filter are in the address.
    window.addEventListener("popstate", () => {
      if (fillFromAddress()) {
        search(null, true);
      } else {  // back to the address with no search: the empty page it was
        ++searchSeq;
        $("query").value = "";
        ENCODERS.forEach(clearColumn);
        for (const id of ["overlap", "judged", "message"]) $(id).hidden = true;
      }
    });
    refreshReady();
    refreshInfo();
    refreshStats();
    loadJudgedQueries();
    if (fillFromAddress()) search(null, true);
    setInterval(() => { if (!document.hidden) refreshStats(); }, STATS_EVERY_MS);
  });
})();
