"""The Ray engine of ``xmodal index --engine ray [--ray-address ADDR]``: the local engine's stages
(``engines.local``) on Ray Data, across the machines of a Ray cluster.

1. **read + decode**: each ``DecodeTask`` goes through ``decode_one`` (read or fetch, sha256, skip an
   unchanged content, decode, preprocess) in stateless Ray tasks on CPUs, a block of tasks at a time
   through ``decode_many`` as the local engine's workers do (a block's remote media are fetched
   concurrently).
2. **encode**: an actor pool, one actor per GPU of the cluster (``num_gpus=1``, ``cuda``) or, without
   GPUs, CPU actors of up to ``CPU_ACTOR_THREADS`` torch threads each; every actor loads its own
   encoders from the run's resolved model records (``load_encoder`` checks a local checkpoint's hash,
   so a node with other weights at the same path fails instead of writing other vectors) and runs
   the shared ``encode_group`` per (space, modality) of each batch of ``batch_size`` rows.
3. **results on the driver**, streamed with ``iter_batches`` in whatever order they finish: each item
   reaches the ``ShardSink`` exactly once (``sink.decoded``, then ``sink.vector`` per space) and the
   sink is flushed after every batch. **Shards are written by the driver, through the sink: the same
   code as the local engine**, so both engines write the same shards and catalog rows, in the order
   that keeps a crash safe (a killed driver takes its Ray job with it; its items stay pending and the
   next run redoes them).

Nothing is materialised: the streaming executor bounds what is in flight (object store budget,
backpressure from the actors and the driver), so memory stays flat however many files there are.

A worker that dies (a decoder segfault, the OOM killer) costs its block one retry, not Ray Data's
default of retrying forever; a pass that still dies is followed by passes that leave such blocks out
and then isolate their files one per block, and a file that kills its worker alone is recorded
failed with the local engine's reason (``PASSES``). The bounds are set through Ray Data's catch-all
remote args (``max_retries``, ``max_task_retries``), which Ray 2.60 says go away in 2.64.

The workers must be able to import ``xmodal`` (the same version as the driver) and to read the media
and model files at the paths the driver sees (a shared filesystem, or the same layout on every node).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import pickle
import queue
import re
import socket
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders import Encoder, load_encoder
from xmodal.errors import ModelMismatchError, UserError
from xmodal.indexer.decode import DecodeConfig, Decoded, DecodeTask, decode_many, init_worker
from xmodal.indexer.encode import encode_group
from xmodal.indexer.engines.base import EmbedJob
from xmodal.indexer.sink import ItemWork, ShardSink
from xmodal.spaces import MODALITIES, SPACES, embeds
from xmodal.storage.shards import Windows

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs Ray: pip install 'xmodal[ray]'"
#: on a CPU cluster, decode tasks ask for a quarter of a CPU: reading and decoding a file takes
#: milliseconds next to a model's forward pass, and a whole CPU each would keep cores from the encoders
DECODE_TASK_CPUS = 0.25
#: logical CPUs left on a node beside each CPU encoder actor, for the decode tasks
DECODE_RESERVE_CPUS = 0.5
#: torch threads of one CPU encoder actor: beyond this, one forward pass scales poorly, and more
#: actors (each with its own copy of the model) use the cores better
CPU_ACTOR_THREADS = 8
#: rows per decode block: the unit of work of one decode task (16 images ~ 10 MB of pixels)
DECODE_BLOCK_ROWS = 16
PICKLE_PROTOCOL = 5
#: more tries for a block whose worker died (a decoder segfault, the OOM killer, a lost node): Ray
#: Data's default is to retry forever, which a file that kills its decoder every time turns into a hang
CRASH_RETRIES = 1
#: (rows per decode block, leave out blocks whose worker died) of each pass over what is left: a pass
#: that dies (past the retries) is followed by one that leaves such blocks out, then one file per
#: block (at once, for up to 4 blocks' worth) isolates the files that kill a worker alone; what is
#: left after that is recorded failed
PASSES = ((DECODE_BLOCK_ROWS, False), (DECODE_BLOCK_ROWS, True), (1, True))
CRASHED = "the decoder crashed on this file"  # the local engine's reason
RELEASE_SECONDS = 60.0  # for a failed pass's actors to give their resources back
STALL_SECONDS = 180.0  # a pass that leaves crashed blocks out ends when no result comes for this long
START_SECONDS = 900.0  # ... or, before its first result (its actors load their models), for this long
CONNECT_SECONDS = 10.0  # to reach a Ray head's port before ray.init tries (it retries for minutes)

# Row transport. Every Ray Data row is ``item_id`` (int64) and ``payload``: one pickled Python object
# in a large_binary column: (DecodeTask, spaces by modality) into the decode stage, (Decoded, spaces)
# into the encoders, (Decoded without its payload, {space: (vector, Windows | None)}) back to the
# driver. A Decoded mixes shapes (3x224x224 pixels, a variable number of audio windows, text, nested
# span lists, metadata dicts, Nones) across rows of one batch, which numpy tensor columns cannot hold
# without per-modality columns and padding; Arrow's Python-object extension would pickle anyway, but
# with less control. An explicit pickle keeps DecodeTask and Decoded opaque (fields they gain later
# travel unchanged), costs one copy of the pixels per hop, and large_binary lifts the 2 GiB offset
# limit of a binary column.


@dataclass(frozen=True)
class PoolPlan:
    """How the work is placed on the cluster."""

    size: int  # encoder actors
    device: str  # "cuda" (one GPU each) or "cpu"
    num_cpus: float  # logical CPUs each actor asks for
    num_gpus: float
    threads: int  # torch threads of a CPU actor (0: leave torch's default)
    decode_cpus: float  # logical CPUs each decode task asks for


def plan_pool(nodes: list[dict[str, float]], device: str) -> PoolPlan:
    """Size the encoder actor pool from the cluster's alive nodes (their ``Resources``) and the run's
    device setting (auto, cpu, cuda, cuda:N).

    With GPUs (and device auto or cuda): one actor per GPU, ``num_gpus=1`` (Ray gives each its own
    GPU, so the actor's device is plain ``cuda``: an index in ``cuda:N`` names one of the driver's GPUs
    and means nothing on a node); decode tasks take a whole CPU each, since they feed the GPUs.
    Otherwise CPU actors: each takes up to ``CPU_ACTOR_THREADS`` of a node's CPUs less
    ``DECODE_RESERVE_CPUS`` left for the decode tasks (a quarter CPU each: decoding a file takes
    milliseconds next to a CPU forward pass), and runs that many torch threads, rounded up; actors are
    counted per node, so that every actor of the pool fits on one.
    """
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    cpus = [float(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) > 0]
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"device {device!r} requested but the Ray cluster has no GPU (use --device cpu or auto)")
    if not cpus:
        raise UserError("the Ray cluster has no CPU to decode on")
    if gpus > 0 and device != "cpu":
        return PoolPlan(size=gpus, device="cuda", num_cpus=1.0, num_gpus=1.0, threads=0, decode_cpus=1.0)
    per_actor = max(DECODE_RESERVE_CPUS, min(float(CPU_ACTOR_THREADS), max(cpus)) - DECODE_RESERVE_CPUS)
    size = sum(int(c // (per_actor + DECODE_RESERVE_CPUS)) for c in cpus)
    return PoolPlan(size=max(1, size), device="cpu", num_cpus=per_actor, num_gpus=0.0,
                    threads=math.ceil(per_actor), decode_cpus=DECODE_TASK_CPUS)


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a UserError that says what to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: core Ray alone is not enough)
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


class RayEngine:
    """``--engine ray``: decode and encode a job's tasks on a Ray cluster (``address``: ``host:port`` or
    ``auto``; None starts a local one for the run), every result delivered to the job's sink here, on the
    driver. The caller calls ``sink.finish()``; ``embed`` returns the device the encoder actors ran on."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        require_ray()  # a missing Ray fails before anything is scanned or written
        self.address = address

    def start(self, tasks: list[DecodeTask], work: dict[int, ItemWork], *, workers: int, min_bytes: int) -> None:
        """Nothing to start early: Ray starts its workers when the job runs."""

    def embed(self, job: EmbedJob) -> str:
        ray = require_ray()
        started = _connect(ray, self.address)
        try:
            return f"ray:{_embed(ray, job)}"
        finally:
            if started:
                ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` or start a local one; True when this call did either (and so
    shuts it down after). A Ray already initialised in this process (by its owner) is used as is."""
    if ray.is_initialized():
        if address:
            log.warning("this process has already joined a Ray cluster: using it, not %s", address)
        return False
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0][:300]}") from exc
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, **common)  # GPUs: Ray detects them
    return True


def _check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Fail fast on a ``host:port`` nobody listens at: ray.init retries such an address for minutes."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return  # Ray resolves these itself
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): is a Ray head "
                        "node running there (ray start --head)?") from exc


def _embed(ray: Any, job: EmbedJob) -> str:
    """Run the passes (see ``PASSES``) until every task reached the sink; a task that crashed its
    worker alone is recorded failed, as the local engine records a file that kills its decoder."""
    tasks, sink, bar = job.tasks, job.sink, job.progress
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    plan = plan_pool(nodes, job.settings.device)
    needed = sorted({sp for t in tasks for sp in job.work[t.item_id].spaces})
    records = {sp: job.records[sp] for sp in needed}  # plain dicts: the run stays on the driver
    log.info("ray engine: %d tasks, %d %s encoder actor(s) (%s CPU, %s GPU each), spaces %s",
             len(tasks), plan.size, plan.device, plan.num_cpus, plan.num_gpus, ", ".join(needed))
    left = tasks
    for i, (block_rows, skip_crashed) in enumerate(PASSES):
        if i and block_rows > 1 and len(left) <= 4 * block_rows:
            continue  # few enough for one file per block at once
        if i:
            log.warning("ray engine: a Ray worker died; %d file(s) again%s", len(left),
                        ", one per block" if block_rows == 1 else ", leaving out blocks whose worker dies")
            plan = _wait_for_resources(ray, plan, len(left))
        delivered: set[int] = set()
        try:
            _run_pass(ray, job, left, plan, records, block_rows, skip_crashed, delivered)
        except Exception as exc:
            user_error = _user_error_in(exc)
            if user_error is not None:
                raise user_error from exc
            if skip_crashed or not _worker_died(ray, exc):
                raise
        done = len(delivered)
        left = [t for t in left if t.item_id not in delivered]
        if not left:
            return plan.device
        if skip_crashed and done == 0 and len(left) > block_rows > 1:  # not a file's fault: the workers'
            raise RuntimeError(f"Ray workers died on each of the {len(left)} files left (see the Ray logs); "
                               "they stay pending and the next run redoes them")
    log.warning("ray engine: %d file(s) crashed their worker alone, %d times: recorded failed", len(left),
                1 + CRASH_RETRIES)
    for t in left:
        bar.update()
        sink.fail(t.item_id, CRASHED)
    sink.flush()
    return plan.device


def _run_pass(ray: Any, job: EmbedJob, tasks: list[DecodeTask], plan: PoolPlan, records: dict[str, dict[str, Any]],
              block_rows: int, skip_crashed: bool, delivered: set[int]) -> None:
    """One streaming pass over ``tasks``; ``skip_crashed``: a block whose worker died past its retries
    is left out (its tasks do not reach ``delivered``) instead of failing the pass."""
    rows = [{"item_id": t.item_id, "payload": _dumps((t, _spaces_by_modality(job, t.item_id)))} for t in tasks]
    settings = job.settings
    # a Dataset takes a copy of the current DataContext when it is made
    with _quiet_ray_data(max_errored_blocks=-1 if skip_crashed else 0), warnings.catch_warnings():
        # max_retries / max_task_retries have no named parameter: Ray 2.60 warns that the catch-all
        # remote args go away in 2.64 (see the module's notes)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / block_rows)))
        del rows
        ds = ds.map_batches(
            _decode_batch, batch_format="pyarrow", batch_size=None, fn_kwargs={"config": job.config},
            compute=ray.data.TaskPoolStrategy(size=settings.workers or None), num_cpus=plan.decode_cpus,
            max_retries=CRASH_RETRIES,
        )
        ds = ds.map_batches(
            EncodeActor, batch_format="pyarrow", batch_size=settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan.size), num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            fn_constructor_kwargs={"records": records, "device": plan.device, "threads": plan.threads,
                                   "batch_size": settings.batch_size},
            max_task_retries=CRASH_RETRIES,
        )
        results = _results(ds, stall_s=(STALL_SECONDS, START_SECONDS) if skip_crashed else None)
        try:
            _deliver(job, {t.item_id for t in tasks}, results, delivered)
        finally:
            results.close()  # shuts the pass's executor down now (its actors go), not whenever GC runs
            del ds


def _wait_for_resources(ray: Any, plan: PoolPlan, pending: int, timeout: float = RELEASE_SECONDS) -> PoolPlan:
    """Before another pass: wait until a failed pass's actors have given their CPUs (GPUs) back, and return
    the plan for that pass. When they are still held after ``timeout`` (an actor of the aborted pass can
    outlive it: seen on a busy 2-CPU cluster, for minutes), a pool of CPU actors shrinks to one actor that
    takes what is free, or else the next pass's actor would wait forever for a place it never gets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if (free.get("CPU", 0.0) >= plan.num_cpus + plan.decode_cpus
                and free.get("GPU", 0.0) >= plan.num_gpus):
            return plan
        time.sleep(0.2)
    cpus = ray.available_resources().get("CPU", 0.0)
    held = "ray engine: the cluster has not released the failed pass's resources after %.0fs; "
    if plan.num_gpus or cpus >= plan.num_cpus + plan.decode_cpus:
        log.warning(held + "going on", timeout)
        return plan
    if cpus <= plan.decode_cpus:
        raise RuntimeError(f"the Ray cluster has not given back the CPUs of a failed pass after {timeout:.0f}s "
                           f"({cpus:g} free): the {pending} file(s) left stay pending and the next run redoes them")
    log.warning(held + "the next pass runs one encoder actor on the %g CPUs free", timeout, cpus)
    return dataclasses.replace(plan, size=1, num_cpus=cpus - plan.decode_cpus)


def _worker_died(ray: Any, exc: BaseException) -> bool:
    """Whether a pass failed because a worker process or node died (retried past ``CRASH_RETRIES``),
    rather than on an exception raised in Python."""
    kinds = tuple(getattr(ray.exceptions, name) for name in (
        "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ActorDiedError", "ObjectLostError")
        if hasattr(ray.exceptions, name))
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        if isinstance(at, kinds) and not getattr(at, "_actor_init_failed", False):
            return True
        at = at.__cause__ or at.__context__
    return False


def _user_error_in(exc: BaseException) -> UserError | None:
    """The xmodal error behind a failure on the workers (a model missing or different on a node), so
    that it reads as it does with the local engine. A task's exception comes back as an instance of
    its own type too; an actor that failed to start only as the text of its traceback."""
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        if isinstance(at, UserError):
            return at
        found = _ERROR_LINE.search(str(getattr(at, "error_msg", "") or at))
        if found:
            return UserError(f"on a Ray worker: {found.group(2)}")
        at = at.__cause__ or at.__context__
    return None


_ERROR_LINE = re.compile(r"^xmodal\.errors\.(UserError|ModelLoadError|ModelMismatchError): (.+)$", re.M)


@contextlib.contextmanager
def _quiet_ray_data(**settings: Any) -> Iterator[None]:
    """No progress bars or execution banners of Ray Data's own (the run has its bar), its INFO lines and
    the warning that progress bars are off kept out of the CLI's output, and no high-memory warning
    about the decode tasks (their resident size is mostly torch's shared libraries, imported with the
    image transform: counted per worker, shared by all); ``settings``: more DataContext values. All
    restored after."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    quiet: dict[str, Any] = {"enable_progress_bars": False, "enable_operator_progress_bars": False,
                             "print_on_execution_start": False, "enable_auto_log_stats": False,
                             "verbose_stats_logs": False, **settings}
    detectors = getattr(ctx, "issue_detectors_config", None)
    if detectors is not None and hasattr(detectors, "detectors"):
        fewer = copy.copy(detectors)  # a new object: the one the current context holds stays as it was
        fewer.detectors = [d for d in detectors.detectors if getattr(d, "__name__", "") != "HighMemoryIssueDetector"]
        quiet["issue_detectors_config"] = fewer
    saved = {k: getattr(ctx, k) for k in quiet if hasattr(ctx, k)}
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    saved_levels = {name: logging.getLogger(name).level for name in levels}
    for k in saved:
        setattr(ctx, k, quiet[k])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(max(level, logging.getLogger(name).getEffectiveLevel()))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def _spaces_by_modality(job: EmbedJob, item_id: int) -> dict[str, tuple[str, ...]]:
    """The spaces an item gets a vector in, for each modality its decode may turn out to have
    (decided here on the driver, as the local engine does after decoding)."""
    out = {m: job.work[item_id].spaces_for(m) for m in MODALITIES}
    return {m: s for m, s in out.items() if s}


def _results(ds: Any, *, stall_s: tuple[float, float] | None = None
             ) -> Generator[list[tuple[Decoded, dict[str, tuple[np.ndarray, Windows | None]]]], None, None]:
    """The encoded batches as they finish (one output block of an actor call each); closing it closes
    Ray's iterator, which shuts the pass's executor down. ``stall_s``: (between results, before the first):
    when no batch comes for that long, the pass ends there (Ray Data 2.60 can wait forever for the output
    of a block it left out after its worker died); what was not delivered goes to the next pass."""
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1))
    source: Iterator[Any] = batches if stall_s is None else _with_stall_limit(batches, *stall_s)
    try:
        for batch in source:
            yield [pickle.loads(p) for p in batch.column("payload").to_pylist()]
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # a stalled pass: the stall thread is still inside Ray's iterator, left to it
                log.warning("ray engine: the stalled pass's result iterator is still waiting; left behind")


def _with_stall_limit(batches: Iterator[Any], stall_s: float, start_s: float) -> Iterator[Any]:
    """``batches``, pulled by a daemon thread, ending when none comes for ``stall_s`` seconds, or for
    ``start_s`` before the first: a pass's actors load their models first, which a busy machine can make
    take longer than any gap between results (a stall limit alone took a slow start for crashed blocks and
    failed every file as crashed)."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)

    def pull() -> None:
        try:
            for batch in batches:
                out.put(("batch", batch))
            out.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(("error", exc))

    threading.Thread(target=pull, name="xmodal-ray-results", daemon=True).start()
    started = False
    while True:
        wait = stall_s if started else max(stall_s, start_s)
        try:
            kind, value = out.get(timeout=wait)
        except queue.Empty:
            if not started:  # nothing ran at all: the cluster's, not the files' fault
                raise RuntimeError(f"the Ray cluster gave no result for {wait:.0f}s from the pass's start (its "
                                   "encoder actors never started?): the files stay pending and the next run "
                                   "redoes them") from None
            log.warning("ray engine: no result for %.0fs after a block was left out; ending the pass", wait)
            return
        started = True
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


def _deliver(job: EmbedJob, expected: set[int],
             batches: Iterator[list[tuple[Decoded, dict[str, tuple[np.ndarray, Windows | None]]]]],
             delivered: set[int]) -> None:
    """Each result to the sink exactly once, on the driver, recorded in ``delivered``; a flush after
    every batch."""
    sink: ShardSink = job.sink
    for batch in batches:
        encoded = False
        for d, vectors in batch:
            if d.item_id not in expected or d.item_id in delivered:  # a retried block delivered twice
                log.warning("ray engine: ignoring a second result for item %d", d.item_id)
                continue
            delivered.add(d.item_id)
            job.progress.update()
            if sink.decoded(d):
                for space in job.work[d.item_id].spaces_for(d.modality or "", d.meta):
                    vec, windows = vectors[space]
                    sink.vector(d, space, vec, windows)
                encoded = True
        if encoded:
            job.hook("after-encode-batch")
        sink.flush()


# ---- what runs on the workers --------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def _table(item_ids: list[int], payloads: list[bytes]) -> pa.Table:
    import pyarrow as pa

    return pa.table({"item_id": pa.array(item_ids, type=pa.int64()),
                      "payload": pa.array(payloads, type=pa.large_binary())})


_worker_ready = False


def _decode_batch(batch: pa.Table, config: DecodeConfig) -> pa.Table:
    """Decode stage (a Ray task, one block of ``DECODE_BLOCK_ROWS`` tasks): (DecodeTask, spaces by
    modality) -> (Decoded, the spaces it is encoded in)."""
    global _worker_ready
    if not _worker_ready:  # one torch thread: the task's share of the CPUs is a fraction of one
        init_worker()
        _worker_ready = True
    rows = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
    # decode_many: decode_one per task, a block's remote media fetched concurrently first (as local)
    decoded = decode_many([task for task, _ in rows], config)
    out: list[bytes] = []
    for (task, spaces), d in zip(rows, decoded, strict=True):
        if d.item_id != task.item_id:
            raise RuntimeError(f"decode returned item {d.item_id} for task {task.item_id}")
        needs = () if d.error is not None or d.unchanged else tuple(
            sp for sp in spaces.get(d.modality or "", ()) if embeds(sp, d.modality or "", d.meta))
        out.append(_dumps((d, needs)))
    return _table([task.item_id for task, _ in rows], out)


class EncodeActor:
    """Encode stage (a Ray actor): loads each space's encoder once, embeds batches of decoded items
    grouped by (space, modality) with the local engine's ``encode_group``."""

    def __init__(self, records: dict[str, dict[str, Any]], device: str, threads: int, batch_size: int) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.encoders: dict[str, Encoder] = {}
        for space, record in records.items():
            enc = load_encoder(SPACES[space].family, record, device)
            if enc.record.get("identity") != record.get("identity"):
                raise ModelMismatchError(f"the {space} model loaded on a Ray worker ({enc.record.get('identity')}) "
                                         f"is not the driver's ({record.get('identity')})")
            self.encoders[space] = enc

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[tuple[Decoded, tuple[str, ...]]] = [pickle.loads(p) for p in batch.column("payload").to_pylist()]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (d, spaces) in enumerate(rows):
            for space in spaces:
                groups.setdefault((space, d.modality or ""), []).append(i)
        vectors: list[dict[str, tuple[np.ndarray, Windows | None]]] = [{} for _ in rows]
        for (space, modality), at in groups.items():
            vecs, windows = encode_group(self.encoders[space], modality, [rows[i][0] for i in at], self.batch_size)
            for i, v, w in zip(at, vecs, windows, strict=True):
                vectors[i][space] = (np.asarray(v, dtype=np.float32), w)
        out = [_dumps((_without_payload(d), vecs)) for (d, _), vecs in zip(rows, vectors, strict=True)]
        return _table([d.item_id for d, _ in rows], out)



def _without_payload(d: Decoded) -> Decoded:
    """What the driver needs of a decoded item (id, hash, size, modality, metadata, error), without the
    model inputs (pixels, window features, text) or window spans."""
    return dataclasses.replace(d, inputs=None, spans=None)
