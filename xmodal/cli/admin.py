"""``xmodal stats``, ``verify``, ``gc``, ``serve`` and ``bench``."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from xmodal.cli.common import EXIT_PROBLEMS, dump, settings_of


def cmd_verify(args: argparse.Namespace) -> int:
    from xmodal.indexer.maintenance import repair, verify
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.layout import Layout

    settings = settings_of(args)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        layout = Layout(settings.home)
        report = (repair(catalog, layout, settings, args.collection, progress=not args.json) if args.repair
                  else verify(catalog, layout, args.collection))
    finally:
        catalog.close()
    if args.json:
        dump({"collection": args.collection, **report.as_dict()})
    else:
        for line in report.repaired:
            print(f"repaired: {line}")
        print(f"collection {args.collection}: " + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))
        for line in report.problems:
            print(f"  problem: {line}")
        print("consistent" if report.ok else f"{len(report.problems)} problems (xmodal verify --repair)")
    return 0 if report.ok else EXIT_PROBLEMS


def cmd_gc(args: argparse.Namespace) -> int:
    from xmodal.indexer.maintenance import gc, parse_duration
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.layout import Layout

    settings = settings_of(args)
    grace = parse_duration(args.grace)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        removed = gc(catalog, Layout(settings.home), settings, args.collection, grace_s=grace)
    finally:
        catalog.close()
    if args.json:
        dump({"collection": args.collection, "grace_s": grace, "removed": removed})
        return 0
    for path in removed:
        print(f"removed {path}")
    print(f"{args.collection}: removed {len(removed)} unpublished, superseded or unreferenced files")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from xmodal.indexer.publish import retrain_due
    from xmodal.storage.catalog import Catalog
    from xmodal.storage.stats import collection_stats

    settings = settings_of(args)
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        stats = collection_stats(catalog, args.collection)
        cid = catalog.collection_id(args.collection)
        for space in catalog.spaces(cid):
            published = catalog.published_index(cid, space.name)
            if published is not None:
                due = retrain_due(catalog, settings, cid, space, published.summary or {})
                for modality, part in stats["index"][space.name]["parts"].items():
                    part["retrain_due"] = due.get(modality)
    finally:
        catalog.close()
    stats["device"] = _device_report(settings.device)
    if args.json:
        dump(stats)
        return 0
    items = stats["items"]
    print(f"collection {stats['collection']}")
    print("  items by status:   " + ", ".join(f"{k} {v}" for k, v in sorted(items["status"].items())))
    print("  items by modality: " + ", ".join(f"{k} {v}" for k, v in sorted(items["modality"].items())))
    for sp in stats["spaces"]:
        print(f"  space {sp['name']}: {sp['family']} {sp['model']}"
              f"{' (' + str(sp['pretrained']) + ')' if sp['pretrained'] else ''}, dim {sp['dim']}")
    if stats.get("alignment"):
        a = stats["alignment"]
        print(f"  alignment {a['source']} -> {a['target']}: {a['method']} on {a['bank']} texts; held-out "
              f"({a['held_out']}): cosine {a['held_out_cosine_mean']}, recall@1 {a['held_out_recall@1']} "
              f"(chance {a['chance_recall@1']}), recall@10 {a['held_out_recall@10']}")
    for name, ix in stats["index"].items():
        print(f"  index {name}: version {ix['version']}, {ix['kind']}, {ix['vectors']} vectors, "
              f"{ix['bytes'] / 1e6:.2f} MB, built {ix['built_at']}")
        for modality, part in ix["parts"].items():
            aligned = ix.get("aligned") or {}
            via = f" (aligned from {aligned['source']})" if modality in aligned.get("parts", []) else ""
            print(f"    {modality}: {part['recipe']}, {part['vectors']} vectors{via}")
            if part["kind"] != "flat":
                grown = f", grown by {part['appended']} without retraining" if part.get("appended") else ""
                print(f"      measured on {part['probe_queries']} probes: recall@1 {part['recall@1']}, "
                      f"recall@10 {part['recall@10']} (target {part['recall_target']}"
                      f"{'' if part['target_met'] else ', NOT met'}), {part['latency_ms']} ms/query, "
                      f"{part['bytes_per_vector']} B/vector in RAM + {part['store_bytes_per_vector']} B/vector "
                      f"re-rank store; trained for {part['trained_n']} vectors{grown}")
            print(f"      retrain due: {part['retrain_due'] or 'no'}")
        calibration = ix.get("calibration")
        if calibration:
            print(f"    calibration ({calibration['seconds']} s): unrelated-pair scores per query -> target")
            for pair, c in sorted(calibration["pairs"].items()):
                print(f"      {pair}: unrelated pairs score {c.get('score_mean', 0.0):.3f} +- {c.get('score_std', 0.0):.3f} "
                      f"over {c['pairs']:,} pairs ({c['queries']} as queries, {c['targets']:,} candidates)")
        else:
            print("    calibration: none (built before calibration: the next `xmodal index` adds it)")
    lexical = stats["lexical"]
    if lexical["indexed"]:
        fields = lexical["fields"]
        print("  lexical fields: " + (", ".join(["id", *fields]) if fields is not None
                                      else "id, every string column (default)") + "; text items by their text")
    print(f"  device: {device_words(stats['device'])}")
    failed = stats["failed"]
    if failed["count"]:
        print(f"  failed ({failed['count']}), by reason:")
        for group in failed["by_reason"][:20]:
            print(f"    {group['count']} x {group['reason']}")
            more = group["count"] - len(group["examples"])
            for uri in group["examples"]:
                print(f"        {uri}")
            if more > 0:
                print(f"        ... and {more} more")
        if len(failed["by_reason"]) > 20:
            print(f"    ... and {len(failed['by_reason']) - 20} more reasons (--json lists them all)")
    return 0


def _device_report(requested: str) -> dict[str, Any]:
    """What encoders and FAISS run on here: torch's device (as ``--device``/XMODAL_DEVICE resolve), the GPU's
    name, and how many GPUs this FAISS build sees."""
    import faiss
    import torch

    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if requested == "auto" else requested
    name = None
    if device.startswith("cuda") and cuda:
        index = torch.device(device).index or 0
        device, name = f"cuda:{index}", torch.cuda.get_device_name(index)
    elif device.startswith("cuda"):
        device = f"{device} (requested; CUDA is not available)"
    return {"torch": device, "gpu_name": name,
            "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0}


def device_words(report: dict[str, Any]) -> str:
    """``cpu (torch), FAISS on CPU`` or ``cuda:0 NVIDIA H100 (torch), FAISS on 1 GPU``."""
    torch_part = f"{report['torch']} {report['gpu_name']}" if report.get("gpu_name") else str(report["torch"])
    n = int(report.get("faiss_gpus") or 0)
    return f"{torch_part} (torch), FAISS on " + ("CPU" if n == 0 else f"{n} GPU{'s' if n > 1 else ''}")


def page_urls(host: str, port: int) -> tuple[str, str | None]:
    """The page's URL on this machine, and from other machines when ``host`` listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        local = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"http://{local}:{port}/", f"http://{socket.gethostname()}:{port}/"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/", None


def cmd_serve(args: argparse.Namespace) -> int:
    from xmodal.api import server
    from xmodal.api.app import create_app
    from xmodal.api.service import Service

    settings = settings_of(args)
    service = Service(settings, args.collection or None)
    names = service.names

    def ready(host: str, port: int) -> None:
        local, other = page_urls(host, port)
        what = (f"collection{'s' if len(names) > 1 else ''} {', '.join(names)}" if names
                else "no collections (index one first: xmodal index FOLDER -c NAME)")
        print(f"xmodal: serving {what} at {local} (API docs {local}docs)"
              f"{f', from other machines: {other}' if other else ''}; searches answer once models and indexes "
              f"are loaded; Ctrl-C stops", file=sys.stderr, flush=True)

    server.run(create_app(service), settings, host=args.host, port=args.port,
               log_level="info" if getattr(args, "verbose", 0) else "warning", on_ready=ready)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from xmodal.bench import run_index_bench

    report = run_index_bench(settings_of(args, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained),
                             sources=args.sources, n_images=args.images, work_dir=args.work_dir)
    dump(report) if args.json else print(report["table"])
    return 0
