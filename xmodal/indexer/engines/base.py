"""What an engine is given, and what it must do with it.

An engine decodes and encodes a job's tasks and delivers every result to the job's sink, which writes
the shards and catalog rows (the same for every engine, so every engine is crash safe the same way).
It returns the device it encoded on; the caller finishes the sink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xmodal.config import Settings
from xmodal.encoders import Encoder
from xmodal.indexer.decode import DecodeConfig, DecodeTask
from xmodal.indexer.sink import ItemWork, ShardSink


@dataclass
class EmbedJob:
    tasks: list[DecodeTask]
    work: dict[int, ItemWork]  # per task's item: its label, stat, source fields and spaces
    config: DecodeConfig  # the decoders' limits and the encoders' preparations (picklable)
    records: dict[str, dict[str, Any]]  # the run's resolved model of each space (plain dicts, for workers)
    encoder: Callable[[str], Encoder]  # the run's loaded encoder of a space (local encoding)
    sink: ShardSink
    settings: Settings
    progress: Any  # a progress bar: update() per item
    hook: Callable[[str], None]  # the fault hook: called at "after-encode-batch"
    stop: Callable[[], bool] = lambda: False  # True once the user asked to stop (Ctrl-C): end early, cleanly


class Engine(Protocol):
    name: str

    def start(self, tasks: list[DecodeTask], work: dict[int, ItemWork], *, workers: int, min_bytes: int) -> None:
        """Called before the models load: start what can overlap with loading them (decode workers)."""

    def embed(self, job: EmbedJob) -> str: ...
