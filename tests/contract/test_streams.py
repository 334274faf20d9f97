"""Contract tests for the stream sources (``continual_ldu.data.streams.SOURCES``).

One table (``CASES``) builds every source on the same ten small images, one of them corrupt,
and drives each through the same contract: stable positions, every position exactly once, the
corrupt item quarantined, resume from ``state_dict``, and two ranks splitting each round.
Folder-specific tests (settling, temp names, late files, the manifest across a restart) and
round-closing rules (time window, idle timeout) follow. Time is a fake clock whose ``sleep``
only advances it, so nothing here really waits.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
from PIL import Image

from continual_ldu.data.streams import (
    END,
    SOURCES,
    WAIT,
    FolderSource,
    Source,
    Stream,
    StreamConfig,
    StreamItem,
    build_stream,
    load_stream_config,
)
from continual_ldu.data.streams.tar_shards import expand_braces

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 10
CORRUPT = "img_04.png"  # the one undecodable image of the fixture
BATCH = 4  # rounds of 4, 4 and 2 positions
MAX_SLEEPS = 50  # a fake-clock stream that polls more often than this is waiting forever


class FakeClock:
    """``clock`` and ``sleep`` for a Stream: sleeping advances time, and runs out eventually."""

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps > MAX_SLEEPS:
            raise TimeoutError("the stream kept waiting")
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


def png_bytes(seed: int, size: int = 64) -> bytes:
    """A small, distinct PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 25 % 256, 100, 255 - seed * 25 % 256)).save(buf, "PNG")
    return buf.getvalue()


def write_images(folder: Path, names: list[str], seed0: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(png_bytes(seed0 + i))


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets` writes its lock files under the test's tmp_path, never the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Ten 64 px PNGs, ``img_00.png`` ... ``img_09.png``, with ``img_04.png`` corrupt."""
    folder = tmp_path / "images"
    write_images(folder, [f"img_{i:02d}.png" for i in range(NUM_IMAGES)])
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return folder


def make_shards(images: Path) -> str:
    """The images as three WebDataset shards (4, 4, 2 samples), each with a caption member."""
    out = images.parent / "shards"
    out.mkdir()
    files = sorted(images.iterdir())
    for shard, start in enumerate(range(0, len(files), 4)):
        with tarfile.open(out / f"shards-{shard:03d}.tar", "w") as tar:
            for path in files[start : start + 4]:
                tar.add(path, arcname=path.name)
                caption = f"a photo {path.stem}".encode()
                info = tarfile.TarInfo(f"{path.stem}.txt")
                info.size = len(caption)
                tar.addfile(info, io.BytesIO(caption))
    return str(out / "shards-{000..002}.tar")


# Every key of SOURCES needs a row: how to point a StreamConfig at the fixture's images.
CASES: dict[str, Callable[[Path], dict]] = {
    "folder": lambda images: {"path": str(images)},
    "hf_datasets": lambda images: {"path": str(images)},
    "tar_shards": lambda images: {"path": make_shards(images)},
}


@pytest.fixture(params=sorted(SOURCES))
def cfg(request: pytest.FixtureRequest, images: Path) -> StreamConfig:
    """The contract row's config: rounds of 4, ending as soon as the source runs dry."""
    if request.param not in CASES:
        pytest.fail(f"SOURCES[{request.param!r}] has no row in CASES: add one to test it")
    fields = CASES[request.param](images)
    return StreamConfig(source=request.param, batch_size=BATCH, **fields)


def make_stream(cfg: StreamConfig, run_dir: Path, clock: FakeClock | None = None, **kw):
    clock = clock or FakeClock()
    return build_stream(cfg, run_dir, clock=clock, sleep=clock.sleep, **kw)


def drain(stream) -> list[list[StreamItem]]:
    """Every remaining round of ``stream``."""
    rounds = []
    while (batch := stream.next_batch()) is not None:
        rounds.append(batch)
        assert len(rounds) <= NUM_IMAGES, "the stream does not end"
    return rounds


def positions(rounds: list[list[StreamItem]]) -> list[int]:
    return [item.position for batch in rounds for item in batch]


def keyed(rounds: list[list[StreamItem]]) -> list[tuple[int, str]]:
    """(position, key) of every item: a position that names the wrong item shows up here."""
    return [(item.position, item.key) for batch in rounds for item in batch]


def quarantine(run_dir: Path) -> list[dict]:
    path = run_dir / "stream" / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- the contract, for every source -------------------------------------------------------


def test_sources_catalog_matches_config() -> None:
    """SOURCES holds exactly the sources StreamConfig.source allows."""
    assert set(SOURCES) == set(get_args(get_type_hints(StreamConfig)["source"]))


def test_source_positions_stable_across_builds(cfg: StreamConfig, tmp_path: Path) -> None:
    """Two independent builds number the same keys the same way."""
    first = make_stream(cfg, tmp_path / "run_a")
    second = make_stream(cfg, tmp_path / "run_b")
    keys_a, keys_b = keyed(drain(first)), keyed(drain(second))
    assert keys_a == keys_b
    assert len(keys_a) == NUM_IMAGES - 1


def test_source_covers_every_position_once(cfg: StreamConfig, tmp_path: Path) -> None:
    """Delivered plus quarantined positions are 0..9, each exactly once, in rounds of 4."""
    run_dir = tmp_path / "run"
    rounds = drain(make_stream(cfg, run_dir))
    seen = positions(rounds) + [q["position"] for q in quarantine(run_dir)]
    assert sorted(seen) == list(range(NUM_IMAGES))
    covered = [
        len(b) + sum(q["position"] // BATCH == r for q in quarantine(run_dir))
        for r, b in enumerate(rounds)
    ]
    assert covered == [4, 4, 2]


def test_source_quarantines_corrupt_item(cfg: StreamConfig, tmp_path: Path) -> None:
    """The corrupt image is quarantined with its reason; the other nine are delivered."""
    run_dir = tmp_path / "run"
    rounds = drain(make_stream(cfg, run_dir))
    records = quarantine(run_dir)
    assert len(records) == 1
    assert CORRUPT in records[0]["key"]
    assert records[0]["reason"].startswith("corrupt or truncated")
    delivered = [item for batch in rounds for item in batch]
    assert len(delivered) == NUM_IMAGES - 1
    assert all(isinstance(item.image, Image.Image) for item in delivered)


def test_source_resume_gives_exactly_the_rest(cfg: StreamConfig, tmp_path: Path) -> None:
    """A fresh stream loaded with the state after round 1 delivers exactly rounds 2 and 3."""
    expected = drain(make_stream(cfg, tmp_path / "reference"))
    run_dir = tmp_path / "run"
    crashed = make_stream(cfg, run_dir)
    first = crashed.next_batch()
    state = crashed.state_dict()
    resumed = make_stream(cfg, run_dir)
    resumed.load_state_dict(state)
    assert state == {"cursor": BATCH, "round": 1}
    assert keyed([first]) == keyed(expected[:1])
    assert keyed(drain(resumed)) == keyed(expected[1:])


def test_source_two_ranks_split_each_round(cfg: StreamConfig, tmp_path: Path) -> None:
    """Ranks 0 and 1 get disjoint even/odd positions whose union is the single-rank round."""
    reference = drain(make_stream(cfg, tmp_path / "reference"))
    decisions: list[int] = []
    run_dir = tmp_path / "run"

    def record(n: int) -> int:  # rank 0's side of the broadcast
        decisions.append(n)
        return n

    rank0 = drain(make_stream(cfg, run_dir, rank=0, world_size=2, agree=record))
    replay = iter(decisions)  # rank 1's side: it receives what rank 0 sent, in order
    rank1 = drain(make_stream(cfg, run_dir, rank=1, world_size=2, agree=lambda _: next(replay)))
    assert len(rank0) == len(rank1) == len(reference)
    for b0, b1, ref in zip(rank0, rank1, reference, strict=True):
        p0, p1 = set(keyed([b0])), set(keyed([b1]))
        assert all(p % 2 == 0 for p, _ in p0) and all(p % 2 == 1 for p, _ in p1)
        assert p0 | p1 == set(keyed([ref]))


def test_stream_does_not_requarantine_on_rerun(cfg: StreamConfig, tmp_path: Path) -> None:
    """Re-reading a round after a restart leaves one quarantine record per bad position."""
    run_dir = tmp_path / "run"
    drain(make_stream(cfg, run_dir))
    drain(make_stream(cfg, run_dir))
    assert len(quarantine(run_dir)) == 1


# --- folder source ------------------------------------------------------------------------


def folder_source(tmp_path: Path, **kw) -> FolderSource:
    (tmp_path / "incoming").mkdir(exist_ok=True)
    return FolderSource(tmp_path / "incoming", tmp_path / "manifest.jsonl", register=True, **kw)


def manifest(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]


def test_folder_registers_file_only_once_complete(tmp_path: Path) -> None:
    """A file growing between polls is registered after it settles, with the final sha256."""
    source = folder_source(tmp_path)
    data = png_bytes(1)
    target = tmp_path / "incoming" / "a.png"
    target.write_bytes(data[: len(data) // 2])
    assert source.available() == 0
    with open(target, "ab") as fh:
        fh.write(data[len(data) // 2 :])
    assert source.available() == 0  # it changed since the last poll: not settled yet
    assert source.available() == 1
    [entry] = manifest(tmp_path)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["size"] == len(data)
    assert source.read(0).skipped_reason is None


@pytest.mark.parametrize("name", ["a.png.part", "a.png.tmp", "a.png.crdownload", ".a.png"])
def test_folder_ignores_temp_names(tmp_path: Path, name: str) -> None:
    """Temp and hidden names are never registered, nor do they keep the folder busy."""
    source = folder_source(tmp_path)
    (tmp_path / "incoming" / name).write_bytes(png_bytes(1))
    assert [source.available() for _ in range(3)] == [0, 0, 0]
    assert not source.busy


def test_folder_late_file_arrives_in_later_batch(tmp_path: Path) -> None:
    """A file added after the first round is delivered in the next one, at position 4."""
    folder = tmp_path / "incoming"
    write_images(folder, [f"a{i}.png" for i in range(4)])
    cfg = StreamConfig(path=str(folder), batch_size=4, idle_timeout_seconds=0)
    stream = make_stream(cfg, tmp_path / "run")
    assert [i.key for i in stream.next_batch()] == ["a0.png", "a1.png", "a2.png", "a3.png"]
    write_images(folder, ["late.png"], seed0=9)
    assert [(i.position, i.key) for i in stream.next_batch()] == [(4, "late.png")]
    assert stream.next_batch() is None


def test_folder_manifest_append_only_across_restart(tmp_path: Path) -> None:
    """A restarted source keeps the old lines byte for byte and numbers new files on."""
    write_images(tmp_path / "incoming", ["b.png", "d.png", "e.png"])
    first = folder_source(tmp_path)
    first.available(), first.available()
    before = (tmp_path / "manifest.jsonl").read_bytes()
    write_images(tmp_path / "incoming", ["a.png", "c.png"], seed0=5)
    second = folder_source(tmp_path)
    assert second.available() == 3  # the old lines are known at once; new files settle
    assert second.available() == 5
    assert (tmp_path / "manifest.jsonl").read_bytes().startswith(before)
    assert [(e["position"], e["path"]) for e in manifest(tmp_path)] == [
        (0, "b.png"),
        (1, "d.png"),
        (2, "e.png"),
        (3, "a.png"),
        (4, "c.png"),
    ]


def test_folder_manifest_torn_line_survives_restart(tmp_path: Path) -> None:
    """A line torn by a crash is closed off and skipped; numbering goes on after it."""
    write_images(tmp_path / "incoming", ["a.png"])
    first = folder_source(tmp_path)
    first.available(), first.available()
    with open(tmp_path / "manifest.jsonl", "a") as fh:
        fh.write('{"position": 1, "pa')
    write_images(tmp_path / "incoming", ["b.png"], seed0=3)
    second = folder_source(tmp_path)
    second.available(), second.available()
    reader = FolderSource(tmp_path / "incoming", tmp_path / "manifest.jsonl", register=False)
    assert reader.available() == 2
    assert [reader.read(p).key for p in range(2)] == ["a.png", "b.png"]


def test_folder_other_rank_reads_manifest_only(tmp_path: Path) -> None:
    """A non-registering source sees rank 0's registrations and never writes the manifest."""
    write_images(tmp_path / "incoming", ["a.png"])
    follower = FolderSource(tmp_path / "incoming", tmp_path / "manifest.jsonl", register=False)
    assert [follower.available() for _ in range(3)] == [0, 0, 0]
    assert not (tmp_path / "manifest.jsonl").exists()
    leader = folder_source(tmp_path)
    leader.available(), leader.available()
    assert follower.available() == 1
    assert follower.read(0).key == "a.png"


# --- round closing --------------------------------------------------------------------------


def few_images_cfg(tmp_path: Path, **kw) -> StreamConfig:
    """Three images and rounds of 8: only a window or the end can close a round."""
    write_images(tmp_path / "incoming", ["a.png", "b.png", "c.png"])
    return StreamConfig(path=str(tmp_path / "incoming"), batch_size=8, poll_seconds=1.0, **kw)


def test_stream_window_closes_partial_round(tmp_path: Path) -> None:
    """With a 5 s window and no idle timeout, three images close a round at t = 5 s."""
    clock = FakeClock()
    cfg = few_images_cfg(tmp_path, window_seconds=5.0, idle_timeout_seconds=None)
    batch = make_stream(cfg, tmp_path / "run", clock).next_batch()
    assert [i.key for i in batch] == ["a.png", "b.png", "c.png"]
    assert clock.now == 5.0


def test_stream_without_window_waits_for_full_round(tmp_path: Path) -> None:
    """With no window and no idle timeout, a partial round never closes by itself."""
    cfg = few_images_cfg(tmp_path, window_seconds=None, idle_timeout_seconds=None)
    stream = make_stream(cfg, tmp_path / "run")
    with pytest.raises(TimeoutError):
        stream.next_batch()


def test_stream_idle_timeout_ends_stream(tmp_path: Path) -> None:
    """After 3 s without a new file the last partial round closes, then the stream ends."""
    clock = FakeClock()
    cfg = few_images_cfg(tmp_path, idle_timeout_seconds=3.0)
    stream = make_stream(cfg, tmp_path / "run", clock)
    assert len(stream.next_batch()) == 3
    assert clock.now == 4.0  # registered at t = 1 s (one settle poll), quiet until t = 4 s
    assert stream.next_batch() is None


class ListSource:
    """A minimal in-memory Source: ``count`` positions, all known at once."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.exhausted = True
        self.busy = False

    def available(self) -> int:
        return self.count

    def seek(self, position: int) -> None:
        pass

    def read(self, position: int) -> StreamItem:
        return StreamItem(position, f"item{position}", Image.new("RGB", (64, 64)), None)


def test_stream_agree_decides_round(tmp_path: Path) -> None:
    """On rank 1 the round size comes from agree(): WAIT polls again, END ends the stream."""
    answers = iter([WAIT, WAIT, 3, END])
    clock = FakeClock()
    source = ListSource(8)
    assert isinstance(source, Source)
    stream = Stream(
        StreamConfig(batch_size=4),
        source,
        rank=1,
        world_size=2,
        quarantine_path=tmp_path / "q.jsonl",
        agree=lambda _: next(answers),
        clock=clock,
        sleep=clock.sleep,
    )
    assert [i.position for i in stream.next_batch()] == [1]
    assert stream.next_batch() is None
    assert clock.sleeps == 0  # ranks other than 0 wait inside agree(), not in sleep()


# --- configs and tar details -----------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "streams").glob("*.yaml")), ids=lambda p: p.name)
def test_stream_definitions_load(path: Path) -> None:
    """Every bundled stream definition passes the schema and names a known source."""
    assert load_stream_config(path).source in SOURCES


def test_tar_expand_braces_ranges_and_lists() -> None:
    """Numeric ranges keep their zero padding; lists and several braces expand in order."""
    assert expand_braces("s-{008..011}.tar") == [f"s-{i:03d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]


def test_tar_truncated_shard_gives_skipped_item(tmp_path: Path, images: Path) -> None:
    """A shard cut off mid-member yields its earlier samples, then one skipped item."""
    pattern = make_shards(images)
    shard = tmp_path / "shards" / "shards-000.tar"
    shard.write_bytes(shard.read_bytes()[:2000])  # cut after the first member
    cfg = StreamConfig(source="tar_shards", path=pattern, batch_size=BATCH)
    run_dir = tmp_path / "run"
    rounds = drain(make_stream(cfg, run_dir))
    assert positions(rounds)[:1] == [0]
    reasons = [q["reason"] for q in quarantine(run_dir)]
    assert reasons[0].startswith("corrupt shard")
