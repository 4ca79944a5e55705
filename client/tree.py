"""The relay tree's decisions, as pure code: no sockets, no clocks, no threads.

A relay decides what to answer a joiner (:func:`decide_join`) and what to tell
its parent and prospective joiners about the free places below it
(:func:`free_places`); a joiner or an orphan decides whom to try next
(:class:`JoinSearch`, :func:`rejoin_seeds`). The node feeds these with what
it has heard and does the I/O.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Iterable

from client.peerproto import MAX_MEMBERS, Addr, Candidate, Hello

MAX_CANDIDATES = 8



@dataclass
class ChildView:
    """What a relay knows of one child, from the child's latest report."""

    addr: Addr
    free: int = 0
    sent: int = 0
    places: tuple[Candidate, ...] = ()
    members: tuple[Addr, ...] = ()
    max_children: int = 0
    children: tuple[Addr, ...] = ()
    reported: bool = False
    parents: tuple[int, ...] = ()


@dataclass(frozen=True)
class RelayView:
    """What a relay knows of itself when it decides."""

    me: Addr
    channel: int
    max_children: int
    attached: bool
    depth: int
    path: tuple[Addr, ...]
    sent: int
    children: dict[Addr, ChildView] = field(default_factory=dict)
    expected: frozenset[Addr] = frozenset()
    #: Children the uplink can feed (:func:`client.capacity.places`); None: ``max_children``.
    places: int | None = None

    @property
    def offered(self) -> int:
        """Places this relay offers: its measured uplink's, never more than ``max_children``."""
        if self.places is None:
            return self.max_children
        return max(0, min(self.max_children, self.places))

    @property
    def reserved(self) -> int:
        """Slots kept for expected clients (swap partners) that have not arrived yet.

        An expected client that has become an ancestor (the swap partner
        this relay now hangs under) no longer needs a slot.
        """
        if not self.expected:
            return 0
        return len(self.expected - self.children.keys() - set(self.path))

    @property
    def free(self) -> int:
        """Slots a newcomer may take: offered, neither used nor kept for a swap partner."""
        return max(0, self.offered - len(self.children) - self.reserved)


@dataclass(frozen=True)
class AcceptJoin:
    """Take the joiner as a child."""


@dataclass(frozen=True)
class RedirectJoin:
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class RejectJoin:
    reason: str


@dataclass(frozen=True)
class DisplaceJoin:
    """Take the joiner in the place of ``leaf``, a child that relays to nobody; the leaf is
    sent to the joiner (:func:`decide_join`)."""

    leaf: Addr


def members_below(view: RelayView) -> tuple[Addr, ...]:
    """Every descendant of the relay, children first, bounded."""
    out: list[Addr] = list(view.children)
    for child in view.children.values():
        out.extend(child.members)
    return tuple(out[:MAX_MEMBERS])


def member_parents(view: RelayView) -> tuple[int, ...]:
    """For each of :func:`members_below`, the index of its parent there (-1: the relay itself)."""
    out = [-1] * len(view.children)
    offset = len(view.children)
    for index, child in enumerate(view.children.values()):
        theirs = child.parents if len(child.parents) == len(child.members) else ()
        out.extend(index if p < 0 else offset + p for p in theirs)
        out.extend(index for _ in child.members[len(theirs):])  # a report without parents
        offset += len(child.members)
    return tuple(out[:MAX_MEMBERS])


def subtree(view: RelayView) -> list[dict]:
    """The relay's subtree as nested ``{"addr", "children"}`` records, children first.

    Built from the parent indexes the children report; a member whose
    parents never lead back to the relay (a report that lies) is left out.
    """
    members = members_below(view)
    nodes = [{"addr": str(a), "children": []} for a in members]
    roots: list[dict] = []
    for index, parent in enumerate(member_parents(view)[:len(nodes)]):
        if parent < 0:
            roots.append(nodes[index])
        elif parent < len(nodes) and parent != index:
            nodes[parent]["children"].append(nodes[index])
    return roots


def free_places(view: RelayView, exclude: Iterable[Addr] = ()) -> tuple[Candidate, ...]:
    """The best free places in the relay's subtree, itself included.

    Best means shallowest first, then the relay that has sent the fewest
    bytes: a newcomer placed there keeps the tree short and evens out upload.
    """
    excluded = set(exclude)
    places: list[Candidate] = []
    if view.free > 0 and view.me not in excluded:
        places.append(Candidate(view.me, view.depth, view.free, view.sent))
    for child in view.children.values():
        places.extend(c for c in child.places if c.addr not in excluded and c.free > 0)
    places.sort(key=_place_order)
    return tuple(places[:MAX_CANDIDATES])


def _displaceable(view: RelayView, hello: Hello) -> Addr | None:
    """The child a joiner with a subtree of its own may take the place of, when nothing is free.

    Places follow measured uplinks (:mod:`client.capacity`), so a subtree cut
    off from an uplink that could not feed it may hold every free place
    there is: it cannot rejoin inside itself, and the attached tree, full of
    leaves, has none (measured: nine clients of twelve without a block for
    two minutes). A leaf that relays to nobody finds a place anywhere, the
    joiner's subtree included; the joiner's subtree finds only this one.
    The leaf chosen reports the least it could take over, then sent the least.
    """
    if not hello.subtree or hello.max_children < 1:
        return None
    leaves = [c for c in view.children.values()
              if c.reported and not c.children and not c.members and c.addr != hello.addr]
    if not leaves:
        return None
    return min(leaves, key=lambda c: (c.max_children, c.sent, c.addr)).addr


def _place_order(c: Candidate):
    return (c.depth, c.free == 0, c.sent, c.addr)


def advice_for(view: RelayView, child: Addr) -> Candidate | None:
    """The best free place outside ``child``'s subtree that this relay knows.

    The child passes it to its own children as their backup parent: if the
    child dies, its subtree is orphaned, so the place must lie outside it.
    """
    below = view.children.get(child)
    excluded = {child, *(below.members if below else ())}
    places = free_places(view, exclude=excluded)
    return places[0] if places else None


def decide_join(view: RelayView, hello: Hello
                ) -> AcceptJoin | RedirectJoin | RejectJoin | DisplaceJoin:
    """What a relay answers a join request.

    Never more children than ``max_children``; never a child that is this
    relay or one of its ancestors (that would close a loop); a full relay
    points further down instead of refusing, and, with nothing free below,
    gives a joiner that brings a subtree the place of a leaf
    (:func:`_displaceable`).
    """
    joiner = hello.addr
    if hello.channel != view.channel:
        return RejectJoin(f"wrong channel: this relay carries channel {view.channel}")
    if joiner == view.me or joiner in view.path or view.me in hello.subtree:
        return RejectJoin("loop: the joiner is this relay, one of its ancestors or above it")
    if ((joiner in view.expected or hello.moved_by in view.expected)
            and len(view.children) < view.max_children):
        return AcceptJoin()  # part of a swap this relay takes part in, or sent by its partner
    if not view.attached:
        return RejectJoin("not attached: this relay is itself looking for a parent")
    if joiner in view.children:
        return AcceptJoin()  # a child reconnecting: its old link is replaced
    if view.free > 0:
        return AcceptJoin()
    excluded = {joiner, *hello.subtree}
    places = free_places(view, exclude=excluded)
    if not places:
        leaf = _displaceable(view, hello)
        if leaf is not None:
            return DisplaceJoin(leaf)
        # Nothing free is known below: let the joiner descend through the children.
        places = tuple(sorted((Candidate(c.addr, view.depth + 1, c.free, c.sent)
                               for c in view.children.values() if c.addr not in excluded),
                              key=_place_order))[:MAX_CANDIDATES]
    if not places:
        return RejectJoin("no free slot here or below")
    return RedirectJoin(places)


class JoinSearch:
    """Whom a joiner tries next: the best untried place it has heard of.

    Places are tried shallowest first, free ones before full ones, then the
    least loaded. Redirects and probe answers add places; the joiner itself,
    its own subtree and any excluded address (a dead parent) are never tried.
    Bounded in attempts, so a search always ends.

    Once a place said to be free has not taken us, others are joining at the
    same time, told of the same places: from then on the free place is drawn
    among the shallowest, as likely as its free slots, so that a crowd
    spreads over them instead of trying them in the same order (measured in
    the simulator, 1,000 clients joining at once: median 145 join attempts
    and 27.8 s to the first block in order, 60 and 10.7 s drawn).
    """

    def __init__(self, me: Addr, exclude: Iterable[Addr] = (), max_attempts: int = 32):
        self._rng = random.Random(zlib.crc32(str(me).encode()))   # the same draws each run
        self._crowded = False
        self._tried_free = False   # the latest place tried was said to be free
        self._excluded = {me, *exclude}
        self._known: dict[Addr, Candidate] = {}
        self._tried: set[Addr] = set()
        self._attempts_left = max_attempts

    def add(self, candidates: Iterable[Candidate]) -> None:
        for c in candidates:
            if c.addr in self._excluded or c.addr in self._tried:
                continue
            old = self._known.get(c.addr)
            if old is None or _place_order(c) < _place_order(old):
                self._known[c.addr] = c

    def next(self) -> Candidate | None:
        """The next place to try, marked as tried; None when the search is over."""
        if self._attempts_left <= 0 or not self._known:
            return None
        self._crowded = self._crowded or self._tried_free
        best = min(self._known.values(), key=_place_order)
        if best.free > 0 and self._crowded:
            peers = [c for c in self._known.values() if c.depth == best.depth and c.free > 0]
            if len(peers) > 1:
                best = self._rng.choices(peers, weights=[c.free for c in peers])[0]
        self._tried_free = best.free > 0
        del self._known[best.addr]  # (tried: add() never takes it again)
        self._tried.add(best.addr)
        self._attempts_left -= 1
        return best


#: Blocks fall into this many phases by their identity, which every client agrees on.
PHASES = 4


def block_phase(digest: bytes) -> int:
    return digest[0] % PHASES


def may_climb(digest: bytes) -> bool:
    """Climbs start only right after a block of phase 0 (see :func:`may_swap`)."""
    return block_phase(digest) == 0


def may_swap(depth: int, digest: bytes) -> bool:
    """Whether a relay at ``depth`` may offer a swap right after this block.

    A swap reshapes three levels: the relay's parent takes a new child, the
    relay and its child trade places, and the child's children move to the
    relay. Two swaps one or two levels apart started after the same block
    would take each other's places, and so would a climb. Every client
    sees the same blocks, so phasing by block identity keeps them apart
    without a message: depths 1, 2, 3 swap after blocks of phases 1, 2, 3
    (depth 4 like depth 1, and so on), climbs after blocks of phase 0.
    """
    return block_phase(digest) == 1 + (depth - 1) % (PHASES - 1)


#: Blocks after which a move may start on any block, its phase having not come.
PHASE_PATIENCE = 3 * PHASES


class PhaseTurn:
    """Whether a move of one kind may start right after the block just stored.

    After a block of its phase, yes; otherwise only once that phase has not
    come for :data:`PHASE_PATIENCE` blocks: a short film repeats its few
    blocks, and may have no block of some phase at all.
    """

    def __init__(self):
        self.waited = 0

    def turn(self, in_phase: bool) -> bool:
        if in_phase:
            self.waited = 0
            return True
        self.waited += 1
        return self.waited > PHASE_PATIENCE


def offered_by(child: ChildView) -> int:
    """Places a child offers, from its report: the free ones and those its children hold.

    Unmeasured, a client offers one place on trial (:mod:`client.capacity`),
    so only a child that relays shows what its uplink can feed.
    """
    return child.free + len(child.children)


def choose_swap(view: RelayView, margin: int, room: bool = True,
                recent: frozenset = frozenset()) -> Addr | None:
    """The child this relay should swap places with, if any (``room``: whether the
    uplink can pay for a rotation, :func:`client.capacity.room_for_swap`; ``recent``:
    this relay's latest swap partners, :meth:`client.moves.Moves.recent_partners`).

    First the capacity swap: a child that can take all of this relay's
    children and offers more places than this relay does takes its place
    whatever the bytes sent (the one offering most; see :func:`keeps`). A
    flash crowd places clients before any uplink is measured, and otherwise
    the first comers hold the server's slots with one place each while
    stronger uplinks hang a chain below them.

    Then the balance rotation: a relay that has sent ``margin`` bytes more
    than one of its children hands that child its place (and its other
    children) and becomes the child's child. Relays sink and light senders
    rise, so over time every client relays for a share of the time. Only a
    child that has reported, can take as many children as this relay offers
    places (so a rotation never puts an uplink measured weaker where a
    stronger one was; one never measured counts as able, and if it is not,
    the capacity swap brings it back down), and is the lightest
    sender qualifies, and only where the uplink has ``room``. The capacity
    swap needs none: it happens once a level for each stronger uplink, where
    the rotation goes on for ever; but not with a ``recent`` partner: two
    uplinks of about the same strength read either side of a place's worth
    (20 Mbit/s ones at 13.6 to 16 Mbit/s, where three streams with headroom
    need 15.9) and swapped back and forth (measured: 8 such swaps in four
    minutes, every one moving their children too).
    """
    if not view.attached:
        return None
    held = len(view.children)
    reported = [c for c in view.children.values() if c.reported and c.max_children >= held]
    stronger = [c for c in reported if offered_by(c) > view.offered and c.addr not in recent]
    if stronger:
        return max(stronger, key=lambda c: (offered_by(c), -c.sent, c.addr)).addr
    fits = [c for c in reported if c.max_children >= view.offered]
    if not room or not fits:
        return None
    lightest = min(fits, key=lambda c: (c.sent, c.addr))
    return lightest.addr if view.sent - lightest.sent > margin else None


def keeps(children: dict[Addr, ChildView], places: int, expected: int) -> tuple[Addr, ...]:
    """Which of its own children a client keeps when it takes its parent's place.

    It takes the ``expected`` partners of the swap (its old parent and that
    one's other children) and keeps as many of its own as its other places
    allow, those with the largest subtrees first (the fewest clients move);
    the rest go to the old parent. A rotation between equals keeps none.
    """
    room = max(0, places - expected)
    ranked = sorted(children.values(), key=lambda c: (-len(c.members), c.addr))
    return tuple(c.addr for c in ranked[:room])


def rejoin_seeds(path: tuple[Addr, ...], lost: Addr | None) -> list[Candidate]:
    """Where an orphan looks first: its surviving ancestors, each at its known depth.

    ``path`` is the orphan's chain of relays from the root down to its lost
    parent. Their free slots are unknown (1 is assumed, so they are tried);
    a full ancestor redirects to the best free place it knows below it.
    """
    seeds = []
    for index, addr in enumerate(path):
        if addr != lost:
            seeds.append(Candidate(addr, index + 1, 1, 0))
    seeds.reverse()  # grandparent first among equals; depth orders them anyway
    return seeds
