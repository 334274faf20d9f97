"""Graceful stop: SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints, exits 0.

Schedulers (Slurm, Kubernetes) send SIGTERM before killing a job; Slurm can also send SIGUSR1
ahead of the time limit. A second signal of the same kind restores the default (hard) action.
"""

from __future__ import annotations

import signal
from types import FrameType


class StopFlag:
    """Set by a stop signal; polled by the training loop between steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing the current step, then checkpointing")
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def install(self) -> StopFlag:
        """Install the handlers (main thread only; a no-op elsewhere, e.g. in a worker thread)."""
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:
            pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
