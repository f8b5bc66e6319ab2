"""Lexical search beside vectors (issue 15, point 1): what the catalog's full-text index costs.

A synthetic shop goes through the real path: a products manifest (SKU id, title as inline text media,
brand, category, price, in_stock, tags) indexed by ``index_manifest`` (every catalog write keeps the
full-text index in its transaction), with a tiny RANDOM-WEIGHT open_clip model (``scripts/make_tiny_clip``:
the vectors' values mean nothing, their cost is a small model's; no download here). Then, in this process:

- latency of ``Searcher.run`` per query, vector vs hybrid vs lexical, p50/p95, over SKU queries, brand
  queries and two-word title queries; each query is run once untimed first, so the text vector comes from
  the searcher's cache in both modes and the ratio is what the lexical list and the fusion add;
- the full-text index's build time (dropped and rebuilt from the items, as an older catalog gets it) and
  its size per item (SQLite: the FTS5 shadow tables by ``dbstat``; PostgreSQL: the table and its indexes).

    python benchmarks/bench_lexical.py [--products 100000] [--queries 300] [--database-url URL] [--quick]
                                       [--scratch DIR]

``--scratch DIR`` keeps the built catalog there: a later run with the same DIR (and products) measures the
queries again without indexing anew, and reports the build figures the first run wrote (``DIR/built.json``).

Writes docs/benchmarks/lexical.{json,md} (``--quick``: benchmarks/out/lexical-quick/).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.bench import load_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = ROOT / "docs" / "benchmarks"
BRANDS = ["Tyrell", "Wallace", "Weyland", "Cyberdyne", "Soylent", "Acme", "Initech", "Umbrella", "Globex",
          "Hooli", "Stark", "Wayne", "Oscorp", "Massive", "Aperture", "Vandelay", "Gringotts", "Nakatomi",
          "Monarch", "Virtucon"]
WORDS = ["leather", "boot", "ankle", "red", "black", "tan", "canvas", "bag", "hat", "wool", "scarf", "linen",
         "shirt", "denim", "jacket", "silk", "dress", "cotton", "sock", "suede", "loafer", "sandal", "belt",
         "wallet", "glove", "coat", "vest", "knit", "sweater", "runner", "trainer", "heel", "clog", "tote"]
CATEGORIES = ["shoes", "bags", "hats", "shirts", "coats", "accessories"]


def write_manifest(path: Path, n: int, rng: random.Random) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "brand", "category", "price", "in_stock", "tags"])
        for i in range(n):
            title = " ".join(rng.sample(WORDS, 4)) + f" model XJ{i % 997}"
            w.writerow([f"SKU-{i:06d}", title, BRANDS[i % len(BRANDS)], CATEGORIES[i % len(CATEGORIES)],
                        f"{10 + i % 300}.50", "true" if i % 3 else "false", f"sale|size{i % 5}"])


def queries(n_products: int, count: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append(f"SKU-{rng.randrange(n_products):06d}")
        elif kind == 1:
            out.append(rng.choice(BRANDS))
        else:
            out.append(" ".join(rng.sample(WORDS, 2)))
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def index_size(catalog: Any) -> dict[str, Any]:
    from sqlalchemy import text

    with catalog.engine.connect() as conn:
        if catalog.backend == "sqlite":
            try:
                total = conn.execute(text("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'item_lexical%'")).scalar()
                how = "dbstat: the FTS5 shadow tables (item_lexical_*), content copy included"
            except Exception:  # dbstat not compiled in
                total, how = None, "dbstat unavailable"
        else:
            total = conn.execute(text("SELECT pg_total_relation_size('item_lexical')")).scalar()
            how = "pg_total_relation_size: table, generated tsvector, GIN and btree indexes"
    return {"bytes": int(total) if total is not None else None, "how": how}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--database-url", help="a catalog URL (PostgreSQL); default: SQLite in the scratch dir")
    parser.add_argument("--quick", action="store_true", help="2,000 products, 60 queries, into benchmarks/out")
    parser.add_argument("--scratch", type=Path, help="keep the built catalog here, and reuse it when it is there")
    args = parser.parse_args()
    if args.quick:
        args.products, args.queries = 2000, 60
    from xmodal.config import Settings
    from xmodal.search.engine import Searcher

    rng = random.Random(15)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-lexical-"))
    built_file = scratch / "built.json"
    built = json.loads(built_file.read_text()) if built_file.exists() else None
    if built is not None and built["products"] != args.products:
        parser.error(f"{scratch} holds {built['products']} products, not {args.products}")
    url = args.database_url or f"sqlite:///{scratch / 'catalog.sqlite'}"
    if built is None:
        scratch.mkdir(parents=True, exist_ok=True)
        model, ckpt = load_module(ROOT / "scripts" / "make_tiny_clip.py").make_clip(scratch / "clip")
        built = {"products": args.products, "model": str(model), "ckpt": str(ckpt), **build(args.products, rng,
                                                                                             scratch, url, model, ckpt)}
        built_file.write_text(json.dumps(built, indent=1) + "\n")
    settings = Settings(home=scratch / "home", database_url=url, clip_model=built["model"],
                        clip_pretrained=built["ckpt"])
    index_s, rebuild_s, items, size = built["index_s"], built["rebuild_s"], built["items"], built["size"]

    qs = queries(args.products, args.queries, random.Random(16))  # the same queries over a kept build
    searcher = Searcher(settings, "shop")
    searcher.warm_up()
    latency: dict[str, list[float]] = {"vector": [], "hybrid": [], "lexical": []}
    sku_first = {"vector": 0, "hybrid": 0, "lexical": 0}
    by_kind: dict[str, list[float]] = {}
    for q in qs:
        for mode in latency:
            searcher.run(text=q, k=10, mode=mode)  # untimed: the text vector is cached for both modes
    for q in qs:
        for mode in latency:
            t = time.perf_counter()
            outcome = searcher.run(text=q, k=10, mode=mode)
            latency[mode].append((time.perf_counter() - t) * 1000)
            kind = "sku" if q.startswith("SKU-") else "brand" if q in BRANDS else "words"
            by_kind.setdefault(f"{mode}/{kind}", []).append(latency[mode][-1])
            if q.startswith("SKU-") and outcome.results and (outcome.results[0].source or {}).get("id") == q:
                sku_first[mode] += 1
    searcher.close()
    stats = {m: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": round(statistics.fmean(v), 3)}
             for m, v in latency.items()}
    skus = sum(1 for q in qs if q.startswith("SKU-"))
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "catalog": "sqlite" if url.startswith("sqlite") else "postgresql",
        "model": "tiny random-weight open_clip (scripts/make_tiny_clip.py): vector costs are a small model's",
        "products": args.products, "items": items, "queries": len(qs),
        "index_manifest_s": round(index_s, 1),
        "lexical_rebuild_s": round(rebuild_s, 2), "lexical_rebuild_us_per_item": round(rebuild_s / max(items, 1) * 1e6, 1),
        "lexical_bytes": size["bytes"], "lexical_bytes_per_item": round(size["bytes"] / max(items, 1), 1)
        if size["bytes"] else None, "size_how": size["how"],
        "latency": stats,
        "hybrid_over_vector_p50": round(stats["hybrid"]["p50_ms"] / stats["vector"]["p50_ms"], 3),
        "hybrid_over_vector_p95": round(stats["hybrid"]["p95_ms"] / stats["vector"]["p95_ms"], 3),
        "sku_queries": skus, "sku_first": sku_first,
        "p50_ms_by_kind": {k: pct(v, 50) for k, v in sorted(by_kind.items())},
    }
    print(json.dumps(report, indent=1), flush=True)
    dest = HERE / "out" / "lexical-quick" if args.quick else DOCS
    dest.mkdir(parents=True, exist_ok=True)
    name = "lexical" if report["catalog"] == "sqlite" else "lexical-postgres"
    (dest / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (dest / f"{name}.md").write_text(markdown(report, " ".join(sys.argv)))


def build(n: int, rng: random.Random, scratch: Path, url: str, model: Path, ckpt: Path) -> dict[str, Any]:
    """The shop through ``index_manifest``, then its full-text index dropped and rebuilt (timed)."""
    from sqlalchemy import text

    from xmodal.config import Settings
    from xmodal.indexer.pipeline import index_manifest
    from xmodal.storage.catalog import Catalog

    settings = Settings(home=scratch / "home", database_url=url, clip_model=str(model), clip_pretrained=str(ckpt))
    manifest = scratch / "products.csv"
    write_manifest(manifest, n, rng)
    t0 = time.perf_counter()
    summary = index_manifest(settings, manifest, "shop", media={"title": "text"}, progress=False)
    index_s = time.perf_counter() - t0
    print(f"indexed {n} products in {index_s:.1f} s ({summary.embedded} embedded)", flush=True)
    catalog = Catalog(settings.resolved_database_url)
    size = index_size(catalog)
    with catalog.engine.begin() as conn:
        conn.execute(text("DROP TABLE item_lexical"))
    catalog.close()
    t0 = time.perf_counter()
    catalog = Catalog(settings.resolved_database_url)  # creates and fills it, as for an older catalog
    rebuild_s = time.perf_counter() - t0
    items = catalog.counts(catalog.collection_id("shop"))["status"].get("ok", 0)
    catalog.close()
    print(f"full-text index rebuilt over {items} items in {rebuild_s:.1f} s; {size}", flush=True)
    return {"index_s": index_s, "rebuild_s": rebuild_s, "items": items, "size": size}


def markdown(r: dict[str, Any], command: str) -> str:
    lat = r["latency"]
    rows = "\n".join(f"| {m} | {v['p50_ms']} | {v['p95_ms']} | {v['mean_ms']} | {r['sku_first'][m]} / {r['sku_queries']} |"
                     for m, v in lat.items())
    per_item = r["lexical_bytes_per_item"]
    return f"""# Lexical search beside vectors ({r['catalog']})

`{command}` on {r['machine']['cpus']} CPUs, {r['when']}. {r['products']:,} synthetic products (SKU id, title as
inline text media, brand, category, price, stock, tags), indexed through `index_manifest` into {r['items']:,} items
in {r['index_manifest_s']} s. Vectors: {r['model']}. {r['queries']} queries, a third each SKU ids, brands and two
title words; k = 10; each query run once untimed first, so the text vector comes from the cache in every mode.

| mode | p50 ms | p95 ms | mean ms | SKU query's product first |
| --- | --- | --- | --- | --- |
{rows}

**Hybrid over vector: {r['hybrid_over_vector_p50']}x at p50, {r['hybrid_over_vector_p95']}x at p95** (target: at most 1.3x).
p50 by query kind (ms): {', '.join(f'{k} {v}' for k, v in r['p50_ms_by_kind'].items())}.

Full-text index: rebuilt from the items in {r['lexical_rebuild_s']} s ({r['lexical_rebuild_us_per_item']} µs an
item; the same function fills an older catalog's), {r['lexical_bytes']:,} bytes, {per_item} bytes an item
({r['size_how']}).
""" if per_item is not None else f"# Lexical search ({r['catalog']})\n\n```\n{json.dumps(r, indent=1)}\n```\n"


if __name__ == "__main__":
    main()
