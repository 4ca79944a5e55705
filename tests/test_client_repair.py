"""The multi-source repair planner, as pure code: a clock is just the numbers passed in.

:class:`~client.repair.RepairPlan` is driven here the way ``client.fetcher.RepairJob``
drives it (``start``, then ``received`` / ``lacked`` / ``failed`` / ``stalled`` /
``give_up`` reports, each followed by ``release``), without sockets, threads or sleeps.
The last test replays a whole repair and asserts the exact sequence of (call, result).
"""

from __future__ import annotations

import pytest

from client.joining import repair_sources
from client.peerproto import Addr
from client.repair import MAX_ACTIVE_SOURCES, RepairPlan

STALL = 2.0

A, B, C, D, E = (Addr(f"10.0.0.{n}", 9000 + n) for n in range(1, 6))
NAMES = {A: "A", B: "B", C: "C", D: "D", E: "E"}


def d(i: int) -> bytes:
    """The digest of block ``i``."""
    return b"digest-%02d" % i


def x(i: int) -> bytes:
    """The data of block ``i``."""
    return b"data-%02d" % i


def ds(*indexes: int) -> list[bytes]:
    return [d(i) for i in indexes]


def plan(blocks: int | list[bytes], sources=(A, B, C), now: float = 0.0, **kw) -> RepairPlan:
    missing = ds(*range(blocks)) if isinstance(blocks, int) else blocks
    return RepairPlan(missing, list(sources), now, stall_after=kw.pop("stall_after", STALL), **kw)


def deliver(p: RepairPlan, source: Addr, indexes, now: float) -> None:
    for i in indexes:
        p.received(source, d(i), x(i), now)


def got(*indexes: int) -> list[tuple[bytes, bytes]]:
    """``release()`` output for blocks that arrived."""
    return [(d(i), x(i)) for i in indexes]


def gone(*indexes: int) -> list[tuple[bytes, None]]:
    """``release()`` output for lost blocks."""
    return [(d(i), None) for i in indexes]


def drain(p: RepairPlan) -> list:
    out = p.release()
    assert p.release() == []  # a second call has nothing new
    return out


# -- splitting -------------------------------------------------------------------------------


def test_max_active_sources_is_three():
    assert MAX_ACTIVE_SOURCES == 3


def test_split_six_blocks_over_three_sources():
    work = plan(6).start()
    assert list(work) == [A, B, C]
    assert work == {A: ds(0, 1), B: ds(2, 3), C: ds(4, 5)}


def test_split_seven_blocks_over_three_sources():
    assert plan(7).start() == {A: ds(0, 1, 2), B: ds(3, 4, 5), C: ds(6)}


@pytest.mark.parametrize("sources", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("blocks", range(0, 12))
def test_split_parts_are_contiguous_and_cover_the_list(blocks, sources):
    addrs = [A, B, C, D, E][:sources]
    p = plan(blocks, addrs)
    work = p.start()
    # Parts in source order, each non-empty, glue back into the missing list.
    assert list(work) == addrs[:len(work)]
    assert all(work.values())
    assert [digest for part in work.values() for digest in part] == ds(*range(blocks))
    assert len(work) <= min(MAX_ACTIVE_SOURCES, sources, blocks)
    if blocks:
        assert work  # some source always gets work when there is any
    assert p.lost == 0
    assert p.done is (blocks == 0)


def test_fourth_and_fifth_sources_are_spares():
    p = plan(9, [A, B, C, D, E])
    assert p.start() == {A: ds(0, 1, 2), B: ds(3, 4, 5), C: ds(6, 7, 8)}
    # Spares have nothing pending: they never stall, however long the repair.
    assert p.stalled(100.0) == [A, B, C]


def test_spares_are_used_for_takeover():
    p = plan(9, [A, B, C, D, E])
    p.start()
    # Each block of the rest goes to whoever has least pending then (ties: listed first).
    assert p.failed(A, 1.0) == {D: ds(0, 2), E: ds(1)}
    assert p.failed(B, 1.5) == {E: ds(3, 5), D: ds(4)}
    deliver(p, C, [6, 7, 8], 1.6)
    deliver(p, D, [0, 2, 4], 1.7)
    deliver(p, E, [1, 3, 5], 1.8)
    assert drain(p) == got(*range(9))
    assert p.done and p.lost == 0


def test_max_active_can_be_lowered():
    p = plan(5, [A, B, C], max_active=2)
    assert p.start() == {A: ds(0, 1, 2), B: ds(3, 4)}


def test_fewer_blocks_than_sources():
    p = plan(2, [A, B, C, D])
    assert p.start() == {A: ds(0), B: ds(1)}
    deliver(p, B, [1], 0.1)
    deliver(p, A, [0], 0.2)
    assert drain(p) == got(0, 1)
    assert p.done and p.lost == 0


def test_one_source_gets_everything():
    p = plan(4, [A])
    assert p.start() == {A: ds(0, 1, 2, 3)}
    deliver(p, A, range(4), 0.5)
    assert drain(p) == got(0, 1, 2, 3)
    assert p.done


def test_no_sources_loses_everything_at_once():
    p = plan(3, [])
    assert p.start() == {}
    assert p.lost == 3
    assert p.stalled(100.0) == []
    assert drain(p) == gone(0, 1, 2)
    assert p.done and p.lost == 3


def test_nothing_missing_is_done_at_once():
    p = plan(0, [A, B])
    assert p.start() == {}
    assert p.done
    assert drain(p) == []
    assert p.lost == 0


def test_duplicate_digests_and_sources_are_dropped():
    p = plan([d(0), d(1), d(0), d(2), d(1), d(3)], [A, B, A, B])
    assert p.missing == ds(0, 1, 2, 3)
    assert p.start() == {A: ds(0, 1), B: ds(2, 3)}
    deliver(p, A, [0, 1], 0.1)
    deliver(p, B, [2, 3], 0.1)
    assert drain(p) == got(0, 1, 2, 3)
    assert p.done


def test_start_hands_out_copies():
    p = plan(2, [A])
    work = p.start()
    work[A].clear()
    assert p.stalled(STALL + 1) == [A]  # still pending inside the plan


# -- release order ---------------------------------------------------------------------------


def test_release_is_a_complete_prefix_in_list_order():
    p = plan(6)
    p.start()
    deliver(p, C, [4, 5], 0.1)          # last part first: held
    assert drain(p) == []
    deliver(p, B, [3], 0.2)
    assert drain(p) == []
    deliver(p, A, [0], 0.3)
    assert drain(p) == got(0)
    assert not p.done
    deliver(p, B, [2], 0.4)             # gap at 1 still holds 2..5
    assert drain(p) == []
    deliver(p, A, [1], 0.5)
    assert drain(p) == got(1, 2, 3, 4, 5)
    assert p.done and p.lost == 0


def test_out_of_order_within_one_part_is_held():
    p = plan(3, [A])
    p.start()
    deliver(p, A, [2], 0.1)
    deliver(p, A, [1], 0.2)
    assert drain(p) == []
    deliver(p, A, [0], 0.3)
    assert drain(p) == got(0, 1, 2)


def test_duplicate_copy_from_a_second_source_is_ignored():
    p = plan(4, [A, B])
    p.start()
    p.received(B, d(3), x(3), 0.1)
    p.received(A, d(3), b"second copy", 0.2)   # first copy counts
    deliver(p, A, [0, 1], 0.3)
    p.received(B, d(0), b"late copy", 0.4)     # already released
    assert drain(p) == got(0, 1)
    p.received(B, d(0), b"later copy", 0.5)
    assert drain(p) == []
    deliver(p, B, [2], 0.6)
    assert drain(p) == got(2, 3)
    assert p.done


def test_unwanted_digest_is_ignored_and_is_no_progress():
    p = plan(2, [A])
    p.start()
    p.received(A, b"not-asked-for", b"junk", 1.9)
    assert drain(p) == []
    assert p.stalled(STALL + 0.5) == [A]  # junk does not reset the stall clock
    deliver(p, A, [0, 1], 2.6)
    assert drain(p) == got(0, 1)
    assert p.done


def test_block_from_an_unknown_source_still_counts():
    p = plan(1, [A])
    p.start()
    p.received(E, d(0), x(0), 0.1)
    assert drain(p) == got(0)
    assert p.done


# -- takeover --------------------------------------------------------------------------------


def test_failure_midway_hands_only_the_rest_to_the_least_busy_source():
    p = plan(9, [A, B, C, D])
    p.start()
    deliver(p, A, [0], 0.5)
    assert p.failed(A, 1.0) == {D: ds(1, 2)}
    deliver(p, D, [2, 1], 1.5)
    assert drain(p) == got(0, 1, 2)


def test_failure_goes_to_the_active_source_with_least_pending_work():
    p = plan(9, [A, B, C])
    p.start()
    deliver(p, B, [3, 4], 0.5)            # B: 1 pending, C: 3 pending
    deliver(p, A, [0], 0.6)
    assert p.failed(A, 1.0) == {B: ds(1, 2)}
    # Ties go to the source listed first: C has 3, B now has 3.
    deliver(p, B, [5, 1, 2], 1.2)
    deliver(p, C, [6], 1.3)
    assert p.failed(C, 1.4) == {B: ds(7, 8)}
    deliver(p, B, [7, 8], 1.6)
    assert drain(p) == got(*range(9))
    assert p.done and p.lost == 0


def test_failure_reported_twice_is_harmless():
    p = plan(6, [A, B, C, D])
    p.start()
    assert p.failed(B, 1.0) == {D: ds(2, 3)}
    assert p.failed(B, 1.1) == {}
    assert p.stalled(1.0 + STALL + 0.1) == [A, C, D]  # B's part is pending once, at D
    deliver(p, A, [0, 1], 1.2)
    deliver(p, D, [2, 3], 1.3)
    deliver(p, C, [4, 5], 1.4)
    assert drain(p) == got(*range(6))
    assert p.done and p.lost == 0


def test_failed_source_gets_no_more_work():
    p = plan(4, [A, B])
    p.start()
    assert p.failed(A, 0.5) == {B: ds(0, 1)}
    assert p.lacked(B, ds(3), 0.6) == {}   # only A left, and A failed
    assert p.lost == 1


@pytest.mark.parametrize("now, expected", [
    (0.0, []), (1.0, []),
    (STALL, []),              # C silent for exactly stall_after: not yet
    (STALL + 0.01, [C]),
    (1.0 + STALL, [C]),       # B's last progress at 1.0
    (1.0 + STALL + 0.01, [B, C]),
    (50.0, [B, C]),           # A (nothing pending) and D (spare) never
])
def test_stalled_lists_only_pending_sources_without_recent_progress(now, expected):
    p = plan(7, [A, B, C, D])
    p.start()
    deliver(p, A, [0, 1, 2], 0.5)  # A: its whole part, nothing pending
    deliver(p, B, [3], 1.0)        # B: progress at 1.0, two blocks pending
    assert p.stalled(now) == expected


def test_progress_resets_the_stall_clock():
    p = plan(4, [A, B])
    p.start()
    deliver(p, A, [0], 1.5)
    assert p.stalled(2.5) == [B]
    assert p.stalled(3.5) == [B]
    assert p.stalled(3.6) == [A, B]
    deliver(p, B, [2], 3.6)
    assert p.stalled(3.6) == [A]


def test_failed_source_is_not_listed_as_stalled():
    p = plan(4, [A, B])
    p.start()
    p.failed(A, 0.1)
    assert p.stalled(10.0) == [B]


def test_idle_taker_gets_a_fresh_stall_clock():
    p = plan(6, [A, B, C, D])
    p.start()
    assert p.failed(A, 5.0) == {D: ds(0, 1)}
    # D was idle since time 0: its clock starts when it gets the work.
    assert D not in p.stalled(5.0 + STALL)
    assert D in p.stalled(5.0 + STALL + 0.1)


def test_stalled_source_is_failed_and_the_repair_completes():
    p = plan(6, [A, B, C])
    p.start()
    deliver(p, A, [0, 1], 1.0)
    deliver(p, C, [4], 1.9)
    assert p.stalled(2.5) == [B]
    assert p.failed(B, 2.5) == {A: ds(2, 3)}
    assert p.stalled(2.5) == []
    deliver(p, A, [2, 3], 3.0)
    deliver(p, C, [5], 3.1)
    assert drain(p) == got(*range(6))
    assert p.done and p.lost == 0
    assert p.stalled(100.0) == []


def test_every_source_failing_loses_the_rest_and_ends():
    p = plan(6, [A, B])
    p.start()
    deliver(p, A, [0], 0.5)
    assert p.failed(A, 1.0) == {B: ds(1, 2)}
    deliver(p, B, [3], 1.1)
    assert p.failed(B, 1.2) == {}
    assert p.lost == 4
    assert drain(p) == got(0) + gone(1, 2) + got(3) + gone(4, 5)
    assert p.done
    # A late copy of a lost block changes nothing.
    deliver(p, B, [4], 1.3)
    assert drain(p) == [] and p.lost == 4


# -- lacked ----------------------------------------------------------------------------------


def test_lacked_blocks_go_to_a_source_that_did_not_refuse_them():
    p = plan(6, [A, B, C, D])
    p.start()
    deliver(p, A, [0], 0.5)
    # A is now the least busy, but it refused block 1: the spare D takes it.
    assert p.lacked(A, ds(1), 0.6) == {D: ds(1)}
    deliver(p, D, [1], 0.7)
    deliver(p, B, [2, 3], 0.8)
    deliver(p, C, [4, 5], 0.9)
    assert drain(p) == got(*range(6))
    assert p.done and p.lost == 0


def test_lacked_block_goes_to_a_busy_source_rather_than_back_to_the_refuser():
    p = plan(4, [A, B])
    p.start()
    assert p.lacked(A, ds(0, 1), 0.5) == {B: ds(0, 1)}
    deliver(p, B, [2, 3, 1, 0], 0.6)
    assert drain(p) == got(0, 1, 2, 3)


def test_lacked_block_refused_by_every_source_is_lost():
    p = plan(3, [A, B])
    p.start()
    assert p.lacked(A, ds(1), 0.5) == {B: ds(1)}
    assert p.lacked(B, ds(1), 0.6) == {}
    assert p.lost == 1
    deliver(p, A, [0], 0.7)
    deliver(p, B, [2], 0.7)
    assert drain(p) == got(0) + gone(1) + got(2)
    assert p.done and p.lost == 1


def test_lacked_block_whose_other_sources_failed_is_lost():
    p = plan(4, [A, B, C])
    p.start()
    p.failed(C, 0.2)                      # C's part went to A and B
    p.failed(B, 0.3)
    assert p.lacked(A, ds(1), 0.4) == {}  # A refuses, B and C are dead
    assert p.lost == 1
    deliver(p, A, [0, 2, 3], 0.5)
    assert drain(p) == got(0) + gone(1) + got(2, 3)
    assert p.done


def test_lacked_block_already_received_elsewhere_is_not_refetched():
    p = plan(4, [A, B])
    p.start()
    p.received(B, d(1), x(1), 0.1)
    assert p.lacked(A, ds(1), 0.2) == {}
    deliver(p, A, [0], 0.3)
    deliver(p, B, [2, 3], 0.4)
    assert drain(p) == got(0, 1, 2, 3)
    assert p.lost == 0


def test_empty_fetch_end_is_progress():
    p = plan(4, [A, B])
    p.start()
    assert p.lacked(A, [], 1.9) == {}
    assert p.stalled(2.5) == [B]


def test_lacked_unwanted_digest_is_ignored():
    """A peer's FetchEnd may name a digest nobody asked for: it must not crash the planner.

    ``RepairJob._fetch`` passes ``FetchEnd.missing`` to ``lacked`` unfiltered.
    """
    p = plan(4, [A, B])
    p.start()
    assert p.lacked(A, [b"never-asked-for"], 0.5) == {}
    assert p.lost == 0
    deliver(p, A, [0, 1], 0.6)
    deliver(p, B, [2, 3], 0.6)
    assert drain(p) == got(0, 1, 2, 3)
    assert p.done and p.lost == 0


# -- give_up ---------------------------------------------------------------------------------


def test_give_up_loses_what_did_not_arrive_and_drains():
    p = plan(5, [A, B])
    p.start()
    deliver(p, A, [1], 0.5)                # held behind 0
    deliver(p, B, [4], 0.5)
    assert drain(p) == []
    p.give_up()
    assert p.lost == 3
    assert drain(p) == gone(0) + got(1) + gone(2, 3) + got(4)
    assert p.done and p.lost == 3
    deliver(p, A, [0], 0.6)                # too late
    assert drain(p) == []


def test_give_up_after_a_partial_release_counts_only_blocks_never_received():
    """Blocks already released were received: give_up must not count them as lost."""
    p = plan(5, [A])
    p.start()
    deliver(p, A, [0], 0.5)
    assert drain(p) == got(0)
    deliver(p, A, [2], 0.6)                # received, held behind 1
    p.give_up()
    assert drain(p) == gone(1) + got(2) + gone(3, 4)
    assert p.done
    assert p.lost == 3                     # blocks 1, 3, 4


def test_give_up_twice_is_harmless():
    p = plan(2, [A])
    p.start()
    p.give_up()
    p.give_up()
    assert drain(p) == gone(0, 1)
    assert p.lost == 2


# -- a whole repair, replayed ----------------------------------------------------------------


class Replay:
    """Drives a plan like RepairJob does and records every (call, result)."""

    def __init__(self, p: RepairPlan):
        self.p, self.events = p, []

    def _log(self, call, result):
        self.events.append((call, result))
        return result

    def start(self):
        return self._log("start", _names(self.p.start()))

    def received(self, source, i, now):
        self.p.received(source, d(i), x(i), now)
        self._log(f"received {NAMES[source]} {i} @{now}", None)
        self.release()

    def lacked(self, source, indexes, now):
        return self._log(f"lacked {NAMES[source]} {list(indexes)} @{now}",
                         _names(self.p.lacked(source, ds(*indexes), now)))

    def failed(self, source, now):
        return self._log(f"failed {NAMES[source]} @{now}", _names(self.p.failed(source, now)))

    def stalled(self, now):
        sources = self.p.stalled(now)
        self._log(f"stalled @{now}", [NAMES[s] for s in sources])
        return sources

    def release(self):
        out = [(int(digest[-2:]), data is not None) for digest, data in self.p.release()]
        if out:
            self._log("release", out)


def _names(work):
    return {NAMES[s]: [int(digest[-2:]) for digest in part] for s, part in work.items()}


def test_whole_repair_with_a_failure_a_stall_and_a_spare_taking_over():
    p = plan(7, [A, B, C, D])
    r = Replay(p)
    r.start()
    r.received(A, 0, 0.3)
    r.received(B, 3, 0.5)            # B's first block: held behind A's part
    r.stalled(1.0)
    r.received(A, 1, 1.5)
    r.stalled(2.0)                   # C silent for exactly stall_after: not yet
    for source in r.stalled(2.1):    # C silent for longer: the spare D takes its part
        r.failed(source, 2.1)
    r.failed(B, 2.2)                 # B dies after one block: only the rest moves
    r.failed(B, 2.3)                 # reported again by its second fetch: nothing
    r.received(A, 2, 2.4)
    r.received(D, 5, 2.6)
    r.received(A, 4, 2.7)
    r.lacked(A, [], 2.8)             # A's fetches end, nothing lacked
    r.received(D, 6, 3.0)
    r.received(C, 6, 3.1)            # C's late copy: ignored
    r.lacked(D, [], 3.2)
    r.stalled(10.0)
    assert r.events == [
        ("start", {"A": [0, 1, 2], "B": [3, 4, 5], "C": [6]}),
        ("received A 0 @0.3", None),
        ("release", [(0, True)]),
        ("received B 3 @0.5", None),
        ("stalled @1.0", []),
        ("received A 1 @1.5", None),
        ("release", [(1, True)]),
        ("stalled @2.0", []),
        ("stalled @2.1", ["C"]),
        ("failed C @2.1", {"D": [6]}),
        ("failed B @2.2", {"A": [4], "D": [5]}),
        ("failed B @2.3", {}),
        ("received A 2 @2.4", None),
        ("release", [(2, True), (3, True)]),
        ("received D 5 @2.6", None),
        ("received A 4 @2.7", None),
        ("release", [(4, True), (5, True)]),
        ("lacked A [] @2.8", {}),
        ("received D 6 @3.0", None),
        ("release", [(6, True)]),
        ("received C 6 @3.1", None),
        ("lacked D [] @3.2", {}),
        ("stalled @10.0", []),
    ]
    assert p.done and p.lost == 0


def test_bytes_arriving_keep_a_slow_source_from_counting_as_stalled():
    a, b = Addr("10.0.0.1", 9092), Addr("10.0.0.2", 9092)
    plan = RepairPlan([b"x" * 16, b"y" * 16], [a, b], now=0.0, stall_after=1.0)
    plan.start()
    plan.progressed(a, now=0.9)
    plan.progressed(a, now=1.8)
    assert plan.stalled(2.0) == [b]
    plan.progressed(Addr("10.0.0.3", 9092), now=2.0)  # an unknown source is ignored


def test_a_new_source_takes_the_end_of_the_longest_part():
    a, b, c = (Addr(f"10.0.0.{i}", 9092) for i in (1, 2, 3))
    keys = [bytes([i]) * 16 for i in range(9)]
    plan = RepairPlan(keys, [a, b], now=0.0, stall_after=5.0)
    assert plan.start() == {a: keys[:5], b: keys[5:]}
    assert plan.add_source(c, now=1.0) == {c: keys[2:5]}
    assert plan.add_source(c, now=1.0) == {}  # known already
    assert c not in plan.stalled(now=5.5)  # its part started when it joined
    # The old source still sends one of them: the first copy counts, the new one's is ignored.
    plan.received(a, keys[2], b"early", now=2.0)
    plan.received(c, keys[2], b"late", now=2.0)
    for key in keys:
        plan.received(a if key in keys[:2] else c if key in keys[2:5] else b, key, b"x", now=2.0)
    released = dict(plan.release())
    assert plan.done and released[keys[2]] == b"early"


def test_a_newly_attached_client_fetches_from_its_new_ancestors_then_its_former_ones():
    a, b, c, d = (Addr(f"127.0.5.{i}", 7000) for i in range(1, 5))
    # Took a swap partner's place at depth 2 under a: a alone above, then b (the partner).
    assert repair_sources(a, (), (a, b), silent=None) == [a, b]
    # An orphan of a frozen c, now under d below a: c is never asked.
    assert repair_sources(d, (a,), (a, b, c), silent=c) == [d, a, b]
