"""The client's core as one pure machine: inputs in, commands out.

:class:`ClientCore` takes the inputs of :mod:`client.inputs` (a block from
the server or a frame on a link, a link's end, the server's answer, a
timer, the user's leave or channel switch), each carrying ``now``, and
returns the commands of :mod:`client.commands` (connect with a first frame,
send, close, store a block, ask the server, set a timer). It holds the glue
that :mod:`client.node`, :mod:`client.joining` and :mod:`client.upkeep` do
with threads and locks, and composes the pure machines unchanged: the search
(:func:`client.placement.search`, run by :class:`client.flows.FlowRunner`
beside the other errands of :mod:`client.flows`), the delivery gate
(:class:`client.delivery.Gate`), the moves (:class:`client.moves.Moves`),
the tree's decisions (:mod:`client.tree`, on the children's side in
:class:`client.relaying.Relay`), the forwarding of a block's parts as they
come from the parent (:mod:`client.forwarding`, cut-through), the repair plan (driven by
:class:`client.repairing.Repairer`), the uplink estimate
(:mod:`client.capacity`) and the role tables (:mod:`client.roles`) on
every link.

No socket, thread, clock or file: the same object runs under a real driver
or in the simulator (:mod:`bench.sim`), and a whole tree of them runs in
memory in tests (``tests/test_client_core.py``). Links are keys: the core
names its own with positive integers, the driver names incoming ones with
anything else; the first frame on an unknown key opens an incoming link.

A relay's uplink is judged as the node judges it (:mod:`client.capacity`):
a child is moved off a link that falls behind, every child at once off an
uplink that cannot carry one stream, and a direct client that feeds nobody
gives its server slot up (:meth:`ClientCore._maybe_yield_slot`).

Not here (the driver's, or not built yet): checking a block against the
server's feed and the cross-check, verifying an offered place with the
server's list and the ancestors (:mod:`client.places`), keepalives and the
silence of a link (a link's end comes as ``LinkClosed``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from client import flows, inputs, roles
from client.commands import LEAVE, AskServer, Close, SetTimer, Send, StatusChanged, StoreBlock
from client.delivery import SERVER, Gate, Step
from client.moves import Moves, Shedding
from client.placement import Placed
from client.moving import Mover
from client.forwarding import Forward
from client.peerproto import (Addr, Advice, Block, BlockAbort, BlockEnd, BlockPart, BlockStart, Bye,
                              Candidate, Drop, Keepalive, Move, PathUpdate, PeerProtocolError,
                              Reassembly, Swap)
from client.relaying import Relay
from client.repairing import Repairer, Repairs
from client.seeking import Search, Seeker
from client.window import RecentWindow, Stored

__all__ = ["ClientCore", "CoreConfig", "Search", "SERVER"]

_STATUS = StatusChanged()


@dataclass(frozen=True)
class CoreConfig:
    """What the core is told at start (the driver derives it from the command line)."""

    channel: int
    max_children: int
    period: float = 2.0
    window_blocks: int = 16             # the recent window (30 s of 2-s blocks, and one)
    catch_up_blocks: int = 0
    balance_blocks: float = 8.0

    @property
    def settle_time(self) -> float:
        return self.period

    @property
    def swap_cooldown(self) -> float:
        return 4 * self.period

    @property
    def link_stall(self) -> float:
        return max(2 * self.period, 1.5)

    @property
    def server_silence(self) -> float:
        return max(3 * self.period, 2.0)


class ClientCore:
    """One relay client in one channel (see the module's docstring)."""

    def __init__(self, me: Addr, config: CoreConfig, now: float,
                 rng: random.Random | None = None):
        self.me, self.config, self.channel = me, config, config.channel
        self.state = "joining"
        self.parent: str | Addr | None = None
        self.parent_link = None
        self.path: tuple[Addr, ...] = ()
        self.depth = 0
        self.window = RecentWindow(config.window_blocks)
        self.gate = Gate(config.period, self.window.capacity)
        self.moves = Moves(config.period, config.settle_time, config.swap_cooldown, now,
                           rng or random.Random(0))
        self.relay = Relay(self)
        self.seeker, self.mover, self.repairs = Seeker(self), Mover(self), Repairs(self)
        self.links: dict[object, list] = {}     # link -> [kind, conversation, addr, step key]
        # The block coming in parts on the parent link, and its forward (client.forwarding).
        self.incoming, self.incoming_link = Reassembly(), None
        #: The beginning of our next block, which a lost parent was sending: its rest is
        #: fetched once we are placed again (client.repairing).
        self.cut_short = b""
        self.forward: Forward | None = None
        self.flows = flows.FlowRunner(me, lambda: self.channel, self.seeker.perform_step,
                                      lambda: self.relay.members(self.now), self.seeker.cancel_step)
        self.repair: Repairer | None = None
        self.backup: Candidate | None = None      # where we go if our parent dies
        self.advice: Candidate | None = None      # our children's backup if we die
        self.server_member = False
        self.last_server_block = now
        self.shedding = Shedding(config.period)   # a short uplink's moves (client.moves)
        self.counters = {"blocks_received": 0, "blocks_repaired": 0, "blocks_lost": 0,
                         "blocks_finished": 0,
                         "swaps": 0, "climbs": 0, "children_moved": 0}
        self.searches: list[Search] = []
        self.now = now
        self.steps: dict[object, tuple] = {}
        self.next_flow: tuple | None = None
        self._links_made = 0
        self.repair_serial = 0
        self._root_probe_at = now
        self._out: list = []

    # -- the one entry point -----------------------------------------------------------

    def handle(self, event) -> list:
        """Take one input; the commands it asks for, in order."""
        self.now = event.now
        self._out = out = []
        _HANDLERS[type(event)](self, event)
        return out

    def out(self, command) -> None:
        self._out.append(command)

    def send(self, link, message) -> None:
        entry = self.links.get(link)
        if entry is None:
            return  # a link we already closed
        if entry[1] is not None:
            entry[1].sending(message)  # our own frames follow the tables too (client.roles)
        self._out.append(Send(link, message))

    def close(self, link, reset: bool = False) -> None:
        if self.links.pop(link, None) is not None:
            self._out.append(Close(link, reset))

    def status(self) -> None:
        self._out.append(_STATUS)

    def new_link(self) -> int:
        self._links_made += 1
        return self._links_made

    # -- life cycle and the user --------------------------------------------------------

    def _on_start(self, event) -> None:
        self._tick_later()
        self.seeker.find_place(f"joining channel {self.channel}", server_first=True)

    def _on_leave(self, event) -> None:
        self._leave()
        self.state = "stopped"

    def _on_idle(self, event) -> None:
        if self.state != "idle":
            self._leave()
            self.state = "idle"
        self.status()

    def _on_switch(self, event) -> None:
        if self.state != "idle":
            self._leave()
        self.channel = event.channel
        self.gate.new_channel()
        self.window.clear()
        self.seeker.find_place(f"switching to channel {event.channel}", server_first=True)

    def _leave(self) -> None:
        """Tell the server, the parent and the children, then close every link."""
        self.flows.stop()
        self.next_flow = None
        self.repairs.cancel()
        was_direct, link, path = self.parent == SERVER, self.parent_link, self.path
        self.state, self.parent, self.parent_link, self.path, self.depth = "leaving", None, None, (), 0
        self.leave_server()
        if link is not None:
            self.send(link, Bye())
            self.close(link)
        self.relay.hand_over(Move(path, server=was_direct or not path), self.now)
        self.status()

    # -- timers ------------------------------------------------------------------------

    def _tick_later(self) -> None:
        self.out(SetTimer("tick", self.now + self.config.period / 2))

    def _on_timer(self, event) -> None:
        key = event.key
        if key == "tick":
            self._tick()
        elif key in self.steps:
            self.seeker.step_timed_out(key)
        elif isinstance(key, tuple) and key[0] == "repair" and self.repair is not None \
                and key[1] == self.repair_serial:
            self.repair.ticked(self.now)
            self.repairs.progressed()
            if self.repair is not None:
                self.out(SetTimer(key, self.now + self.repair.tick))

    def _tick(self) -> None:
        """Every half period: server silence, the report up, the children's advice, the root's look."""
        if self.state in ("stopped", "idle"):
            return
        self._tick_later()
        now = self.now
        if (self.state == "direct" and not self.gate.holding
                and now - self.last_server_block > self.config.server_silence):
            self.seeker.orphaned(None, "no block from the server for "
                           f"{self.config.server_silence:.1f} s", server_first=True)
            return
        self.report_to_parent()
        if self.relay.children:
            self.relay.relieve(now)
            self.relay.advise(self.advice, now)
        self._maybe_yield_slot(now)
        if self.state == "direct" and now >= self._root_probe_at and not self.flows.busy:
            self._root_probe_at = now + 4 * self.config.period
            self.flows.start("root advice", flows.probe_listed(self.me, self.channel,
                                                               frozenset(self.relay.members(now))),
                             self._root_advised, now)

    def _maybe_yield_slot(self, now: float) -> None:
        """A direct client whose uplink feeds nobody moves into the tree, once a period.

        The node's rule (:meth:`client.upkeep.Upkeep._yield_server_slot`): a
        server slot is the root of a subtree, wasted on a client that relays to
        nobody. It takes a free place below the other direct clients if one
        takes it; with none, and joiners turned away lately, it gives the slot
        up all the same and searches as an orphan, off the server for a while.
        """
        if (self.state != "direct" or self.relay.children or self.repair is not None
                or self.flows.busy or not self.relay.relays_nobody(now)
                or not self.shedding.may_yield(now)):
            return
        self.flows.start("yield", flows.yield_server_slot(self.me, self.channel),
                         self._yielded, now)

    def _yielded(self, result) -> None:
        if isinstance(result, Placed):
            self.status()
        elif self.state == "direct" and self.shedding.jammed(self.now):
            self.shedding.gave_up_slot(self.now)
            self.leave_server()
            self.seeker.orphaned(None, "uplink feeds nobody: server slot left to a client "
                                 "that can relay")
            return
        self.seeker.start_next_flow()

    def _root_advised(self, found) -> None:
        """A direct client's children's backup: the best free place under the other direct clients."""
        free = sorted((c for c in found or () if c.free > 0), key=lambda c: (c.depth, c.sent))
        if self.state == "direct":
            self.advice = free[0] if free else None
        self.seeker.start_next_flow()

    # -- the server --------------------------------------------------------------------

    def _on_server_block(self, event) -> None:
        self.deliver(Block.of(0, event.data), SERVER)

    def _on_server_answer(self, event) -> None:
        step = self.steps.pop(event.token, None)
        if step is None:
            return
        if step[0] == "server":
            joined = event.answer is True
            if joined:
                self.become_direct()
            self.flows.answer(event.token, (joined, event.answer is not None), self.now)
        else:
            self.flows.answer(event.token, event.answer, self.now)

    def become_direct(self) -> None:
        self.parent_gone()
        self.cut_short = b""
        self.state, self.parent, self.parent_link, self.path, self.depth = "direct", SERVER, None, (), 1
        self.moves.moved(self.now)
        self.server_member = True
        self.last_server_block = self.now
        # The gap is looked for once the server's first block is in (client.joining).
        resumed = len(self.window) > 0
        self.gate.follow(SERVER, skip=self.window.latest_digests(3), gap_check=resumed,
                         gap_waits_for_server=resumed)
        self.relay.tell_path()
        self.status()

    def leave_server(self) -> None:
        if self.server_member:
            self.server_member = False
            self.out(AskServer(None, LEAVE, self.channel))

    # -- links ---------------------------------------------------------------------------

    def _on_received(self, event) -> None:
        link, message = event.link, event.message
        entry = self.links.get(link)
        if entry is None:
            if not (isinstance(link, int) and link > 0):
                self.relay.stranger(link, message, self.now)
            return
        kind = entry[0]
        if kind == "fetch":
            if self.repair is not None and link in self.repair.links:
                self.repair.received(link, message, self.now)
                self.repairs.progressed()
            return
        try:
            entry[1].received(message)
        except roles.ProtocolViolation as violation:
            self._on_closed(inputs.LinkClosed(self.now, link, str(violation)))
            self.close(link, reset=True)
            return
        if kind == "parent":
            if link == self.parent_link:
                self._from_parent(link, entry[2], message)
        elif kind == "child":
            self.relay.from_child(link, entry[2], message, self.now)
        elif kind in ("join", "ask"):
            self.seeker.answer_step(link, entry, message)

    def _on_closed(self, event) -> None:
        link = event.link
        entry = self.links.pop(link, None)
        if entry is None:
            return
        kind = entry[0]
        if kind == "parent" and link == self.parent_link:
            parent_was_direct = len(self.path) == 1
            self.seeker.orphaned(entry[2], f"parent {entry[2]} lost: {event.reason}")
            if parent_was_direct:
                self.moves.lost_direct_parent(self.now)
        elif kind == "child":
            self.relay.forget(entry[2], self.now)
        elif kind in ("join", "ask"):
            if self.steps.pop(entry[3], None) is not None:
                self.flows.answer(entry[3], None, self.now)
        elif kind == "fetch" and self.repair is not None:
            self.repair.closed(link, self.now)
            self.repairs.progressed()

    def _on_progress(self, event) -> None:
        if self.repair is not None:
            self.repair.progressed(event.link, event.now)

    def _on_metered(self, event) -> None:
        self.relay.metered(event.link, event.now, event.delivered, event.queued, event.writing,
                           event.busy, event.kernel_rate)

    # -- the parent ------------------------------------------------------------------------

    def _from_parent(self, link, addr: Addr, message) -> None:
        if isinstance(message, Block):
            self.deliver(message, link)
        elif isinstance(message, (BlockStart, BlockPart, BlockEnd, BlockAbort)):
            self._part_from_parent(link, message)
        elif isinstance(message, Keepalive):
            pass
        elif isinstance(message, Advice):
            self.backup, self.advice = message.backup, message.advice
        elif isinstance(message, Swap):
            self.mover.on_swap_offer(link, addr, message)
        elif isinstance(message, PathUpdate):
            if self.me in message.path:
                self.seeker.orphaned(addr, "loop: this client is in its own new path")
                return
            self.path, self.depth = message.path + (addr,), message.depth + 1
            self.relay.tell_path()
            self.status()
        elif isinstance(message, Drop):
            self.seeker.orphaned(addr, f"parent {addr} dropped us: {message.reason}")
        elif isinstance(message, Move):
            seeds = [Candidate(a, i + 1, 1, 0) for i, a in enumerate(message.candidates)]
            self.seeker.orphaned(addr, f"parent {addr} is leaving", seeds=seeds,
                           server_first=message.server,
                           insist=message.candidates[-1] if message.candidates else None,
                           moved_by=addr)

    def _part_from_parent(self, link, message) -> None:
        """A block in parts: forwarded as it comes, checked and delivered at its end
        (:class:`client.peerproto.Reassembly`; a wrong size or digest is the parent's
        protocol error, which ends the link)."""
        forwarder = self.relay.forwarder
        if link != self.incoming_link:
            self.parent_gone()
            self.incoming_link = link
        try:
            if isinstance(message, BlockStart):
                self.incoming.start(message.seq)
                self.forward = self._begin_forward(link, message.seq)
            elif isinstance(message, BlockPart):
                self.incoming.add(message.data)
                forwarder.part(self.forward, message.data)
            elif isinstance(message, BlockEnd):
                forward, self.forward = self.forward, None
                try:
                    block = self.incoming.end(message)
                except PeerProtocolError:
                    forwarder.abort(forward, "corrupt: its end does not match its bytes")
                    raise
                self.deliver(block, link, forward)
            else:
                self.incoming.abort()
                forward, self.forward = self.forward, None
                forwarder.abort(forward, f"aborted above: {message.reason}")
        except PeerProtocolError as error:
            self._on_closed(inputs.LinkClosed(self.now, link, str(error)))
            self.close(link, reset=True)

    def _begin_forward(self, source, seq: int) -> Forward | None:
        """Forward the block beginning now to the children as it comes, when the gate would
        store it live as it stands (:meth:`client.delivery.Gate.streams`)."""
        forwarder = self.relay.forwarder
        current = forwarder.current
        if current is not None and current.source != self.gate.source and not current.cut_short:
            forwarder.abort(current, "its sender is no longer followed")
        number = self.gate.streams(source, seq, self.now)
        if number is None:
            return None
        if current is not None and current.cut_short:   # a live block goes on first
            forwarder.abort(current, "its rest did not come")
        if forwarder.current is not None:
            return None
        return forwarder.begin(source, number, list(self.relay.children.values()))

    def parent_gone(self) -> None:
        """We left the parent link, or it ended: a block it was sending in parts is dropped,
        unless it was our next one: then we keep its beginning (:attr:`cut_short`), and
        our children what they got of it (:meth:`client.forwarding.Forwarder.keep`)."""
        incoming = self.incoming
        forward, self.forward = self.forward, None
        if incoming.open and incoming.size and incoming.seq == self.gate.seq + 1:
            self.cut_short = incoming.held()
            self.relay.forwarder.keep(forward)
        else:
            self.relay.forwarder.abort(forward, "cut short: parent lost")
        incoming.abort()

    def report_to_parent(self) -> None:
        if self.parent_link is not None:
            self.send(self.parent_link, self.relay.report(self.now))

    # -- blocks ------------------------------------------------------------------------------

    def deliver(self, block: Block, source, forward: Forward | None = None) -> None:
        self.perform(self.gate.arrived(block, source, self.now), forward)

    def perform(self, step: Step, forward: Forward | None = None) -> None:
        """Store what the gate passed, in order; then the moves each block allows.

        ``forward``: the forward in parts of the block that just came; it ends with that
        block if the gate passed it under the number it began with, and is aborted
        otherwise (the children get that block whole, if and when it is stored).
        """
        for passed in step.passes:
            if passed.source == SERVER:
                self.last_server_block = self.now
            self._store_and_relay(passed.block, forward)
        self.relay.forwarder.abort(forward, "not stored now")
        if step.check_gap:
            self.seeker.server_gap()
        for passed in step.passes:
            self.mover.just_stored(passed.block.digest)

    def _store_and_relay(self, block: Block, forward: Forward | None = None) -> None:
        self.out(StoreBlock(block))
        self.window.append(Stored(block, self.now))
        self.relay.relay(block, forward)
        self.counters["blocks_received"] += 1
        search = self.searches[-1] if self.searches else None
        if search is not None and search.took is None:
            search.took = self.now - search.started

    # -- what tests, tools and the simulator read ------------------------------------------

    def snapshot(self) -> dict:
        """The tree-shaped part of status.json (client.node.Node.snapshot's keys)."""
        parent = self.parent
        return {"ip": self.me.ip, "peer_port": self.me.port, "channel": self.channel,
                "max_children": self.config.max_children, "state": self.state,
                "parent": (parent if parent in (SERVER, None) else
                           {"ip": parent.ip, "port": parent.port}),
                "path": [str(a) for a in self.path], "depth": self.depth,
                "children": [{"ip": a.ip, "port": a.port} for a in self.relay.children],
                "bytes_sent": self.relay.bytes_sent, "repairing": self.repair is not None,
                "backup": str(self.backup.addr) if self.backup else None,
                "rejoins": max(0, len(self.searches) - 1), **self.counters}


_HANDLERS = {
    inputs.Start: ClientCore._on_start,
    inputs.Leave: ClientCore._on_leave,
    inputs.GoIdle: ClientCore._on_idle,
    inputs.SwitchChannel: ClientCore._on_switch,
    inputs.ServerBlock: ClientCore._on_server_block,
    inputs.ServerAnswered: ClientCore._on_server_answer,
    inputs.Received: ClientCore._on_received,
    inputs.LinkClosed: ClientCore._on_closed,
    inputs.TimerFired: ClientCore._on_timer,
    inputs.Metered: ClientCore._on_metered,
    inputs.Progress: ClientCore._on_progress,
}
