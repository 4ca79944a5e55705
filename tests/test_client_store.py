"""The client's block store and recent window: naming, atomic writes, where a joiner resumes."""

from __future__ import annotations

import json

from client.peerproto import Block
from client.store import BlockStore, RecentWindow, Stored, write_json_atomically

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
