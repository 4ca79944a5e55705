"""A client's own moves (client.moves): when to offer a swap, climb or watch for a slot; fake clock."""

import random

from client.moves import (PARTNER_PERIODS, SLOT_WATCH_PERIODS, YIELD_PERIODS, Climb, Moves, OfferSwap,
                          Shedding, Situation)
from client.peerproto import Addr

PERIOD = 2.0
CHILD = Addr("127.0.9.2", 7092)


def digest_of_phase(phase: int) -> bytes:
    return bytes([phase]) + bytes(31)


def moves(now: float = 0.0, seed: int = 1) -> Moves:
    return Moves(PERIOD, settle_time=4.0, swap_cooldown=8.0, now=now, rng=random.Random(seed))


def at(now: float, direct=False, attached=True, depth=2, repairing=False, has_blocks=True):
    return Situation(now, direct, attached, depth, repairing, has_blocks)


def test_a_swap_is_looked_for_right_after_a_block_of_the_depths_phase_only():
    m = moves()
    # Depth 2 swaps after blocks of phase 2; phase 0 is the climbs' (not due yet).
    assert m.after_block(at(100.0, depth=2), digest_of_phase(2)) == OfferSwap()
    assert m.after_block(at(100.5, depth=2), digest_of_phase(1)) is None
    assert m.after_block(at(101.0, depth=1, direct=True, attached=False),
                         digest_of_phase(1)) == OfferSwap()
    assert m.after_block(at(101.5, attached=False), digest_of_phase(2)) is None  # not in place


def test_a_climb_comes_after_a_phase_zero_block_every_three_to_six_periods():
    m = moves(now=0.0)
    due = m.next_climb
    assert 3 * PERIOD <= due <= 6 * PERIOD
    assert m.after_block(at(due - 0.1), digest_of_phase(0)) is None
    assert m.after_block(at(due), digest_of_phase(0)) == Climb()
    assert 3 * PERIOD <= m.next_climb - due <= 6 * PERIOD
    assert m.after_block(at(due + 0.5), digest_of_phase(0)) is None  # once per interval


def test_a_film_without_blocks_of_a_phase_still_gets_its_turn():
    m = moves()
    answers = [m.after_block(at(100.0 + i), digest_of_phase(1)) for i in range(14)]
    # Depth 2 waits for phase 2, which never comes: after PHASE_PATIENCE blocks it goes anyway.
    assert answers[:12] == [None] * 12 and answers[12] == OfferSwap()


def test_an_orphan_of_a_dead_direct_client_asks_for_its_slot_for_a_while():
    m = moves()
    m.lost_direct_parent(10.0)
    assert m.after_block(at(11.0, depth=3), digest_of_phase(2)) == Climb(to_server=True)
    # Right after a block of the depth-1 swap phase, no: a direct client may be swapping.
    assert m.after_block(at(11.5, depth=3), digest_of_phase(1)) is None
    end = 10.0 + SLOT_WATCH_PERIODS * PERIOD
    assert m.after_block(at(end + 0.1, depth=3), digest_of_phase(3)) == OfferSwap()


def test_an_offer_waits_for_the_cooldowns_and_for_the_last_one_to_end():
    m = moves(now=0.0)
    assert not m.may_offer(at(7.9))              # moved at 0: swap cooldown 8 s
    assert m.may_offer(at(8.0))
    m.children_changed(7.0)
    assert not m.may_offer(at(10.9)) and m.may_offer(at(11.0))  # settle time 4 s
    assert not m.may_offer(at(11.0, repairing=True))
    assert not m.may_offer(at(11.0, has_blocks=False))
    m.offered("offer-1", CHILD, 11.0)
    assert not m.may_offer(at(12.0))
    assert m.expired_offer(12.9) is None
    assert m.expired_offer(13.1) == CHILD        # unanswered for a period: forgotten
    assert m.may_offer(at(13.1))


def test_answers_carry_the_swap_out_count_declines_and_ignore_old_offers():
    m = moves()
    m.offered("offer-1", CHILD, 20.0)
    assert m.answered("offer-0", True, 20.1, False, 20.0) is None   # not the pending offer
    assert m.answered("offer-1", False, 20.1, False, 20.0) == "declined"
    m.offered("offer-2", CHILD, 30.0)
    assert m.answered("offer-2", False, 30.1, False, 30.0) == "declined"
    assert m.declines[CHILD] == 2
    m.offered("offer-3", CHILD, 40.0)
    assert m.answered("offer-3", True, 40.1, False, 40.0) == "carry"
    assert m.declines[CHILD] == 0
    m.child_gone(CHILD, 41.0)
    assert CHILD not in m.declines


def test_a_direct_client_keeps_its_slot_when_the_acceptance_comes_late_in_the_period():
    """Between its leave and the child's join the server's next block would reach nobody."""
    m = moves()
    m.offered("offer", CHILD, 50.0)
    assert m.answered("offer", True, 50.0 + PERIOD * 0.75 + 0.01, True, 50.0) == "late"
    m.offered("offer", CHILD, 60.0)
    # Most of a second after the block (the offer came behind a relayed block): still on time.
    assert m.answered("offer", True, 60.0 + PERIOD * 0.75, True, 60.0) == "carry"
    m.offered("offer", CHILD, 70.0)
    # A relay's own parent resumes the child from its window: lateness costs nothing there.
    assert m.answered("offer", True, 71.5, False, 0.0) == "carry"


def test_accepting_and_climbing_need_a_settled_attached_client():
    m = moves(now=0.0)
    assert m.may_accept(at(1.0)) and not m.may_accept(at(1.0, repairing=True))
    assert not m.may_accept(at(1.0, direct=True, attached=False))
    m.offered("mine", CHILD, 1.0)
    assert not m.may_accept(at(1.5))   # our own offer is pending
    assert not m.may_climb(at(3.9)) and m.may_climb(at(4.0))
    m.moved(10.0)
    assert not m.may_climb(at(13.9)) and m.may_climb(at(14.0))
    assert not m.may_climb(at(20.0, direct=True, attached=False))


def test_a_short_uplink_sheds_one_child_a_period_and_tries_leaving_its_slot_once_a_period():
    shed = Shedding(PERIOD)
    assert shed.may_relieve(10.0)
    shed.relieved(10.0)
    assert not shed.may_relieve(11.9) and shed.may_relieve(12.0)
    assert shed.may_yield(10.0)
    assert not shed.may_yield(11.0)      # the try counts: the next a period after it
    assert shed.may_yield(12.0)


def test_a_slot_is_given_up_only_when_joiners_were_turned_away_and_then_kept_off():
    shed = Shedding(PERIOD)
    assert not shed.jammed(0.0)          # never turned anyone away
    shed.turned_away(10.0)
    assert shed.jammed(13.9) and not shed.jammed(14.0)
    shed.gave_up_slot(14.0)
    assert shed.off_server(14.0 + YIELD_PERIODS * PERIOD - 0.1)
    assert not shed.off_server(14.0 + YIELD_PERIODS * PERIOD)


def test_a_swap_partner_is_remembered_for_a_while():
    moves = Moves(period=2.0, settle_time=2.0, swap_cooldown=8.0, now=0.0)
    partner = Addr("10.0.0.7", 9092)
    moves.swapped_with(partner, 10.0)
    assert moves.recent_partners(10.0 + PARTNER_PERIODS * 2.0 - 0.1) == {partner}
    assert moves.recent_partners(10.0 + PARTNER_PERIODS * 2.0) == frozenset()
