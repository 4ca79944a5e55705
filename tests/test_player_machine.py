"""The player's decisions, without libvlc: the state machine, the store listing, the gap meter."""

from __future__ import annotations

import pytest

from player.errors import StoreError
from player.machine import (Buffering, Delete, Finished, Play, PlayerMachine, Skip, Stale, State,
                            Wait)
from player.queue import check_store, is_block_name, looks_like_matroska, waiting_blocks
from player.stats import GapMeter

B = [f"canal0_{i:05d}.mkv" for i in range(10)]


def started(m: PlayerMachine, t: float = 0.0):
    assert m.on_started(t) == []


# -- ordering and buffering ----------------------------------------------------

def test_waits_for_the_buffer_then_plays_the_oldest_first():
    m = PlayerMachine(buffer=2)
    assert m.on_listing([], 0.0) == [Buffering(0, 2)]
    assert m.on_listing([B[1]], 0.1) == [Buffering(1, 2)]
    assert m.on_listing([B[1]], 0.2) == []  # said once, not at every poll
    assert m.on_listing([B[1], B[0], "status.json", ".x.mkv", "y.mkv.part"], 0.3) == [Play(B[0])]
    assert m.state is State.STARTING and m.current == B[0]
    assert m.pending == [B[1]]


def test_buffer_of_one_starts_at_once():
    m = PlayerMachine(buffer=1)
    assert m.on_listing([B[3]], 0.0) == [Play(B[3])]


def test_starts_with_fewer_blocks_after_the_start_timeout():
    m = PlayerMachine(buffer=3, start_timeout=5.0)
    assert m.on_listing([B[0]], 10.0) == [Buffering(1, 3)]
    assert m.on_listing([B[0]], 14.9) == []
    assert m.on_listing([B[0]], 15.0) == [Play(B[0])]


def test_start_timeout_counts_from_when_a_block_is_there():
    m = PlayerMachine(buffer=2, start_timeout=5.0)
    m.on_listing([], 0.0)
    m.on_listing([], 100.0)
    assert m.on_listing([B[0]], 101.0) == [Buffering(1, 2)]
    assert m.on_listing([B[0]], 105.5) == []


def test_plays_in_name_order_whatever_order_blocks_arrive_in():
    m = PlayerMachine(buffer=1)
    m.on_listing([B[0]], 0.0)
    started(m)
    m.on_listing([B[0], B[3], B[1], B[2]], 1.0)
    order = [B[0]]
    for t in range(2, 5):
        actions = m.on_ended(float(t), 2000)
        play = actions[-1]
        assert isinstance(play, Play)
        order.append(play.name)
        started(m, t)
    assert order == B[:4]


# -- deletion only after the end ----------------------------------------------

def test_deletes_a_block_only_after_its_end_and_then_plays_the_next():
    m = PlayerMachine(buffer=2)
    m.on_listing([B[0], B[1]], 0.0)
    started(m)
    assert m.on_progress(1.0) == []
    assert m.on_tick(1.5) == []
    assert m.on_listing([B[0], B[1], B[2]], 1.9) == []  # nothing deleted while playing
    assert m.on_ended(2.0, 1990) == [Finished(B[0]), Delete(B[0]), Play(B[1])]


def test_keep_never_deletes():
    m = PlayerMachine(buffer=1, keep=True)
    m.on_listing([B[0], B[1]], 0.0)
    started(m)
    assert m.on_ended(2.0, 2000) == [Finished(B[0]), Play(B[1])]
    started(m, 2.0)
    m.on_listing([B[0], B[1]], 2.1)  # the played block is still there: not replayed
    assert m.on_ended(4.0, 2000) == [Finished(B[1]), Wait(B[1])]
    assert m.on_listing([B[0], B[1]], 4.1) == []


def test_an_end_before_the_start_belongs_to_the_previous_block_and_is_ignored():
    m = PlayerMachine(buffer=1)
    m.on_listing([B[0]], 0.0)
    assert m.on_ended(0.1, 0) == []
    assert m.state is State.STARTING


def test_nothing_is_deleted_when_the_player_stops_midway():
    """There is no stop input: whatever was not ended was never told to be deleted."""
    m = PlayerMachine(buffer=1)
    deleted = []
    for actions in (m.on_listing([B[0], B[1], B[2]], 0.0), m.on_started(0.0),
                    m.on_ended(2.0, 2000), m.on_started(2.0), m.on_progress(3.0)):
        deleted += [a.name for a in actions if isinstance(a, Delete)]
    assert deleted == [B[0]]
    assert m.current == B[1]


# -- waiting and resuming -----------------------------------------------------

def test_waits_once_when_the_next_block_is_late_and_resumes_when_it_arrives():
    m = PlayerMachine(buffer=1)
    m.on_listing([B[0]], 0.0)
    started(m)
    assert m.on_ended(2.0, 2000) == [Finished(B[0]), Delete(B[0]), Wait(B[0])]
    assert m.state is State.WAITING
    assert m.on_listing([], 2.1) == []
    assert m.on_tick(9.0) == []  # waiting is not a stall
    assert m.on_listing([], 9.1) == []
    assert m.on_listing([B[1]], 9.5) == [Play(B[1], waited=pytest.approx(7.5))]


def test_a_late_block_older_than_the_played_one_is_left_alone_and_reported_once():
    m = PlayerMachine(buffer=1)
    m.on_listing([B[2]], 0.0)
    started(m)
    assert m.on_listing([B[1], B[2]], 0.5) == [Stale(B[1], B[2])]
    assert m.on_listing([B[1], B[2]], 0.6) == []
    actions = m.on_ended(2.0, 2000)
    assert Delete(B[1]) not in actions and actions[-1] == Wait(B[2])
    assert m.on_listing([B[1]], 2.1) == []  # still not played


# -- corrupt blocks ------------------------------------------------------------

def test_an_error_skips_and_deletes_the_block_and_plays_the_next():
    m = PlayerMachine(buffer=2)
    m.on_listing([B[0], B[1]], 0.0)
    assert m.on_error(0.01, "VLC cannot decode it") == [
        Skip(B[0], "VLC cannot decode it"), Delete(B[0]), Play(B[1])]


def test_an_end_with_nothing_decoded_is_a_skip():
    m = PlayerMachine(buffer=1)
    m.on_listing([B[0], B[1]], 0.0)
    started(m)
    assert m.on_ended(0.01, 0) == [Skip(B[0], "nothing in it could be decoded"), Delete(B[0]),
                                   Play(B[1])]


def test_no_progress_for_the_stall_timeout_is_a_skip():
    m = PlayerMachine(buffer=1, stall_timeout=3.0)
    m.on_listing([B[0]], 0.0)
    started(m, 0.1)
    m.on_progress(1.0)
    assert m.on_tick(3.9) == []
    assert m.on_tick(4.0) == [Skip(B[0], "no progress for 3.0 s"), Delete(B[0]), Wait(B[0])]


def test_a_block_that_never_starts_is_skipped_after_the_stall_timeout():
    m = PlayerMachine(buffer=1, stall_timeout=3.0)
    m.on_listing([B[0], B[1]], 0.0)
    actions = m.on_tick(3.0)
    assert actions[0] == Skip(B[0], "no progress for 3.0 s") and actions[-1] == Play(B[1])


def test_errors_outside_playback_are_ignored():
    m = PlayerMachine(buffer=2)
    assert m.on_error(0.0, "x") == [] and m.on_tick(100.0) == []
    m.on_listing([B[0]], 0.0)
    m.buffer = 1
    m.on_listing([B[0]], 0.1)
    started(m)
    m.on_ended(2.0, 2000)
    assert m.state is State.WAITING
    assert m.on_error(2.1, "late") == [] and m.on_ended(2.2, 5) == []


def test_keep_does_not_delete_a_skipped_block():
    m = PlayerMachine(buffer=1, keep=True)
    m.on_listing([B[0]], 0.0)
    assert m.on_error(0.1, "bad") == [Skip(B[0], "bad"), Wait(B[0])]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        PlayerMachine(buffer=0)
    with pytest.raises(ValueError):
        PlayerMachine(stall_timeout=0)


# -- the store listing -----------------------------------------------------------

def test_block_names_exclude_temporary_and_other_files():
    assert is_block_name("canal0_00001.mkv")
    for name in (".canal0_00001.mkv", "canal0_00001.mkv.part", "x.part", "status.json",
                 "canal0_00001.mkv.tmp"):
        assert not is_block_name(name), name


def test_waiting_blocks_lists_blocks_oldest_first_with_sizes(tmp_path):
    (tmp_path / B[2]).write_bytes(b"x" * 30)
    (tmp_path / B[0]).write_bytes(b"x" * 10)
    (tmp_path / "status.json").write_text("{}")
    (tmp_path / ".tmp.mkv").write_bytes(b"x")
    (tmp_path / "y.mkv.part").write_bytes(b"x")
    (tmp_path / "sub.mkv").mkdir()
    assert waiting_blocks(tmp_path) == [(B[0], 10), (B[2], 30)]
    with pytest.raises(OSError):
        waiting_blocks(tmp_path / "missing")


def test_matroska_is_recognised_by_its_magic_number(tmp_path):
    (tmp_path / "good.mkv").write_bytes(b"\x1a\x45\xdf\xa3rest")
    (tmp_path / "bad.mkv").write_bytes(b"RIFF....")
    assert looks_like_matroska(tmp_path / "good.mkv")
    assert not looks_like_matroska(tmp_path / "bad.mkv")
    assert not looks_like_matroska(tmp_path / "missing.mkv")


def test_check_store_names_what_is_wrong(tmp_path):
    assert check_store(tmp_path, writable=True) == tmp_path
    with pytest.raises(StoreError, match="does not exist"):
        check_store(tmp_path / "missing", writable=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="not a directory"):
        check_store(tmp_path / "f", writable=False)


# -- the gap meter -------------------------------------------------------------------

def test_gap_meter_pairs_ends_with_starts_and_ignores_waits():
    g = GapMeter()
    assert g.started(1.0) is None
    g.ended(2.000)
    assert g.started(2.007) == pytest.approx(0.007)
    g.ended(4.0)
    g.cancel()  # a wait: not a gap
    assert g.started(9.0) is None
    g.ended(10.0)
    g.started(10.003)
    g.ended(12.0)
    g.started(12.020)
    s = g.stats
    assert (s.count, s.median, s.max) == (3, pytest.approx(0.007), pytest.approx(0.020))
    assert s.summary() == "count=3 median=7.0 ms max=20.0 ms"
