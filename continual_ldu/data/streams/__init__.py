"""Streaming ingestion: rounds of new images from a folder, a ``datasets`` split or tar shards.

``build_stream(cfg, run_dir, rank, world_size, agree)`` is what the engine calls; the stream's
bookkeeping (the folder manifest, the quarantine of undecodable items) lives under
``run_dir/stream/``. ``SOURCES`` is the catalog of sources, by ``StreamConfig.source``. This
package is data code: the engine passes in the collective (``agree``) it needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from continual_ldu.data.streams.base import (
    SequentialSource,
    Source,
    StreamConfig,
    StreamItem,
    load_stream_config,
)
from continual_ldu.data.streams.folder import FolderSource
from continual_ldu.data.streams.hf_datasets import HFDatasetSource
from continual_ldu.data.streams.stream import END, WAIT, Stream
from continual_ldu.data.streams.tar_shards import TarShardSource

__all__ = [
    "END",
    "SOURCES",
    "WAIT",
    "FolderSource",
    "HFDatasetSource",
    "SequentialSource",
    "Source",
    "Stream",
    "StreamConfig",
    "StreamItem",
    "TarShardSource",
    "build_stream",
    "load_stream_config",
]

SOURCES = {
    "folder": FolderSource,
    "hf_datasets": HFDatasetSource,
    "tar_shards": TarShardSource,
}


def _identity(n: int) -> int:
    return n


def build_stream(
    cfg: StreamConfig,
    run_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    agree: Callable[[int], int] = _identity,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Stream:
    """The stream of ``cfg`` for one rank; its records go to ``run_dir/stream/``.

    Only rank 0 registers folder files; ``agree`` must hand every rank rank 0's value.
    """
    stream_dir = Path(run_dir) / "stream"
    source = SOURCES[cfg.source].from_config(cfg, stream_dir, rank, lookahead=cfg.batch_size)
    quarantine = stream_dir / "quarantine.jsonl"
    return Stream(cfg, source, rank, world_size, quarantine, agree, clock, sleep)
