"""The cross-check among independent paths (the stock server, no feed): the rules, with a fake clock.

Issue 16: direct clients vouch for the digests the server sent them; a client
below depth 1 asks one outside its parent's subtree before it stores a block.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from client import roles
from client.crosscheck import (KEEP, LIST_REFRESH, MAX_WITNESSES, RUN_GAP, CrossCheck, Outcome,
                               Witness, independent, judge)
from client.crosswire import MAX_WAITING, CrossChecker
from client.links import read_message_by
from client.peerproto import (MAX_CHECK_WAIT_MS, Addr, DigestAnswer, DigestQuery, FrameDecoder,
                              block_digest)

PORT = 9092
PERIOD = 2.0
WINDOW = 30.0
ME = Addr("10.0.0.9", PORT)


def a(n: int) -> Addr:
    return Addr(f"10.0.0.{n}", PORT)


def d(n: int) -> bytes:
    return block_digest(b"block %d" % n)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- which path is independent ----------------------------------------------------------------


def test_independent_paths_are_direct_clients_but_me_and_the_sender_outside_my_branch_first():
    path = (a(1), a(5))                         # a(1) direct, a(5) my parent
    listed = ["10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.3", "10.0.0.2"]
    assert independent(listed, PORT, ME, a(5), path) == [a(2), a(3), a(1)]
    # The sender is a direct client (my parent at depth 1): never its own witness.
    assert independent(listed, PORT, ME, a(1), (a(1),)) == [a(2), a(3)]


def test_a_lone_chain_has_no_independent_path():
    assert independent(["10.0.0.1"], PORT, ME, a(1), (a(1),)) == []
    assert independent([], PORT, ME, a(5), (a(1), a(5))) == []
    # Deeper, the only direct client is an ancestor above the sender: it can vouch.
    assert independent(["10.0.0.1"], PORT, ME, a(5), (a(1), a(5))) == [a(1)]


# -- one answer ------------------------------------------------------------------------------


def test_an_answer_confirms_what_the_witness_got_and_refutes_only_a_listening_full_memory():
    need = WINDOW + 2 * PERIOD
    assert judge(d(1), None, need) is None
    assert judge(d(1), DigestAnswer((d(1),), False, 0), need) is Outcome.CONFIRMED
    assert judge(d(1), DigestAnswer((), True, int(need * 1000)), need) is Outcome.REFUTED
    assert judge(d(1), DigestAnswer((), True, int(need * 1000) - 1), need) is None  # too new
    assert judge(d(1), DigestAnswer((), False, int(need * 1000)), need) is None     # not moved on


# -- the witness -----------------------------------------------------------------------------


def test_a_witness_answers_at_once_what_it_has_and_waits_for_the_servers_next_block():
    w, t = Witness(PERIOD), 0.0
    for n in range(20):
        w.saw(0, d(n), t + n * PERIOD)
    now = 19 * PERIOD + 0.1
    assert w.answer(DigestQuery(0, (d(19),)), now, now) == DigestAnswer((d(19),), False, 38100)
    asked = now
    assert w.answer(DigestQuery(0, (d(20),)), asked, now + 0.01) is None     # not yet: waits
    w.saw(0, d(20), now + 0.02)                                              # the round goes on
    assert w.answer(DigestQuery(0, (d(20),)), asked, now + 0.02).got == (d(20),)
    forged = DigestQuery(0, (b"\x01" * 16,))
    assert w.answer(forged, asked, now + 0.03).fresh       # block 20 came after it: refutes
    asked = now + 0.03
    assert w.answer(forged, asked, now + 0.04) is None      # asked after block 20: waits
    w.saw(0, d(21), now + PERIOD)
    answer = w.answer(forged, asked, now + PERIOD)
    assert (answer.got, answer.fresh) == ((), True)                          # moved on: refutes
    assert w.answer(DigestQuery(0, (b"\x02" * 16,)), now + PERIOD, now + PERIOD + 1,
                    final=True) == DigestAnswer((), False, int((now + PERIOD + 1) * 1000))


def test_a_witness_that_stopped_listening_answers_at_once_and_claims_no_coverage():
    w = Witness(PERIOD)
    w.saw(0, d(1), 0.0)
    late = RUN_GAP * PERIOD + 0.1
    assert w.answer(DigestQuery(0, (d(2),)), late, late) == DigestAnswer((), False, 0)
    assert w.answer(DigestQuery(0, (d(1),)), late, late).got == (d(1),)   # what it had is true
    w.saw(0, d(3), late + 1)                                # a new run: coverage starts again
    assert w.covered(late + 2) == 1.0
    assert w.answer(DigestQuery(1, (d(3),)), late + 2, late + 2) == DigestAnswer()  # other channel


def test_a_push_the_witness_missed_starts_its_memory_anew_so_it_never_refutes_that_block():
    w = Witness(PERIOD)
    for n in range(40):
        if n != 30:                                          # the server's send of 30 failed
            w.saw(0, d(n), n * PERIOD)
    now = 39 * PERIOD + 0.1
    assert w.covered(now) == pytest.approx(now - 31 * PERIOD)
    check = CrossCheck(ME, PORT, PERIOD, WINDOW, lambda *_: w.answer(
        DigestQuery(0, (d(30),)), now - 1, now), lambda: ["10.0.0.1"], lambda: now)
    assert check.check(0, d(30), a(5), (a(1), a(5))) is Outcome.UNANSWERED   # not refuted
    assert RUN_GAP * PERIOD < 2 * PERIOD


def test_a_witness_remembers_keep_blocks_and_its_coverage_is_what_it_remembers():
    w = Witness(PERIOD)
    for n in range(KEEP + 10):
        w.saw(0, d(n), n * PERIOD)
    now = (KEEP + 9) * PERIOD
    assert w.answer(DigestQuery(0, (d(9),)), now, now, final=True).got == ()
    assert w.answer(DigestQuery(0, (d(10),)), now, now).got == (d(10),)
    assert w.covered(now) == (KEEP - 1) * PERIOD
    w.saw(1, d(500), now + 1)                               # a channel switch forgets channel 0
    assert w.answer(DigestQuery(1, (d(10),)), now + 1, now + 1, final=True).got == ()


# -- the asking side -------------------------------------------------------------------------


class World:
    """Direct clients as witnesses (each a Witness), the server's list, the questions asked."""

    def __init__(self, clock, direct=("10.0.0.1", "10.0.0.2", "10.0.0.3")):
        self.clock, self.listed = clock, list(direct)
        self.witnesses = {Addr(ip, PORT): Witness(PERIOD) for ip in direct}
        self.asked: list[Addr] = []
        self.list_calls = 0
        self.silent: set[Addr] = set()
        self.rounds = 10_000                   # the numbers of the rounds sent during a wait
        self.waits: list[int] = []             # the wait each question asked for

    def send_round(self, n: int, skip=()) -> None:
        for addr, w in self.witnesses.items():
            if addr not in skip:
                w.saw(0, d(n), self.clock.now)

    def ask(self, witness: Addr, query: DigestQuery) -> DigestAnswer | None:
        """The witness answers at once, or when the server's next round comes during its wait."""
        self.asked.append(witness)
        if witness in self.silent:
            return None
        self.waits.append(query.wait_ms)
        asked, w = self.clock.now, self.witnesses[witness]
        answer = w.answer(query, asked, asked)
        if answer is None:
            self.clock.now += PERIOD / 2
            self.rounds += 1
            self.send_round(self.rounds)
            answer = w.answer(query, asked, self.clock.now, final=True)
        return answer

    def list_direct(self):
        self.list_calls += 1
        return self.listed

    def checker(self) -> CrossCheck:
        return CrossCheck(ME, PORT, PERIOD, WINDOW, self.ask, self.list_direct, self.clock)


def run_for(world: World, clock: Clock, seconds: float) -> int:
    """The server's rounds for ``seconds``: the witnesses listen and remember."""
    n = 0
    while n * PERIOD < seconds:
        world.send_round(n)
        clock.now += PERIOD
        n += 1
    return n


def test_a_genuine_block_is_confirmed_with_one_question_and_then_from_the_cache():
    clock = Clock()
    world = World(clock)
    n = run_for(world, clock, 40)
    world.send_round(n)
    check = world.checker()
    path = (a(1), a(5))
    assert check.check(0, d(n), a(5), path) is Outcome.CONFIRMED
    assert world.asked == [a(2)]                          # outside my branch, first
    assert check.check(0, d(n), a(7), path) is Outcome.CONFIRMED    # a repair of it: cached
    assert world.asked == [a(2)] and check.counts["cached"] == 1
    clock.now += check.need + 0.1                          # the cache lasts as long as a refutation
    assert check.check(0, d(n), a(5), path) is Outcome.CONFIRMED
    assert world.asked == [a(2), a(2)]
    assert check.counts["control_bytes"] > 0 and check.counts["queries"] == 2


def test_an_altered_block_is_refuted_by_a_witness_that_listened_over_the_whole_window():
    clock = Clock()
    world = World(clock)
    n = run_for(world, clock, WINDOW + 2 * PERIOD + PERIOD)
    world.send_round(n)
    check = world.checker()
    assert check.check(0, b"\x07" * 16, a(5), (a(1), a(5))) is Outcome.REFUTED
    assert world.asked == [a(2)] and check.counts["refuted"] == 1
    assert check.counts["wait_max_s"] == PERIOD / 2          # until the witness's next round


def test_a_witness_too_new_to_refute_is_inconclusive_and_the_next_one_is_asked():
    clock = Clock()
    world = World(clock)
    run_for(world, clock, 8)                               # every witness listened 8 s only
    check = world.checker()
    assert check.check(0, b"\x07" * 16, a(5), (a(1), a(5))) is Outcome.UNANSWERED
    assert world.asked == [a(2), a(3), a(1)][:MAX_WITNESSES]
    assert check.counts["unanswered_queries"] == MAX_WITNESSES
    assert world.waits == [2500, 1500, 500]   # one wait for the block, shared by its witnesses


def test_a_silent_witness_is_passed_over_for_the_next():
    clock = Clock()
    world = World(clock)
    n = run_for(world, clock, 40)
    world.send_round(n)
    world.silent.add(a(2))
    check = world.checker()
    assert check.check(0, d(n), a(5), (a(1), a(5))) is Outcome.CONFIRMED
    assert world.asked == [a(2), a(3)]


def test_a_lone_chain_is_not_checked_and_asks_nobody():
    clock = Clock()
    world = World(clock, direct=("10.0.0.1",))
    run_for(world, clock, 40)
    check = world.checker()
    assert check.check(0, b"\x07" * 16, a(1), (a(1),)) is Outcome.LONE
    assert world.asked == [] and check.counts["lone"] == 1


def test_the_servers_list_is_asked_once_every_few_periods_and_again_soon_after_no_answer():
    clock = Clock()
    world = World(clock)
    n = run_for(world, clock, 40)
    check = world.checker()
    for i in range(3):
        world.send_round(n + i)
        assert check.check(0, d(n + i), a(5), (a(1), a(5))) is Outcome.CONFIRMED
        clock.now += PERIOD
    assert world.list_calls == 1
    clock.now += LIST_REFRESH * PERIOD
    world.send_round(n + 3)
    check.check(0, d(n + 3), a(5), (a(1), a(5)))
    assert world.list_calls == 2
    world.silent.update(world.witnesses)
    assert check.check(0, d(n + 3)[::-1], a(5), (a(1), a(5))) is Outcome.UNANSWERED
    clock.now += PERIOD
    check.check(0, d(1), a(5), (a(1), a(5)))
    assert world.list_calls == 3                          # the list may have been stale


def test_a_witness_that_left_the_server_makes_the_list_asked_again_and_the_new_one_asked():
    clock = Clock()
    world = World(clock, direct=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    world.listed = ["10.0.0.1", "10.0.0.2"]
    n = run_for(world, clock, 40)
    check = world.checker()
    world.send_round(n)
    assert check.check(0, d(n), a(1), (a(1),)) is Outcome.CONFIRMED     # asks 10.0.0.2
    # A balance swap: 10.0.0.2 handed its slot to 10.0.0.3: the server lists 1 and 3 now.
    world.listed = ["10.0.0.1", "10.0.0.3"]
    clock.now += 4 * PERIOD
    for i in range(1, 5):
        world.send_round(n + i, skip=(a(2),))
    world.asked.clear()
    assert check.check(0, d(n + 4), a(1), (a(1),)) is Outcome.CONFIRMED
    assert world.asked == [a(2), a(3)] and world.list_calls == 2


def test_the_wait_asked_for_is_a_round_and_a_quarter_within_the_protocols_bound():
    world = World(Clock())
    assert world.checker().wait_ms == 2500
    slow = CrossCheck(ME, PORT, 10.0, WINDOW, world.ask, world.list_direct, world.clock)
    assert slow.wait_ms == MAX_CHECK_WAIT_MS


# -- the waiting witness over a socket pair (real threads, short waits) ------------------------


def serve_in_thread(checker: CrossChecker, query: DigestQuery):
    ours, theirs = socket.socketpair()
    talk = roles.Conversation(roles.PEER)
    talk.received(query)
    talk.answering(query)
    thread = threading.Thread(target=checker.serve, args=(theirs, talk, query))
    thread.start()
    return ours, theirs, thread


def answer_of(sock) -> DigestAnswer:
    return read_message_by(sock, FrameDecoder(), time.monotonic() + 5)


def test_a_waiting_witness_answers_as_soon_as_the_servers_block_comes():
    checker = CrossChecker(ME, 0.5, 5.0, lambda: [])
    checker.witnessed(0, d(1))
    ours, theirs, thread = serve_in_thread(checker, DigestQuery(0, (d(2),), MAX_CHECK_WAIT_MS))
    try:
        ours.settimeout(0.2)
        with pytest.raises(socket.timeout):
            ours.recv(1)                                   # still waiting
        checker.witnessed(0, d(2))
        assert answer_of(ours).got == (d(2),)
    finally:
        thread.join(5)
        ours.close()
        theirs.close()
    assert checker.snapshot()["answered"] == 1


def test_past_max_waiting_questions_a_witness_answers_at_once():
    checker = CrossChecker(ME, 0.5, 5.0, lambda: [])
    checker.witnessed(0, d(1))
    waiting = [serve_in_thread(checker, DigestQuery(0, (d(2),), 3000)) for _ in range(MAX_WAITING)]
    extra = serve_in_thread(checker, DigestQuery(0, (d(2),), 3000))
    try:
        answer = answer_of(extra[0])
        assert (answer.got, answer.fresh) == ((), False)
    finally:
        checker.witnessed(0, d(2))
        for ours, theirs, thread in [*waiting, extra]:
            thread.join(5)
            ours.close()
            theirs.close()

