// The console: the API tells which streams and groups there are and where each log is; the logs
// themselves are read straight from storage (a SAS read URL on Azure, vault serve's read-only log
// route on the local store) and decoded here, every batch's checksum verified.
import { CorruptData, LogReader, httpSource } from "./decoder.js";

const API = "/api";
const KEY = "message-vault-key"; // sessionStorage: gone when the browser session ends
const PAGE = 200; // messages shown per read
const view = document.getElementById("view");
const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
let live = null; // the timer of the view shown: the tail's, or the streams' figures
const FIGURES_SECONDS = 5; // the window of the append rate and p99 shown beside each stream

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { "x-functions-key": key } : {};
}

async function api(path) {
  const response = await fetch(API + path, { headers: headers() });
  if (response.status === 401) {
    document.getElementById("key-form").hidden = false;
    throw new Error("this vault needs a key: enter it above");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || body.title || `${response.status}`);
  return body;
}

async function readerOf(stream) {
  const info = await api(`/streams/${encodeURIComponent(stream)}`);
  const route = httpSource(`${API}/streams/${encodeURIComponent(stream)}/log`, headers());
  // A stream of several segments is several blobs: the host's log route shows them as one log.
  const source = !/^https?:/i.test(info.read_url) || info.segments > 1
    ? route
    : firstThatWorks(httpSource(info.read_url), route);
  return new LogReader(source, info.first_position ?? 0); // reading from 0 starts where it starts now
}

// The read URL first; if the browser may not read it (an account without a CORS rule for this
// origin, such as the storage emulator: fetch then fails with a TypeError), the host's log route.
function firstThatWorks(preferred, fallback) {
  let source = preferred;
  const using = (call) => async (...args) => {
    try {
      return await source[call](...args);
    } catch (error) {
      if (source !== preferred || !(error instanceof TypeError)) throw error;
      source = fallback;
      return source[call](...args);
    }
  };
  return { read: using("read"), size: using("size") };
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

const iso = (ms) => new Date(ms).toISOString();
const bytes = (n) => (n < 1e3 ? `${n} B` : n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : `${(n / 1e6).toFixed(1)} MB`);

const SHOWN = 16 * 1024; // bytes of a value shown; the rest is counted

// A value as formatted JSON when it is JSON, text when it is UTF-8, hex otherwise.
export function present(value) {
  if (value.length > SHOWN) {
    const head = present(value.subarray(0, SHOWN));
    return { kind: `${head.kind}, first ${SHOWN} of ${value.length} bytes`, shown: `${head.shown}…` };
  }
  try {
    const decoded = text.decode(value);
    try {
      return { kind: "json", shown: JSON.stringify(JSON.parse(decoded), null, 2) };
    } catch {
      return { kind: "text", shown: decoded };
    }
  } catch {
    return { kind: "hex", shown: Array.from(value, (b) => b.toString(16).padStart(2, "0")).join(" ") };
  }
}

function damage(error) {
  if (error instanceof CorruptData) {
    return element("div", { class: "damage", "data-position": String(error.position) },
      `Damage at position ${error.position}: ${error.reason}. Messages before it are shown; nothing of the damaged batch is.`);
  }
  return element("div", { class: "damage" }, String(error.message || error));
}

function chart(points) {
  const box = element("div", { class: "chart" });
  if (points.length < 2 || !globalThis.uPlot) return box;
  const data = [points.map((p) => p[0] / 1000), points.map((p) => p[1])];
  const options = {
    width: 220, height: 60, legend: { show: false }, cursor: { show: false },
    axes: [{ show: false }, { show: false }], series: [{}, { stroke: "#2f6fbf", width: 1.5 }],
  };
  requestAnimationFrame(() => new globalThis.uPlot(options, data, box));
  return box;
}

// vault serve's GET /metrics, what a Prometheus scrape reads: its samples, by name and labels.
// The Function App has none (its metrics go to Application Insights): then null.
async function scrape() {
  const response = await fetch("/metrics", { headers: headers() });
  if (!response.ok) return null;
  const samples = [];
  for (const line of (await response.text()).split("\n")) {
    const sample = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!sample) continue; // a # HELP or # TYPE line
    const labels = Object.fromEntries([...(sample[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    samples.push({ name: sample[1], labels, value: Number(sample[3]) });
  }
  return { at: performance.now(), samples };
}

// A stream's append rate (messages a second) and p99 append time (seconds) between two scrapes:
// the p99 from the duration histogram's buckets, interpolated within its bucket as Prometheus'
// histogram_quantile does; null without appends in between.
export function figures(before, after, stream) {
  const total = (scraped, name, le) => scraped.samples
    .filter((s) => s.name === name && s.labels.stream === stream && (le === undefined || s.labels.le === le))
    .reduce((sum, s) => sum + s.value, 0);
  const delta = (name, le) => total(after, name, le) - total(before, name, le);
  const rate = delta("vault_append_messages_total") / ((after.at - before.at) / 1000);
  const count = delta("vault_append_duration_seconds_count");
  if (!count) return { rate, p99: null };
  const bounds = [...new Set(after.samples.filter((s) => s.name === "vault_append_duration_seconds_bucket" && s.labels.stream === stream)
    .map((s) => s.labels.le))].sort((a, b) => Number(a) - Number(b)); // "+Inf" sorts last
  const wanted = 0.99 * count;
  let lower = 0, below = 0;
  for (const le of bounds) {
    const upper = Number(le), within = delta("vault_append_duration_seconds_bucket", le);
    if (within >= wanted) {
      if (!Number.isFinite(upper)) return { rate, p99: lower }; // past the last bound: at least that
      return { rate, p99: lower + (upper - lower) * (within > below ? (wanted - below) / (within - below) : 1) };
    }
    lower = upper;
    below = within;
  }
  return { rate, p99: lower };
}

function showFigures(table, before, after) {
  for (const row of table.querySelectorAll("tr[data-stream]")) {
    const [rate, p99] = [row.querySelector("td.rate"), row.querySelector("td.p99")];
    if (!rate) continue;
    const shown = figures(before, after, row.dataset.stream);
    rate.dataset.rate = String(shown.rate);
    rate.textContent = `${shown.rate.toFixed(1)} msg/s`;
    p99.dataset.seconds = shown.p99 === null ? "" : String(shown.p99);
    p99.textContent = shown.p99 === null ? "-" : `${(shown.p99 * 1000).toFixed(1)} ms`;
  }
}

// Every few seconds, what each stream appended since the last look (the same numbers GET
// /metrics gives a scraper); where the host has no /metrics, a note where to look instead.
async function watchFigures(table) {
  let before = await scrape();
  if (!before) {
    for (const cell of table.querySelectorAll("td.rate, td.p99")) {
      cell.textContent = "-";
      cell.title = "this host sends its metrics to Application Insights";
    }
    return;
  }
  live = setInterval(async () => {
    const after = await scrape();
    if (!after) return;
    showFigures(table, before, after);
    before = after;
  }, FIGURES_SECONDS * 1000);
}

async function streamsView() {
  const { streams } = await api("/streams");
  const columns = ["stream", "position", "size", "last append", "growth", "append rate", "p99 append"];
  const table = element("table", { id: "streams" }, element("tr", {}, ...columns.map((h) => element("th", {}, h))));
  view.replaceChildren(element("h2", {}, "Streams"), table);
  if (!streams.length) table.append(element("tr", {}, element("td", { colspan: 7, class: "note" }, "no streams yet")));
  for (const { stream } of streams) {
    const row = element("tr", { "data-stream": stream }, element("td", {}, element("a", { href: `#/stream/${stream}?offset=0` }, stream)));
    table.append(row);
    try {
      const reader = await readerOf(stream);
      const [{ commit, points }, size] = await Promise.all([reader.growth(), reader.source.size()]);
      row.dataset.position = String(commit.position);
      row.append(
        element("td", { class: "num position" }, commit.position.toLocaleString("en")),
        element("td", { class: "num" }, bytes(size)),
        element("td", {}, commit.position ? iso(commit.timestampMs) : "-"),
        element("td", {}, chart(points)),
        element("td", { class: "num rate" }, "…"),
        element("td", { class: "num p99" }, "…"),
      );
    } catch (error) {
      row.append(element("td", { colspan: 6 }, damage(error)));
    }
  }
  await watchFigures(table);
}

function messageRow(message) {
  const { kind, shown } = present(message.value);
  return element("tr", { "data-offset": String(message.offset), "data-key": message.key },
    element("td", { class: "num" }, String(message.offset)),
    element("td", { class: "when" }, iso(message.timestampMs)),
    element("td", {}, message.key),
    element("td", {}, element("span", { class: "kind" }, kind), element("pre", { class: "value" }, shown)));
}

async function streamView(stream, params) {
  const reader = await readerOf(stream);
  const keyFilter = params.get("key") || "";
  const shows = (message) => !keyFilter || message.key.includes(keyFilter);
  const form = element("form", { class: "controls", id: "read" },
    element("label", {}, "from offset", element("input", { name: "offset", value: params.get("offset") ?? "", size: 12 })),
    element("label", {}, "or from time (UTC, ISO 8601)", element("input", { name: "time", value: params.get("time") ?? "", size: 26 })),
    element("label", {}, "key contains", element("input", { name: "key", value: keyFilter, size: 16 })),
    element("label", {}, element("span", {}, "live tail"), element("input", { name: "live", type: "checkbox", ...(params.get("live") ? { checked: "" } : {}) })),
    element("button", {}, "Read"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["offset", "time", "key"]) if (form.elements[name].value) next.set(name, form.elements[name].value);
    if (form.elements.live.checked) next.set("live", "1");
    location.hash = `#/stream/${stream}?${next}`;
  });
  const status = element("p", { class: "note", id: "status" });
  const table = element("table", { id: "messages" },
    element("tr", {}, ...["offset", "appended", "key", "value"].map((h) => element("th", {}, h))));
  view.replaceChildren(element("h2", {}, stream), form, status, table);
  try {
    let position;
    if (params.get("time")) {
      const when = Date.parse(params.get("time").endsWith("Z") || params.get("time").includes("+") ? params.get("time") : `${params.get("time")}Z`);
      if (Number.isNaN(when)) throw new Error(`not a time: ${params.get("time")}`);
      position = await reader.seekTime(when);
    } else if (params.get("live") && !params.get("offset")) {
      position = (await reader.commit()).position;
    } else {
      position = Number(params.get("offset") || 0);
    }
    if (params.get("live")) return tail(reader, position, table, status, shows);
    const page = await reader.read(position, PAGE);
    table.append(...page.messages.filter(shows).map(messageRow));
    if (page.damage) view.insertBefore(damage(page.damage), table);
    status.textContent = `${page.messages.length} messages from position ${position}; the next read starts at ${page.next} (committed: ${page.commit.position})`;
    status.dataset.next = String(page.next);
  } catch (error) {
    view.insertBefore(damage(error), table);
  }
}

// New batches as they are committed: the commit is read every second.
function tail(reader, from, table, status, shows) {
  let position = from;
  let busy = false;
  const poll = async () => {
    if (busy) return;
    busy = true;
    try {
      const commit = await reader.commit();
      if (commit.position > position) {
        const start = await reader.locate(position, commit.position);
        for await (const { header, messages } of reader.batches(start, commit.position)) {
          table.append(...messages.filter((m) => m.offset >= position && shows(m)).map(messageRow));
          position = header.end;
        }
      }
      status.textContent = `following from position ${from}; at ${position} (${iso(Date.now())})`;
      status.dataset.next = String(position);
    } catch (error) {
      clearInterval(live);
      view.insertBefore(damage(error), table);
    } finally {
      busy = false;
    }
  };
  poll();
  live = setInterval(poll, 1000);
}

async function groupsView() {
  const { groups } = await api("/groups");
  const table = element("table", { id: "groups" },
    element("tr", {}, ...["group", "stream", "checkpoint", "position", "lag", "oldest unread"].map((h) => element("th", {}, h))));
  for (const lag of groups) {
    table.append(element("tr", { "data-group": lag.group, "data-stream": lag.stream, "data-lag": String(lag.lag_bytes) },
      element("td", {}, lag.group), element("td", {}, lag.stream),
      element("td", { class: "num" }, String(lag.checkpoint)), element("td", { class: "num" }, String(lag.position)),
      element("td", { class: "num" }, `${bytes(lag.lag_bytes)}${lag.behind_seconds ? `, ${lag.behind_seconds.toFixed(0)} s behind` : ""}`),
      element("td", {}, lag.oldest_unread || "-")));
  }
  if (!groups.length) table.append(element("tr", {}, element("td", { colspan: 6, class: "note" }, "no consumer groups yet")));
  view.replaceChildren(element("h2", {}, "Consumer groups"), table);
}

async function route() {
  clearInterval(live);
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  try {
    if (path.startsWith("/stream/")) await streamView(decodeURIComponent(path.slice(8)), params);
    else if (path === "/groups") await groupsView();
    else await streamsView();
  } catch (error) {
    view.replaceChildren(damage(error));
  }
  document.body.dataset.ready = location.hash || "#/";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("key").value);
  document.getElementById("key-form").hidden = true;
  route();
});
document.getElementById("where").textContent = location.host;
window.addEventListener("hashchange", route);
route();
