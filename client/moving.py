"""The core's own moves: the balance swap (both sides) and climbing, carried out.

A part of :class:`client.core.ClientCore` (it owns one :class:`Mover`): when
:class:`client.moves.Moves` says a move may start, right after a block, this
carries it out as the core's commands: the offer to the lightest child and,
once accepted, the hand-over of the place and the other children; on the
child's side, the answer and the move to the parent's place; a climb through
the direct clients or to the server. Pure, like the core.
"""

from __future__ import annotations

from dataclasses import dataclass

from client import flows, placement, tree
from client.delivery import SERVER
from client.moves import Climb, OfferSwap, Situation
from client.peerproto import Addr, Bye, Candidate, Move, Swap, SwapAnswer

__all__ = ["Mover", "SwapOffer"]


@dataclass(frozen=True)
class SwapOffer:
    """A swap offered to a child (the token :mod:`client.moves` keeps), with its view then."""

    link: object
    view: tree.ChildView


class Mover:
    """The moves of one core (see the module's docstring)."""

    def __init__(self, core):
        self.core = core

    def situation(self) -> Situation:
        core = self.core
        return Situation(core.now, core.state == "direct", core.state == "attached", core.depth,
                         core.gate.repair is not None, len(core.window) > 0)

    def just_stored(self, digest: bytes) -> None:
        core = self.core
        if core.flows.busy:
            return  # (the node's controller is busy then, and skips the block's moves)
        move = core.moves.after_block(self.situation(), digest)
        if isinstance(move, OfferSwap):
            self.maybe_swap()
        elif isinstance(move, Climb):
            self.maybe_climb(move.to_server)

    def maybe_swap(self) -> None:
        """Offer the lightest-sending child this relay's place once it is ahead by a margin."""
        core = self.core
        now = core.now
        core.moves.expired_offer(now)
        if core.config.balance_blocks <= 0 or not core.moves.may_offer(self.situation()):
            return
        view = core.relay.view(now)
        latest = core.window.latest(4)
        margin = int(core.config.balance_blocks * sum(len(b.data) for b in latest) / len(latest)
                     * max(1, len(view.children)))
        target = tree.choose_swap(view, margin, core.relay.room_for_swap(now),
                                  core.moves.recent_partners(now))
        if target is None:
            return
        was_direct = core.parent == SERVER
        others = tuple(a for a in core.relay.children if a != target)
        offer = Swap(None if was_direct else core.parent, core.path, (core.me, *others),
                     server=was_direct)
        link = core.relay.children[target]
        core.moves.offered(SwapOffer(link, view.children[target]), target, now)
        core.send(link, offer)

    def swap_answered(self, link, accept: bool, now: float) -> None:
        """A child answered our offer: carry the swap out, or forget it."""
        core = self.core
        offer = core.moves.offer.token if core.moves.offer is not None else None
        if offer is None or offer.link != link:
            return
        verdict = core.moves.answered(offer, accept, now, core.parent == SERVER,
                                      core.last_server_block)
        if verdict == "carry":
            self.swap_with(offer)

    def swap_with(self, offer: SwapOffer) -> None:
        """The child that accepted takes our place and our other children; we go below it."""
        core = self.core
        link = offer.link
        target = core.links[link][2] if link in core.links else offer.view.addr
        view = core.relay.views.get(target, offer.view)
        core.relay.expect((*view.children, target), core.now)
        was_direct, parent_link, path = core.parent == SERVER, core.parent_link, core.path
        core.parent = core.parent_link = None
        core.gate.unfollow()
        core.state = "orphaned"
        core.counters["swaps"] += 1
        core.moves.swapped_with(target, core.now)
        if was_direct:
            core.leave_server()
        elif parent_link is not None:
            core.send(parent_link, Bye(successor=target))
            core.close(parent_link)
        core.close(link)
        core.relay.forget(target, core.now)
        core.relay.hand_over(Move((target,)), core.now)
        core.status()
        core.seeker.find_place(f"balance: swapped places with {target}", server_first=False,
                         seeds=[Candidate(target, len(path) + 1, 1, 0)], insist=target)

    def on_swap_offer(self, link, addr: Addr, offer: Swap) -> None:
        """Our parent offers us its place: take it if nothing else is under way here."""
        core = self.core
        accept = core.moves.may_accept(self.situation()) and not core.flows.busy
        if accept:
            core.relay.expect(offer.expected, core.now)
            core.path, core.depth = offer.path, len(offer.path) + 1
        core.send(link, SwapAnswer(accept))
        if not accept:
            return
        core.repairs.cancel()
        core.parent_link = core.parent = None
        core.state = "orphaned"
        core.moves.swapped_with(addr, core.now)
        core.close(link)
        relay = core.relay
        kept = tree.keeps({a: relay.views.get(a, tree.ChildView(a)) for a in relay.children},
                          relay.places(core.now), len(offer.expected))
        relay.hand_over(Move((addr,)), core.now, keep=kept)
        core.status()
        seeds = [Candidate(offer.parent, len(offer.path), 1, 0)] if offer.parent else []
        wrap = (lambda search: flows.take_server_slot(core.config.period, search)) \
            if offer.server else None
        core.seeker.find_place(f"balance: taking the place of {addr}", server_first=offer.server,
                         seeds=seeds, exclude=(addr,), insist=offer.parent, wrap=wrap)

    def maybe_climb(self, to_server: bool) -> None:
        """Move up a level when a shallower place is free (or take a dead parent's slot)."""
        core = self.core
        if not core.moves.may_climb(self.situation()):
            return
        now, depth, old = core.now, core.depth, core.parent_link
        server = depth == 2 or to_server
        if server and core.relay.relays_nobody(now):
            return  # a server slot is for a client that can relay
        members = core.relay.members(now)
        flow = flows.climb_to_server() if server else flows.climb(core.me, depth, members,
                                                                  core.parent)
        core.flows.start("climb", flow, lambda result: self.climbed(result, old), now)

    def climbed(self, result, old) -> None:
        core = self.core
        if isinstance(result, placement.Placed):
            core.counters["climbs"] += 1
            if old is not None and old != core.parent_link:
                core.send(old, Bye())
                core.close(old)
            core.status()
        core.seeker.start_next_flow()
