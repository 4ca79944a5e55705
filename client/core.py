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
:class:`client.relaying.Relay`), the repair plan (driven by
:class:`client.repairing.Repairer`), the uplink estimate
(:mod:`client.capacity`) and the role tables (:mod:`client.roles`) on
every link.

No socket, thread, clock or file: the same object runs under a real driver
or in the simulator (:mod:`bench.sim`), and a whole tree of them runs in
memory in tests (``tests/test_client_core.py``). Links are keys: the core
names its own with positive integers, the driver names incoming ones with
anything else; the first frame on an unknown key opens an incoming link.

Not here (the driver's, or not built yet): checking a block against the
server's feed and the cross-check, verifying an offered place with the
server's list and the ancestors (:mod:`client.places`), keepalives and the
silence of a link (a link's end comes as ``LinkClosed``), moving a child
off an uplink that falls behind, and giving a server slot up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from client import flows, inputs, placement, roles, tree
from client.commands import (JOIN, LEAVE, LIST, AskServer, Close, Connect, Placed, SetTimer,
                             Send, StatusChanged, StoreBlock)
from client.delivery import SERVER, Step
from client.delivery import Gate
from client.moves import Climb, Moves, OfferSwap, Situation
from client.peerproto import (Accept, Addr, Advice, Block, Bye, Candidate, Drop, Hello, Keepalive,
                              Move, PathUpdate, Swap, SwapAnswer)
from client.relaying import Relay
from client.repairing import Repairer
from client.window import RecentWindow, Stored

__all__ = ["ClientCore", "CoreConfig", "SERVER", "HAVE_COUNT"]

#: How many of its latest block identities a joiner sends (``Hello.have``).
HAVE_COUNT = 8

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


@dataclass(frozen=True)
class SwapOffer:
    """A swap offered to a child (the token :mod:`client.moves` keeps), with its view then."""

    link: object
    view: tree.ChildView


@dataclass
class Search:
    """One search for a place: why, since when, from which depth (client.model.Rejoin)."""

    cause: str
    started: float
    depth_before: int
    took: float | None = None


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
        self.links: dict[object, list] = {}     # link -> [kind, conversation, addr, step key]
        self.flows = flows.FlowRunner(me, lambda: self.channel, self._perform_step,
                                      lambda: self.relay.members(self.now), self._cancel_step)
        self.repair: Repairer | None = None
        self.backup: Candidate | None = None      # where we go if our parent dies
        self.advice: Candidate | None = None      # our children's backup if we die
        self.server_member = False
        self.last_server_block = now
        self.turned_away_at = -1e9
        self.counters = {"blocks_received": 0, "blocks_repaired": 0, "blocks_lost": 0,
                         "swaps": 0, "climbs": 0}
        self.searches: list[Search] = []
        self.now = now
        self._steps: dict[object, tuple] = {}
        self._next_flow: tuple | None = None
        self._links_made = 0
        self._repairs = 0
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
        self._find_place(f"joining channel {self.channel}", server_first=True)

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
        self._find_place(f"switching to channel {event.channel}", server_first=True)

    def _leave(self) -> None:
        """Tell the server, the parent and the children, then close every link."""
        self.flows.stop()
        self._next_flow = None
        self._cancel_repair()
        was_direct, link, path = self.parent == SERVER, self.parent_link, self.path
        self.state, self.parent, self.parent_link, self.path, self.depth = "leaving", None, None, (), 0
        self._leave_server()
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
        elif key in self._steps:
            self._step_timed_out(key)
        elif isinstance(key, tuple) and key[0] == "repair" and self.repair is not None \
                and key[1] == self._repairs:
            self.repair.ticked(self.now)
            self._repair_progressed()
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
            self._orphaned(None, "no block from the server for "
                           f"{self.config.server_silence:.1f} s", server_first=True)
            return
        self._report_to_parent()
        if self.relay.children:
            self.relay.advise(self.advice, now)
        if self.state == "direct" and now >= self._root_probe_at and not self.flows.busy:
            self._root_probe_at = now + 4 * self.config.period
            self.flows.start("root advice", flows.probe_listed(self.me, self.channel,
                                                               frozenset(self.relay.members(now))),
                             self._root_advised, now)

    def _root_advised(self, found) -> None:
        """A direct client's children's backup: the best free place under the other direct clients."""
        free = sorted((c for c in found or () if c.free > 0), key=lambda c: (c.depth, c.sent))
        if self.state == "direct":
            self.advice = free[0] if free else None
        self._start_next_flow()

    # -- the server --------------------------------------------------------------------

    def _on_server_block(self, event) -> None:
        self._deliver(Block.of(0, event.data), SERVER)

    def _on_server_answer(self, event) -> None:
        step = self._steps.pop(event.token, None)
        if step is None:
            return
        if step[0] == "server":
            joined = event.answer is True
            if joined:
                self._become_direct()
            self.flows.answer(event.token, (joined, event.answer is not None), self.now)
        else:
            self.flows.answer(event.token, event.answer, self.now)

    def _become_direct(self) -> None:
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

    def _leave_server(self) -> None:
        if self.server_member:
            self.server_member = False
            self.out(AskServer(None, LEAVE, self.channel))

    # -- the search and the other errands (client.flows) ----------------------------------

    def _find_place(self, cause: str, server_first: bool, seeds=(), exclude=(), backup=None,
                    insist=None, moved_by=None, wrap=None) -> None:
        self.flows.stop()
        self.searches.append(Search(cause, self.now, self.depth))
        search = placement.search(self.me, self.config.period, server_first, seeds, exclude,
                                  backup, insist, moved_by, self.relay.members(self.now))
        self.flows.start("search", wrap(search) if wrap else search, self._placed, self.now)

    def _placed(self, result) -> None:
        if isinstance(result, placement.Placed) and self.searches:
            search = self.searches[-1]
            self.out(Placed(search.cause, result.how, self.depth, search.depth_before, search.started))
        self._start_next_flow()

    def _start_next_flow(self) -> None:
        if self._next_flow is not None and not self.flows.busy:
            kind, flow, done = self._next_flow
            self._next_flow = None
            self.flows.start(kind, flow, done, self.now)

    def _perform_step(self, step, key, now: float) -> None:
        if isinstance(step, placement.TryJoin):
            self._connect(key, step.addr, self._join_hello(step.moved_by), roles.JOIN, "join")
        elif isinstance(step, flows.Ask):
            role = roles.ASKER[roles.frame_name(step.question)]
            self._connect(key, step.addr, step.question, role, "ask")
        elif isinstance(step, placement.TryServer):
            self._steps[key] = ("server",)
            self.out(AskServer(key, JOIN, self.channel))
            self.out(SetTimer(key, now + flows.SERVER_DEADLINE))
        elif isinstance(step, flows.ListServer):
            self._steps[key] = ("list",)
            self.out(AskServer(key, LIST, self.channel))
            self.out(SetTimer(key, now + flows.SERVER_DEADLINE))
        else:  # Pause
            self._steps[key] = ("pause",)
            self.out(SetTimer(key, now + step.seconds))

    def _connect(self, key, addr: Addr, first, role: roles.Role, kind: str) -> None:
        link = self.new_link()
        talk = roles.Conversation(role, roles.PEER)
        talk.sending(first)
        self.links[link] = [kind, talk, addr, key]
        self._steps[key] = (kind, link)
        self.out(Connect(link, addr, first))
        self.out(SetTimer(key, self.now + flows.ANSWER_DEADLINE))

    def _join_hello(self, moved_by) -> Hello:
        have = self.window.latest_digests(HAVE_COUNT)
        catch_up = 0 if have else min(self.config.catch_up_blocks, self.window.capacity)
        return Hello("join", self.me, self.channel, self.relay.can_take(self.now), have=have,
                     have_seq=max(self.gate.seq, 0), subtree=self.relay.members(self.now),
                     catch_up=catch_up, moved_by=moved_by)

    def _cancel_step(self, key) -> None:
        step = self._steps.pop(key, None)
        if step is not None and len(step) == 2:
            self.close(step[1], reset=True)

    def _step_timed_out(self, key) -> None:
        step = self._steps.pop(key)
        if len(step) == 2:
            self.close(step[1], reset=True)
        answer = {"server": (False, True)}.get(step[0])
        self.flows.answer(key, answer, self.now)

    def _answer_step(self, link, entry, message) -> None:
        """The answer on one of our join or ask links."""
        key = entry[3]
        self._steps.pop(key, None)
        if isinstance(message, Accept) and entry[0] == "join":
            answer = self._attach(link, entry[2], message)
        else:
            self.close(link)
            answer = message
        self.flows.answer(key, answer, self.now)

    def _attach(self, link, addr: Addr, accept: Accept):
        """``addr`` accepted us: it is our parent now; resume after our latest block."""
        if self.me in accept.path:
            self.close(link)
            return None  # it would put us under ourselves
        self._leave_server()
        self.links[link][0] = "parent"
        now = self.now
        self.parent, self.parent_link, self.state = addr, link, "attached"
        self.moves.moved(now)
        self.path, self.depth = accept.path + (addr,), accept.depth + 1
        self.backup = self.advice = None  # the new parent will advise
        latest = self.window.latest_digests(1)
        gap_check = bool(latest) and not accept.after  # a parent that cannot place our latest
        if accept.after:
            skip = self.window.since(accept.after)
            missing = [d for d in accept.missing if d not in set(skip)]
        else:
            skip = list(self.window.latest_digests(3))
            missing = [] if latest else list(accept.missing)
        self._cancel_repair()
        self.gate.follow(link, skip, gap_check=gap_check)
        if missing:
            self._start_repair(missing, [addr, *reversed(accept.path)])
        if gap_check:
            probe = self._probe_hello()
            self._next_flow = ("gap", flows.look_for_gap(
                self.me, probe, list(reversed(accept.path)) or None, addr,
                frozenset(self.relay.members(now))), lambda found: self._gap_looked(found, addr))
        self.relay.tell_path()
        self._report_to_parent()
        self.status()
        return True

    def _probe_hello(self) -> Hello:
        return Hello("probe", self.me, self.channel, have=self.window.latest_digests(HAVE_COUNT),
                     have_seq=max(self.gate.seq, 0))

    def _gap_looked(self, found, parent) -> None:
        """The look for the gap ended: fetch what the source found we lack, or go live."""
        missing = []
        if found is not None:
            source, info = found
            ours = set(self.window.latest_digests(self.window.capacity))
            missing = [d for d in info.missing if d not in ours]
        if missing and self.parent == parent:
            job = self._new_repair(missing, [source])
            self.gate.gap_checked(self.now, job, missing)
            self._run_repair(job)
        else:
            self._perform(self.gate.gap_checked(self.now))
        self._start_next_flow()

    def _server_gap(self) -> None:
        """The server's first block is held: look for what was missed on the way to it."""
        if self.parent != SERVER or not self.gate.gap_check:
            return
        flow = ("gap", flows.look_for_gap(self.me, self._probe_hello(), None, SERVER,
                                          frozenset(self.relay.members(self.now))),
                lambda found: self._gap_looked(found, SERVER))
        if self.flows.busy:
            self._next_flow = flow
        else:
            self.flows.start(*flow, self.now)

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
                self._repair_progressed()
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
            self._answer_step(link, entry, message)

    def _on_closed(self, event) -> None:
        link = event.link
        entry = self.links.pop(link, None)
        if entry is None:
            return
        kind = entry[0]
        if kind == "parent" and link == self.parent_link:
            parent_was_direct = len(self.path) == 1
            self._orphaned(entry[2], f"parent {entry[2]} lost: {event.reason}")
            if parent_was_direct:
                self.moves.lost_direct_parent(self.now)
        elif kind == "child":
            self.relay.forget(entry[2], self.now)
        elif kind in ("join", "ask"):
            if self._steps.pop(entry[3], None) is not None:
                self.flows.answer(entry[3], None, self.now)
        elif kind == "fetch" and self.repair is not None:
            self.repair.closed(link, self.now)
            self._repair_progressed()

    def _on_metered(self, event) -> None:
        self.relay.uplink.observe(event.link, event.now, event.delivered, event.queued,
                                  event.writing)

    # -- the parent ------------------------------------------------------------------------

    def _from_parent(self, link, addr: Addr, message) -> None:
        if isinstance(message, Block):
            self._deliver(message, link)
        elif isinstance(message, Keepalive):
            pass
        elif isinstance(message, Advice):
            self.backup, self.advice = message.backup, message.advice
        elif isinstance(message, Swap):
            self._on_swap_offer(link, addr, message)
        elif isinstance(message, PathUpdate):
            if self.me in message.path:
                self._orphaned(addr, "loop: this client is in its own new path")
                return
            self.path, self.depth = message.path + (addr,), message.depth + 1
            self.relay.tell_path()
            self.status()
        elif isinstance(message, Drop):
            self._orphaned(addr, f"parent {addr} dropped us: {message.reason}")
        elif isinstance(message, Move):
            seeds = [Candidate(a, i + 1, 1, 0) for i, a in enumerate(message.candidates)]
            self._orphaned(addr, f"parent {addr} is leaving", seeds=seeds,
                           server_first=message.server,
                           insist=message.candidates[-1] if message.candidates else None,
                           moved_by=addr)

    def _orphaned(self, lost: Addr | None, cause: str, seeds=None, server_first=False,
                  insist: Addr | None = None, moved_by: Addr | None = None) -> None:
        self._cancel_repair()
        link, self.parent_link = self.parent_link, None
        was_direct = self.parent == SERVER
        self.parent, self.state = None, "orphaned"
        if link is not None:
            self.close(link)
        if seeds is None:
            seeds = tree.rejoin_seeds(self.path, lost)
        self.status()
        self._find_place(cause, server_first=server_first or was_direct, seeds=seeds,
                         exclude=(lost,) if lost else (), backup=self.backup, insist=insist,
                         moved_by=moved_by)

    def _report_to_parent(self) -> None:
        if self.parent_link is not None:
            self.send(self.parent_link, self.relay.report(self.now))

    # -- blocks ------------------------------------------------------------------------------

    def _deliver(self, block: Block, source) -> None:
        self._perform(self.gate.arrived(block, source, self.now))

    def _perform(self, step: Step) -> None:
        """Store what the gate passed, in order; then the moves each block allows."""
        for passed in step.passes:
            if passed.source == SERVER:
                self.last_server_block = self.now
            self._store_and_relay(passed.block)
        if step.check_gap:
            self._server_gap()
        for passed in step.passes:
            self._just_stored(passed.block.digest)

    def _store_and_relay(self, block: Block) -> None:
        self.out(StoreBlock(block))
        self.window.append(Stored(block, self.now))
        self.relay.relay(block)
        self.counters["blocks_received"] += 1
        search = self.searches[-1] if self.searches else None
        if search is not None and search.took is None:
            search.took = self.now - search.started

    # -- repairs -------------------------------------------------------------------------------

    def _new_repair(self, missing, sources) -> Repairer:
        job = Repairer(self.me, self.channel, missing, sources, self.now, self.config.period,
                       self._fetch_link, self.out, self.close,
                       lambda block, digest: self._repaired(job, block))
        return job

    def _fetch_link(self) -> int:
        link = self.new_link()
        self.links[link] = ["fetch", None, None, None]
        return link

    def _start_repair(self, missing, sources) -> None:
        job = self._new_repair(missing, sources)
        self.gate.start_repair(job)
        self._run_repair(job)

    def _run_repair(self, job: Repairer) -> None:
        self.repair = job
        self._repairs += 1
        job.start(self.now)
        self.out(SetTimer(("repair", self._repairs), self.now + job.tick))
        self._repair_progressed()

    def _repaired(self, job: Repairer, block: Block | None) -> None:
        if block is None:
            self.counters["blocks_lost"] += 1
            return
        step = self.gate.repaired(job, block)
        if step.passes:
            self.counters["blocks_repaired"] += 1
        self._perform(step)

    def _repair_progressed(self) -> None:
        job = self.repair
        if job is not None and job.done:
            self.repair = None
            job.cancel()
            self._perform(self.gate.repair_done(job, self.now))
            self.status()

    def _cancel_repair(self) -> None:
        job = self.gate.unfollow()
        if job is not None:
            job.cancel()
        self.repair = None

    # -- the client's own moves (client.moves) -----------------------------------------------

    def _situation(self) -> Situation:
        return Situation(self.now, self.state == "direct", self.state == "attached", self.depth,
                         self.gate.repair is not None, len(self.window) > 0)

    def _just_stored(self, digest: bytes) -> None:
        if self.flows.busy:
            return  # (the node's controller is busy then, and skips the block's moves)
        move = self.moves.after_block(self._situation(), digest)
        if isinstance(move, OfferSwap):
            self._maybe_swap()
        elif isinstance(move, Climb):
            self._maybe_climb(move.to_server)

    def _maybe_swap(self) -> None:
        """Offer the lightest-sending child this relay's place once it is ahead by a margin."""
        now = self.now
        self.moves.expired_offer(now)
        if self.config.balance_blocks <= 0 or not self.moves.may_offer(self._situation()):
            return
        view = self.relay.view(now)
        latest = self.window.latest(4)
        margin = int(self.config.balance_blocks * sum(len(b.data) for b in latest) / len(latest)
                     * max(1, len(view.children)))
        target = tree.choose_swap(view, margin)
        if target is None:
            return
        was_direct = self.parent == SERVER
        others = tuple(a for a in self.relay.children if a != target)
        offer = Swap(None if was_direct else self.parent, self.path, (self.me, *others),
                     server=was_direct)
        link = self.relay.children[target]
        self.moves.offered(SwapOffer(link, view.children[target]), target, now)
        self.send(link, offer)

    def swap_answered(self, link, accept: bool, now: float) -> None:
        """A child answered our offer: carry the swap out, or forget it."""
        offer = self.moves.offer.token if self.moves.offer is not None else None
        if offer is None or offer.link != link:
            return
        verdict = self.moves.answered(offer, accept, now, self.parent == SERVER,
                                      self.last_server_block)
        if verdict == "carry":
            self._swap_with(offer)

    def _swap_with(self, offer: SwapOffer) -> None:
        """The child that accepted takes our place and our other children; we go below it."""
        link = offer.link
        target = self.links[link][2] if link in self.links else offer.view.addr
        view = self.relay.views.get(target, offer.view)
        self.relay.expect((*view.children, target), self.now)
        was_direct, parent_link, path = self.parent == SERVER, self.parent_link, self.path
        self.parent = self.parent_link = None
        self.gate.unfollow()
        self.state = "orphaned"
        self.counters["swaps"] += 1
        if was_direct:
            self._leave_server()
        elif parent_link is not None:
            self.send(parent_link, Bye(successor=target))
            self.close(parent_link)
        self.close(link)
        self.relay.forget(target, self.now)
        self.relay.hand_over(Move((target,)), self.now)
        self.status()
        self._find_place(f"balance: swapped places with {target}", server_first=False,
                         seeds=[Candidate(target, len(path) + 1, 1, 0)], insist=target)

    def _on_swap_offer(self, link, addr: Addr, offer: Swap) -> None:
        """Our parent offers us its place: take it if nothing else is under way here."""
        accept = self.moves.may_accept(self._situation()) and not self.flows.busy
        if accept:
            self.relay.expect(offer.expected, self.now)
            self.path, self.depth = offer.path, len(offer.path) + 1
        self.send(link, SwapAnswer(accept))
        if not accept:
            return
        self._cancel_repair()
        self.parent_link = self.parent = None
        self.state = "orphaned"
        self.close(link)
        self.relay.hand_over(Move((addr,)), self.now)
        self.status()
        seeds = [Candidate(offer.parent, len(offer.path), 1, 0)] if offer.parent else []
        wrap = (lambda search: flows.take_server_slot(self.config.period, search)) \
            if offer.server else None
        self._find_place(f"balance: taking the place of {addr}", server_first=offer.server,
                         seeds=seeds, exclude=(addr,), insist=offer.parent, wrap=wrap)

    def _maybe_climb(self, to_server: bool) -> None:
        """Move up a level when a shallower place is free (or take a dead parent's slot)."""
        if not self.moves.may_climb(self._situation()):
            return
        now, depth, old = self.now, self.depth, self.parent_link
        server = depth == 2 or to_server
        if server and self.relay.relays_nobody(now):
            return  # a server slot is for a client that can relay
        members = self.relay.members(now)
        flow = flows.climb_to_server() if server else flows.climb(self.me, depth, members,
                                                                  self.parent)
        self.flows.start("climb", flow, lambda result: self._climbed(result, old), now)

    def _climbed(self, result, old) -> None:
        if isinstance(result, placement.Placed):
            self.counters["climbs"] += 1
            if old is not None and old != self.parent_link:
                self.send(old, Bye())
                self.close(old)
            self.status()
        self._start_next_flow()

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
}
