/* Molam Analytics dashboard: reads the /v1 API with the bearer token the user gives. */
(function () {
  "use strict";

  const TOKEN_KEY = "molam.analytics.token";
  const REFRESH_MS = 15000;
  const RANGES = {
    "24h": { hours: 24, granularity: "hour" },
    "7d": { hours: 24 * 7, granularity: "hour" },
    "30d": { hours: 24 * 30, granularity: "day" },
    "90d": { hours: 24 * 90, granularity: "day" },
  };
  const $ = (sel) => document.querySelector(sel);
  const state = { me: null, timer: null, charts: {}, loads: 0, busy: false };

  // ---- token ------------------------------------------------------------------------------
  // A link carries the token in its fragment (/#token=...): browsers never send a fragment to
  // a server, so it stays out of access logs, proxies and Referer headers. It is dropped from
  // the address bar at once. A token in the query (?token=...) has already been sent: it is
  // removed from the address bar too, but not used, so such links stop working visibly.
  let urlNotice = "";
  function takeTokenFromUrl() {
    const fragment = new URLSearchParams(window.location.hash.slice(1));
    const query = new URLSearchParams(window.location.search);
    const given = fragment.get("token");
    if (given) sessionStorage.setItem(TOKEN_KEY, given.trim());
    if (query.has("token") && !given) {
      urlNotice = "A token in the page's query (?token=) is not accepted: it travels to " +
        "servers and their logs. Open the page with #token=… or paste the token here.";
    }
    if (!fragment.has("token") && !query.has("token")) return;
    fragment.delete("token");
    query.delete("token");
    const rest = query.toString();
    const hash = fragment.toString();
    window.history.replaceState(null, "",
      window.location.pathname + (rest ? "?" + rest : "") + (hash ? "#" + hash : ""));
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || "HTTP " + status);
      this.status = status;
    }
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // ---- formatting ---------------------------------------------------------------------------
  function money(value, currency) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    const abs = Math.abs(n);
    if (abs >= 1e4) {  // compact past five digits, so a tile never truncates
      return new Intl.NumberFormat("en-US", { style: "currency", currency, notation: "compact", maximumFractionDigits: 2 }).format(n);
    }
    return new Intl.NumberFormat("en-US", { style: "currency", currency }).format(n);
  }
  const count = (n) => new Intl.NumberFormat("en-US").format(n);
  // Measured values (rates, volumes) arrive as exact decimal strings: show a readable figure.
  const figure = (v) => (v === null || v === undefined ? "–"
    : new Intl.NumberFormat("en-US", { maximumSignificantDigits: 6 }).format(Number(v)));
  const pct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + "%");
  function ago(iso) {
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 90) return Math.round(s) + "s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const c of children) node.append(c);
    return node;
  }

  // ---- query ------------------------------------------------------------------------------------
  function query() {
    const range = RANGES[$("#range").value] || RANGES["7d"];
    const end = new Date();
    end.setUTCMinutes(0, 0, 0);
    end.setUTCHours(end.getUTCHours() + 1);
    const start = new Date(end.getTime() - range.hours * 3600 * 1000);
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const q = new URLSearchParams({ from: start.toISOString(), to: end.toISOString(), tz });
    const merchant = $("#merchant").value.trim();
    if (merchant && state.me && state.me.reads_all_merchants) q.set("merchant_id", merchant);
    return { q, granularity: range.granularity };
  }

  // ---- rendering -----------------------------------------------------------------------------
  function setTile(kpi, value, text) {
    const tile = document.querySelector('[data-kpi="' + kpi + '"]');
    tile.dataset.value = value === null ? "" : String(value);
    tile.querySelector(".value").textContent = text;
  }

  // The KPI tiles (index.html's data-kpi) and the unit of each, as core/catalogue.py declares
  // them (tests/workloads/core/test_catalogue.py compares the two).
  const KPI_TILES = [
    ["gross_volume", "money"],
    ["net_volume", "money"],
    ["tx_count", "count"],
    ["success_rate", "ratio"],
    ["avg_ticket", "money"],
    ["refund_volume", "money"],
    ["fees", "money"],
  ];
  const SHOW = { money, count, ratio: pct };  // each called as (value, currency)

  function renderKpis(body) {
    const k = body.kpis;
    const cur = body.currency;
    for (const [kpi, unit] of KPI_TILES) setTile(kpi, k[kpi], SHOW[unit](k[kpi], cur));
    $('[data-sub="payment_count"]').textContent = count(k.payment_count) + " succeeded payments";
    $('[data-sub="status_split"]').textContent = count(k.failed_count) + " failed · " + count(k.pending_count) + " pending";
    $('[data-sub="refund_count"]').textContent = count(k.refund_count) + " refunds";
    state.dataAsOf = body.data_as_of;
    $("#unconverted").textContent = body.unconverted_currencies.length
      ? "No FX rate, left out of amounts: " + body.unconverted_currencies.join(", ")
      : "";
  }

  function renderLive(body) {
    const tile = document.querySelector('[data-live="tx_count"]');
    const c = body.counters || {};
    tile.dataset.value = c.tx_count || "0";
    tile.querySelector(".value").textContent = count(Number(c.tx_count || 0));
    const volume = c.gross_volume_reporting !== undefined
      ? money(c.gross_volume_reporting, c.reporting_currency || "USD") + " processed · "
      : "";
    $('[data-sub="live_source"]').textContent = "transactions · " + volume + "via " + body.source;
  }

  function chartSize(node) {
    return { width: Math.max(300, node.clientWidth), height: 260 };
  }

  function axisStyle() {
    const grid = { stroke: "rgba(139,150,163,.12)", width: 1 };
    return { stroke: "#8b96a3", grid, ticks: grid };
  }

  function drawChart(name, node, series, data, valueFmt) {
    const existing = state.charts[name];
    if (existing && existing.series.length === series.length + 1) {
      existing.setData(data);
      return;
    }
    if (existing) existing.destroy();
    node.textContent = "";
    const opts = Object.assign(chartSize(node), {
      series: [{}].concat(series.map((s) => Object.assign({ width: 2, points: { show: false }, value: (u, v) => (v === null ? "–" : valueFmt(v)) }, s))),
      axes: [axisStyle(), Object.assign(axisStyle(), { size: 70, values: (u, vals) => vals.map((v) => valueFmt(v)) })],
      scales: { x: { time: true } },
      cursor: { drag: { x: false, y: false } },
    });
    state.charts[name] = new uPlot(opts, data, node);
  }

  function renderSeries(body, granularity) {
    const xs = body.points.map((p) => new Date(p.bucket).getTime() / 1000);
    const cur = body.currency;
    const compact = (v) => new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(v);
    drawChart("volume", $("#chart-volume"), [
      { label: "Gross (" + cur + ")", stroke: "#3fb68b", fill: "rgba(63,182,139,.10)" },
      { label: "Net (" + cur + ")", stroke: "#58a6ff" },
    ], [xs, body.points.map((p) => Number(p.gross_volume)), body.points.map((p) => Number(p.net_volume))], compact);
    drawChart("count", $("#chart-count"), [
      { label: "Transactions", stroke: "#c9d1d9", fill: "rgba(201,209,217,.06)" },
      { label: "Succeeded", stroke: "#3fb68b" },
      { label: "Failed", stroke: "#f85149" },
    ], [xs, body.points.map((p) => p.tx_count), body.points.map((p) => p.succeeded_count), body.points.map((p) => p.failed_count)], compact);
    const per = granularity === "hour" ? "per hour" : "per day";
    $("#volume-hint").textContent = per + " · " + body.range.tz;
    $("#count-hint").textContent = per;
  }

  function renderTop(body) {
    const tbody = $("#top-merchants tbody");
    tbody.textContent = "";
    const max = Math.max(1, ...body.merchants.map((m) => Number(m.gross_volume)));
    for (const m of body.merchants) {
      const fill = el("div", { className: "barfill" });
      fill.style.width = ((Number(m.gross_volume) / max) * 100).toFixed(1) + "%";
      const row = el("tr", {},
        el("td", { textContent: String(m.rank) }),
        el("td", { className: "barcell" }, fill, el("span", { textContent: m.merchant_id })),
        el("td", { className: "num", textContent: money(m.gross_volume, body.currency) }),
        el("td", { className: "num", textContent: count(m.tx_count) }),
        el("td", { className: "num", textContent: pct(m.success_rate) }));
      row.dataset.merchant = m.merchant_id;
      row.dataset.volume = m.gross_volume;
      tbody.append(row);
    }
    $("#top-card .empty").hidden = body.merchants.length > 0;
  }

  function renderAlerts(body) {
    const list = $("#alerts");
    list.textContent = "";
    for (const a of body.items) {
      const scope = Object.entries(a.scope || {}).map(([k, v]) => k + "=" + v).join(", ") || "platform";
      const li = el("li", {},
        el("div", {},
          el("div", { className: "title", textContent: a.rule_name }),
          el("div", { className: "meta", textContent: a.metric + " " + a.comparison + " " + a.threshold + " · value " + figure(a.value) + " · " + scope + " · " + ago(a.started_at) })),
        el("span", { className: "chip " + a.severity, textContent: a.severity }));
      li.dataset.alert = String(a.id);
      list.append(li);
    }
    $("#alerts-total").textContent = body.total ? body.total + " firing" : "";
    list.nextElementSibling.hidden = body.items.length > 0;
  }

  function renderAnomalies(body) {
    const list = $("#anomalies");
    list.textContent = "";
    for (const a of body.items) {
      const li = el("li", {},
        el("div", {},
          el("div", { className: "title", textContent: (a.merchant_id || "platform") + " · " + a.metric }),
          el("div", { className: "meta", textContent: "value " + figure(a.value) + " vs baseline " + figure(a.baseline) + " (z " + Number(a.zscore).toFixed(1) + ") · " + ago(a.detected_at) })),
        el("span", { className: "chip " + a.direction, textContent: a.direction }));
      li.dataset.anomaly = String(a.id);
      list.append(li);
    }
    list.nextElementSibling.hidden = body.items.length > 0;
  }

  // ---- loading -----------------------------------------------------------------------------------
  function showBanner(message) {
    const banner = $("#banner");
    banner.textContent = message || "";
    banner.hidden = !message;
  }

  async function load() {
    if (state.busy) return;
    state.busy = true;
    const { q, granularity } = query();
    const live = new URLSearchParams();
    if (q.get("merchant_id")) live.set("merchant_id", q.get("merchant_id"));
    const scoped = q.get("merchant_id") ? "&merchant_id=" + encodeURIComponent(q.get("merchant_id")) : "";
    const jobs = [
      api("/v1/kpis?" + q).then(renderKpis),
      api("/v1/timeseries?" + q + "&granularity=" + granularity).then((b) => renderSeries(b, granularity)),
      api("/v1/live?" + live).then(renderLive),
      api("/v1/alerts?state=firing&limit=8" + scoped).then(renderAlerts),
      api("/v1/anomalies?limit=8" + scoped).then(renderAnomalies),
    ];
    if (state.me.reads_all_merchants) {
      const top = new URLSearchParams(q);
      top.delete("merchant_id");
      jobs.push(api("/v1/top-merchants?" + top + "&limit=10").then(renderTop));
    }
    const results = await Promise.allSettled(jobs);
    state.busy = false;
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    if (failed.some((e) => e.status === 401)) return signOut("Your token was refused or has expired.");
    showBanner(failed.length ? "Some panels could not load: " + failed[0].message : "");
    state.loads += 1;
    document.body.dataset.loads = String(state.loads);
    document.body.dataset.state = failed.length ? "partial" : "ready";
    $("#updated").textContent = "Updated " + new Date().toLocaleTimeString() + asOfText(state.dataAsOf);
    $("#updated").dataset.asOf = state.dataAsOf || "";
  }

  // data_as_of: the event-time watermark of the figures, and how far behind the clock it is.
  function asOfText(asOf) {
    if (!asOf) return " · no data yet";
    const at = new Date(asOf);
    const behind = Math.max(0, Math.round((Date.now() - at.getTime()) / 1000));
    const lag = behind < 120 ? behind + " s" : behind < 7200 ? Math.round(behind / 60) + " min" : Math.round(behind / 3600) + " h";
    return " · data as of " + at.toLocaleTimeString() + " (" + lag + " behind)";
  }

  function schedule() {
    clearInterval(state.timer);
    if ($("#auto").checked) state.timer = setInterval(load, REFRESH_MS);
  }

  function signOut(message) {
    clearInterval(state.timer);
    sessionStorage.removeItem(TOKEN_KEY);
    $("#main").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    document.body.dataset.state = "login";
  }

  async function start() {
    if (!token()) return signOut(urlNotice);
    try {
      state.me = await api("/v1/me");
    } catch (e) {
      return signOut(e.status === 401 || e.status === 403 ? e.message : "The API is unreachable: " + e.message);
    }
    $("#login").hidden = true;
    $("#main").hidden = false;
    const me = state.me;
    $("#who").textContent = me.sub + " · " + me.role + (me.merchant_id ? " · " + me.merchant_id : "");
    $("#merchant-filter").hidden = !me.reads_all_merchants;
    $("#top-card").hidden = !me.reads_all_merchants;
    await load();
    schedule();
  }

  function bind() {
    $("#login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
      $("#token").value = "";
      start();
    });
    $("#signout").addEventListener("click", () => signOut(""));
    $("#range").addEventListener("change", load);
    $("#auto").addEventListener("change", schedule);
    let debounce = null;
    $("#merchant").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(load, 400);
    });
    window.addEventListener("resize", () => {
      for (const name of Object.keys(state.charts)) {
        const chart = state.charts[name];
        chart.setSize(chartSize(chart.root.parentNode));
      }
    });
  }

  takeTokenFromUrl();
  bind();
  start();
})();
