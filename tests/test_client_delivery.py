"""The delivery gate (client.delivery): which block is stored next, in which order, numbered how.

Pure: blocks are built in memory, the wall time is passed in; every test
asserts the exact sequence of stored blocks.
"""

import random

from client.delivery import Gate
from client.delivery import SERVER
from client.peerproto import Block

PERIOD = 2.0


def film(count: int, first_seq: int = 100) -> list[Block]:
    return [Block.of(first_seq + i, f"block {first_seq + i}".encode()) for i in range(count)]


class Link:
    """A parent link stand-in: sources are told apart by identity, like ParentLink."""


def stored(steps) -> list[int]:
    return [p.block.seq for step in steps for p in step.passes]


def test_blocks_from_anyone_but_the_live_source_are_ignored():
    gate, parent, stale = Gate(PERIOD, 8), Link(), Link()
    blocks = film(3)
    assert stored([gate.arrived(blocks[0], parent, 0.0)]) == []   # nobody followed yet
    gate.follow(parent)
    assert stored([gate.arrived(b, stale, 0.0) for b in blocks]) == []
    assert stored([gate.arrived(b, SERVER, 0.0) for b in blocks]) == []  # a push after moving
    assert stored([gate.arrived(b, parent, 0.0) for b in blocks]) == [100, 101, 102]
    assert gate.seq == 102
    gate.unfollow()
    assert stored([gate.arrived(film(1, 103)[0], parent, 0.0)]) == []


def test_the_servers_blocks_are_numbered_from_the_wall_clock_then_one_by_one():
    gate = Gate(PERIOD, 8)
    gate.follow(SERVER)
    pushes = [Block.of(0, f"push {i}".encode()) for i in range(3)]  # pushes carry no number
    steps = [gate.arrived(b, SERVER, 1000.9 + i * PERIOD) for i, b in enumerate(pushes)]
    assert stored(steps) == [500, 501, 502]
    assert [p.block.digest for s in steps for p in s.passes] == [b.digest for b in pushes]
    gate.new_channel()
    assert stored([gate.arrived(pushes[0], SERVER, 2001.0)]) == [1000]


def test_blocks_the_new_parent_sends_again_are_skipped_up_to_the_last_one_we_had():
    gate, parent = Gate(PERIOD, 8), Link()
    blocks = film(6)
    gate.follow(parent, skip=[b.digest for b in blocks[1:3]])  # resumed after block 100
    steps = [gate.arrived(b, parent, 0.0) for b in blocks[1:]]
    assert stored(steps) == [103, 104, 105]


def test_a_skip_list_ends_at_the_first_block_it_does_not_name():
    gate, parent = Gate(PERIOD, 8), Link()
    blocks = film(4)
    gate.follow(parent, skip=[blocks[2].digest])
    # The parent resumed earlier than expected: block 100 is new, and a later
    # copy of block 102 (a film repeats) must be stored, not skipped.
    steps = [gate.arrived(b, parent, 0.0) for b in (blocks[0], blocks[1], blocks[2], blocks[3])]
    assert stored(steps) == [100, 101, 102, 103]


def test_live_blocks_wait_for_a_repair_and_follow_the_repaired_ones_in_order():
    gate, parent, job = Gate(PERIOD, 8), Link(), object()
    missed, live = film(2, 100), film(3, 102)
    gate.follow(parent)
    gate.start_repair(job)
    steps = [gate.arrived(live[0], parent, 0.0), gate.repaired(job, missed[0]),
             gate.arrived(live[1], parent, 0.0), gate.repaired(job, missed[1])]
    assert stored(steps) == [100, 101]
    assert gate.holding
    steps = [gate.repair_done(job, 0.0), gate.arrived(live[2], parent, 0.0)]
    assert stored(steps) == [102, 103, 104]
    assert not gate.holding


def test_a_cancelled_repair_stores_nothing_and_its_end_releases_nothing():
    gate, parent, job = Gate(PERIOD, 8), Link(), object()
    gate.follow(parent)
    gate.start_repair(job)
    gate.arrived(film(1, 102)[0], parent, 0.0)
    assert gate.unfollow() is job
    assert stored([gate.repaired(job, film(1, 100)[0]), gate.repair_done(job, 0.0)]) == []
    new_parent = Link()
    gate.follow(new_parent)
    assert stored([gate.arrived(film(1, 103)[0], new_parent, 0.0)]) == [103]


def test_holding_is_bounded_by_the_window():
    gate, parent, job = Gate(PERIOD, 3), Link(), object()
    gate.follow(parent)
    gate.start_repair(job)
    for block in film(5, 102):
        gate.arrived(block, parent, 0.0)
    assert stored([gate.repair_done(job, 0.0)]) == [102, 103, 104]


def test_the_gap_before_the_servers_first_block_is_looked_for_once_it_is_in():
    gate, job = Gate(PERIOD, 8), object()
    gate.follow(SERVER, skip=(), gap_check=True, gap_waits_for_server=True)
    pushes = [Block.of(0, f"push {i}".encode()) for i in range(3)]
    first = gate.arrived(pushes[0], SERVER, 1000.0)
    assert first.check_gap and not first.passes
    assert not gate.arrived(pushes[1], SERVER, 1002.0).check_gap  # asked once
    missed = Block(499, Block.of(0, b"missed").digest, b"missed")
    assert stored([gate.gap_checked(1003.0, job, [missed.digest]),
                   gate.repaired(job, missed)]) == [499]
    assert stored([gate.repair_done(job, 1003.5)]) == [500, 501]


def test_a_gap_with_nothing_missing_releases_the_held_blocks():
    gate, parent = Gate(PERIOD, 8), Link()
    gate.follow(parent, gap_check=True)
    steps = [gate.arrived(b, parent, 0.0) for b in film(2)]
    assert not any(s.check_gap for s in steps)  # only the server's first block starts the look
    assert stored(steps + [gate.gap_checked(0.0)]) == [100, 101]


def test_random_orders_of_live_repaired_and_stale_blocks_store_each_block_once_in_order():
    """Property: whatever the interleaving, a client that follows one parent and
    repairs what it missed stores a hole-free, duplicate-free run."""
    for seed in range(200):
        rng = random.Random(seed)
        gate, parent, stale, job = Gate(PERIOD, 64), Link(), Link(), object()
        blocks = film(30)
        cut = rng.randrange(1, 10)               # blocks 100..cut-1 stored before the move
        have = rng.randrange(0, cut)             # the new parent resumes after this one
        missed = blocks[have + 1:cut] if rng.random() < 0.5 else []
        gate.follow(parent, skip=[b.digest for b in blocks[have + 1:cut]] if not missed else [])
        out = [b.seq for b in blocks[:cut]] if not missed else [b.seq for b in blocks[:have + 1]]
        if missed:
            gate.start_repair(job)
        events = [("live", b) for b in (blocks[have + 1:] if not missed else blocks[cut:])]
        repairs = [("repair", b) for b in missed]
        schedule = []
        while events or repairs:
            pick = rng.random()
            if pick < 0.1:
                schedule.append(("stale", rng.choice(blocks)))
            elif repairs and (not events or pick < 0.5):
                schedule.append(repairs.pop(0))
            else:
                schedule.append(events.pop(0))
        if missed:  # a job ends after its last block
            last = max(i for i, (kind, _) in enumerate(schedule) if kind == "repair")
            schedule.insert(rng.randrange(last + 1, len(schedule) + 1), ("done", None))
        for kind, block in schedule:
            if kind == "live":
                promised = gate.streams(parent, block.seq, 0.0)
                passed = stored([gate.arrived(block, parent, 0.0)])
                assert promised is None or passed == [promised], (seed, promised, passed)
                out += passed
            elif kind == "stale":
                out += stored([gate.arrived(block, stale, 0.0)])
            elif kind == "repair":
                out += stored([gate.repaired(job, block)])
            else:
                out += stored([gate.repair_done(job, 0.0)])
        assert out == list(range(100, 130)), seed


def test_a_missed_push_is_looked_for_like_the_gap_before_the_first_one():
    """Two pushes more than 1.5 periods apart: the block between them is fetched, and numbered."""
    gate, job = Gate(PERIOD, 8), object()
    gate.follow(SERVER)
    pushes = [Block.of(0, f"push {i}".encode()) for i in range(4)]
    assert stored([gate.arrived(pushes[0], SERVER, 1000.0),
                   gate.arrived(pushes[1], SERVER, 1002.1)]) == [500, 501]  # late, not missed
    held = gate.arrived(pushes[3], SERVER, 1006.2)  # the push of 1004 never came
    assert held.check_gap and not held.passes
    missed = Block(502, pushes[2].digest, pushes[2].data)
    assert stored([gate.gap_checked(1006.5, job, [missed.digest]), gate.repaired(job, missed),
                   gate.repair_done(job, 1006.6)]) == [502, 503]
    assert stored([gate.arrived(Block.of(0, b"push 4"), SERVER, 1008.2)]) == [504]


def test_a_block_is_forwarded_in_parts_only_when_it_would_be_stored_at_once_under_that_number():
    """``streams`` promises what ``arrived`` then does, and changes nothing itself."""
    gate, parent, stale, job = Gate(PERIOD, 8), Link(), Link(), object()
    blocks = film(6)
    assert gate.streams(parent, 100, 0.0) is None                 # nobody followed yet
    gate.follow(parent, skip=[blocks[0].digest])
    assert gate.streams(parent, 100, 0.0) is None                 # it may be skipped
    assert stored([gate.arrived(blocks[0], parent, 0.0)]) == []
    assert gate.streams(parent, 101, 0.0) == 101
    assert gate.streams(stale, 101, 0.0) is None
    assert stored([gate.arrived(blocks[1], parent, 0.0)]) == [101]
    gate.start_repair(job)
    assert gate.streams(parent, 102, 0.0) is None                 # held: goes whole, later
    assert stored([gate.arrived(blocks[2], parent, 0.0), gate.repair_done(job, 0.0)]) == [102]
    assert gate.streams(parent, 103, 0.0) == 103


def test_the_servers_pushes_are_forwarded_in_parts_under_the_number_they_get():
    gate = Gate(PERIOD, 8)
    gate.follow(SERVER)
    pushes = [Block.of(0, f"push {i}".encode()) for i in range(3)]
    assert gate.streams(SERVER, 0, 1000.9) == 500
    assert gate.streams(SERVER, 0, 1000.9) == 500                 # asking changes nothing
    assert stored([gate.arrived(pushes[0], SERVER, 1000.9)]) == [500]
    assert gate.streams(SERVER, 0, 1002.9) == 501
    assert stored([gate.arrived(pushes[1], SERVER, 1002.9)]) == [501]
    # A push more than 1.5 periods after the last one will be held (a missed push): whole.
    assert gate.streams(SERVER, 0, 1006.0) is None
    assert stored([gate.arrived(pushes[2], SERVER, 1006.0)]) == []
