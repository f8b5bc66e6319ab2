"""``xmodal index``'s entry points, in one place for callers (the CLI, the tests, benchmarks).

The pipeline's stages live in their own modules: ``scan`` (walking sources), ``plan`` and ``diff`` (the
decisions a run applies and a dry run reports), ``decode`` (worker-side decoding, by modality),
``encode`` (the encode step, by modality), ``sink`` (shards and catalog rows, crash safe),
``engines`` (where decode and encode run: local or Ray, behind one interface), ``models`` (which model
serves each space), ``run`` (the run, stage by stage), ``publish`` (index builds).
"""

from xmodal.indexer.diff import plan_manifest, plan_sources
from xmodal.indexer.engines.local import DecodePool
from xmodal.indexer.run import FAULT_ENV, IndexRun, RunSummary, fault_from_env, index_manifest, index_sources

__all__ = ["FAULT_ENV", "DecodePool", "IndexRun", "RunSummary", "fault_from_env", "index_manifest", "index_sources",
           "plan_manifest", "plan_sources"]
