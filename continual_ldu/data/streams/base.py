"""Shared pieces of the streaming sources: the config, the item, the ``Source`` protocol.

A source numbers its items 0, 1, 2, ... in one fixed global order, so that every rank and
every restart agrees on what position ``p`` is. ``Stream`` (``stream.py``) cuts that order
into rounds; the sources only say how far the order is known and read one position.

``SequentialSource`` is the common core of the sources that can only be read front to back
(a streamed dataset, a chain of tar shards): a small look-ahead buffer of raw records over an
iterator that is re-opened, skipping, whenever a position behind it is asked for.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from continual_ldu.config import load_config

__all__ = [
    "SequentialSource",
    "Source",
    "StreamConfig",
    "StreamItem",
    "append_jsonl",
    "load_stream_config",
    "utc_now",
]


@dataclass
class StreamConfig:
    """Where new images come from and how they are cut into rounds."""

    source: Literal["folder", "hf_datasets", "tar_shards"] = "folder"
    # folder: a folder; hf_datasets: a hub id or a local imagefolder folder;
    # tar_shards: an fsspec URL, glob or brace pattern such as shards-{000..009}.tar
    path: str = "continual_ldu/assets/demo"
    batch_size: int = 8  # positions per round, over all ranks together
    window_seconds: float | None = None  # close a partial round after this long (None: never)
    poll_seconds: float = 1.0
    # End of stream after this long without a new item; 0: as soon as the source runs dry;
    # None: never (a long-running job watching a folder).
    idle_timeout_seconds: float | None = 0.0
    split: str = "train"
    image_column: str = "image"
    min_side: int = 64
    max_pixels: int = 40_000_000
    settle_polls: int = 1  # folder: polls with unchanged size and mtime before a file is complete

    def validate(self) -> list[str]:
        """One message per out-of-range value."""
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.poll_seconds > 0, "poll_seconds must be > 0"),
            (self.window_seconds is None or self.window_seconds > 0, "window_seconds must be > 0"),
            (
                self.idle_timeout_seconds is None or self.idle_timeout_seconds >= 0,
                "idle_timeout_seconds must be >= 0 (or null to wait forever)",
            ),
            (self.settle_polls >= 0, "settle_polls must be >= 0"),
            (self.min_side >= 1, "min_side must be >= 1"),
            (self.max_pixels >= 1, "max_pixels must be >= 1"),
            (bool(self.path), "path must not be empty"),
        ]
        return [message for ok, message in checks if not ok]


def load_stream_config(path: str | Path, overrides: tuple[str, ...] = ()) -> StreamConfig:
    """Read a ``streams/*.yaml`` definition (plus ``key=value`` overrides) as a StreamConfig."""
    return load_config(StreamConfig, path, overrides)


@dataclass
class StreamItem:
    """One position of a stream: its image, or why it was skipped."""

    position: int
    key: str  # a stable, human-readable name: relative path, shard/member, dataset file
    image: Image.Image | None
    skipped_reason: str | None = None


@runtime_checkable
class Source(Protocol):
    """A stream of items in one fixed global order; what ``Stream`` needs of a source."""

    def available(self) -> int:
        """How many positions are known now (a folder source polls here)."""
        ...

    def read(self, position: int) -> StreamItem:
        """The item at ``position`` (< ``available()``); a bad image is a skipped item."""
        ...

    def seek(self, position: int) -> None:
        """Announce that reads go on from ``position``; sequential sources drop what is behind."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once no further position can ever appear."""
        ...

    @property
    def busy(self) -> bool:
        """True while items are on their way (a file still being written): do not time out."""
        ...


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, for the JSONL records."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines, each flushed and fsynced before the next is written."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            # One write per line: O_APPEND keeps whole lines from several writers apart.
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class SequentialSource:
    """A forward-only source over ``_open(start)``, an iterator of raw records from ``start``.

    ``available()`` buffers raw (undecoded) records up to ``lookahead`` past the read position,
    so a round's worth is known without decoding it; ``read`` decodes via ``_decode``.
    Subclasses implement ``_open`` and ``_decode``.
    """

    def __init__(self, lookahead: int = 8) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        self.lookahead = lookahead
        self._base = 0  # position of self._buffer[0]
        self._buffer: deque[Any] = deque()
        self._records: Iterator[Any] | None = None
        self._exhausted = False

    def _open(self, start: int) -> Iterator[Any]:
        raise NotImplementedError

    def _decode(self, position: int, record: Any) -> StreamItem:
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """True once the underlying iterator has ended."""
        return self._exhausted

    @property
    def busy(self) -> bool:
        """Never: ``available()`` reads ahead itself, so nothing is ever half-arrived."""
        return False

    def available(self) -> int:
        """Positions known: the read position plus up to ``lookahead`` buffered records."""
        self._fill(self.lookahead)
        return self._base + len(self._buffer)

    def seek(self, position: int) -> None:
        """Move the read position; behind the buffer means a fresh iterator that skips."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        if position < self._base or self._records is None:
            self._records = self._open(position)
            self._base, self._buffer, self._exhausted = position, deque(), False
            return
        while self._base < position and self._fill(1):
            self._buffer.popleft()
            self._base += 1

    def read(self, position: int) -> StreamItem:
        """Decode the record at ``position`` (reads must not go backwards to stay cheap)."""
        self.seek(position)
        if not self._fill(1) or self._base != position:
            raise IndexError(f"position {position} is past the end of the stream")
        return self._decode(position, self._buffer[0])

    def _fill(self, count: int) -> bool:
        """Buffer at least ``count`` records if the iterator has them; True if it did."""
        if self._records is None:
            self.seek(self._base)
        while len(self._buffer) < count and not self._exhausted:
            try:
                self._buffer.append(next(self._records))  # type: ignore[arg-type]
            except StopIteration:
                self._exhausted = True
        return len(self._buffer) >= count
