// xmodal web page: a plain ES module, no build step, no requests to anything but this server.
// Every piece of data goes into the page as text nodes or element properties, never as HTML.
const K = 24;             // results a page
const MAX_OFFSET = 900;   // the API's bound on offset
const KEY_STORE = "xmodal.apikey";
const MODALITY_LABELS = { image: "images", text: "text", audio: "audio" };
const COUNTED = { image: ["image", "images"], text: ["text", "texts"], audio: ["sound", "sounds"] };
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
};

const $ = (id) => document.getElementById(id);
const state = {
  collections: [],
  query: null,          // {kind: "text", text} | {kind: "file", file} | {kind: "similar", id, label}
  offset: 0,
  controller: null,     // aborts the request in flight when a newer one starts
  objectUrls: [],       // media fetched with the API key, freed when the results change
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
  const audio = counts.some(([m]) => m === "audio");
  hint.replaceChildren(
    el("p", {}, "Type what you are looking for (“red leather boots”, “rain on a tin roof”) and press Enter, or drop "
      + (audio ? "an image or a sound" : "an image") + " above to find look-alikes; “similar” on a result finds more "
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
  $("file").accept = audio ? "image/*,audio/*" : "image/*";
  $("drop-text").replaceChildren(
    audio ? "Drop an image or audio file here to find look-alikes, or " : "Drop an image here to find look-alikes, or ",
    el("u", {}, "choose a file"));

  renderFilters();
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
  const audio = (file.type || "").startsWith("audio/");
  $("query-media").replaceChildren(audio
    ? el("audio", { controls: true, src: state.previewUrl, attrs: { "aria-label": `your query: ${name}` } })
    : el("img", { src: state.previewUrl, alt: `your query: ${name}` }));
  $("query-name").textContent = `Your ${audio ? "sound" : "image"}: ${name}`;
  box.hidden = false;
}

// ---- results ----

function displayName(uri) {
  const last = uri.split(/[\\/]/).filter(Boolean).pop() || uri;
  if (!uri.startsWith("file://")) return last;   // plain paths are shown as they are
  try { return decodeURIComponent(last); } catch { return last; }
}

function freeObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function fetchObjectUrl(url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) throw new ApiError(`HTTP ${response.status}`, `http_${response.status}`);
  const objectUrl = URL.createObjectURL(await response.blob());
  state.objectUrls.push(objectUrl);
  return objectUrl;
}

// <img>/<audio> can't send X-API-Key: with a key set, media is fetched with it and shown from a blob URL.
function setMediaSource(node, url) {
  if (!apiKey()) {
    node.src = url;
    return;
  }
  fetchObjectUrl(url).then((objectUrl) => { node.src = objectUrl; }).catch(() => node.classList.add("broken"));
}

function openOriginal(url) {
  const tab = window.open("about:blank", "_blank");
  if (tab) tab.opener = null;
  fetchObjectUrl(url).then((objectUrl) => {
    if (tab) tab.location.href = objectUrl; else window.location.href = objectUrl;
  }).catch((error) => { if (tab) tab.close(); showError(error); });
}

// a plain link to the original; with an API key set, the click fetches it with the key instead
function mediaLink(url, props, ...children) {
  const link = el("a", { href: url, target: "_blank", rel: "noopener", ...props }, ...children);
  link.addEventListener("click", (event) => {
    if (!apiKey()) return;
    event.preventDefault();
    openOriginal(url);
  });
  return link;
}

function card(result) {
  const meta = result.metadata || {};
  const name = displayName(result.uri);
  let body;
  if (result.modality === "image" && result.thumbnail_url) {
    const img = el("img", { alt: name, loading: "lazy", decoding: "async", width: 320, height: 240 });
    setMediaSource(img, result.thumbnail_url);
    // the thumbnail is a second way to the same link: hidden from keyboard and screen readers
    body = mediaLink(result.media_url, { tabIndex: -1, className: "thumb", attrs: { "aria-hidden": "true" } }, img);
  } else if (result.modality === "audio") {
    const audio = el("audio", { controls: true, preload: "none", attrs: { "aria-label": name } });
    setMediaSource(audio, result.media_url);
    body = el("div", { className: "audio" }, audio);
  } else {
    const title = typeof meta.title === "string" ? meta.title : "";
    const snippet = typeof meta.snippet === "string" ? meta.snippet : "";
    // the title above the snippet only where the snippet does not start with it already
    const showTitle = title && snippet && !snippet.includes(title.replace(/…$/, ""));
    body = el("div", { className: "text" }, showTitle ? el("strong", {}, title) : null, snippet || title || name);
  }
  const relevance = typeof result.relevance === "number" ? result.relevance : null;
  const score = typeof result.score === "number" ? result.score.toFixed(3) : String(result.score);
  const scoreText = relevance === null ? `score ${score}` : `relevance ${relevance.toFixed(1)}`;
  const scoreTitle = `relevance ${relevance === null ? "–" : relevance.toFixed(2)} (how far it stands above chance;`
    + ` comparable across kinds) · raw score ${score} (${result.space}/${result.method})`;
  const similar = el("button", { type: "button", className: "link similar", textContent: "similar",
    attrs: { "aria-label": `find items similar to ${name}` },
    onclick: () => run({ kind: "similar", id: result.id, label: name }, 0) });
  return el("article", { className: "card",
    dataset: { id: String(result.id), modality: result.modality, relevance: String(relevance ?? "") } },
    body,
    el("div", { className: "meta" },
      el("span", { className: "name", title: result.uri, textContent: name }),
      el("span", { className: relevance !== null && relevance >= STRONG ? "score strong" : "score",
        textContent: `${result.modality} · ${scoreText}`, title: scoreTitle }),
      el("span", { className: "actions" }, similar, mediaLink(result.media_url, { className: "original",
        textContent: "original", attrs: { "aria-label": `open the original of ${name}` } }))));
}

// a product (group_by "source"): the thumbnail of its best item (else of the row's first image), title, source id
function productCard(product) {
  const best = product.best || {};
  const meta = product.metadata || {};
  const title = typeof meta.title === "string" ? meta.title : "";
  const sku = product.source_id === null || product.source_id === undefined ? "" : String(product.source_id);
  const name = title || sku || `item ${best.id}`;
  const image = best.thumbnail_url ? best : (product.items || []).find((it) => it.thumbnail_url);
  let body;
  if (image) {
    const img = el("img", { alt: name, loading: "lazy", decoding: "async", width: 320, height: 240 });
    setMediaSource(img, image.thumbnail_url);
    body = mediaLink(image.media_url, { tabIndex: -1, className: "thumb", attrs: { "aria-hidden": "true" } }, img);
  } else {
    body = el("div", { className: "text" }, el("strong", {}, name));
  }
  const relevance = typeof product.relevance === "number" ? product.relevance : null;
  const scoreText = relevance === null ? `score ${Number(product.score).toFixed(3)}` : `relevance ${relevance.toFixed(1)}`;
  const similar = el("button", { type: "button", className: "link similar", textContent: "similar",
    attrs: { "aria-label": `find products similar to ${name}` },
    onclick: () => run({ kind: "similar", id: best.id, label: name }, 0) });
  return el("article", { className: "card product",
    dataset: { source: sku, id: String(best.id), relevance: String(relevance ?? "") } },
    body,
    el("div", { className: "meta" },
      el("span", { className: "name", title: name, textContent: name }),
      el("span", { className: "sku", textContent: sku }),
      el("span", { className: relevance !== null && relevance >= STRONG ? "score strong" : "score",
        textContent: `${best.column || best.modality} matched · ${scoreText}` }),
      el("span", { className: "actions" }, similar)));
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
    if (query.kind === "text") {
      body = await api("/v1/search", {
        method: "POST", signal, headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ collection: col, text: query.text, item_id: null, target, k: K, offset, filters,
          min_relevance: strong ? STRONG : null }),
      });
    } else if (query.kind === "file") {
      const form = new FormData();
      form.append("file", query.file);
      form.append("collection", col);
      form.append("target", target);
      form.append("k", String(K));
      form.append("offset", String(offset));
      if (filters) form.append("filters", JSON.stringify(filters));
      if (strong) form.append("min_relevance", String(STRONG));
      body = await api("/v1/search/upload", { method: "POST", body: form, signal });
    } else {
      const params = new URLSearchParams({ collection: col, target, k: String(K), offset: String(offset) });
      if (strong) params.set("min_relevance", String(STRONG));
      body = await api(`/v1/items/${encodeURIComponent(query.id)}/similar?${params}`, { signal });
    }
    if (signal.aborted) return;
    freeObjectUrls();
    const results = Array.isArray(body.results) ? body.results : [];
    const grouped = body.group_by === "source";  // one card per product
    $("results").replaceChildren(...results.map(grouped ? productCard : card));
    const total = body.timings_ms && typeof body.timings_ms.total === "number"
      ? ` (${Math.round(body.timings_ms.total)} ms)` : "";
    const first = offset + 1;
    $("nomatch").hidden = !body.no_good_match;
    if (body.no_good_match) {
      $("status").textContent = `No good match for ${describe(query)}${filters ? " with these filters" : ""}: nothing`
        + ` stands out from what chance gives (relevance under ${STRONG}).`;
    } else {
      $("status").textContent = results.length
        ? `Results ${first}–${offset + results.length} for ${describe(query)}${filters ? ", filtered" : ""}`
          + `${grouped ? ` (${plural(results.length, ["product", "products"])})` : mix(results)}${total}`
        : `No results for ${describe(query)}${filters ? " with these filters" : ""}.`;
    }
    $("page").textContent = `page ${Math.floor(offset / K) + 1}`;
    setBusy(false);
    $("prev").disabled = offset === 0;
    $("next").disabled = results.length < K || offset + K > MAX_OFFSET;
  } catch (error) {
    if (error.name === "AbortError" || signal.aborted) return;
    setBusy(false);
    freeObjectUrls();
    $("results").replaceChildren();  // results of an earlier query under this error would mislead
    $("nomatch").hidden = true;
    $("status").textContent = "";
    $("page").textContent = "";
    showError(error);
  } finally {
    if (state.controller === controller) state.controller = null;
  }
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
  });
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
