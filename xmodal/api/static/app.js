// xmodal web page: a plain ES module, no build step, no requests to anything but this server.
// Every piece of data goes into the page as text nodes or element properties, never as HTML.
import { card, configure, freeObjectUrls, productCard } from "./cards.js";
import { facetNames, renderSort, showFacets, sortSpec } from "./facets.js";

const K = 24;             // results a page
const MAX_OFFSET = 900;   // the API's bound on offset
const SEGMENTS = 4;       // matching segments asked for each video (and long sound): the best, then times to jump to
const KEY_STORE = "xmodal.apikey";
const MODALITY_LABELS = { image: "images", text: "text", audio: "audio", video: "videos" };
const COUNTED = { image: ["image", "images"], text: ["text", "texts"], audio: ["sound", "sounds"],
  video: ["video", "videos"] };
// "strong matches only": relevance at least 1, ten times less likely than the best of the collection's
// unrelated items (see docs/serving.md on scores)
const STRONG = 1;
const NOT_FILTERS = new Set(["snippet"]);  // free text made for display, not for filtering
// Filter fields in words. Fields not named here (a manifest's own columns) show their name, title-cased.
const FIELD_LABELS = {
  chars: "Length (characters)", title: "Title", width: "Width (px)", height: "Height (px)", format: "Format",
  duration_s: "Duration (s)", sample_rate: "Sample rate (Hz)", channels: "Channels", subtype: "Encoding",
  windows: "Windows", window_s: "Window length (s)", price: "Price", category: "Category", brand: "Brand",
  tags: "Tags", sku: "SKU",
};
// The fields the decoders write for each modality (xmodal/media, xmodal/indexer/decode.py). Any other field
// (a manifest's columns, a text's title) is the catalog's and is offered whatever the "Find" target.
const MODALITY_FIELDS = {
  image: ["width", "height", "format"],
  audio: ["duration_s", "sample_rate", "channels", "format", "subtype", "windows", "window_s"],
  text: ["chars"],
  video: ["duration_s", "width", "height", "codec", "format", "rotation", "has_audio", "frames", "frame_interval_s",
    "windows"],
};

const $ = (id) => document.getElementById(id);
const state = {
  collections: [],
  query: null,          // {kind: "text", text} | {kind: "file", file} | {kind: "similar", id, label}
  offset: 0,
  controller: null,     // aborts the request in flight when a newer one starts
  previewUrl: null,     // the uploaded query's blob URL, freed when the query changes
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "attrs") for (const [name, v] of Object.entries(value)) node.setAttribute(name, v);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);  // strings: text nodes
  return node;
}

const apiKey = () => localStorage.getItem(KEY_STORE) || "";

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

class ApiError extends Error {
  constructor(message, code) { super(message); this.code = code; }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Could not reach the server.", "network");
  }
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const message = body && typeof body.message === "string" ? body.message : `HTTP ${response.status}`;
    throw new ApiError(message, body && body.error ? String(body.error) : `http_${response.status}`);
  }
  return body;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el("strong", {}, "Error"), `: ${error.message}`);
  box.title = error.code || "";
  box.hidden = false;
}

function setBusy(busy) {
  $("results").setAttribute("aria-busy", String(busy));
  document.body.classList.toggle("busy", busy);
  if (busy) {
    $("prev").disabled = true;
    $("next").disabled = true;
  }
}

function currentCollection() {
  return state.collections.find((c) => c.name === $("collection").value);
}

// ---- controls that follow the collection: target modalities, upload types, filters ----

function fieldLabel(name) {
  if (FIELD_LABELS[name]) return FIELD_LABELS[name];
  return name.split(/[_\s]+/).filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join(" ") || name;
}

// a field is offered when the target's modalities write it, or when no modality's decoder does (the catalog's own)
function fieldShown(name, target) {
  const owners = Object.keys(MODALITY_FIELDS).filter((m) => MODALITY_FIELDS[m].includes(name));
  return target === "any" || owners.length === 0 || owners.includes(target);
}

function plural(n, [one, many]) {
  return `${n} ${n === 1 ? one : many}`;
}

function renderHint() {
  const col = currentCollection();
  const hint = $("hint");
  if (!col || state.query) {
    hint.hidden = true;
    return;
  }
  const counts = Object.entries(col.modalities || {}).filter(([, n]) => n > 0).sort(([a], [b]) => a.localeCompare(b));
  const held = new Set(counts.map(([m]) => m));
  const kinds = ["an image", held.has("audio") ? "a sound" : null, held.has("video") ? "a video clip" : null]
    .filter(Boolean);
  hint.replaceChildren(
    el("p", {}, "Type what you are looking for (“red leather boots”, “rain on a tin roof”) and press Enter, or drop "
      + (kinds.length > 1 ? kinds.slice(0, -1).join(", ") + " or " + kinds[kinds.length - 1] : kinds[0])
      + " above to find look-alikes; “similar” on a result finds more "
      + "like it."),
    el("p", {}, `${col.name} holds `
      + (counts.length ? counts.map(([m, n]) => plural(n, COUNTED[m] || [m, m])).join(", ") : "nothing yet") + "."));
  hint.hidden = false;
}

function renderFilters() {
  const col = currentCollection();
  const target = $("target").value || "any";
  const kept = new Map();  // what was typed or chosen in fields that stay
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    kept.set(`${input.dataset.field}/${input.dataset.bound || ""}`,
      input.dataset.type === "boolean" ? input.dataset.state : input.value);
  }
  const fields = col ? Object.entries(col.metadata_fields || {})
    .filter(([name]) => !NOT_FILTERS.has(name) && fieldShown(name, target)) : [];
  $("filter-fields").replaceChildren(...fields.map(([name, type]) => filterControl(name, type)));
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    const value = kept.get(`${input.dataset.field}/${input.dataset.bound || ""}`);
    if (value === undefined) continue;
    if (input.dataset.type === "boolean") setTriState(input, value);
    else input.value = value;
  }
  $("filters-box").hidden = fields.length === 0;
  countFilters();
}

function countFilters() {
  const spec = filterSpec();
  const n = spec ? spec.and.length : 0;
  $("filter-count").textContent = n ? `(${n} active)` : "";
}

function renderControls() {
  const col = currentCollection();
  const modalities = Object.entries(col ? col.modalities : {}).filter(([, n]) => n > 0).map(([m]) => m).sort();

  const target = $("target");
  const previous = target.value;
  target.replaceChildren(el("option", { value: "any", textContent: "anything" }),
    ...modalities.map((m) => el("option", { value: m, textContent: MODALITY_LABELS[m] || m })));
  target.value = modalities.includes(previous) ? previous : "any";

  const audio = modalities.includes("audio");
  const video = modalities.includes("video");
  $("file").accept = ["image/*", audio ? "audio/*" : null, video ? "video/*" : null].filter(Boolean).join(",");
  const kinds = ["an image", audio ? "audio file" : null, video ? "video clip" : null].filter(Boolean);
  $("drop-text").replaceChildren(
    `Drop ${kinds.length > 1 ? kinds.slice(0, -1).join(", ") + " or " + kinds[kinds.length - 1] : kinds[0]} here `
      + "to find look-alikes, or ",
    el("u", {}, "choose a file"));

  renderFilters();
  $("sort-box").hidden = !renderSort($("sort"), col, fieldLabel);
  renderHint();
}

function filterControl(name, type) {
  const label = fieldLabel(name);
  if (type === "integer" || type === "number") {
    const step = type === "integer" ? "1" : "any";
    return el("div", { className: "field", attrs: { role: "group", "aria-label": label } },
      el("span", { className: "field-name" }, label),
      el("label", { className: "inline" }, "min",
        el("input", { type: "number", step, inputMode: "decimal", dataset: { field: name, type, bound: "gte" },
          attrs: { "aria-label": `${label} at least` } })),
      el("label", { className: "inline" }, "max",
        el("input", { type: "number", step, inputMode: "decimal", dataset: { field: name, type, bound: "lte" },
          attrs: { "aria-label": `${label} at most` } })));
  }
  if (type === "boolean") {
    const shown = el("span", { className: "tri" }, "any");
    const box = el("input", { type: "checkbox", indeterminate: true, dataset: { field: name, type, state: "" } });
    // tri-state: any (indeterminate) -> yes -> no -> any; Space and click both cycle it
    box.addEventListener("click", () => {
      const next = { "": "true", true: "false", false: "" }[box.dataset.state];
      setTriState(box, next);
    });
    box._shown = shown;
    return el("div", { className: "field" }, el("label", { className: "inline" }, box, label, shown));
  }
  return el("div", { className: "field" }, el("label", { className: "inline" }, label,
    el("input", { type: "text", size: 10, autocomplete: "off", dataset: { field: name, type } })));
}

function setTriState(box, value) {
  box.dataset.state = value;
  box.indeterminate = value === "";
  box.checked = value === "true";
  box._shown.textContent = value === "" ? "any" : value === "true" ? "yes" : "no";
  countFilters();
}

function filterSpec() {
  const conditions = [];
  const ranges = new Map();
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    const { field, type, bound } = input.dataset;
    if (type === "boolean") {
      if (input.dataset.state) conditions.push({ field, op: "eq", value: input.dataset.state === "true" });
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    if (bound) {
      const number = Number(raw);
      if (!Number.isFinite(number)) continue;
      const range = ranges.get(field) || {};
      range[bound] = type === "integer" ? Math.round(number) : number;
      ranges.set(field, range);
    } else {
      conditions.push({ field, op: "eq", value: raw });
    }
  }
  for (const [field, value] of ranges) conditions.push({ field, op: "range", value });
  if (conditions.length === 0) return null;
  return { and: conditions };
}

function clearFilters() {
  for (const input of $("filter-fields").querySelectorAll("[data-field]")) {
    if (input.dataset.type === "boolean") setTriState(input, "");
    else input.value = "";
  }
  countFilters();
}

// ---- the query shown back: the dropped or chosen file, from a blob URL ----

function showQuery(query) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  const box = $("query-preview");
  if (!query || query.kind !== "file") {
    box.hidden = true;
    $("query-media").replaceChildren();
    return;
  }
  const { file } = query;
  const name = file.name || "the uploaded file";
  state.previewUrl = URL.createObjectURL(file);
  const kind = (file.type || "").split("/")[0];
  const label = { attrs: { "aria-label": `your query: ${name}` } };
  $("query-media").replaceChildren(kind === "audio" ? el("audio", { controls: true, src: state.previewUrl, ...label })
    : kind === "video" ? el("video", { controls: true, muted: true, src: state.previewUrl, ...label })
      : el("img", { src: state.previewUrl, alt: `your query: ${name}` }));
  $("query-name").textContent = `Your ${{ audio: "sound", video: "clip" }[kind] || "image"}: ${name}`;
  box.hidden = false;
}

function mix(results) {
  // what the page holds, by kind: a mixed page says so, so that no kind goes unseen
  const counts = {};
  for (const r of results) counts[r.modality] = (counts[r.modality] || 0) + 1;
  const kinds = Object.keys(counts).sort((a, b) => counts[b] - counts[a]);
  if (kinds.length < 2) return "";
  return ": " + kinds.map((m) => {
    const [one, many] = COUNTED[m] || [m, m];
    return `${counts[m]} ${counts[m] === 1 ? one : many}`;
  }).join(", ");
}

function describe(query) {
  if (query.kind === "text") return `“${query.text}”`;
  if (query.kind === "file") return query.file.name || "the uploaded file";
  if (query.kind === "browse") return "the whole collection";
  return `items like ${query.label}`;
}

async function run(query, offset) {
  const col = $("collection").value;
  if (!col || !query) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  if (query !== state.query) showQuery(query);
  state.query = query;
  $("hint").hidden = true;
  state.offset = offset;
  showError(null);
  setBusy(true);
  $("status").textContent = "Searching…";
  const target = $("target").value || "any";
  const filters = filterSpec();
  const strong = $("strong").checked;
  const signal = controller.signal;
  try {
    let body;
    if (query.kind === "text" || query.kind === "browse") {  // browse: no text, the filters (and sort) alone
      const sort = sortSpec($("sort"));
      const facets = facetNames(currentCollection());
      const asked = query.kind === "text" ? { text: query.text, item_id: null } : {};
      body = await api("/v1/search", {
        method: "POST", signal, headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ collection: col, ...asked, target, k: K, offset, filters, segments: SEGMENTS,
          ...(query.kind === "text" ? { min_relevance: strong ? STRONG : null } : {}),
          ...(sort ? { sort } : {}), ...(facets ? { facets } : {}) }),
      });
    } else if (query.kind === "file") {
      const form = new FormData();
      form.append("file", query.file);
      form.append("collection", col);
      form.append("target", target);
      form.append("k", String(K));
      form.append("offset", String(offset));
      form.append("segments", String(SEGMENTS));
      if (filters) form.append("filters", JSON.stringify(filters));
      if (strong) form.append("min_relevance", String(STRONG));
      body = await api("/v1/search/upload", { method: "POST", body: form, signal });
    } else {
      const params = new URLSearchParams({ collection: col, target, k: String(K), offset: String(offset),
        segments: String(SEGMENTS) });
      if (strong) params.set("min_relevance", String(STRONG));
      body = await api(`/v1/items/${encodeURIComponent(query.id)}/similar?${params}`, { signal });
    }
    if (signal.aborted) return;
    freeObjectUrls();
    const results = Array.isArray(body.results) ? body.results : [];
    const grouped = body.group_by === "source";  // one card per product
    $("results").replaceChildren(...results.map(grouped ? productCard : card));
    showFacets($("facets"), body.facets, fieldLabel, pickFacet);
    const of = typeof body.total === "number" && results.length
      ? ` of ${body.total_exact ? "" : "about "}${body.total}` : "";
    const total = body.timings_ms && typeof body.timings_ms.total === "number"
      ? ` (${Math.round(body.timings_ms.total)} ms)` : "";
    const first = offset + 1;
    $("nomatch").hidden = !body.no_good_match;
    if (body.no_good_match) {
      $("status").textContent = `No good match for ${describe(query)}${filters ? " with these filters" : ""}: nothing`
        + ` stands out from what chance gives (relevance under ${STRONG}).`;
    } else {
      $("status").textContent = results.length
        ? `Results ${first}–${offset + results.length}${of} for ${describe(query)}${filters ? ", filtered" : ""}`
          + `${grouped ? ` (${plural(results.length, ["product", "products"])})` : mix(results)}${total}`
        : `No results for ${describe(query)}${filters ? " with these filters" : ""}.`;
    }
    $("page").textContent = `page ${Math.floor(offset / K) + 1}`;
    setBusy(false);
    $("prev").disabled = offset === 0;
    $("next").disabled = results.length < K || body.has_more === false || offset + K > MAX_OFFSET;
  } catch (error) {
    if (error.name === "AbortError" || signal.aborted) return;
    setBusy(false);
    freeObjectUrls();
    $("results").replaceChildren();  // results of an earlier query under this error would mislead
    showFacets($("facets"), null);
    $("nomatch").hidden = true;
    $("status").textContent = "";
    $("page").textContent = "";
    showError(error);
  } finally {
    if (state.controller === controller) state.controller = null;
  }
}

// a facet value clicked: that value becomes the field's filter, and the search (or browse) runs again
function pickFacet(field, value) {
  const input = $("filter-fields").querySelector(`[data-field="${CSS.escape(field)}"]`);
  if (!input) return;
  if (input.dataset.type === "boolean") setTriState(input, String(value));
  else input.value = String(value);
  countFilters();
  run(state.query || { kind: "browse" }, 0);
}

function useFile(file) {
  if (!file) return;
  $("q").value = "";
  run({ kind: "file", file }, 0);
}

function resetResults() {
  if (state.controller) state.controller.abort();
  $("nomatch").hidden = true;
  state.query = null;
  state.offset = 0;
  freeObjectUrls();
  $("results").replaceChildren();
  showFacets($("facets"), null);
  $("status").textContent = "";
  $("page").textContent = "";
  showError(null);
  showQuery(null);
  setBusy(false);
  renderHint();
}

async function loadCollections() {
  const select = $("collection");
  const previous = select.value;
  try {
    state.collections = (await api("/v1/collections")).collections || [];
    showError(null);
  } catch (error) {
    state.collections = [];
    select.replaceChildren();
    renderControls();
    showError(error);
    if (error.code === "unauthorized") $("apikey-box").open = true;
    return;
  }
  select.replaceChildren(...state.collections.map((c) => el("option", { value: c.name, textContent: c.name })));
  if (state.collections.some((c) => c.name === previous)) select.value = previous;
  renderControls();
  if (state.collections.length === 0) $("status").textContent = "No collections are being served.";
}

function wire() {
  configure({ el, apiKey, headers, showError, moreLike: (query) => run(query, 0), STRONG, ApiError });
  const key = $("apikey");
  key.value = apiKey();
  const saveKey = () => {
    const value = key.value.trim();
    if (value === apiKey()) return;
    if (value) localStorage.setItem(KEY_STORE, value);
    else localStorage.removeItem(KEY_STORE);
    loadCollections();
  };
  key.addEventListener("change", saveKey);
  $("apikey-form").addEventListener("submit", (event) => { event.preventDefault(); saveKey(); });

  $("collection").addEventListener("change", () => { renderControls(); resetResults(); });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) run({ kind: "text", text }, 0);
    else if (filterSpec() || sortSpec($("sort"))) run({ kind: "browse" }, 0);
    else $("q").focus();
  });
  $("target").addEventListener("change", () => { renderFilters(); if (state.query) run(state.query, 0); });
  $("clear-query").addEventListener("click", () => { $("q").value = ""; resetResults(); });
  $("strong").addEventListener("change", () => state.query && run(state.query, 0));
  $("closest").addEventListener("click", () => {
    $("strong").checked = false;
    if (state.query) run(state.query, 0);
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.query) run(state.query, 0);
    else if (filterSpec() || sortSpec($("sort"))) run({ kind: "browse" }, 0);
  });
  $("sort").addEventListener("change", () => state.query && run(state.query, 0));
  $("filter-fields").addEventListener("change", () => { countFilters(); if (state.query) run(state.query, 0); });
  $("filter-fields").addEventListener("input", countFilters);
  $("clear-filters").addEventListener("click", () => { clearFilters(); if (state.query) run(state.query, 0); });
  $("prev").addEventListener("click", () => run(state.query, Math.max(0, state.offset - K)));
  $("next").addEventListener("click", () => run(state.query, state.offset + K));

  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      file.click();
    }
  });
  file.addEventListener("change", () => {
    useFile(file.files[0]);
    file.value = "";  // choosing the same file again searches again
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    useFile(event.dataTransfer && event.dataTransfer.files[0]);
  });
  // a file dropped beside the zone must not make the browser navigate away to it
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

wire();
loadCollections();
