// xmodal web page: plain ES module, no build step, no requests beyond this server.
const K = 24;
const $ = (id) => document.getElementById(id);
const state = { collections: [], query: null, offset: 0, filtersOn: false };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node[key] = value;
  }
  for (const child of children) node.append(child);  // strings become text nodes: never HTML
  return node;
}

function headers(extra = {}) {
  const key = localStorage.getItem("xmodal.apikey");
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.message ? body.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function collection() {
  return state.collections.find((c) => c.name === $("collection").value);
}

function renderControls() {
  const col = collection();
  const target = $("target");
  const previous = target.value;
  target.replaceChildren(el("option", { value: "any", textContent: "anything" }));
  for (const modality of Object.keys(col ? col.modalities : {}).sort()) {
    target.append(el("option", { value: modality, textContent: `${modality}s` }));
  }
  if ([...target.options].some((o) => o.value === previous)) target.value = previous;

  const box = $("filter-fields");
  box.replaceChildren();
  // free text made for display, not for filtering
  const fields = col ? Object.entries(col.metadata_fields).filter(([name]) => name !== "snippet") : [];
  $("filters").hidden = fields.length === 0;
  for (const [name, type] of fields) {
    if (type === "integer" || type === "number") {
      box.append(el("label", {}, `${name} ≥`, el("input", { type: "number", dataset: { field: name, bound: "gte", type } }),
        "≤", el("input", { type: "number", dataset: { field: name, bound: "lte", type } })));
    } else if (type === "boolean") {
      const select = el("select", { dataset: { field: name, type } },
        el("option", { value: "", textContent: "any" }), el("option", { value: "true", textContent: "yes" }),
        el("option", { value: "false", textContent: "no" }));
      box.append(el("label", {}, name, select));
    } else {
      box.append(el("label", {}, name, el("input", { type: "text", size: 10, dataset: { field: name, type } })));
    }
  }
}

function filterSpec() {
  const conditions = [];
  const ranges = {};
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    const { field, type, bound } = input.dataset;
    const raw = input.value.trim();
    if (raw === "") continue;
    if (bound) {
      const number = Number(raw);
      if (Number.isNaN(number)) continue;
      ranges[field] = { ...(ranges[field] || {}), [bound]: type === "integer" ? Math.round(number) : number };
    } else if (type === "boolean") {
      conditions.push({ field, op: "eq", value: raw === "true" });
    } else {
      conditions.push({ field, op: "eq", value: raw });
    }
  }
  for (const [field, value] of Object.entries(ranges)) conditions.push({ field, op: "range", value });
  if (conditions.length === 0) return null;
  return conditions.length === 1 ? conditions[0] : { and: conditions };
}

function card(result) {
  const meta = result.metadata || {};
  const name = decodeURIComponent(result.uri.split("/").pop() || result.uri);
  let body;
  if (result.modality === "image" && result.thumbnail_url) {
    body = el("img", { src: result.thumbnail_url, alt: name, loading: "lazy" });
  } else if (result.modality === "audio") {
    body = el("audio", { controls: true, preload: "none", src: result.media_url });
  } else {
    body = el("div", { className: "text", textContent: meta.snippet || meta.title || name });
  }
  const similar = el("button", { type: "button", className: "link", textContent: "similar",
    onclick: () => run({ kind: "similar", id: result.id, label: name }, 0) });
  return el("article", { className: "card", dataset: { id: String(result.id), modality: result.modality } },
    el("a", { href: result.media_url, target: "_blank", rel: "noopener", title: result.uri }, body),
    el("div", { className: "meta" },
      el("span", { className: "name", title: result.uri, textContent: name }),
      el("span", { textContent: `${result.modality} · ${result.score.toFixed(3)}` }),
      similar));
}

async function run(query, offset) {
  const col = $("collection").value;
  if (!col) return;
  state.query = query;
  state.offset = offset;
  showError("");
  $("status").textContent = "Searching…";
  const target = $("target").value || "any";
  const filters = filterSpec();
  try {
    let body;
    if (query.kind === "text") {
      body = await api("/v1/search", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ collection: col, text: query.text, target, k: K, offset, filters }),
      });
    } else if (query.kind === "file") {
      const form = new FormData();
      form.append("file", query.file);
      form.append("collection", col);
      form.append("target", target);
      form.append("k", String(K));
      form.append("offset", String(offset));
      if (filters) form.append("filters", JSON.stringify(filters));
      body = await api("/v1/search/upload", { method: "POST", body: form });
    } else {
      const params = new URLSearchParams({ collection: col, target, k: String(K), offset: String(offset) });
      body = await api(`/v1/items/${query.id}/similar?${params}`);
    }
    $("results").replaceChildren(...body.results.map(card));
    const what = query.kind === "text" ? `“${query.text}”` : query.kind === "file" ? query.file.name : `like ${query.label}`;
    $("status").textContent = body.results.length
      ? `${body.results.length} results for ${what} (${Math.round(body.timings_ms.total)} ms)`
      : `No results for ${what}.`;
    $("page").textContent = `page ${Math.floor(offset / K) + 1}`;
    $("prev").disabled = offset === 0;
    $("next").disabled = body.results.length < K || offset + K > 900;
  } catch (error) {
    $("status").textContent = "";
    showError(error.message);
  }
}

function useFile(file) {
  if (!file) return;
  $("q").value = "";
  run({ kind: "file", file }, 0);
}

async function init() {
  const key = $("apikey");
  key.value = localStorage.getItem("xmodal.apikey") || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem("xmodal.apikey", key.value);
    else localStorage.removeItem("xmodal.apikey");
    init();
  });
  try {
    state.collections = (await api("/v1/collections")).collections;
    showError("");
  } catch (error) {
    showError(error.message);
    return;
  }
  const select = $("collection");
  select.replaceChildren(...state.collections.map((c) => el("option", { value: c.name, textContent: c.name })));
  renderControls();
}

$("collection").addEventListener("change", () => { renderControls(); $("results").replaceChildren(); });
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) run({ kind: "text", text }, 0);
});
$("target").addEventListener("change", () => state.query && run(state.query, 0));
$("filter-fields").addEventListener("change", () => state.query && run(state.query, 0));
$("prev").addEventListener("click", () => run(state.query, Math.max(0, state.offset - K)));
$("next").addEventListener("click", () => run(state.query, state.offset + K));
const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
$("file").addEventListener("change", (event) => useFile(event.target.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  useFile(event.dataTransfer.files[0]);
});
init();
