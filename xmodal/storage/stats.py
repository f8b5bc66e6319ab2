"""What ``xmodal stats`` reports about a collection, read from the catalog alone."""

from __future__ import annotations

from typing import Any

from xmodal.storage.catalog import Catalog


def collection_stats(catalog: Catalog, collection: str, *, failures_limit: int | None = None) -> dict[str, Any]:
    cid = catalog.collection_id(collection)
    spaces = []
    indexes: dict[str, Any] = {}
    for space in catalog.spaces(cid):
        spaces.append({"name": space.name, "family": space.family, "model": space.model.get("model"),
                       "pretrained": space.model.get("pretrained"), "dim": space.dim})
        published = catalog.published_index(cid, space.name)
        if published is not None:
            parts = {}
            for modality, info in (published.summary or {}).get("parts", {}).items():
                recipe, st = info.get("recipe", {}), info.get("stats", {})
                parts[modality] = {"kind": recipe.get("kind"), "vectors": st.get("n"),
                                   "nlist": recipe.get("nlist"), "m": recipe.get("m"),
                                   "nprobe": recipe.get("nprobe"), "recall@1": st.get("recall@1"),
                                   "recall@10": st.get("recall@10")}
            indexes[space.name] = {"version": published.version, "kind": published.kind,
                                   "vectors": published.n_vectors, "bytes": published.bytes,
                                   "built_at": published.created_at.isoformat(), "build_s": published.build_s,
                                   "parts": parts, "aligned": (published.summary or {}).get("aligned")}
    row = catalog.alignment(cid, "clap", "clip")
    alignment = None if row is None else {
        "source": row.source, "target": row.target, "fitted_at": row.created_at.isoformat(), **(row.metrics or {})}
    return {
        "collection": collection,
        "alignment": alignment,
        "items": catalog.counts(cid),
        "failed": [{"uri": u, "reason": r} for u, r in catalog.failures(cid, limit=failures_limit)],
        "spaces": spaces,
        "index": indexes,
    }
