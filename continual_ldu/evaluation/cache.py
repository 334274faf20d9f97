"""Content-hashed stage outputs: a stage whose inputs come back is read, not recomputed.

A stage's key hashes its own config together with the keys of the stages it reads, so changing
one purification in a sweep re-runs that branch only. A stage folder counts once ``done`` exists
(written last), so an interrupted stage is recomputed rather than half-read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch


def stage_key(stage: str, **inputs: object) -> str:
    """A stable hash of a stage's name and JSON-able inputs (configs, upstream keys)."""
    text = json.dumps({"stage": stage, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_digest(tensor: torch.Tensor) -> str:
    """A content hash of a tensor (for the images that enter the graph)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_digest(folder: Path) -> str:
    """A content hash of every file under ``folder`` (a trained net's weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class StageCache:
    """``root/<stage>/<key>/``: a stage's files plus ``done``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _stage(self, stage: str, key: str, compute, name: str, save, load):
        """Load ``name`` from a finished stage folder, or compute, save it and mark it done."""
        folder = self.folder(stage, key)
        if (folder / "done").is_file():
            self.hits += 1
            return load(folder / name)
        self.misses += 1
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        value = compute(folder)
        save(value, folder / name)
        (folder / "done").write_text(key)  # last: a half-written stage is never reused
        return value

    def tensor(self, stage: str, key: str, compute: Callable[[Path], torch.Tensor]) -> torch.Tensor:
        """The stage's tensor output: loaded when cached, else computed (``compute`` may also
        write files into the folder it is given) and stored."""
        return self._stage(
            stage,
            key,
            compute,
            "output.pt",
            save=lambda value, path: torch.save(value.cpu(), path),
            load=lambda path: torch.load(path, weights_only=True),
        )

    def json(self, stage: str, key: str, compute: Callable[[Path], dict]) -> dict:
        """As ``tensor``, for a JSON-able result."""
        return self._stage(
            stage,
            key,
            compute,
            "output.json",
            save=lambda value, path: path.write_text(json.dumps(value, indent=2, default=str)),
            load=lambda path: json.loads(path.read_text()),
        )
