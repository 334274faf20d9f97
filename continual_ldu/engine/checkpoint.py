"""Atomic checkpoints: write to a temporary directory, rename, then move the ``latest`` pointer.

Layout under ``<run>/checkpoints/``: ``round-000003/`` (one directory per checkpoint), ``latest``
(a text file naming the newest committed directory). A crash at any point leaves either the old
or the new checkpoint committed, never a half-written one: the temporary directory is only
renamed once complete, and ``keep_last`` pruning runs only after the pointer has moved.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LATEST = "latest"
TMP_PREFIX = ".tmp-"


def checkpoint_name(round_index: int) -> str:
    return f"round-{round_index:06d}"


def staging_dir(root: Path, round_index: int) -> Path:
    """The temporary directory all ranks write into before the commit (same name everywhere)."""
    return root / f"{TMP_PREFIX}{checkpoint_name(round_index)}"


def begin(root: Path, round_index: int) -> Path:
    """Create a fresh staging directory (main process only), removing a stale one."""
    staging = staging_dir(root, round_index)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file by tmp + fsync + rename, so readers see the old or the new text."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def commit(root: Path, round_index: int, keep_last: int) -> Path:
    """Rename the staging directory into place, move ``latest``, then prune (main process)."""
    final = root / checkpoint_name(round_index)
    if final.exists():  # a re-run of a round after resume replaces its old checkpoint
        shutil.rmtree(final)
    os.replace(staging_dir(root, round_index), final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST, final.name)
    prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` committed checkpoints (never the latest)."""
    latest = latest_checkpoint(root)
    committed = sorted(p for p in root.glob("round-*") if p.is_dir())
    for old in committed[: max(0, len(committed) - keep_last)]:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The directory ``latest`` points at, or None when nothing has been committed."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    if not path.is_dir():
        raise ValueError(
            f"{pointer} names {path.name}, which is missing: the run folder was edited"
        )
    return path
