"""A watched folder as a stream: polling, a settle rule, and an append-only manifest.

Rank 0 (``register=True``) scans the folder on every ``available()`` call and appends each new,
complete file to ``manifest.jsonl``; the manifest, not the folder, defines the positions, so
they survive restarts, later additions and files that disappear. Other ranks only re-read the
manifest. Polling rather than inotify, because inotify misses writes made over NFS and other
network file systems, which is where a shared incoming folder usually lives.

A file is complete once its size and mtime are unchanged over ``settle_polls`` consecutive
polls. Temporary names (``*.part``, ``*.tmp``, ``*.crdownload``) and hidden files are never
registered: downloaders and ``rsync`` write under such names and rename when done. The input
folder is only ever read.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from continual_ldu.data.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageSkipped,
    load_image,
    scan_folder,
)
from continual_ldu.data.streams.base import StreamConfig, StreamItem, append_jsonl, utc_now

__all__ = ["TEMP_SUFFIXES", "FolderSource", "read_manifest"]

#: Suffixes of files that are still being written by some tool; never registered.
TEMP_SUFFIXES: frozenset[str] = frozenset({".part", ".tmp", ".crdownload"})

_HASH_CHUNK = 1 << 20


def read_manifest(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete manifest lines from byte ``offset`` on; returns them and the offset after them.

    A torn last line (a crash mid-write) has no newline yet and is left for a later call; a
    line that is not a JSON object (a torn line that a restart closed off) is skipped.
    """
    if not path.exists():
        return [], offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    entries = []
    for line in data[:end].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries, offset + end


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_candidate(rel: str) -> bool:
    """Whether a scanned path may ever be registered (scan_folder already drops hidden names)."""
    return Path(rel).suffix.lower() not in TEMP_SUFFIXES


class FolderSource:
    """Images of a folder, numbered in the order they were registered in the manifest."""

    def __init__(
        self,
        folder: str | Path,
        manifest_path: str | Path,
        register: bool,
        *,
        settle_polls: int = 1,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.folder = Path(folder)
        self.manifest_path = Path(manifest_path)
        self.register = register
        self.settle_polls = settle_polls
        self.min_side = min_side
        self.max_pixels = max_pixels
        self._entries: list[dict] = []
        self._offset = 0
        self._registered: set[str] = set()
        # relative path -> (size, mtime_ns, polls it has stayed unchanged)
        self._settling: dict[str, tuple[int, int, int]] = {}
        if register and not self.folder.is_dir():
            raise ValueError(f"stream folder {self.folder} does not exist or is not a folder")
        self._refresh()
        if register:
            self._close_torn_line()

    @classmethod
    def from_config(
        cls, cfg: StreamConfig, stream_dir: Path, rank: int, lookahead: int
    ) -> FolderSource:
        """The source of ``cfg``; only rank 0 registers files."""
        del lookahead  # random access: nothing to read ahead
        return cls(
            cfg.path,
            stream_dir / "manifest.jsonl",
            register=rank == 0,
            settle_polls=cfg.settle_polls,
            min_side=cfg.min_side,
            max_pixels=cfg.max_pixels,
        )

    @property
    def exhausted(self) -> bool:
        """Never: a folder can always get another file; the stream's idle timeout ends it."""
        return False

    @property
    def busy(self) -> bool:
        """True while some file has been seen but has not settled yet."""
        return bool(self._settling)

    def available(self) -> int:
        """Register newly complete files (rank 0) or re-read the manifest; positions known."""
        if self.register:
            self._scan()
        else:
            self._refresh()
        return len(self._entries)

    def seek(self, position: int) -> None:
        """Nothing to do: any registered position can be read at any time."""

    def read(self, position: int) -> StreamItem:
        """Decode the file registered at ``position``; a bad or vanished file is skipped."""
        if position >= len(self._entries):
            self._refresh()  # another rank may be behind rank 0's latest lines
        if not 0 <= position < len(self._entries):
            raise IndexError(f"position {position} is not in {self.manifest_path} yet")
        rel = self._entries[position]["path"]
        try:
            loaded = load_image(self.folder / rel, self.min_side, self.max_pixels, name=rel)
        except ImageSkipped as exc:
            return StreamItem(position, rel, None, exc.reason)
        return StreamItem(position, rel, loaded.image, None)

    # --- internals ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Take in manifest lines written since the last call (by this or another process)."""
        entries, self._offset = read_manifest(self.manifest_path, self._offset)
        for entry in entries:
            if entry.get("position") != len(self._entries):
                raise ValueError(
                    f"{self.manifest_path}: expected position {len(self._entries)}, got "
                    f"{entry.get('position')!r}; the manifest is damaged or shared by two jobs"
                )
            self._entries.append(entry)
            self._registered.add(entry["path"])

    def _close_torn_line(self) -> None:
        """End a torn last line, so the next record starts on a line of its own."""
        path = self.manifest_path
        if path.exists() and path.stat().st_size > self._offset:
            with open(path, "ab") as fh:
                fh.write(b"\n")
            self._offset = path.stat().st_size

    def _scan(self) -> None:
        """One poll: update the settle counts and register the files that are complete."""
        found = [
            (rel, path)
            for path in scan_folder(self.folder)
            if _is_candidate(rel := path.relative_to(self.folder).as_posix())
            and rel not in self._registered
        ]
        # A file that vanished before settling is forgotten, not registered.
        self._settling = {rel: self._settling[rel] for rel, _ in found if rel in self._settling}
        ready = [(rel, path) for rel, path in found if self._settled(rel, path)]
        self._append(ready)

    def _settled(self, rel: str, path: Path) -> bool:
        """Count one poll for ``path``; True once it has been unchanged for enough polls."""
        try:
            st = path.stat()
        except OSError:  # gone between the scan and now
            self._settling.pop(rel, None)
            return False
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device named x.png never completes
            return False
        size, mtime, count = self._settling.get(rel, (-1, -1, -1))
        count = count + 1 if (size, mtime) == (st.st_size, st.st_mtime_ns) else 0
        self._settling[rel] = (st.st_size, st.st_mtime_ns, count)
        return count >= self.settle_polls

    def _append(self, ready: list[tuple[str, Path]]) -> None:
        """Hash and register ``ready`` files, in scan order, as new manifest lines."""
        records = []
        for rel, path in ready:
            record = self._record(rel, path, len(self._entries) + len(records))
            if record is not None:
                records.append(record)
        append_jsonl(self.manifest_path, records)
        self._offset = self.manifest_path.stat().st_size if records else self._offset
        for record in records:
            self._entries.append(record)
            self._registered.add(record["path"])

    def _record(self, rel: str, path: Path, position: int) -> dict | None:
        """The manifest line for ``path``, or None if it changed while being hashed."""
        expected = self._settling.pop(rel)
        try:
            digest = _sha256(path)
            st = path.stat()
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != expected[:2]:
            return None  # still being written after all: it starts settling again
        return {
            "position": position,
            "path": rel,
            "sha256": digest,
            "size": st.st_size,
            "registered_at": utc_now(),
        }
