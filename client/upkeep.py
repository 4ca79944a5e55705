"""Keeping the tree in shape while it runs: backup parents, the balance rotation, climbing.

A mixin of :class:`client.node.Node`, driven by the controller's tick.
"""

from __future__ import annotations

import logging
import random
import time

from client import tree
from client.links import ParentLink
from client.model import SERVER, Rejoin, State
from client.peerproto import Addr, Advice, Bye, Candidate, Move, Swap

log = logging.getLogger("client.node")


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
        """Swap places with the lightest-sending child once this relay is ahead by a margin.

        Called every half period for a relay, and right after each block from
        the server for a direct client: its server slot passes to the child
        with a gap of a few milliseconds, which must not meet the next block.
        """
        with self._lock:
            if (self.config.balance_blocks <= 0 or self._repair is not None
                    or time.monotonic() - self._moved_at < self.config.swap_cooldown
                    or time.monotonic() - self._children_changed_at < self.config.settle_time
                    or not len(self.window)):
                return
            view = self._relay_view()
            block_size = sum(len(b.data) for b in self.window.latest(4)) / min(4, len(self.window))
            margin = int(self.config.balance_blocks * block_size * max(1, len(view.children)))
            target = tree.choose_swap(view, margin)
        if target is not None:
            self._swap_with(target)

    def _swap_with(self, target: Addr) -> None:
        """Hand ``target`` (a child) this relay's place and other children; become its child.

        The slot above is freed first (Bye, or 12X at the server) so that the
        target finds it free; the target is told before the other children
        are moved to it, so that it expects them.
        """
        with self._lock:
            view, link = self.child_views.get(target), self.children.get(target)
            if view is None or link is None:
                return
            others = [c for a, c in self.children.items() if a != target]
            deadline = time.monotonic() + 2 * self.config.parent_silence
            self._expected = {a: deadline for a in view.children}
            was_direct = self.parent == SERVER
            parent, parent_link, path = self.parent, self.parent_link, self.path
            self.parent = self.parent_link = None
            self.state = State.ORPHANED
            self.counters.swaps += 1
            sent = self.counters.bytes_sent
        log.info("balance: %s takes this relay's place (it sent %d bytes, this relay %d)",
                 target, view.sent, sent)
        if was_direct:
            self._leave_server()
        elif parent_link is not None:
            parent_link.send(Bye())
            parent_link.close()
        link.enqueue(Swap(None if was_direct else parent, path,
                          (self.me, *(c.addr for c in others)), server=was_direct))
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
        """Our parent handed us its place: send our children to it, go where it was."""
        self._cancel_repair()
        with self._lock:
            self.parent_link = self.parent = None
            self.state = State.ORPHANED
            children = list(self.children.values())
        link.close()
        for child in children:
            child.enqueue(Move((link.addr,)))
            child.close()
            self._forget_child(child, f"moved to {link.addr}")
        self._write_status()
        seeds = [Candidate(swap.parent, len(swap.path), 1, 0)] if swap.parent else []
        self._find_place(f"balance: taking the place of {link.addr}", server_first=swap.server,
                         seeds=seeds, exclude=(link.addr,), insist=swap.parent)

    def _climb_interval(self) -> float:
        """Every 3 to 6 periods, at random, so that clients do not all look at once."""
        return self.config.period * random.uniform(3, 6)

    def _maybe_climb(self) -> None:
        """Move up a level when a shallower place is free: the tree compacts again after churn.

        A child of a direct client tries the server itself (a slot freed by a
        dead direct client is taken back); deeper clients look for a free
        place at least one level shallower through the direct clients. The
        subtree moves along, and the move resumes without a hole like any
        rejoin. Called just after a block (:meth:`client.node.Node._just_stored`).
        """
        with self._lock:
            # Not the swap cooldown: swaps move the clients of a deep branch often
            # enough to keep them from ever climbing.
            if (self.state != State.ATTACHED or self._repair is not None
                    or time.monotonic() - self._moved_at < self.config.settle_time):
                return
            depth, old = self.depth, self.parent_link
            members = tree.members_below(self._relay_view())
        if depth == 2:
            moved = self._try_server()
        else:
            free = sorted((c for c in self._probe_listed(members)
                           if c.free > 0 and c.depth + 1 < depth and c.addr != old.addr),
                          key=lambda c: (c.depth, c.sent))
            moved = bool(free) and self._try_join(free[0].addr, Rejoin("climbing", 0, 0)) is True
        if moved:
            log.info("climbed from depth %d to depth %d", depth, self.depth)
            with self._lock:
                self.counters.climbs += 1
            old.send(Bye())
            old.close()
            self._write_status()
