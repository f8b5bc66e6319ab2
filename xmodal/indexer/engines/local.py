"""The local engine: decode in worker processes, encode here in batches per (space, modality).

Starting workers costs seconds (each imports the image transform's torch); decoding costs about what a
file weighs. So workers start only when the work's media add up to ``decode_pool_min_bytes`` (64 MiB by
default; remote media count an estimate each) and there are at least ``POOL_MIN_ITEMS`` items; smaller
runs decode in this process. A pool starts before the models load, so that its start-up overlaps them.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import signal
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator

from xmodal.indexer.decode import (
    CHUNK_FILES,
    DecodeConfig,
    Decoded,
    DecodeTask,
    decode_many,
    init_worker,
    warm_up,
)
from xmodal.indexer.encode import encode_group, waiting
from xmodal.indexer.engines.base import EmbedJob
from xmodal.indexer.sink import ItemWork

log = logging.getLogger(__name__)

POOL_MIN_ITEMS = 32  # fewer items than this decode in-process whatever they weigh
REMOTE_BYTES_ESTIMATE = 2 << 20  # a remote file counts this much toward the pool threshold


def wants_pool(tasks: list[DecodeTask], work: dict[int, ItemWork], *, workers: int, min_bytes: int) -> bool:
    """Whether decoding ``tasks`` is worth starting worker processes for."""
    if workers < 1 or len(tasks) < POOL_MIN_ITEMS:
        return False
    weight = 0
    for t in tasks:
        weight += REMOTE_BYTES_ESTIMATE if t.remote else max(0, work[t.item_id].size or 0)
        if weight >= min_bytes:
            return True
    return False


class LocalEngine:
    name = "local"
    stoppable = True  # asks job.stop() between items: Ctrl-C ends the run after committing what is embedded

    def __init__(self) -> None:
        self.pool: DecodePool | None = None

    def start(self, tasks: list[DecodeTask], work: dict[int, ItemWork], *, workers: int, min_bytes: int) -> None:
        """Start the decode workers now, when the work is worth it (before the models load)."""
        if self.pool is None and wants_pool(tasks, work, workers=workers, min_bytes=min_bytes):
            self.pool = DecodePool(workers)

    def embed(self, job: EmbedJob) -> str:
        s = job.settings
        self.start(job.tasks, job.work, workers=s.resolved_workers, min_bytes=s.decode_pool_min_bytes)
        batch, sink = s.batch_size, job.sink
        groups: dict[tuple[str, str], list[Decoded]] = defaultdict(list)  # (space, modality) -> waiting
        encoders = {}

        def encode(space: str, modality: str) -> None:
            group = groups.pop((space, modality), [])
            if group:
                if space not in encoders:
                    encoders[space] = job.encoder(space)
                vecs, windows = encode_group(encoders[space], modality, group, batch)
                for d, v, w in zip(group, vecs, windows, strict=True):
                    sink.vector(d, space, v, w)

        try:
            if self.pool is not None:  # keep two batches in flight so the workers never wait on the encoder
                decoded: Iterable[Decoded] = self.pool.decode(
                    job.tasks, job.config, max_inflight=max(4 * self.pool.workers, -(-2 * batch // CHUNK_FILES)))
            else:
                decoded = _in_process(job.tasks, job.config)
            for d in decoded:
                job.progress.update()
                if sink.decoded(d):
                    modality = d.modality or ""
                    for space in job.work[d.item_id].spaces_for(modality, d.meta):
                        groups[(space, modality)].append(d)
                        if waiting(groups.get((space, modality), [])) >= batch:
                            encode(space, modality)
                            job.hook("after-encode-batch")
                sink.flush()
                if job.stop():  # Ctrl-C: what was embedded goes to the sink, the rest stays pending
                    break
            else:
                for space, modality in list(groups):
                    encode(space, modality)
        finally:
            self.close()
        return next(iter(encoders.values())).device if encoders else "cpu"

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes are spawned (they inherit it: a Ctrl-C then never prints a
    traceback from a worker's start-up); in the main thread only, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_process(tasks: list[DecodeTask], config: DecodeConfig) -> Iterator[Decoded]:
    """Decode here, a chunk at a time (a chunk's remote media are fetched concurrently, as in a worker)."""
    for start in range(0, len(tasks), CHUNK_FILES):
        yield from decode_many(tasks[start : start + CHUNK_FILES], config)


class DecodePool:
    """Spawned decode workers with bounded in-flight work, results in task order.

    A worker that dies (a decoder segfault, the OOM killer) breaks the pool: the files in flight are
    retried one at a time in a fresh pool, and a file that kills a worker again, alone, is recorded as
    failed; results keep task order.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        with _sigint_ignored():  # workers start ignoring Ctrl-C (the parent stops them), even before init_worker
            pool = cf.ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=init_worker)
            for _ in range(self.workers):
                pool.submit(warm_up)
        return pool

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def decode(self, tasks: list[DecodeTask], config: DecodeConfig, *, max_inflight: int) -> Iterator[Decoded]:
        todo: deque[list[DecodeTask]] = deque(tasks[i : i + CHUNK_FILES] for i in range(0, len(tasks), CHUNK_FILES))
        suspects: deque[DecodeTask] = deque()
        while todo or suspects:
            if suspects:  # in flight when a worker died: one at a time, so that a crash names its own file
                task = suspects.popleft()
                try:
                    yield from self._pool.submit(decode_many, [task], config).result()
                except cf.process.BrokenProcessPool:
                    yield Decoded(task.item_id, error="the decoder crashed on this file")
                    self._restart()
                continue
            inflight: deque[tuple[list[DecodeTask], cf.Future[list[Decoded]]]] = deque()
            while todo or inflight:
                broken = False
                while todo and len(inflight) < max_inflight:
                    try:  # a worker that died meanwhile breaks the pool for submit() too
                        fut = self._pool.submit(decode_many, todo[0], config)
                    except cf.process.BrokenProcessPool:
                        broken = True
                        break
                    inflight.append((todo.popleft(), fut))
                if not broken:
                    chunk, fut = inflight.popleft()
                    try:
                        results = fut.result()
                    except cf.process.BrokenProcessPool:
                        inflight.appendleft((chunk, fut))
                        broken = True
                    else:
                        yield from results
                        continue
                in_flight = [c for c, _ in inflight]  # all earlier than what is left in todo
                log.warning("a decode worker died; retrying %d files one at a time", sum(len(c) for c in in_flight))
                self._restart()
                suspects.extend(t for c in in_flight for t in c)
                break

    def _restart(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()
