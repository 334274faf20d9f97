"""A ``datasets`` streaming dataset as a stream: a hub id, or a local imagefolder folder.

The image column is cast to ``Image(decode=False)`` so that ``datasets`` hands over the raw
file (bytes or a local path) and the decoding goes through ``continual_ldu.data.images``: the
same bad-input rules as everywhere else, and a corrupt image becomes a skipped item instead of
an exception in the middle of iteration. Positions are the dataset's row order; resuming at
position ``n`` is ``.skip(n)`` on a fresh iterator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from continual_ldu.data.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageSkipped,
    load_image,
    load_image_bytes,
)
from continual_ldu.data.streams.base import SequentialSource, StreamConfig, StreamItem

__all__ = ["HFDatasetSource"]


class HFDatasetSource(SequentialSource):
    """Rows of a streamed ``datasets`` split, in order, decoded from ``image_column``."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        image_column: str = "image",
        *,
        lookahead: int = 8,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(lookahead)
        self.path = path
        self.split = split
        self.image_column = image_column
        self.min_side = min_side
        self.max_pixels = max_pixels
        self._local_dir = Path(path).resolve() if Path(path).is_dir() else None
        self._dataset = self._load(cache_dir)

    @classmethod
    def from_config(
        cls, cfg: StreamConfig, stream_dir: Path, rank: int, lookahead: int
    ) -> HFDatasetSource:
        """The source of ``cfg``; every rank streams the same rows and keeps its own share."""
        del stream_dir, rank  # the dataset itself fixes the order: nothing to record
        return cls(
            cfg.path,
            cfg.split,
            cfg.image_column,
            lookahead=lookahead,
            min_side=cfg.min_side,
            max_pixels=cfg.max_pixels,
        )

    def _load(self, cache_dir: str | None) -> Any:
        """Open the split in streaming mode with the image column left undecoded."""
        # Imported here: `datasets` takes seconds to import and only this source needs it.
        import datasets

        if self._local_dir is not None:
            args: tuple[str, ...] = ("imagefolder",)
            kwargs: dict[str, Any] = {"data_dir": str(self._local_dir)}
        else:
            args, kwargs = (self.path,), {}
        dataset = datasets.load_dataset(
            *args, split=self.split, streaming=True, cache_dir=cache_dir, **kwargs
        )
        feature = (dataset.features or {}).get(self.image_column)
        if not isinstance(feature, datasets.Image):
            columns = ", ".join(dataset.features or {}) or "unknown"
            raise ValueError(
                f"{self.path} [{self.split}]: column {self.image_column!r} is not an image "
                f"column (columns: {columns}); set image_column"
            )
        return dataset.cast_column(self.image_column, datasets.Image(decode=False))

    def _open(self, start: int) -> Iterator[Any]:
        return iter(self._dataset.skip(start) if start else self._dataset)

    def _decode(self, position: int, record: Any) -> StreamItem:
        value = record.get(self.image_column) or {}
        key = self._key(position, value.get("path"))
        try:
            image = self._load_value(value, key)
        except ImageSkipped as exc:
            return StreamItem(position, key, None, exc.reason)
        return StreamItem(position, key, image, None)

    def _key(self, position: int, path: str | None) -> str:
        """The file's path relative to a local folder, else its name, else split/position."""
        if path and self._local_dir is not None and Path(path).is_relative_to(self._local_dir):
            return Path(path).relative_to(self._local_dir).as_posix()
        return path or f"{self.split}/{position:08d}"

    def _load_value(self, value: dict[str, Any], key: str) -> Any:
        """Decode an undecoded ``Image`` cell: inline bytes, or a local file path."""
        if value.get("bytes") is not None:
            return load_image_bytes(value["bytes"], key, self.min_side, self.max_pixels).image
        if value.get("path"):
            return load_image(Path(value["path"]), self.min_side, self.max_pixels, name=key).image
        raise ImageSkipped(Path(key), "empty image cell (no bytes and no path)")
