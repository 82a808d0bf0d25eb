// The masse dashboard page: no framework, no external resource.
// It reads api/peers and api/events once, then follows api/stream
// (server-sent events): `peers` snapshots, `event` lines, `resync` hints.
"use strict";
(function () {
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const token = new URLSearchParams(location.search).get("token");
  const MAX_EVENTS = 300;
  let snapshot = null;      // last api/peers document
  let receivedAt = 0;       // performance.now() when it arrived
  let lastEvent = 0;        // highest event id shown
  let filter = null;        // RegExp or null

  window.masseDashboard = { loadedAt: Date.now(), snapshots: 0, events: 0 };

  function url(path, params) {
    const u = new URL(base + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
    if (token) u.searchParams.set("token", token);
    return u.toString();
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  // A masse glob (*, ?, [a-z], [!x]) as an anchored RegExp; null if invalid.
  function globToRegExp(glob) {
    let re = "^";
    for (let i = 0; i < glob.length; i++) {
      const c = glob[i];
      if (c === "*") re += ".*";
      else if (c === "?") re += ".";
      else if (c === "[") {
        const end = glob.indexOf("]", i + 2);
        if (end < 0) return null;
        let body = glob.slice(i + 1, end);
        if (body.startsWith("!")) body = "^" + body.slice(1);
        re += "[" + body.replace(/\\/g, "\\\\") + "]";
        i = end;
      } else re += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
    }
    try { return new RegExp(re + "$"); } catch (_) { return null; }
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    const s = Math.max(0, ms) / 1000;
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    const m = s / 60;
    if (m < 120) return Math.floor(m) + " min " + Math.round(s % 60) + " s";
    const h = m / 60;
    if (h < 48) return Math.floor(h) + " h " + Math.round(m % 60) + " min";
    return Math.floor(h / 24) + " d " + Math.round(h % 24) + " h";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function tags(list) {
    const span = el("span");
    for (const t of list) span.append(el("span", { class: "tag" }, t));
    return span;
  }

  function traffic(s) {
    if (!s) return "—";
    const d = s.dials || {};
    const failed = (d.not_found || 0) + (d.refused || 0) + (d.failed || 0);
    const c = (s.dial_steps_ms || {}).connect || {};
    const p50 = c.p50 === null || c.p50 === undefined ? "" : " · connect p50 ≤ " + c.p50 + " ms";
    return "↓ " + bytes(s.bytes_in) + " ↑ " + bytes(s.bytes_out) + " · " + s.streams_open +
      " open · dials " + d.ok + " ok / " + failed + " failed" + p50;
  }

  function row(ns, p) {
    const tr = el("tr", { "data-peer": p.name, "data-namespace": ns, "data-state": p.state });
    tr.append(
      el("td", {}, el("span", { class: "badge " + p.state }, p.state)),
      el("td", { class: "name" }, p.name),
      el("td", { class: "mono", title: p.instance }, p.instance.slice(0, 8)),
      el("td", { class: "mono" }, p.endpoints.join("\n")),
      el("td", {}, tags(p.services)),
      el("td", {}, tags(Object.entries(p.metadata).map(([k, v]) => k + "=" + v))),
      el("td", { class: "num age", "data-ms": String(p.age_ms) }, duration(p.age_ms)),
      el("td", { class: "num expires", "data-ms": p.expires_in_ms === null ? "" : String(p.expires_in_ms) },
        duration(p.expires_in_ms)),
      el("td", { class: "traffic" }, traffic(p.stats)),
    );
    return tr;
  }

  function render() {
    const root = document.getElementById("namespaces");
    if (!snapshot) return;
    const sections = [];
    for (const ns of snapshot.namespaces) {
      const r = ns.registry;
      const up = r.reachable === true, down = r.reachable === false;
      const health = el("span", { class: "health" },
        el("span", { class: "dot" + (up ? " up" : down ? " down" : "") }),
        up ? "registry reachable, " + (r.latency_ms === null ? "?" : r.latency_ms.toFixed(1)) + " ms"
          : down ? "registry unreachable: " + (r.error || "?") : "registry not listed yet");
      const counts = el("span", { class: "counts" },
        ns.states.alive + " alive · " + ns.states.evasive + " evasive · " + ns.states.unknown + " unknown");
      const peers = ns.peers.filter((p) => !filter || filter.test(p.name));
      const section = el("section", { class: "ns", "data-namespace": ns.namespace },
        el("div", { class: "ns-head" }, el("h2", {}, ns.namespace), health, counts));
      if (peers.length === 0) {
        section.append(el("div", { class: "empty" }, ns.peers.length ? "no peer matches the filter" : "no peers"));
      } else {
        const head = el("tr", {});
        for (const h of ["state", "name", "instance", "endpoints", "services", "metadata", "age", "expires in", "traffic"]) {
          head.append(el("th", {}, h));
        }
        const body = el("tbody", {});
        for (const p of peers) body.append(row(ns.namespace, p));
        section.append(el("table", {}, el("thead", {}, head), body));
      }
      sections.push(section);
    }
    root.replaceChildren(...sections);
  }

  // Ages and times left, between snapshots.
  function tick() {
    if (!snapshot) return;
    const elapsed = performance.now() - receivedAt;
    for (const td of document.querySelectorAll("td.age")) {
      td.textContent = duration(Number(td.dataset.ms) + elapsed);
    }
    for (const td of document.querySelectorAll("td.expires")) {
      if (td.dataset.ms !== "") td.textContent = duration(Number(td.dataset.ms) - elapsed);
    }
  }

  function addEvents(list) {
    const ol = document.getElementById("events");
    for (const e of list) {
      if (e.id <= lastEvent) continue;
      lastEvent = e.id;
      window.masseDashboard.events++;
      const time = new Date(e.time_ms).toISOString().slice(11, 23);
      const who = e.name ? e.name + (e.instance ? " " + e.instance.slice(0, 8) : "") : "";
      const li = el("li", { "data-kind": e.kind, "data-peer": e.name || "" },
        el("span", { class: "time" }, time),
        el("span", { class: "kind k-" + e.kind }, e.kind.replace("_", " ")),
        who + " ",
        snapshot && snapshot.namespaces.length > 1 ? el("span", { class: "tag" }, e.namespace) : null,
        e.detail ? el("span", { class: "detail" }, e.detail) : null);
      ol.prepend(li);
    }
    while (ol.children.length > MAX_EVENTS) ol.lastElementChild.remove();
  }

  function setSnapshot(doc) {
    snapshot = doc;
    receivedAt = performance.now();
    window.masseDashboard.snapshots++;
    render();
  }

  async function fetchEvents() {
    try {
      const res = await fetch(url("api/events", { since: String(lastEvent) }));
      if (res.ok) addEvents((await res.json()).events);
    } catch (_) { /* the stream reconnects by itself */ }
  }

  function setConn(state, text) {
    const c = document.getElementById("conn");
    c.dataset.state = state;
    c.textContent = text;
  }

  function connect() {
    const es = new EventSource(url("api/stream"));
    es.addEventListener("peers", (e) => setSnapshot(JSON.parse(e.data)));
    es.addEventListener("event", (e) => addEvents([JSON.parse(e.data)]));
    es.addEventListener("resync", fetchEvents);
    es.onopen = () => { setConn("live", "live"); fetchEvents(); };
    es.onerror = () => setConn("down", "reconnecting…");
  }

  const input = document.getElementById("filter");
  input.addEventListener("input", () => {
    const v = input.value.trim();
    filter = v ? globToRegExp(v) : null;
    input.classList.toggle("invalid", v !== "" && filter === null);
    render();
  });

  (async function start() {
    try {
      const res = await fetch(url("api/peers"));
      if (res.status === 401) { setConn("down", "unauthorized: add ?token=… to the address"); return; }
      if (res.ok) setSnapshot(await res.json());
    } catch (_) { /* the stream will tell */ }
    await fetchEvents();
    connect();
    setInterval(tick, 250);
  })();
})();
