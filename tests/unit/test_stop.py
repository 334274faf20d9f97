"""Ranks agree on stopping: a stop signal seen by one rank stops every rank at the same step."""

from __future__ import annotations

from continual_ldu.engine.signals import StopFlag
from continual_ldu.engine.trainer import Trainer


class FakeRanks:
    """Stands in for the collective: ``others`` is whether any other rank has a signal."""

    def __init__(self, others: bool) -> None:
        self.others, self.calls = others, 0

    def any(self, flag: bool) -> bool:
        self.calls += 1
        return flag or self.others


def trainer_with(others: bool, own: str | None) -> Trainer:
    trainer = Trainer.__new__(Trainer)  # only the stop logic is under test
    trainer.dist, trainer.stop = FakeRanks(others), StopFlag()
    trainer.stop.requested = own
    return trainer


def test_a_signal_on_another_rank_stops_this_one():
    trainer = trainer_with(others=True, own=None)
    assert trainer.stop_agreed() and trainer.dist.calls == 1
    assert trainer.stop.requested == "a stop signal on another rank"  # reported in the result


def test_no_signal_anywhere_goes_on_and_own_signal_is_kept():
    assert not trainer_with(others=False, own=None).stop_agreed()
    trainer = trainer_with(others=False, own="SIGUSR1")
    assert trainer.stop_agreed() and trainer.stop.requested == "SIGUSR1"
