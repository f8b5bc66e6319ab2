// Result cards: an image's thumbnail, a sound's player, a video's player at its segment, a text's snippet, a
// product (group_by "source"); with an API key set, media is fetched with the key and shown from blob URLs.
// Everything goes into the page as text nodes, never as HTML. The page (app.js) wires it with configure().
let el, apiKey, headers, showError, moreLike, STRONG, ApiError;
const objectUrls = [];  // media fetched with the API key, freed when the results change

// the page's helpers: el (makes an element), apiKey, headers, showError, moreLike (runs a "more like this"
// query), STRONG (the relevance a strong match reaches), ApiError
export function configure(page) {
  ({ el, apiKey, headers, showError, moreLike, STRONG, ApiError } = page);
}


export function displayName(uri) {
  const last = uri.split(/[\\/]/).filter(Boolean).pop() || uri;
  if (!uri.startsWith("file://")) return last;   // plain paths are shown as they are
  try { return decodeURIComponent(last); } catch { return last; }
}

export function freeObjectUrls() {
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls.length = 0;
}

async function fetchObjectUrl(url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) throw new ApiError(`HTTP ${response.status}`, `http_${response.status}`);
  const objectUrl = URL.createObjectURL(await response.blob());
  objectUrls.push(objectUrl);
  return objectUrl;
}

// <img>/<audio> can't send X-API-Key: with a key set, media is fetched with it and shown from a blob URL.
export function setMediaSource(node, url) {
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

// m:ss (h:mm:ss past an hour) of a time in seconds
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

// a video result: a player on the file that starts at the matched segment (a media fragment, #t=start,end,
// and a seek once the metadata is in), its thumbnail frame as the poster, the segment named beside it; its
// other matching segments (result.segments after the first) as times under it that seek the player
function videoPlayer(result, name) {
  const seg = result.segment;
  const video = el("video", { controls: true, preload: "metadata", width: 320, height: 240,
    attrs: { "aria-label": seg ? `${name}, from ${clock(seg.start_s)} to ${clock(seg.end_s)}` : name } });
  const fragment = seg ? `#t=${seg.start_s},${seg.end_s}` : "";
  if (!apiKey()) video.src = result.media_url + fragment;
  else fetchObjectUrl(result.media_url).then((url) => { video.src = url + fragment; })
    .catch(() => video.classList.add("broken"));
  if (result.thumbnail_url) {
    if (!apiKey()) video.poster = result.thumbnail_url;
    else fetchObjectUrl(result.thumbnail_url).then((url) => { video.poster = url; }).catch(() => {});
  }
  if (seg) video.addEventListener("loadedmetadata", () => { video.currentTime = seg.start_s; }, { once: true });
  const others = Array.isArray(result.segments) ? result.segments.slice(1) : [];
  const jumps = others.length ? el("div", { className: "segments" }, "also at ", ...others.map((s) =>
    el("button", { type: "button", className: "link seek", textContent: clock(s.start_s),
      title: `another matching part: ${s.start_s} s to ${s.end_s} s`,
      attrs: { "aria-label": `play ${name} from ${clock(s.start_s)}` },
      onclick: () => { video.currentTime = s.start_s; video.play().catch(() => {}); } }))) : null;
  return el("div", { className: "video" }, video, seg
    ? el("span", { className: "segment", textContent: `${clock(seg.start_s)}–${clock(seg.end_s)}`,
      title: `the matching part: ${seg.start_s} s to ${seg.end_s} s` })
    : null, jumps);
}

export function card(result) {
  const meta = result.metadata || {};
  const name = displayName(result.uri);
  let body;
  if (result.modality === "image" && result.thumbnail_url) {
    const img = el("img", { alt: name, loading: "lazy", decoding: "async", width: 320, height: 240 });
    setMediaSource(img, result.thumbnail_url);
    // the thumbnail is a second way to the same link: hidden from keyboard and screen readers
    body = mediaLink(result.media_url, { tabIndex: -1, className: "thumb", attrs: { "aria-hidden": "true" } }, img);
  } else if (result.modality === "video") {
    body = videoPlayer(result, name);
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
  const scoreText = result.method === "browse" ? ""  // listed by filters and sort: no score
    : relevance === null ? `score ${score}` : `relevance ${relevance.toFixed(1)}`;
  const scoreTitle = `relevance ${relevance === null ? "–" : relevance.toFixed(2)} (how far it stands above chance;`
    + ` comparable across kinds) · raw score ${score} (${result.space}/${result.method})`;
  const similar = el("button", { type: "button", className: "link similar", textContent: "similar",
    attrs: { "aria-label": `find items similar to ${name}` },
    onclick: () => moreLike({ kind: "similar", id: result.id, label: name }) });
  return el("article", { className: "card",
    dataset: { id: String(result.id), modality: result.modality, relevance: String(relevance ?? "") } },
    body,
    el("div", { className: "meta" },
      el("span", { className: "name", title: result.uri, textContent: name }),
      el("span", { className: relevance !== null && relevance >= STRONG ? "score strong" : "score",
        textContent: scoreText ? `${result.modality} · ${scoreText}` : result.modality, title: scoreTitle }),
      el("span", { className: "actions" }, similar, mediaLink(result.media_url, { className: "original",
        textContent: "original", attrs: { "aria-label": `open the original of ${name}` } }))));
}

// a product (group_by "source"): the thumbnail of its best item (else of the row's first image), title, source id
export function productCard(product) {
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
    onclick: () => moreLike({ kind: "similar", id: best.id, label: name }) });
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
