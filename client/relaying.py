"""The children's side of a client's core: who may join, what they are told, what they report.

A part of :class:`client.core.ClientCore` (it owns one :class:`Relay`):
answering a stranger's first frame (a join, a probe, a repair fetch, a
vouch), adopting, redirecting or refusing a joiner (:func:`client.tree.decide_join`),
relaying each stored block, keeping each child's backup parent fresh, and
what goes up in the report to our own parent. Pure, like the core.
"""

from __future__ import annotations

from client import capacity, places, roles, tree
from client.commands import Close
from client.forwarding import Forward, Forwarder
from client.repair import fetch_answer
from client.peerproto import (MAX_WANT, Accept, Addr, Advice, Block, Bye, Drop, FetchEnd, Hello,
                              Info, Move, PathUpdate, Redirect, Reject, Report, SwapAnswer, Vouch, VouchAnswer)

__all__ = ["Relay", "STREAM_BLOCKS", "UPLINK_STALE_PERIODS"]

#: The stream's rate is the mean of this many latest blocks.
STREAM_BLOCKS = 8
#: An uplink estimate this many periods old is forgotten: a child is tried again.
UPLINK_STALE_PERIODS = 150

_NONE: frozenset = frozenset()


class Relay:
    """This client's children and what it knows of them (see the module's docstring)."""

    def __init__(self, core):
        self.core = core
        self.children: dict[Addr, object] = {}      # addr -> its link
        self.views: dict[Addr, tree.ChildView] = {}
        self.expected: dict[Addr, float] = {}       # swap partners, until a deadline
        self.advice_sent: dict[Addr, Advice] = {}
        self.forwarder = Forwarder(self._to_child)  # a block's parts as they come (cut-through)
        self.uplink = capacity.Uplink(stale_after=UPLINK_STALE_PERIODS * core.config.period)
        self.adopted_at: dict[Addr, float] = {}
        self.backlog: dict[object, int] = {}        # child link -> bytes not delivered yet
        self.bytes_sent = 0                         # to children, and served to repairs
        self.stream: float | None = None            # bytes/s of the stream (latest blocks)
        self._estimate: tuple[float, float | None] | None = None  # (now, the uplink's then)

    # -- what this relay is, for its decisions ------------------------------------

    def places(self, now: float) -> int:
        """Children the measured uplink can feed, at most K (client.capacity)."""
        return capacity.places(self.core.config.max_children, *self._uplink_now(now))

    def can_take(self, now: float) -> int:
        return capacity.can_take(self.core.config.max_children, *self._uplink_now(now),
                                 self.uplink.retried)

    def room_for_swap(self, now: float) -> bool:
        return capacity.room_for_swap(*self._uplink_now(now), len(self.children))

    def relays_nobody(self, now: float) -> bool:
        estimate, stream = self._uplink_now(now)
        return estimate is not None and capacity.places(
            self.core.config.max_children, estimate, stream) == 0

    def _uplink_now(self, now: float):
        if self._estimate is None or self._estimate[0] != now:
            config = self.core.config
            estimate = self.uplink.estimate(now)
            jammed = self.core.shedding.jammed(now)
            if capacity.retry_due(config.max_children, estimate, self.stream,
                                  self.uplink.age(now), jammed, config.period):
                self.uplink.forget_estimate()
                estimate = None
            self._estimate = (now, estimate)
        return self._estimate[1], self.stream

    def metered(self, link, now: float, delivered: int, queued: int, writing: bool,
                busy: float | None = None, kernel_rate: float | None = None) -> None:
        """What a child link's sender saw (client.capacity)."""
        self.uplink.observe(link, now, delivered, queued, writing, busy, kernel_rate)
        self.backlog[link] = queued
        self._estimate = None

    def view(self, now: float) -> tree.RelayView:
        core = self.core
        return tree.RelayView(
            me=core.me, channel=core.channel, max_children=core.config.max_children,
            attached=core.state in ("direct", "attached"), depth=max(core.depth, 1),
            path=core.path, sent=self.bytes_sent,
            children=(places.advertised(self.views, core.moves.declines)
                      if core.moves.declines else self.views),
            expected=(frozenset(a for a, t in self.expected.items() if t > now)
                      if self.expected else _NONE),
            places=self.places(now))

    def members(self, now: float) -> tuple[Addr, ...]:
        return tree.members_below(self.view(now))

    def expect(self, addrs, now: float) -> None:
        """Keep a slot for each of ``addrs`` (swap partners) for a few periods."""
        deadline = now + 2 * self.core.config.link_stall
        self.expected = {a: t for a, t in self.expected.items() if t > now}
        self.expected.update((a, deadline) for a in addrs)

    # -- a stranger's first frame ---------------------------------------------------

    def stranger(self, link, first, now: float) -> None:
        """The first frame of a link that came in: answer it, or adopt a child."""
        core = self.core
        talk = roles.Conversation(roles.PEER)
        try:
            talk.received(first)
        except roles.ProtocolViolation:
            core.out(Close(link, reset=True))
            return
        talk.answering(first)
        core.links[link] = ["answer", talk, getattr(first, "addr", None)]
        if isinstance(first, Vouch):
            core.send(link, VouchAnswer(first.channel == core.channel and first.child in self.children))
        elif not isinstance(first, Hello):
            core.send(link, Reject("not served by this client's core"))
        elif first.kind == "probe":
            core.send(link, self._info(first, now))
        elif first.kind == "fetch":
            self._serve_fetch(link, first)
        else:
            self._join(link, first, now)
            return
        core.close(link)

    def _info(self, probe: Hello, now: float) -> Info:
        view = self.view(now)
        after, missed = None, []
        if probe.have and probe.channel == self.core.channel:
            after, missed = self.core.window.after(probe.have, probe.have_seq)
        return Info(view.attached, view.depth, view.free, view.sent, tree.free_places(view),
                    after, tuple(b.digest for b in missed[-MAX_WANT:]))

    def _serve_fetch(self, link, hello: Hello) -> None:
        for frame in fetch_answer(hello, self.core.window.find(hello.want)):
            self.core.send(link, frame)
            if not isinstance(frame, FetchEnd):
                self.bytes_sent += len(frame.data)

    def _join(self, link, hello: Hello, now: float) -> None:
        core = self.core
        decision = tree.decide_join(self.view(now), hello)
        if isinstance(decision, tree.DisplaceJoin):
            decision = self._displace(decision.leaf, hello.addr, now)
        if isinstance(decision, tree.AcceptJoin):
            self._adopt(link, hello, now)
            return
        if isinstance(decision, tree.RedirectJoin):
            core.send(link, Redirect(decision.candidates))
        else:
            core.shedding.turned_away(now)
            core.send(link, Reject(decision.reason))
        core.close(link)

    def _displace(self, leaf: Addr, joiner: Addr, now: float):
        """Free ``leaf``'s place for ``joiner``, and send the leaf to it (never more than K)."""
        link = self.children.get(leaf)
        if link is None:
            return tree.RejectJoin("no free slot here or below")
        self.core.send(link, Move((joiner,)))
        self.core.close(link)
        self.forget(leaf, now)
        return tree.AcceptJoin()

    def _adopt(self, link, hello: Hello, now: float) -> None:
        core = self.core
        old = self.children.pop(hello.addr, None)
        if old is not None:
            self.views.pop(hello.addr, None)
            core.send(old, Drop("replaced by a new connection from the same client"))
            core.close(old)
        after, missed = core.window.after(hello.have, hello.have_seq)
        if after is None and not hello.have and hello.catch_up:
            missed = core.window.latest(hello.catch_up)
        core.links[link][0] = "child"
        core.send(link, Accept(max(core.depth, 1), core.path, after, tuple(b.digest for b in missed)))
        self.children[hello.addr] = link
        self.adopted_at[hello.addr] = now
        latest = core.window.latest_digests(1)
        if not missed and after is not None and latest and latest[0] == after:
            self.forwarder.join(link)   # the block coming in now is its next: its parts so far
        self.views[hello.addr] = tree.ChildView(hello.addr, free=hello.max_children,
                                                members=hello.subtree)
        self.advice_sent.pop(hello.addr, None)
        core.moves.children_changed(now)
        core.status()

    # -- the children's frames --------------------------------------------------------

    def from_child(self, link, addr: Addr, message, now: float) -> None:
        if self.children.get(addr) != link:
            return
        if isinstance(message, Report):
            self.views[addr] = tree.ChildView(
                addr, message.free, message.sent, message.subtree, message.members,
                message.max_children, message.children, reported=True, parents=message.parents)
        elif isinstance(message, Bye):
            if message.successor is not None:
                self.expect((message.successor,), now)  # its slot is for the swap partner
            self.core.close(link)
            self.forget(addr, now)
        elif isinstance(message, SwapAnswer):
            self.core.mover.swap_answered(link, message.accept, now)

    def forget(self, addr: Addr, now: float) -> None:
        link = self.children.pop(addr, None)
        if link is None:
            return
        self.views.pop(addr, None)
        self.adopted_at.pop(addr, None)
        self.backlog.pop(link, None)
        self.core.moves.child_gone(addr, now)
        self.uplink.forget(link, now)
        self._estimate = None
        self.core.status()

    # -- what they are sent -------------------------------------------------------------

    def relay(self, block: Block, forward: Forward | None = None) -> None:
        """A block stored: its end to the children that got its parts, all of it to the others."""
        sizes = (len(b.data) for b in self.core.window.latest(STREAM_BLOCKS))
        self.stream = capacity.stream_rate(sizes, self.core.config.period)
        self.forwarder.stored(block, forward, list(self.children.values()))
        self.bytes_sent += len(block.data) * len(self.children)

    def _to_child(self, link, frame) -> bool:
        """One frame of a block on a child link, if it is still one."""
        entry = self.core.links.get(link)
        if entry is None or entry[0] != "child":
            return False
        self.core.send(link, frame)
        return True

    def relieve(self, now: float) -> None:
        """A child link falls behind (client.capacity): send the slowest child elsewhere.

        The node's rule (:meth:`client.upkeep.Upkeep._relieve_uplink`): the child
        is told to move (``Move`` with no place), or its link is reset when it
        holds more than a quarter period's worth; every child goes at once from
        an uplink that cannot carry one stream; one child a period. Here a
        link's queue is what it has not delivered (the node's is what it has
        not handed to the kernel yet), counted in blocks of the stream's size.
        """
        core, period = self.core, self.core.config.period
        if not core.shedding.may_relieve(now):
            return
        estimate, stream = self._uplink_now(now)
        places = capacity.places(core.config.max_children, estimate, stream)
        hopeless = capacity.cannot_carry(estimate, self.uplink.busy(now), stream, period)
        block = stream * period if stream else 0
        loads = [capacity.LinkLoad(
                     addr, self.backlog.get(link, 0),
                     int(self.backlog.get(link, 0) // block) if block else 0,
                     self.uplink.rate_of(link),
                     len(self.views[addr].members) if addr in self.views else 0,
                     young=places >= 1 and now - self.adopted_at.get(addr, now) < period)
                 for addr, link in self.children.items()]
        addr = capacity.to_move(loads, period, overloaded=len(loads) > places, hopeless=hopeless)
        if addr is None:
            return
        link = self.children[addr]
        if capacity.cut_instead(next(load for load in loads if load.key == addr), period):
            core.close(link, reset=True)
        else:
            core.send(link, Move(()))
            core.close(link)
        self.forget(addr, now)
        core.shedding.relieved(now)
        core.counters["children_moved"] += 1

    def tell_path(self) -> None:
        update = PathUpdate(max(self.core.depth, 1), self.core.path)
        for link in self.children.values():
            self.core.send(link, update)

    def advise(self, advice, now: float) -> None:
        """Keep every child's backup parent fresh (sent only when it changed)."""
        view = self.view(now)
        for addr, link in self.children.items():
            message = Advice(advice, tree.advice_for(view, addr))
            if self.advice_sent.get(addr) != message:
                self.core.send(link, message)
                self.advice_sent[addr] = message

    def report(self, now: float) -> Report:
        view = self.view(now)
        return Report(view.free, view.sent, tree.free_places(view), tree.members_below(view),
                      self.can_take(now), tuple(view.children), tree.member_parents(view))

    def hand_over(self, move: Move, now: float, keep=()) -> None:
        """Send every child but those in ``keep`` ``move`` and let it go (leaving, or a swap)."""
        for addr, link in list(self.children.items()):
            if addr in keep:
                continue
            self.core.send(link, move)
            self.core.close(link)
            self.forget(addr, now)
