"""The engine-facing stream: cuts a source's positions into rounds, shards them over ranks.

Each ``next_batch()`` waits until a round can close, then returns this rank's items of it:

* a round closes with ``batch_size`` positions as soon as that many are available; with fewer
  when ``window_seconds`` have passed since the call started waiting (and one is there); and
  with the rest when the source is exhausted or has been idle for ``idle_timeout_seconds``;
* the round covers positions ``[cursor, cursor + n)``; rank ``r`` of ``w`` gets those with
  ``p % w == r``, so ranks are disjoint and together cover the round;
* items that fail to decode are appended to the quarantine JSONL and left out, so a rank's
  batch can be smaller than its share, even empty (``[]``); ``None`` means the stream ended.

Only rank 0 looks at the source to decide; ``agree`` carries its decision to the other ranks
(a broadcast from rank 0 in the engine, the identity in a single process). It is called once
per poll, with ``WAIT`` while the round is still open, so that no rank ever blocks in one
collective for longer than a poll: a watched folder may stay quiet for hours, far beyond any
collective's timeout. Ranks other than 0 do not sleep; they wait inside ``agree``.

``state_dict()`` is ``{"cursor", "round"}`` after the last returned round. The engine saves it
with the checkpoint it writes after training the round, so a restart re-reads every position
after the last checkpoint and each position is trained exactly once up to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from continual_ldu.data.streams.base import (
    Source,
    StreamConfig,
    StreamItem,
    append_jsonl,
    utc_now,
)

__all__ = ["END", "WAIT", "Stream"]

WAIT = -1  # rank 0's decision "the round is still open: poll again"
END = 0  # rank 0's decision "the stream has ended"


def _identity(n: int) -> int:
    return n


def _quarantined_positions(path: Path | None) -> set[int]:
    """Positions already in the quarantine file, so that a re-read round does not repeat them."""
    if path is None or not path.exists():
        return set()
    positions = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            positions.add(int(json.loads(line)["position"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a crash: the position will simply be recorded again
    return positions


class Stream:
    """Rounds of items from a ``Source`` for one rank; see the module docstring."""

    def __init__(
        self,
        cfg: StreamConfig,
        source: Source,
        rank: int = 0,
        world_size: int = 1,
        quarantine_path: Path | None = None,
        agree: Callable[[int], int] = _identity,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.cfg = cfg
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.quarantine_path = Path(quarantine_path) if quarantine_path is not None else None
        self._agree = agree
        self._clock = clock
        self._sleep = sleep
        self.cursor = 0  # first position of the next round
        self.round = 0  # rounds returned so far
        self._ended = False
        self._known = 0  # most positions rank 0 has seen available
        self._grew_at: float | None = None  # when that last grew (or the source was busy)
        self._quarantined = _quarantined_positions(self.quarantine_path)

    def next_batch(self) -> list[StreamItem] | None:
        """This rank's good items of the next round (maybe ``[]``); ``None`` once ended."""
        if self._ended:
            return None
        n = self._agree_on_round()
        if n == END:
            self._ended = True
            return None
        start = self.cursor
        self.cursor, self.round = start + n, self.round + 1
        return self._take(range(start + self._offset(start), start + n, self.world_size))

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands after the last returned round."""
        return {"cursor": self.cursor, "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume after the round that ``state`` was taken at."""
        self.cursor, self.round = int(state["cursor"]), int(state.get("round", 0))
        self._ended, self._known, self._grew_at = False, 0, None
        self.source.seek(self.cursor)

    # --- internals ---------------------------------------------------------------------

    def _offset(self, start: int) -> int:
        """Distance from ``start`` to this rank's first position (``p % world_size == rank``)."""
        return (self.rank - start) % self.world_size

    def _agree_on_round(self) -> int:
        """Poll until rank 0 decides, in step with the other ranks; the agreed ``n``."""
        self.source.seek(self.cursor)
        started = self._clock()
        while True:
            proposal = self._decide(started) if self.rank == 0 else WAIT
            n = int(self._agree(proposal))
            if n != WAIT:
                if not 0 <= n <= self.cfg.batch_size:
                    raise ValueError(f"agree() returned {n}, not a round size")
                return n
            if self.rank == 0:
                self._sleep(self.cfg.poll_seconds)

    def _decide(self, started: float) -> int:
        """Rank 0's look at the source: a round size, ``END`` or ``WAIT``."""
        now = self._clock()
        known = self.source.available()
        if known > self._known or self.source.busy:
            self._known, self._grew_at = max(known, self._known), now
        ready = max(0, known - self.cursor)
        if ready >= self.cfg.batch_size:
            return self.cfg.batch_size
        window = self.cfg.window_seconds
        if ready and window is not None and now - started >= window:
            return ready
        if self._dry(now, started):
            return ready  # the last, partial round; or END when nothing is left
        return WAIT

    def _dry(self, now: float, started: float) -> bool:
        """Whether no more positions should be waited for."""
        if self.source.exhausted:
            return True
        idle = self.cfg.idle_timeout_seconds
        if idle is None or self.source.busy:
            return False
        # Idle time counts from the later of the last new item and the start of this wait,
        # so time spent training a round is not mistaken for a quiet source.
        quiet_since = max(started, self._grew_at if self._grew_at is not None else started)
        return now - quiet_since >= idle

    def _take(self, positions: range) -> list[StreamItem]:
        """Read this rank's positions; quarantine the skipped ones and keep the rest."""
        items = [self.source.read(p) for p in positions]
        bad = [item for item in items if item.skipped_reason is not None]
        self._quarantine(bad)
        return [item for item in items if item.skipped_reason is None]

    def _quarantine(self, items: list[StreamItem]) -> None:
        """Record skipped items once each, with their reason; the job goes on without them."""
        new = [item for item in items if item.position not in self._quarantined]
        if self.quarantine_path is None or not new:
            return
        at = utc_now()
        records = [
            {"position": i.position, "key": i.key, "reason": i.skipped_reason, "at": at}
            for i in new
        ]
        append_jsonl(self.quarantine_path, records)
        self._quarantined.update(item.position for item in new)
