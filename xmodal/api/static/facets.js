// Sort and facet counts, for collections with a manifest's own fields (price, brand, tags ...): a sort select
// beside the filters and, under them, the counts per value of what the request matched; clicking a value
// sets that filter. Everything goes into the page as text nodes, never as HTML. See docs/serving.md.
const MAX_FACETS = 8;  // the API's bound
// fields the decoders write (xmodal/media, xmodal/indexer/decode.py): not a shop's fields to sort or count by
const DECODER_FIELDS = new Set(["width", "height", "format", "duration_s", "sample_rate", "channels", "subtype",
  "windows", "window_s", "chars", "snippet", "title"]);
const COUNTED_TYPES = new Set(["string", "list", "boolean"]);

function node(tag, props = {}, ...children) {
  const made = Object.assign(document.createElement(tag), props);
  made.append(...children);
  return made;
}

export function manifestFields(col) {
  return Object.entries((col && col.metadata_fields) || {}).filter(([name]) => !DECODER_FIELDS.has(name));
}

// the sort options of a collection: relevance (or id when browsing), then each field holding one value, both ways;
// false when the collection has none (the select is hidden)
export function renderSort(select, col, label) {
  const previous = select.value;
  const options = [["", "relevance"]];
  for (const [name, type] of manifestFields(col)) {
    if (type !== "list") options.push([`${name}:asc`, `${label(name)} ↑`], [`${name}:desc`, `${label(name)} ↓`]);
  }
  select.replaceChildren(...options.map(([value, textContent]) => node("option", { value, textContent })));
  select.value = options.some(([value]) => value === previous) ? previous : "";
  return options.length > 1;
}

export function sortSpec(select) {
  if (!select.value) return null;
  const [field, order] = select.value.split(":");
  return [{ field, order }];
}

export function facetNames(col) {
  const names = manifestFields(col).filter(([, type]) => COUNTED_TYPES.has(type)).map(([name]) => name);
  return names.length ? names.slice(0, MAX_FACETS) : null;
}

function shown(value) {
  return value === true ? "yes" : value === false ? "no" : String(value);
}

// one group per field: its values as buttons ("Acme 6"; Tab and Enter pick one) and what the others count
export function showFacets(box, facets, label, pick) {
  const groups = Object.entries(facets || {}).filter(([, facet]) => facet.values.length).map(([name, facet]) =>
    node("div", { className: "facet", role: "group", ariaLabel: `${label(name)} counts` },
      node("span", { className: "field-name" }, label(name)),
      ...facet.values.map(({ value, count }) => node("button", {
        type: "button", className: "secondary facet-value", title: `only ${label(name)}: ${shown(value)}`,
        onclick: () => pick(name, value),
      }, `${shown(value)} `, node("span", { className: "count" }, String(count)))),
      ...(facet.other ? [node("span", { className: "count" }, `other ${facet.other}`)] : [])));
  box.replaceChildren(...groups);
  box.hidden = groups.length === 0;
}
