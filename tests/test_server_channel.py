"""Channel membership, failure rules, the schedule and the film folder.

Pure code (server/channel.py, server/films.py): no sockets, no sleeps; time is
a number handed in, as from a fake clock.
"""

from __future__ import annotations

import pytest

from server.channel import (Channel, Outcome, Registry, Schedule, Slot, Ticket)
from server.films import FilmError, assign_films, find_films, group_blocks


def registry(channels: int = 2, limit: int = 2) -> Registry:
    return Registry(Channel(i, limit, f"film{i}") for i in range(channels))


def joined(reg: Registry, ip: str, channel: int) -> Ticket:
    result = reg.join(ip, channel)
    assert result.joined
    assert reg.confirm(result.ticket)
    return result.ticket


# ---------------------------------------------------------------- membership

def test_members_in_join_order_up_to_the_limit():
    reg = registry(limit=2)
    joined(reg, "10.0.0.3", 0)
    joined(reg, "10.0.0.1", 0)
    assert reg.members(0) == ["10.0.0.3", "10.0.0.1"]
    assert reg.count(0) == 2
    full = reg.join("10.0.0.2", 0)
    assert not full.joined and full.ticket is None
    assert reg.members(0) == ["10.0.0.3", "10.0.0.1"]
    assert reg.channel(0).stats.full_answers == 1
    assert reg.channel(0).stats.joins == 2


def test_a_client_is_in_at_most_one_channel():
    reg = registry()
    joined(reg, "10.0.0.1", 0)
    result = reg.join("10.0.0.1", 1)
    assert result.previous == 0
    reg.confirm(result.ticket)
    assert reg.members(0) == []
    assert reg.members(1) == ["10.0.0.1"]
    assert reg.where("10.0.0.1") == 1


def test_joining_a_full_channel_still_leaves_the_old_one():
    # As the stock server: the IP is first removed from whichever channel it is in.
    reg = registry(limit=1)
    joined(reg, "10.0.0.1", 0)
    joined(reg, "10.0.0.2", 1)
    result = reg.join("10.0.0.1", 1)
    assert not result.joined and result.previous == 0
    assert reg.where("10.0.0.1") is None


def test_rejoining_the_same_channel_keeps_one_place_and_moves_to_the_end():
    reg = registry(limit=2)
    joined(reg, "10.0.0.1", 0)
    joined(reg, "10.0.0.2", 0)
    result = reg.join("10.0.0.1", 0)   # channel full, but its own place is freed first
    assert result.joined and result.previous == 0
    reg.confirm(result.ticket)
    assert reg.members(0) == ["10.0.0.2", "10.0.0.1"]


def test_a_reserved_place_counts_towards_the_limit_but_is_not_served_nor_listed():
    reg = registry(limit=1)
    pending = reg.join("10.0.0.1", 0)
    assert pending.joined
    assert reg.members(0) == [] and reg.count(0) == 0
    assert reg.round_targets(0) == []
    assert not reg.join("10.0.0.2", 0).joined       # the place is held
    assert reg.confirm(pending.ticket)
    assert reg.round_targets(0) == [pending.ticket]
    assert not reg.confirm(pending.ticket)           # only once


def test_a_join_whose_answer_failed_is_not_recorded():
    reg = registry(limit=1)
    pending = reg.join("10.0.0.1", 0)
    assert reg.cancel(pending.ticket)
    assert reg.where("10.0.0.1") is None
    assert reg.channel(0).stats.joins == 0
    joined(reg, "10.0.0.2", 0)                       # the place is free again


def test_a_stale_ticket_does_not_touch_a_newer_membership():
    reg = registry()
    first = reg.join("10.0.0.1", 0).ticket
    second = reg.join("10.0.0.1", 0).ticket          # the same client asks again
    assert first != second
    assert not reg.confirm(first)
    assert not reg.cancel(first)
    assert reg.confirm(second)
    assert reg.members(0) == ["10.0.0.1"]


def test_leave():
    reg = registry()
    joined(reg, "10.0.0.1", 0)
    assert not reg.leave("10.0.0.1", 1)              # not in that channel: nothing
    assert reg.members(0) == ["10.0.0.1"]
    assert reg.leave("10.0.0.1", 0)
    assert reg.members(0) == [] and reg.where("10.0.0.1") is None
    assert not reg.leave("10.0.0.1", 0)
    assert reg.channel(0).stats.leaves == 1


def test_channel_limit_must_be_positive():
    with pytest.raises(ValueError):
        Channel(0, 0)
    with pytest.raises(ValueError):
        Registry([])


# -------------------------------------------------------------- failure rule

def test_failure_skips_then_second_consecutive_failure_removes():
    reg = registry()
    a = joined(reg, "10.0.0.1", 0)
    b = joined(reg, "10.0.0.2", 0)
    assert reg.round_targets(0) == [a, b]
    assert reg.record(a, False) is Outcome.SKIPPED
    assert reg.record(b, True, 100) is Outcome.OK
    assert reg.members(0) == ["10.0.0.1", "10.0.0.2"]     # skipped, still there
    assert reg.round_targets(0) == [a, b]                  # tried again next round
    assert reg.record(a, False) is Outcome.REMOVED
    assert reg.members(0) == ["10.0.0.2"]
    assert reg.round_targets(0) == [b]
    stats = reg.channel(0).stats
    assert (stats.send_failures, stats.removals, stats.blocks_sent, stats.bytes_sent) == \
        (2, 1, 1, 100)


def test_success_resets_the_failure_count():
    reg = registry()
    a = joined(reg, "10.0.0.1", 0)
    for _ in range(5):
        assert reg.record(a, False) is Outcome.SKIPPED
        assert reg.channel(0).failures_of("10.0.0.1") == 1
        assert reg.record(a, True, 10) is Outcome.OK
        assert reg.channel(0).failures_of("10.0.0.1") == 0
    assert reg.members(0) == ["10.0.0.1"]
    assert reg.channel(0).stats.send_failures == 5


def test_results_for_a_client_that_left_or_rejoined_are_ignored():
    reg = registry()
    old = joined(reg, "10.0.0.1", 0)
    reg.record(old, False)
    reg.leave("10.0.0.1", 0)
    assert reg.record(old, False) is Outcome.STALE
    new = joined(reg, "10.0.0.1", 0)
    assert reg.record(old, False) is Outcome.STALE     # an old round's result
    assert reg.channel(0).failures_of("10.0.0.1") == 0
    assert reg.record(new, False) is Outcome.SKIPPED   # a fresh membership starts at 0


def test_clients_served_counts_distinct_addresses():
    reg = registry()
    a = joined(reg, "10.0.0.1", 0)
    reg.record(a, True, 5)
    reg.record(a, True, 5)
    reg.leave("10.0.0.1", 0)
    a = joined(reg, "10.0.0.1", 0)
    reg.record(a, True, 5)
    b = joined(reg, "10.0.0.2", 0)
    reg.record(b, True, 5)
    stats = reg.stats()[0]
    assert stats["clients_served"] == 2
    assert stats["blocks_sent"] == 4 and stats["bytes_sent"] == 20
    assert stats["film"] == "film0"


# ------------------------------------------------------------------ schedule

def test_schedule_is_absolute():
    s = Schedule(start=100.0, period=2.0)
    assert [s.due(k) for k in range(4)] == [100.0, 102.0, 104.0, 106.0]
    assert s.slot(3) == Slot(3, 106.0, 106.0 + 2.0 - 0.2, 0)


def test_schedule_does_not_drift_when_rounds_are_late():
    s = Schedule(start=0.0, period=0.5)
    previous = None
    # Each round ends late (0.3 s into its period): the next slot is still due
    # at its absolute time, not 0.5 s after the previous round ended.
    now = 0.0
    dues = []
    for _ in range(100):
        slot = s.next_slot(previous, now)
        dues.append(slot.due)
        now = slot.due + 0.3
        previous = slot.index
    assert dues == [k * 0.5 for k in range(100)]


def test_schedule_starts_a_late_slot_without_shifting_later_ones():
    s = Schedule(start=0.0, period=1.0)
    slot = s.next_slot(4, now=5.6)         # slot 5 due at 5.0, we are 0.6 s late
    assert (slot.index, slot.due, slot.skipped) == (5, 5.0, 0)
    assert s.next_slot(5, now=6.1).due == 6.0


def test_schedule_skips_slots_missed_by_more_than_a_period():
    s = Schedule(start=0.0, period=1.0)
    slot = s.next_slot(4, now=7.25)        # slots 5 and 6 are over: go on with 7
    assert (slot.index, slot.due, slot.skipped) == (7, 7.0, 2)
    assert s.next_slot(None, now=0.0).index == 0
    assert s.next_slot(None, now=-5.0).index == 0


def test_round_deadline_leaves_a_margin_inside_the_period():
    assert Schedule(0.0, 2.0).slot(0).deadline == pytest.approx(1.8)
    assert Schedule(0.0, 0.5).slot(1).deadline == pytest.approx(0.5 + 0.45)
    assert Schedule(0.0, 0.5, margin=0.0).slot(1).deadline == pytest.approx(1.0)
    for period in (0.1, 0.5, 2.0, 10.0):
        slot = Schedule(0.0, period).slot(7)
        assert slot.due < slot.deadline < slot.due + period


def test_block_of_a_slot_wraps_around_the_film():
    s = Schedule(0.0, 1.0)
    assert [s.block_of(k, 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_new_client_starts_with_the_channels_current_block():
    # The block depends on the slot (time), not on the client: a client joining
    # during slot 7 of a 6-block film gets block 2 next round, then 3, 4, ...
    s = Schedule(0.0, 1.0)
    slot = s.next_slot(7, now=7.5)
    assert s.block_of(slot.index, 6) == 2


@pytest.mark.parametrize("period", [0.0, -1.0, float("inf"), float("nan")])
def test_schedule_rejects_bad_periods(period):
    with pytest.raises(ValueError):
        Schedule(0.0, period)


# --------------------------------------------------------------------- films

def make_blocks(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\x1a\x45\xdf\xa3" + name.encode())


def test_find_films_groups_and_sorts(tmp_path):
    make_blocks(tmp_path, "zeta_00001.mkv", "zeta_00000.mkv", "alpha_00000.mkv",
                "alpha_00002.mkv", "alpha_00001.mkv", "notes.txt", "alpha_00003.mkv.part",
                "beta_0000.mkv", "my_film_00000.mkv")
    films = find_films(tmp_path)
    assert [f.name for f in films] == ["alpha", "my_film", "zeta"]
    alpha = films[0]
    assert [p.name for p in alpha.blocks] == ["alpha_00000.mkv", "alpha_00001.mkv",
                                              "alpha_00002.mkv"]
    assert alpha.block(4).name == "alpha_00001.mkv"           # wraps around
    assert alpha.read_block(3) == b"\x1a\x45\xdf\xa3alpha_00000.mkv"


def test_group_blocks_ignores_other_names():
    assert group_blocks(["a_00000.mkv", "a_1.mkv", "a_00000.mp4", "_00000.mkv",
                         "A_00001.MKV"]) == {"a": [(0, "a_00000.mkv")]}


def test_missing_folder_names_the_command_that_makes_samples(tmp_path):
    with pytest.raises(FilmError, match="does not exist.*python separa.py --sample"):
        find_films(tmp_path / "nowhere")


def test_folder_without_blocks(tmp_path):
    make_blocks(tmp_path, "readme.txt")
    with pytest.raises(FilmError, match="holds no blocks.*python separa.py --sample"):
        find_films(tmp_path)


def test_gap_in_numbering_is_an_error(tmp_path):
    make_blocks(tmp_path, "a_00000.mkv", "a_00002.mkv")
    with pytest.raises(FilmError, match="block 00001 is missing"):
        find_films(tmp_path)


def test_films_repeat_over_channels(tmp_path):
    make_blocks(tmp_path, "a_00000.mkv", "b_00000.mkv")
    films = find_films(tmp_path)
    assert [f.name for f in assign_films(films, 5)] == ["a", "b", "a", "b", "a"]
    assert [f.name for f in assign_films(films, 1)] == ["a"]
