"""WebDataset-style tar shards at any fsspec URL as a stream.

A shard is a tar whose members are grouped into samples by key, the member path up to the first
dot of its file name (``a/b/0001.seg.png`` has key ``a/b/0001``), as WebDataset does; the
members of a sample are adjacent. A sample with an image member (png, jpg, jpeg, webp) is one
position, named ``<shard file>/<member>``; samples without one (captions alone) are not.
Positions run through the shards in pattern order, and within a shard in tar order, so they are
the same on every rank and every restart. Resuming at ``n`` reads and drops the first ``n``.

The URL pattern is a file path or fsspec URL, a glob (``s3://bucket/shards-*.tar``, sorted), or
a brace pattern (``shards-{000..009}.tar``, ``{train,extra}.tar``) expanded here, since fsspec
does not. A shard that cannot be opened is an error: skipping it would renumber every later
position once it became readable. A shard that breaks off midway (a truncated upload) yields
the samples before the break and then one skipped item that names it.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fsspec

from continual_ldu.data.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageSkipped,
    load_image_bytes,
)
from continual_ldu.data.streams.base import SequentialSource, StreamConfig, StreamItem

__all__ = ["TAR_IMAGE_EXTENSIONS", "TarShardSource", "expand_braces", "iter_samples", "list_shards"]

#: Member extensions (lower case, no dot) that make a sample an image sample.
TAR_IMAGE_EXTENSIONS: frozenset[str] = frozenset({"png", "jpg", "jpeg", "webp"})

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class _Sample:
    """A raw sample: its key, its image member's bytes, or why the shard broke off."""

    key: str
    data: bytes | None
    error: str | None = None


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` ranges (zero-padded like the start) and ``{a,b}`` lists, in order."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    return [head + choice + rest for choice in _brace_choices(body) for rest in expand_braces(tail)]


def _brace_choices(body: str) -> list[str]:
    numbers = _RANGE.match(body)
    if numbers:
        lo, hi = int(numbers.group(1)), int(numbers.group(2))
        if lo > hi:
            raise ValueError(f"brace range {{{body}}} runs backwards")
        width = len(numbers.group(1))
        return [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    if "," in body:
        return body.split(",")
    return ["{" + body + "}"]  # not an expansion: a literal brace in a file name


def list_shards(pattern: str) -> list[str]:
    """The shard URLs of ``pattern``: braces expanded, globs matched (sorted), order kept."""
    urls: list[str] = []
    for url in expand_braces(pattern):
        if _GLOB_CHARS.search(url):
            files = fsspec.open_files(url, "rb")
            urls.extend(sorted(f.fs.unstrip_protocol(f.path) for f in files))
        else:
            urls.append(url)
    if not urls:
        raise ValueError(f"no tar shard matches {pattern!r}")
    return urls


def iter_samples(urls: list[str]) -> Iterator[_Sample]:
    """Every image sample of the shards, in order (see the module docstring)."""
    for url in urls:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        # Opening errors propagate on purpose: a missing shard must not shift positions.
        with fsspec.open(url, "rb") as fh:
            yield from _iter_tar(fh, name)


def _split_member(path: str) -> tuple[str, str]:
    """WebDataset's split of a member path into (key, extension) at the name's first dot."""
    folder, _, base = path.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_tar(fh: IO[bytes], name: str) -> Iterator[_Sample]:
    """Samples of one open shard, read as a stream (``r|*``: no seeking, any compression)."""
    try:
        with tarfile.open(fileobj=fh, mode="r|*") as tar:
            yield from _image_samples(tar, name)
    except (tarfile.TarError, EOFError) as exc:
        # Only the format is judged here; an I/O error (a network drop) propagates, since a
        # retry would read on past the point this item would claim is the end.
        yield _Sample(name, None, f"corrupt shard: {exc}")


def _image_samples(tar: tarfile.TarFile, name: str) -> Iterator[_Sample]:
    """The first image member of each key; the sample's other members are passed over."""
    done_key: str | None = None
    for member in tar:
        key, ext = _split_member(member.name)
        is_image = ext.rsplit(".", 1)[-1] in TAR_IMAGE_EXTENSIONS
        if not member.isfile() or not is_image or key == done_key:
            continue
        done_key = key
        # Read now: in a streamed tar the member's data is gone once the loop moves on.
        data = tar.extractfile(member)
        yield _Sample(f"{name}/{member.name}", data.read() if data else b"")


class TarShardSource(SequentialSource):
    """Image samples of WebDataset-style tar shards, in shard order."""

    def __init__(
        self,
        url_pattern: str,
        *,
        lookahead: int = 8,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(lookahead)
        self.url_pattern = url_pattern
        self.min_side = min_side
        self.max_pixels = max_pixels
        # Listed once: a shard that appeared later would sort among the others and renumber
        # positions. The same holds across restarts, so a glob must keep matching one set.
        self.urls = list_shards(url_pattern)

    @classmethod
    def from_config(
        cls, cfg: StreamConfig, stream_dir: Path, rank: int, lookahead: int
    ) -> TarShardSource:
        """The source of ``cfg``; every rank reads the same shards and keeps its own share."""
        del stream_dir, rank  # the shard list itself fixes the order
        return cls(cfg.path, lookahead=lookahead, min_side=cfg.min_side, max_pixels=cfg.max_pixels)

    def _open(self, start: int) -> Iterator[_Sample]:
        samples = iter_samples(self.urls)
        for _ in range(start):  # tar streams cannot seek: read past what came before
            if next(samples, None) is None:
                break
        return samples

    def _decode(self, position: int, record: _Sample) -> StreamItem:
        if record.data is None:
            return StreamItem(position, record.key, None, record.error or "no image data")
        try:
            loaded = load_image_bytes(record.data, record.key, self.min_side, self.max_pixels)
        except ImageSkipped as exc:
            return StreamItem(position, record.key, None, exc.reason)
        return StreamItem(position, record.key, loaded.image, None)
