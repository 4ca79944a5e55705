"""The client's block store and recent window: naming, atomic writes, where a joiner resumes."""

from __future__ import annotations

import json

from client.peerproto import Block
from client.store import BlockStore, write_json_atomically
from client.window import RecentWindow, Stored

FILM = [bytes([i]) * 64 for i in range(6)]  # a film of 6 blocks, repeating


def window_with(seqs, size=30) -> RecentWindow:
    window = RecentWindow(size)
    for seq in seqs:
        window.append(Stored(Block.of(seq, FILM[seq % 6]), 0.0))
    return window


def have(upto: int, count: int = 8) -> tuple[bytes, ...]:
    return tuple(Block.of(s, FILM[s % 6]).digest for s in range(upto - count + 1, upto + 1))


def test_a_joiner_level_with_the_parent_resumes_live():
    after, missed = window_with(range(100, 118)).after(have(117), 117)
    assert after == Block.of(117, FILM[117 % 6]).digest and missed == []


def test_a_joiner_behind_gets_exactly_what_it_lacks():
    after, missed = window_with(range(100, 118)).after(have(114), 114)
    assert [b.seq for b in missed] == [115, 116, 117]


def test_a_joiner_one_block_ahead_is_not_sent_a_lap_again():
    # Its newest block is not in the window yet; an older lap holds the same bytes.
    after, missed = window_with(range(100, 118)).after(have(118), 118)
    assert after == Block.of(117, FILM[117 % 6]).digest and missed == []


def test_numberings_that_differ_fall_back_to_the_nearest_occurrence():
    after, missed = window_with(range(100, 118)).after(have(117), 5000)
    assert after is not None and missed == []


def test_nothing_in_common_resumes_live():
    window = RecentWindow(10)
    window.append(Stored(Block.of(1, b"other"), 0.0))
    assert window.after(have(117), 117) == (None, [])


def test_since_and_find():
    window = window_with(range(100, 106))
    assert window.since(Block.of(103, FILM[103 % 6]).digest) == [Block.of(s, FILM[s % 6]).digest
                                                          for s in (104, 105)]
    wanted = Block.of(0, FILM[0]).digest
    assert [b.seq for b in window.find([wanted, b"?" * 16]).values()] == [102]


def test_window_is_bounded():
    window = window_with(range(50), size=16)
    assert len(window) == 16 and window.capacity == 16
    assert [b.seq for b in window.latest(2)] == [48, 49]


def test_blocks_are_numbered_in_play_order_and_never_reused(tmp_path):
    store = BlockStore(tmp_path)
    assert store.write(b"a").name == "0000000000.mkv"
    assert store.write(b"b").name == "0000000001.mkv"
    (tmp_path / "0000000000.mkv").unlink()  # the player played it
    again = BlockStore(tmp_path)  # a restart in the same folder
    assert again.write(b"c").name == "0000000002.mkv"
    assert [name for name, _ in again.waiting()] == ["0000000001.mkv", "0000000002.mkv"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_refused_write_is_reported_and_leaves_nothing(tmp_path):
    store = BlockStore(tmp_path)
    tmp_path.chmod(0o500)
    try:
        import os
        if os.geteuid() == 0:  # root writes anyway: make the target a directory instead
            tmp_path.chmod(0o700)
            (tmp_path / "0000000000.mkv").mkdir()
        assert store.write(b"x") is None
    finally:
        tmp_path.chmod(0o700)
    assert not list(tmp_path.glob(".*.part"))


def test_status_is_replaced_whole(tmp_path):
    target = tmp_path / "status.json"
    write_json_atomically(target, {"a": 1})
    write_json_atomically(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


# -- the store's bound, and a disk that refuses blocks --------------------------------

import errno  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from client.store import StoreLimit, parse_store_limit  # noqa: E402


def test_store_limits_are_megabytes_or_minutes():
    assert parse_store_limit("200MB", 2.0) == StoreLimit(size_bytes=200_000_000)
    assert parse_store_limit("10min", 2.0) == StoreLimit(blocks=300)
    assert parse_store_limit("0.5 min", 1.0) == StoreLimit(blocks=30)
    assert parse_store_limit("none", 2.0) is None
    for bad in ("10", "abc", "-3MB", "0MB", "5 GB"):
        with pytest.raises(ValueError):
            parse_store_limit(bad, 2.0)


def test_the_oldest_blocks_go_past_the_block_limit(tmp_path):
    store = BlockStore(tmp_path, StoreLimit(blocks=3))
    for i in range(10):
        store.write(bytes([i]) * 10, seq=i)
        assert len(store.waiting()) <= 3
    assert [n for n, _ in store.waiting()] == [f"{i:010d}.mkv" for i in (7, 8, 9)]
    assert store.evicted == 7 and store.status()["evicted"] == 7


def test_the_folder_never_holds_more_than_the_limit_not_even_while_a_block_arrives(
        tmp_path, monkeypatch):
    """The player and anyone watching the folder see it as it is: room is made first."""
    store = BlockStore(tmp_path, StoreLimit(blocks=3))
    real_replace, seen = os.replace, []

    def replace_and_count(src, dst):
        real_replace(src, dst)
        seen.append(len(store.waiting()))
    monkeypatch.setattr(os, "replace", replace_and_count)
    for i in range(8):
        store.write(bytes([i]) * 10, seq=i)
    assert seen == [1, 2, 3, 3, 3, 3, 3, 3]


def test_the_oldest_blocks_go_past_the_byte_limit_but_the_newest_stays(tmp_path):
    store = BlockStore(tmp_path, StoreLimit(size_bytes=250))
    for i in range(6):
        store.write(b"x" * 100, seq=i)
        assert sum(size for _, size in store.waiting()) <= 250
    store.write(b"y" * 1000, seq=6)  # larger than the whole limit: it alone stays
    assert [n for n, _ in store.waiting()] == ["0000000006.mkv"]


def test_blocks_the_player_took_meanwhile_do_not_count(tmp_path):
    store = BlockStore(tmp_path, StoreLimit(blocks=2))
    store.write(b"a", seq=0)
    (tmp_path / "0000000000.mkv").unlink()  # played
    store.write(b"b", seq=1)
    store.write(b"c", seq=2)
    assert store.evicted == 0


class RefusingFolder:
    """Makes writes in a folder fail with ENOSPC while ``full`` is set (patches ``open``)."""

    def __init__(self, monkeypatch, folder: Path):
        self.full = False
        real_open = open

        def fake_open(path, mode="r", *a, **kw):
            if self.full and "w" in mode and Path(path).parent == folder:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_open(path, mode, *a, **kw)
        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.setattr("io.open", fake_open)  # what Path.write_text uses


def test_a_full_disk_is_said_once_recorded_as_ranges_and_storing_resumes(tmp_path, monkeypatch,
                                                                          caplog):
    disk = RefusingFolder(monkeypatch, tmp_path)
    store = BlockStore(tmp_path)
    assert store.write(b"a", seq=10) is not None
    disk.full = True
    with caplog.at_level("DEBUG", logger="client.store"):
        for seq in range(11, 21):
            assert store.write(b"b", seq=seq) is None
        assert store.refusing and store.status()["disk_refusing"]
        assert len(caplog.records) == 1  # said once for ten refusals
        disk.full = False
        assert store.write(b"c", seq=21).name == "0000000001.mkv"  # no hole in the names
        assert store.refusing is None and len(caplog.records) == 2  # and once that it is over
        disk.full = True
        store.write(b"d", seq=30)
    assert store.status()["not_stored_seqs"] == [[11, 20], [30, 30]]
    assert store.blocks_not_stored == 11
    assert not list(tmp_path.glob(".*.part"))


def test_a_status_file_that_cannot_be_written_is_said_once(tmp_path, monkeypatch, caplog):
    disk = RefusingFolder(monkeypatch, tmp_path)
    disk.full = True
    with caplog.at_level("ERROR", logger="client.store"):
        for i in range(5):
            write_json_atomically(tmp_path / "status.json", {"i": i})
    assert len(caplog.records) == 1
    disk.full = False
    write_json_atomically(tmp_path / "status.json", {"i": 9})
    assert json.loads((tmp_path / "status.json").read_text()) == {"i": 9}


# -- the player's distance to live, as the client reports it ---------------------------

from client.behind import BehindStats, PlayerWatch  # noqa: E402


def test_the_distribution_of_behind_live():
    stats = BehindStats()
    for s in [0.5, 1.2, 1.8, 2.5, 7.9]:
        stats.add(s)
    j = stats.to_json()
    assert j["samples"] == 5 and j["max_s"] == 7.9 and j["median_s"] == 2.0
    assert j["histogram_1s"] == {"0": 1, "1": 2, "2": 1, "7": 1}
    assert BehindStats().to_json()["median_s"] is None


def test_the_watch_samples_each_new_player_state_once_and_ignores_an_old_file(tmp_path):
    now = [1000.0]
    state = tmp_path / "player.json"
    state.write_text(json.dumps({"updated_at": 900.0, "behind_live_s": 50, "state": "playing"}))
    watch = PlayerWatch(tmp_path, clock=lambda: now[0])
    assert watch.snapshot()["behind_live_s"] is None  # a player of an earlier run
    for behind, t in ((3.0, 1000.5), (3.0, 1000.5), (4.5, 1001.0)):
        state.write_text(json.dumps({"updated_at": t, "behind_live_s": behind, "rate": 1.1,
                                     "state": "playing", "pid": 1}))
        snap = watch.snapshot()
    assert snap["behind_live_s"] == 4.5 and snap["play_rate"] == 1.1
    assert not snap["player"]["stale"]
    assert watch.stats()["samples"] == 2
    now[0] = 1010.0  # the player stopped writing: frozen or gone
    assert watch.snapshot()["player"]["stale"]
