"""Keeping the tree in shape while it runs: backup parents, the balance rotation, climbing,
and children moved off an uplink that falls behind.

A mixin of :class:`client.node.Node`, driven by the controller's tick.
"""

from __future__ import annotations

import logging
import time

from dataclasses import dataclass

from client import capacity, tree
from client.links import ChildLink, ParentLink
from client.delivery import SERVER
from client.model import Rejoin, State
from client.peerproto import Addr, Advice, Bye, Candidate, Move, Redirect, Swap, SwapAnswer

log = logging.getLogger("client.node")

#: Places a climbing client tries at most (the best first, then where full ones point).
CLIMB_ATTEMPTS = 4


@dataclass(frozen=True)
class SwapOffer:
    """A swap offered to a child and not answered yet (the token :mod:`client.moves` keeps).

    The child's link and view are kept from the moment of the offer: a child
    that accepts closes its link right after answering, so by the time the
    controller reads the answer the child may already be gone from
    ``children``.
    """

    link: ChildLink
    view: tree.ChildView
    swap: Swap


class Upkeep:
    """Advise children of their backup parent, swap places with a light child, climb."""

    def _advise_children(self) -> None:
        """Keep every child's backup parent fresh (sent only when it changed)."""
        with self._lock:
            view = self._relay_view()
            advices = {addr: Advice(self._advice, tree.advice_for(view, addr))
                       for addr in self.children}
            for addr, advice in advices.items():
                if self._advice_sent.get(addr) != advice and self.children[addr].enqueue(advice):
                    self._advice_sent[addr] = advice

    def _relieve_uplink(self) -> None:
        """A child link falls behind (client.capacity): send the slowest child elsewhere.

        Called at every tick of the controller, so that a backlog is seen
        within a quarter period, long before the link's queue would overflow
        and drop a block. The child is told to move (``Move`` with no place:
        it searches, this relay excluded at first), or, when its link holds
        more than a quarter period's worth, the link is reset
        (:func:`client.capacity.cut_instead`); either way it rejoins with its
        latest blocks and its new parent resumes after them, so it misses
        nothing. One child a period: the estimate sees the relief before the next.
        """
        now = time.monotonic()
        with self._lock:
            if not self.shedding.may_relieve(now) or not self.children:
                return
            links = list(self.children.values())
            below = {link: len(self.child_views[a].members) if a in self.child_views else 0
                     for a, link in self.children.items()}
            places = self._places()
            hopeless = self._uplink_hopeless()
        # A new link on an uplink that feeds someone gets a period (client.capacity.behind);
        # on one measured to feed nobody, none: every second of it costs the relay its own blocks.
        loads = [capacity.LinkLoad(link, *link.load(), self._drain_rate(link), below[link],
                                   young=places >= 1 and now - link.started < self.config.period)
                 for link in links]
        link = capacity.to_move(loads, self.config.period, overloaded=len(links) > places,
                                hopeless=hopeless)
        if link is None:
            return
        load = next(load for load in loads if load.key is link)
        why = ("uplink cannot carry one stream" if hopeless else
               f"uplink behind: {load.backlog} bytes waiting, drains "
               + (f"{load.rate:.0f} B/s" if load.rate else "unmeasured"))
        cut = capacity.cut_instead(load, self.config.period)
        if not (link.cut(why) if cut else link.move(Move(()))):
            return
        with self._lock:
            self.shedding.relieved(now)
            self.counters.children_moved += 1
        log.warning("%s: %s child %s elsewhere", why, "cutting" if cut else "moving", link.addr)

    def _relays_nobody(self) -> bool:
        """(Under the lock.) The uplink was measured and cannot carry one stream."""
        estimate, stream = self._uplink_now()
        return estimate is not None and capacity.places(
            self.config.max_children, estimate, stream) == 0

    def _yield_server_slot(self) -> None:
        """A direct client whose uplink feeds nobody moves into the tree, once a period.

        A server slot is the root of a subtree: one that relays to nobody
        wastes it (measured: a 2 Mbit/s direct client held one of two slots
        for a whole run, and the clients that became direct beside it
        repaired their gaps from it, at its pace). It takes a free place
        below the other direct clients, if one takes it, and frees the slot
        when attached (``12X``); a child of a direct client climbs into it.
        Such a client does not climb back (:meth:`_maybe_climb`). With no place
        free below and joiners turned away, it gives the slot up all the same.
        """
        now = time.monotonic()
        with self._lock:
            if (self.state != State.DIRECT or self.children or self.gate.repair is not None
                    or not self._relays_nobody() or not self.shedding.may_yield(now)):
                return
        search = tree.JoinSearch(self.me, max_attempts=CLIMB_ATTEMPTS)
        search.add(c for c in self._probe_listed(()) if c.free > 0)
        if self._try_places(search, Rejoin("yielding the server slot", 0, 0)):
            log.info("uplink feeds nobody: left the server slot for depth %d", self.depth)
            self._write_status()
            return
        # Nothing free below, and a joiner found no place here lately: the tree is jammed
        # (measured: both slots held by 2 Mbit/s clients, ten clients without a block for
        # two minutes). The slot goes to one that can relay; this client searches as an
        # orphan, the server aside for a while.
        with self._lock:
            now = time.monotonic()
            jammed = self.shedding.jammed(now)
            if jammed:
                self.shedding.gave_up_slot(now)
        if jammed:
            self._leave_server()
            self._orphaned(None, "uplink feeds nobody: server slot left to a client that can relay")

    def _displace(self, leaf: Addr, joiner: Addr):
        """(Under both locks.) Free ``leaf``'s place for ``joiner``, and send the leaf to it.

        The place is freed before the joiner takes it: never more than K children.
        """
        link = self.children.get(leaf)
        if link is None or not link.move(Move((joiner,))):
            return tree.RejectJoin("no free slot here or below")
        self._forget_child(link, f"displaced by {joiner}, which brings a subtree")
        return tree.AcceptJoin()

    def _advise_as_root(self) -> None:
        """A direct client has no parent to advise it: the best place under the other direct clients."""
        with self._lock:
            members = tree.members_below(self._relay_view())
        places = sorted(self._probe_listed(members), key=lambda c: (c.depth, c.sent))
        free = [c for c in places if c.free > 0]
        with self._lock:
            if self.state == State.DIRECT:
                self._advice = free[0] if free else None

    def _maybe_swap(self) -> None:
        """Offer the lightest-sending child this relay's place once it is ahead by a margin.

        Called right after a block of this depth's phase
        (:func:`client.tree.may_swap`): the place passes to the child with a
        gap of a few milliseconds, which must not meet the next block.
        Nothing changes until the child accepts (:meth:`_on_swap_answer`).
        """
        with self._lock:
            now = time.monotonic()
            silent = self.moves.expired_offer(now)
            if silent is not None:
                log.info("balance: %s did not answer the swap offer", silent)
            if self.config.balance_blocks <= 0 or not self.moves.may_offer(self._situation()):
                return
            view = self._relay_view()
            room = capacity.room_for_swap(*self._uplink_now(), len(view.children))
            block_size = sum(len(b.data) for b in self.window.latest(4)) / min(4, len(self.window))
            margin = int(self.config.balance_blocks * block_size * max(1, len(view.children)))
            target = tree.choose_swap(view, margin, room, self.moves.recent_partners(now))
            if target is None:
                return
            was_direct = self.parent == SERVER
            others = tuple(a for a in self.children if a != target)
            offer = Swap(None if was_direct else self.parent, self.path, (self.me, *others),
                         server=was_direct)
            link = self.children[target]
            self.moves.offered(SwapOffer(link, view.children[target], offer), target, now)
        link.enqueue(offer)

    def _on_swap_offer(self, link: ParentLink, offer: Swap) -> None:
        """Our parent offers us its place: take it if nothing else is under way here."""
        with self._lock:
            accept = self.moves.may_accept(self._situation())
            if accept:
                # Ready before saying yes: the partners connect as soon as the parent hears it.
                self._expect(offer.expected)
                self.path, self.depth = offer.path, len(offer.path) + 1
        link.send(SwapAnswer(accept))
        if accept:
            self._take_place(link, offer)
        else:
            log.info("balance: declined %s's place (busy here)", link.addr)

    def _on_swap_answer(self, link: ChildLink, accept: bool) -> None:
        """A child answered our offer: carry the swap out, or forget it."""
        with self._lock:
            offer = self.moves.offer.token if self.moves.offer is not None else None
            if offer is None or offer.link is not link:
                return
            verdict = self.moves.answered(offer, accept, time.monotonic(), self.parent == SERVER,
                                          self._last_server_block)
        if verdict == "declined":
            log.info("balance: %s declined the swap", link.addr)
        elif verdict == "late":
            log.info("balance: %s accepted too late in the period to hand the server slot "
                     "over: keeping it (the child comes back)", link.addr)
        elif verdict == "carry":
            self._swap_with(offer)

    def _swap_with(self, offer: SwapOffer) -> None:
        """Hand the child that accepted ``offer`` this relay's place and other children.

        The slot above is freed first (Bye, or 12X at the server) so that the
        target finds it free; the other children are sent to the target,
        which expects them; then this relay becomes the target's child.
        """
        link, target = offer.link, offer.link.addr
        with self._deliver_lock, self._lock:
            view = self.child_views.get(target, offer.view)
            others = [c for a, c in self.children.items() if a != target]
            # The target's children (as last reported), and anyone the target sends.
            self._expect((*view.children, target))
            was_direct = self.parent == SERVER
            parent_link, path = self.parent_link, self.path
            self.parent = self.parent_link = None
            self.gate.unfollow()  # (no repair runs: a relay offers a swap only without one)
            self.state = State.ORPHANED
            self.counters.swaps += 1
            self.moves.swapped_with(target, time.monotonic())
            sent = self.counters.bytes_sent
        log.info("balance: %s takes this relay's place (it sent %d bytes, this relay %d)",
                 target, view.sent, sent)
        if was_direct:
            self._leave_server()
        elif parent_link is not None:
            parent_link.send(Bye(successor=target))
            parent_link.close()
        link.close()
        self._forget_child(link, "swapped places with us")
        for child in others:
            child.enqueue(Move((target,)))
            child.close()
            self._forget_child(child, f"moved to {target}")
        self._write_status()
        self._find_place(f"balance: swapped places with {target}", server_first=False,
                         seeds=[Candidate(target, len(path) + 1, 1, 0)], insist=target)

    def _take_place(self, link: ParentLink, swap: Swap) -> None:
        """We accepted our parent's place: go where it was, with the children our
        other places can feed (:func:`client.tree.keeps`); the rest go to it."""
        self._cancel_repair()
        with self._lock:
            self.parent_link = self.parent = None
            self.state = State.ORPHANED
            self.moves.swapped_with(link.addr, time.monotonic())
            kept = tree.keeps({a: self.child_views.get(a, tree.ChildView(a)) for a in self.children},
                              self._places(), len(swap.expected))
            children = [c for a, c in self.children.items() if a not in kept]
        link.close()
        for child in children:
            child.enqueue(Move((link.addr,)))
            child.close()
            self._forget_child(child, f"moved to {link.addr}")
        self._write_status()
        if swap.server:
            # The parent leaves the server once it hears our answer: try for a moment.
            for _ in range(10):
                if self._try_server() or self._stopping.wait(self.config.period / 20):
                    return
        seeds = [Candidate(swap.parent, len(swap.path), 1, 0)] if swap.parent else []
        self._find_place(f"balance: taking the place of {link.addr}", server_first=swap.server,
                         seeds=seeds, exclude=(link.addr,), insist=swap.parent)

    def _climb_to(self, depth: int, members, parent: Addr) -> bool:
        """Join a free place at least one level shallower than our parent's, if one takes us.

        Reports are up to half a period old per level, so the best place may
        be gone: a few are tried, and the places a full one points to that
        are still shallow enough.
        """
        def shallower(candidates):
            return (c for c in candidates if c.free > 0 and c.depth + 1 < depth)

        search = tree.JoinSearch(self.me, exclude=(*members, parent), max_attempts=CLIMB_ATTEMPTS)
        search.add(shallower(self._probe_listed(members)))
        return self._try_places(search, Rejoin("climbing", 0, 0), shallower)

    def _try_places(self, search: tree.JoinSearch, rejoin: Rejoin, keep=lambda places: places) -> bool:
        """Ask the places of ``search`` in turn until one takes us; a redirect adds the
        places it names that ``keep`` keeps."""
        while (candidate := search.next()) is not None and not self._stopping.is_set():
            answer = self._try_join(candidate.addr, rejoin)
            if answer is True:
                return True
            if isinstance(answer, Redirect):
                search.add(keep(answer.candidates))
        return False

    def _maybe_climb(self, to_server: bool = False) -> None:
        """Move up a level when a shallower place is free: the tree compacts again after churn.

        A child of a direct client tries the server itself (a slot freed by a
        dead direct client is taken back); deeper clients look for a free
        place at least one level shallower through the direct clients. The
        subtree moves along, and the move resumes without a hole like any
        rejoin. Called just after a block (:meth:`client.node.Node._just_stored`).
        ``to_server``: an orphan of a dead direct client asks the server for
        the slot it left, whatever its depth now.
        """
        with self._lock:
            if not self.moves.may_climb(self._situation()):
                return
            depth, old = self.depth, self.parent_link
            members = tree.members_below(self._relay_view())
            if (depth == 2 or to_server) and self._relays_nobody():
                return  # a server slot is for a client that can relay (_yield_server_slot)
        if depth == 2 or to_server:
            moved = self._try_server()
        else:
            moved = self._climb_to(depth, members, old.addr)
        if moved:
            log.info("climbed from depth %d to depth %d", depth, self.depth)
            with self._lock:
                self.counters.climbs += 1
            old.send(Bye())
            old.close()
            self._write_status()
