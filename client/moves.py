"""When a client moves in the tree of its own accord: the balance swap, climbing, the slot watch.

A pure machine (no socket, no thread, no clock: every call is given ``now``,
the random pauses come from an injected generator). The node asks it, right
after each stored block, whether to offer a swap or to climb now; whether a
swap may be offered or accepted at all; and what to do with a child's
answer. Carrying a move out (the messages, the new links) is the node's.

Moves start only right after a block of their phase
(:func:`client.tree.may_swap`, :func:`client.tree.may_climb`): a move leaves a
gap of a few milliseconds in which a block from above would reach nobody, and
the next block is a period away.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from client import tree
from client.peerproto import Addr

__all__ = ["Situation", "OfferSwap", "Climb", "Moves", "Shedding", "SLOT_WATCH_PERIODS", "PARTNER_PERIODS"]

#: How long (in periods) an orphan of a direct client keeps asking the server for its slot.
SLOT_WATCH_PERIODS = 12

#: The share of a period before the server's next block in which a direct client no
#: longer hands its slot over (the handover takes a few milliseconds on loopback, more
#: on real links).
HANDOVER_MARGIN = 0.25

#: How long (in periods) a client that gave its server slot up for want of uplink keeps off it.
YIELD_PERIODS = 8

#: A joiner turned away this recently (in periods) means the tree has no free place.
JAMMED_PERIODS = 2

#: A swap partner is not offered a capacity swap for this many periods (client.tree.choose_swap).
PARTNER_PERIODS = 30

#: A climb is looked for every this many periods, at random within the range, so
#: that clients do not all look at once.
CLIMB_EVERY = (3.0, 6.0)


@dataclass(frozen=True)
class Situation:
    """The node as the moves see it, at one instant."""

    now: float
    direct: bool        # a direct client of the server
    attached: bool      # a child of another client
    depth: int
    repairing: bool
    has_blocks: bool    # something stored already (a swap hands over a running stream)


@dataclass(frozen=True)
class OfferSwap:
    """Look for a child to offer this relay's place to (:func:`client.tree.choose_swap`)."""


@dataclass(frozen=True)
class Climb:
    """Look for a shallower place; ``to_server``: ask the server for the slot a dead parent left."""

    to_server: bool = False


@dataclass
class _Offer:
    token: object      # what the node offered, given back when the swap is to be carried out
    child: Addr
    deadline: float


@dataclass
class Moves:
    """The timing and bookkeeping of one client's own moves."""

    period: float
    settle_time: float      # after a move, before climbing or taking a new child into account
    swap_cooldown: float    # after a move, before offering a swap
    now: float
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self):
        self.moved_at = self.children_changed_at = self.now
        self.next_climb = self.now + self._climb_interval()
        self.slot_watch_until = 0.0
        self.offer: _Offer | None = None
        #: Swap offers each child declined in a row (:func:`client.places.advertised`).
        self.declines: dict[Addr, int] = {}
        self._partners: dict[Addr, float] = {}  # latest swap partners, until when
        self._swap_turn, self._climb_turn = tree.PhaseTurn(), tree.PhaseTurn()

    # -- what happened -----------------------------------------------------

    def moved(self, now: float) -> None:
        """A new parent (or the server): no move of our own for a while."""
        self.moved_at = now

    def swapped_with(self, partner: Addr, now: float) -> None:
        """A swap with ``partner`` was carried out (either side)."""
        self._partners[partner] = now + PARTNER_PERIODS * self.period

    def recent_partners(self, now: float) -> frozenset:
        self._partners = {a: t for a, t in self._partners.items() if t > now}
        return frozenset(self._partners)

    def children_changed(self, now: float) -> None:
        self.children_changed_at = now

    def child_gone(self, child: Addr, now: float) -> None:
        self.declines.pop(child, None)
        self.children_changed_at = now

    def lost_direct_parent(self, now: float) -> None:
        """Our parent was a direct client and died: the server frees its slot within
        a few periods; take it back (with our subtree) rather than wait for a climb."""
        self.slot_watch_until = now + SLOT_WATCH_PERIODS * self.period

    # -- right after a block -------------------------------------------------

    def after_block(self, situation: Situation, digest: bytes):
        """The move to try now, right after the block ``digest``: OfferSwap, Climb or None."""
        now = situation.now
        swap_turn = self._swap_turn.turn(tree.may_swap(situation.depth, digest))
        climb_turn = self._climb_turn.turn(tree.may_climb(digest))
        if now < self.slot_watch_until and situation.attached and not tree.may_swap(1, digest):
            return Climb(to_server=True)
        if (situation.direct or situation.attached) and swap_turn:
            return OfferSwap()
        if now >= self.next_climb and climb_turn:
            self.next_climb = now + self._climb_interval()
            return Climb()
        return None

    def _climb_interval(self) -> float:
        return self.period * self.rng.uniform(*CLIMB_EVERY)

    # -- the balance swap, as the parent --------------------------------------

    def may_offer(self, situation: Situation) -> bool:
        """Settled enough to offer a child our place: in place, not repairing, not moved or
        re-shaped lately, no offer pending."""
        now = situation.now
        return ((situation.direct or situation.attached) and not situation.repairing
                and situation.has_blocks and self.offer is None
                and now - self.moved_at >= self.swap_cooldown
                and now - self.children_changed_at >= self.settle_time)

    def offered(self, token: object, child: Addr, now: float) -> None:
        """An offer went to ``child``: unanswered for a period, it is forgotten."""
        self.offer = _Offer(token, child, now + self.period)

    def expired_offer(self, now: float) -> Addr | None:
        """The child whose offer went unanswered past its deadline, if any (it is forgotten)."""
        if self.offer is None or now <= self.offer.deadline:
            return None
        child, self.offer = self.offer.child, None
        return child

    def answered(self, token: object, accept: bool, now: float, direct: bool,
                 last_server_block: float) -> str | None:
        """A child answered the offer ``token``: "carry" (swap now), "declined", "late", or
        None (not the pending offer).

        A direct client hands its server slot over only while the server's next
        block is more than :data:`HANDOVER_MARGIN` of a period away: a block sent
        between our leave and the child's join reaches nobody, for good (no window
        of ours can give it back). A late acceptance keeps the slot: the child,
        which already left us, searches again and resumes where it was, without a
        hole. (Not sooner: on a thin link the offer reaches the child behind the
        block it relays, and the answer comes most of a second after that block.)
        """
        if self.offer is None or self.offer.token is not token:
            return None
        child, self.offer = self.offer.child, None
        # Declined in a row: past a few, its free places are not advertised (client.places).
        self.declines[child] = 0 if accept else self.declines.get(child, 0) + 1
        if not accept:
            return "declined"
        if direct and now - last_server_block > self.period * (1 - HANDOVER_MARGIN):
            return "late"
        return "carry"

    # -- the balance swap, as the child, and climbing -------------------------------

    def may_accept(self, situation: Situation) -> bool:
        """Our parent offers us its place: yes if nothing else is under way here."""
        return situation.attached and not situation.repairing and self.offer is None

    def may_climb(self, situation: Situation) -> bool:
        """Settled enough to move up (not the swap cooldown: swaps move the clients of a
        deep branch often enough to keep them from ever climbing)."""
        return (situation.attached and not situation.repairing
                and situation.now - self.moved_at >= self.settle_time)


@dataclass
class Shedding:
    """When an uplink too short for its load sheds some: a child moved, the server slot left.

    At most one child moved and one try at leaving the server slot a period:
    the uplink estimate must see the relief before the next
    (:mod:`client.capacity`). A client that gave its slot up for want of
    uplink keeps off the server for :data:`YIELD_PERIODS`.
    """

    period: float

    def __post_init__(self):
        self.relief_at = self.yield_at = self.off_server_until = 0.0
        self.turned_away_at = float("-inf")

    def may_relieve(self, now: float) -> bool:
        return now >= self.relief_at

    def relieved(self, now: float) -> None:
        """A child was moved or cut: the next no sooner than a period from now."""
        self.relief_at = now + self.period

    def may_yield(self, now: float) -> bool:
        """May a direct client that feeds nobody look for a place in the tree now? (Once a period.)"""
        if now < self.yield_at:
            return False
        self.yield_at = now + self.period
        return True

    def turned_away(self, now: float) -> None:
        """A joiner found no place here or below."""
        self.turned_away_at = now

    def jammed(self, now: float) -> bool:
        """A joiner was turned away lately: no place is free anywhere this client knows."""
        return now - self.turned_away_at < JAMMED_PERIODS * self.period

    def gave_up_slot(self, now: float) -> None:
        self.off_server_until = now + YIELD_PERIODS * self.period

    def off_server(self, now: float) -> bool:
        """Still keeping off the server slot it gave up?"""
        return now < self.off_server_until
