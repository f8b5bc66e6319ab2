"""The command line's flags: one parser, each command's options and their help."""

from __future__ import annotations

import argparse
from pathlib import Path

from xmodal import __version__
from xmodal.cli import collections
from xmodal.cli.admin import cmd_bench, cmd_gc, cmd_serve, cmd_stats, cmd_verify
from xmodal.cli.index import cmd_index
from xmodal.cli.query import cmd_eval, cmd_search
from xmodal.config import parse_bytes
from xmodal.search.results import FUSIONS, GROUPS, MODES, SORT_WINDOW
from xmodal.search.segments import MAX_SEGMENTS
from xmodal.spaces import ANY, TARGETS


def _add_common(p: argparse.ArgumentParser) -> None:
    """Options taken before or after the command; SUPPRESS keeps a subcommand from resetting them."""
    g = p.add_argument_group("common options")
    g.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                   help="data dir (env XMODAL_HOME; default: the user data dir, ~/.local/share/xmodal on Linux, "
                        "or ./xmodal-data where one with a catalog is in the current folder)")
    g.add_argument("--database-url", default=argparse.SUPPRESS,
                   help="SQLAlchemy URL of the catalog (env XMODAL_DATABASE_URL; default SQLite in the data dir)")
    g.add_argument("--device", default=argparse.SUPPRESS, help="where models run: auto (a GPU when there is one), cpu, cuda or cuda:N "
                        "(env XMODAL_DEVICE; default auto)")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="log progress on stderr (-vv: debug); default: warnings and errors only")


def _collection(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--collection", "-c", required=True, metavar="NAME", help=f"{what} (required)")


def _json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of text")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    _add_common(p)
    return p


def _model_flags(p: argparse.ArgumentParser, *, recorded: bool = False, audio: bool = True) -> None:
    if recorded:  # search/eval use the collection's model; these only say where its files are now
        p.add_argument("--clip-model", help="where the collection's model config is now, if it moved")
        p.add_argument("--clip-pretrained", help="where the collection's checkpoint is now, if it moved "
                                                 "(must be the same weights)")
        p.add_argument("--audio-model", help="where the collection's CLAP folder is now, if it moved")
        return
    p.add_argument("--clip-model", help="open_clip architecture, hf-hub:ID, local-dir:PATH or a config .json "
                                        "(env XMODAL_CLIP_MODEL; default ViT-B-32)")
    p.add_argument("--clip-pretrained", help="pretrained tag, hf-hub:ID or checkpoint PATH "
                                             "(env XMODAL_CLIP_PRETRAINED; default laion2b_s34b_b79k)")
    if audio:
        p.add_argument("--audio-model", help="CLAP model for audio: Hugging Face id or a local folder (env "
                                             "XMODAL_AUDIO_MODEL; default: the collection's, else "
                                             "laion/clap-htsat-unfused; needs the 'audio' extra)")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _segments(value: str) -> int:
    n = int(value)
    if not 1 <= n <= MAX_SEGMENTS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_SEGMENTS}, not {n}")
    return n


def _natural(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def _fraction(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], not {value!r}")
    return x


def _sort_key(value: str) -> dict[str, str]:
    name, _, order = value.partition(":")
    if not name or order not in ("", "asc", "desc"):
        raise argparse.ArgumentTypeError(f"expected FIELD, FIELD:asc or FIELD:desc, not {value!r}")
    return {"field": name, "order": order or "asc"}


def _memory(value: str) -> int:
    try:
        n = parse_bytes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert n is not None
    return n


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="xmodal", description="Cross-modal search: index, search, evaluate.")
    parser.add_argument("--version", action="version", version=f"xmodal {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", parents=[common], help="index folders of images, sound and text, or a manifest")
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                   help="folders or files to index (images, sound, text; subfolders too); a rerun picks up what "
                        "is new, changed or deleted")
    p.add_argument("--manifest", type=Path, metavar="FILE",
                   help="index the rows of a CSV, TSV, JSONL or Parquet file (gzip too): an 'id' column, media "
                        "columns (default 'uri': a path, file://, http(s):// or an fsspec URL) and metadata columns; "
                        "rerunning with a changed manifest applies inserts, updates and deletes")
    p.add_argument("--media", action="append", metavar="COL[=MODALITY]",
                   help="a media column of the manifest (repeat for several: --media image --media title=text); "
                        "MODALITY is image, audio or text (text: the cell is the text itself); without it, from "
                        "the URL's extension or the fetched bytes")
    p.add_argument("--column-type", action="append", metavar="COL=TYPE",
                   help="type of a metadata column: str, int, float, bool or list (e.g. --column-type sku=str; "
                        "title, category, brand are str, price float and tags list unless told otherwise)")
    p.add_argument("--lexical", metavar="COL,COL",
                   help="the manifest columns whose words a keyword search finds, beside the id (e.g. "
                        "title,brand,description); kept for later runs, and a new choice rewrites the words "
                        "(no re-embedding); '*': every string column, the default")
    _collection(p, "the collection to create or update")
    _model_flags(p)
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="items encoded per batch (env XMODAL_BATCH_SIZE; default 64)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decode processes (env XMODAL_WORKERS; default 0: one per core but one)")
    p.add_argument("--exact-threshold", type=int, metavar="N",
                   help="vectors below which the index is exact, above IVF-PQ (env XMODAL_EXACT_THRESHOLD; "
                        "default 50000)")
    p.add_argument("--recall-target", type=_fraction, metavar="R",
                   help="recall@10 (against exact search, on held-out probes) the index is tuned for; default 0.95")
    p.add_argument("--max-index-memory", type=_memory, metavar="SIZE",
                   help="RAM budget of each space's index, e.g. 2GiB or 800MB (sizes the PQ codes; the re-rank "
                        "vectors stay in RAM only if they fit too, else they are memory-mapped)")
    p.add_argument("--retry-failed", action="store_true", help="try failed files again even if unchanged")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where decode and encode run: worker processes here (local, the default), or Ray Data on "
                        "a Ray cluster (ray; pip install 'xmodal[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join with --engine ray, e.g. 10.0.0.5:6379 or auto (default: start a "
                        "local one)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change (new, changed, deleted files) and change nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _json(p, "the run summary")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="write a machine-readable run report (counts, failures, durations, throughput)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search a collection")
    _collection(p, "the collection to search")
    q = p.add_mutually_exclusive_group()  # none: browse by --filter (--sort, --facet)
    q.add_argument("--text", help="find what this text describes (images, sounds and texts alike)")
    q.add_argument("--image", type=Path, metavar="FILE", help="find items like this image file")
    q.add_argument("--audio", type=Path, metavar="FILE", help="find items like this sound file (needs a CLAP space)")
    q.add_argument("--video", type=Path, metavar="FILE", help="find items like this short video clip (its frames; its "
                   "sound too, in a CLAP space)")
    q.add_argument("--item", type=int, metavar="ID", help="find items like this indexed item (its id in results)")
    p.add_argument("--target", default=ANY, choices=TARGETS,
                   help=f"which kind of items to return: {', '.join(TARGETS)} (default {ANY}: every kind, merged)")
    p.add_argument("--fusion", default="relevance", choices=FUSIONS,
                   help="how the lists of several targets merge: by calibrated relevance (default) or by reciprocal rank")
    p.add_argument("--mode", choices=MODES,
                   help="vector (embeddings), lexical (the catalog's full-text index: words, SKUs, brands; no model "
                        "loads) or hybrid (both, fused by rrf k=60; a query equal to a source id first); default: "
                        "hybrid for --text on a collection with a full-text index, else vector")
    p.add_argument("--min-relevance", type=float, metavar="R",
                   help="leave out results with a relevance below R (0: what chance gives the best unrelated item; "
                        "1: ten times less likely); a page left empty says 'no good match'")
    p.add_argument("--min-score", type=float, metavar="S", help="leave out results whose raw score is below S")
    p.add_argument("-k", type=_positive, default=10, metavar="N", help="how many results (default 10)")
    p.add_argument("--offset", type=_natural, default=0, metavar="N",
                   help="skip the first N results (the next page: --offset 10 with -k 10); default 0")
    p.add_argument("--filter", metavar="JSON",
                   help='a filter on metadata, as the HTTP API takes it, e.g. \'{"field": "price", "op": "lt", '
                        '"value": 50}\' (and, or, not combine conditions)')
    p.add_argument("--recall", type=_fraction, metavar="R",
                   help="recall@10 wanted from approximate indexes: the cheapest point measured at build time "
                        "that reaches it (lower is faster); default: the tuned point")
    p.add_argument("--group", choices=GROUPS,
                   help="source: one result per product (manifest row), scored from its items; none: one per item; "
                        "default: source for a collection whose items mostly came from a manifest, else none")
    p.add_argument("--group-weights", metavar="JSON",
                   help='with --group source: weigh each column\'s best item, e.g. \'{"image": 0.7, "title": 0.3}\' '
                        "(default: a product scores as its best item)")
    p.add_argument("--sort", action="append", type=_sort_key, metavar="FIELD[:asc|desc]",
                   help="order by a metadata field (or id), missing values last; repeat for more keys. Without a "
                        "query: browse the items --filter matches, sorted; with one: the best "
                        f"{SORT_WINDOW} results by relevance, reordered")
    p.add_argument("--facet", action="append", metavar="FIELD",
                   help="count the matching items per value of FIELD (the top values and 'other'); repeatable")
    p.add_argument("--segments", type=_segments, default=1, metavar="N",
                   help=f"list each video's (and long sound's) N best-matching segments, best first (1 to "
                        f"{MAX_SEGMENTS}; default 1: only the best, shown as its time range)")
    _json(p, "the results (with metadata and timings)")
    _model_flags(p, recorded=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", parents=[common], help="measure recall and latency on labelled queries")
    _collection(p, "the collection to evaluate")
    p.add_argument("--queries", type=Path, required=True, metavar="FILE.jsonl",
                   help="labelled queries, one JSON object a line (required)")
    p.add_argument("-k", type=_positive, default=10, metavar="N", help="results per query (default 10)")
    p.add_argument("--recall", type=_fraction, metavar="R",
                   help="search approximate indexes at the operating point measured for this recall@10")
    p.add_argument("--fusion", default="relevance", choices=FUSIONS,
                   help="how the lists of several targets merge, as for search (default relevance)")
    p.add_argument("--mode", choices=MODES, help="vector, lexical or hybrid, as for search (default as for search)")
    p.add_argument("--min-relevance", type=float, metavar="R",
                   help="count only results with at least this relevance (as a page with this cutoff shows them), and "
                        "report how often it drops a relevant item")
    _json(p, "the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _model_flags(p, recorded=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("stats", parents=[common], help="counts, failures, spaces and index of a collection")
    _collection(p, "the collection to describe")
    _json(p, "the statistics")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", parents=[common],
                       help="check catalog, shards and index agree (exit 4 when not); --repair fixes what it can")
    _collection(p, "the collection to check")
    p.add_argument("--repair", action="store_true",
                   help="remove orphan files, mark items of damaged shards for re-embedding, rebuild the index")
    _json(p, "the report")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("gc", parents=[common],
                       help="remove unpublished and superseded index versions and unreferenced shards")
    _collection(p, "the collection to clean up")
    p.add_argument("--grace", default="1h", metavar="DURATION",
                   help="keep superseded versions and unreferenced shards this long (90s, 30m, 2h, 7d; default 1h)")
    _json(p, "what was removed")
    p.set_defaults(func=cmd_gc)

    collections.add_parser(sub, common)

    p = sub.add_parser("serve", parents=[common], help="the HTTP API and web page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    p.add_argument("--collection", "-c", action="extend", nargs="+", default=[], metavar="NAME",
                   help="collections to serve, one or more (default: all)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", parents=[common], help="indexing throughput against model-only forward")
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                   help="media to index (default: generated photos)")
    _model_flags(p, audio=False)
    p.add_argument("--images", type=_positive, default=512, metavar="N",
                   help="generated images when no SOURCE is given (default 512)")
    p.add_argument("--work-dir", type=Path, help="scratch dir (default: a temporary one)")
    _json(p, "the report")
    p.set_defaults(func=cmd_bench)
    return parser
