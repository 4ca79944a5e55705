"""A relay client: joins a channel, stores its blocks, relays them to its children.

Threads, each with one job and a way to end:

* push listener: the server's connections to the push port (join answers, blocks),
  from the server's address only (:mod:`client.strangers` bounds what strangers get);
* peer listener: other clients' connections (join, probe), one handler each,
  which becomes the child's reader when the join is accepted;
* controller: every decision that takes time (joining, rejoining, leaving),
  driven by a queue of :mod:`client.inputs` and a tick;
* one reader for the parent link, one sender per child link;
* during a repair, a driver and one fetcher per source (:mod:`client.fetcher`).

The decisions are pure machines the node drives: the search for a place
(:mod:`client.placement`), the order and numbering of stored blocks
(:mod:`client.delivery`), the client's own moves (:mod:`client.moves`), the
join answers and the tree's shape (:mod:`client.tree`), the repair plan
(:mod:`client.repair`) and who may send what on each link
(:mod:`client.roles`). Carrying them out is :mod:`client.joining`'s (join,
rejoin, leave) and :mod:`client.upkeep`'s (backup parents, swaps, climbs),
mixins of :class:`Node` run by the controller. State is owned by the node
and guarded by one lock; blocks pass through the gate under a second lock
so that storing and relaying happen in one order for everyone.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time

from client import capacity, channels, crosswire, events, inputs, places, roles, strangers, tree, verify
from client.eventlog import EventLog
from client.fetcher import RepairJob
from client.forwarding import Forward, Forwarder
from client.joining import Joining
from client.library import serve_fetch
from client.links import (ChildLink, KernelCount, ParentLink, StockServer, addresses_of,
                          listen_on, read_message, read_message_by, send_checked,
                          send_progressing)
from client.model import Config, Counters, Rejoin, State
from client.peerproto import (HEADER, MAX_BLOCK, MAX_CONTROL, MAX_PART, MAX_WANT, Accept, Addr,
                              Advice, Block, BlockAbort, BlockEnd, BlockPart, BlockStart, Bye,
                              Candidate, Drop, FrameDecoder, Hello, Info,
                              Keepalive, LibraryFetch, Move, PathUpdate, PeerProtocolError,
                              Redirect, Reject, Report, Swap, SwapAnswer, TreeAnswer, TreeQuery,
                              VersionMismatch, Vouch, VouchAnswer, DigestQuery, encode)
from client.delivery import SERVER, Gate, Step
from client.repair import RepairPlan, fetch_answer
from client.behind import PlayerWatch
from client.store import BlockStore, write_json_atomically
from client.window import RecentWindow, Stored
from client.supervise import checkpoint, supervised
from client.treeview import SubtreeLedger
from client.moves import Climb, Moves, OfferSwap, Shedding, Situation
from client.upkeep import Upkeep
from server import protocol as stock

__all__ = ["Node", "Config", "State", "SERVER"]

log = logging.getLogger(__name__)

PUSH_BACKLOG = 2
PEER_BACKLOG = 16
#: Seconds a push connection (a join answer, a block) has for all its bytes.
PUSH_DEADLINE = 30.0


class Node(Joining, Upkeep):
    """One relay client in one channel."""

    def __init__(self, config: Config):
        self.config = config
        self.me = Addr(config.ip, config.peer_port)
        self.store = BlockStore(config.store, config.store_limit, quiet_limit=not config.player)
        self.player_watch = PlayerWatch(config.store)
        self.events = EventLog(lambda: self.config.store / events.FILE)  # (client.events)
        self.window = RecentWindow(int(config.window_seconds / config.period) + 1)
        self.server = StockServer(config.server_host, config.server_port, config.ip)
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._inputs: queue.Queue = queue.Queue()  # client.inputs, for the controller
        self._join_answers: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handlers: set[threading.Thread] = set()
        # Each port its own bounded pool: no stranger on one can cost the other (client.strangers).
        self._push_gate = strangers.Gate("push", strangers.MAX_PUSH_HANDLERS)
        self._peer_gate = strangers.Gate("peer", strangers.MAX_PEER_HANDLERS,
                                         strangers.MAX_HANDSHAKES_PER_ADDRESS)
        self._blame = strangers.BlameLog(log)
        self._server_ips = addresses_of(config.server_host)
        # Authenticated blocks: only what the server's signed feed names is stored (client.verify).
        fetch = verify.http_fetcher(config.ip, config.server_host, config.feed_port)
        self.verifier = verify.Verifier(fetch, config.server_key, config.store / "server-key.pinned",
                                        enabled=config.verify, refetch=config.period / 4)
        # Without a feed (the stock server): direct clients vouch for blocks (client.crosscheck).
        self.crosscheck = crosswire.CrossChecker(
            self.me, config.period, config.window_seconds,
            lambda: self._server_call(self.server.clients, self.config.channel),
            enabled=config.verify and config.crosscheck)
        self._distrusted: dict[Addr, float] = {}  # relays caught lying: not chosen until then
        # What the uplink delivers, told by the child links' senders (client.capacity).
        self.uplink = capacity.Uplink(stale_after=UPLINK_STALE_PERIODS * config.period)
        self._uplink_lock = threading.Lock()
        self.shedding = Shedding(config.period)   # a short uplink's moves (monotonic)

        self.state = State.JOINING
        self.parent: str | Addr | None = None
        self.parent_link: ParentLink | None = None
        self.path: tuple[Addr, ...] = ()
        self.depth = 0
        self.children: dict[Addr, ChildLink] = {}
        self.child_views: dict[Addr, tree.ChildView] = {}
        self.counters = Counters()
        self.rejoins: list[Rejoin] = []
        self._pending_rejoin: Rejoin | None = None
        # Which block is stored next, and its number (client.delivery); its
        # calls are made under the deliver lock, in arrival order.
        self.gate = Gate(config.period, self.window.capacity)
        # The block being forwarded in parts, to whom (client.forwarding; under the deliver lock).
        self.forwarder = Forwarder(lambda child, frame: child.enqueue(frame))
        # The beginning of the block our lost parent was sending (under the deliver lock):
        # a rejoin fetches the rest of it only (client.fetcher).
        self._cut_short: bytes = b""
        self._server_member = False
        self._former_path: tuple[Addr, ...] = ()      # the path before becoming direct
        self._sent_before: dict[str, int] = {}
        self._backup: Candidate | None = None           # where I go if my parent dies
        self._advice: Candidate | None = None           # my children's backup if I die
        self._advice_sent: dict[Addr, Advice] = {}
        self._expected: dict[Addr, float] = {}          # swap partners, until a deadline
        # When to swap, climb or watch for a slot, and the swap offer pending (client.moves).
        self.moves = Moves(config.period, config.settle_time, config.swap_cooldown,
                           time.monotonic())
        self._last_server_block = time.monotonic()
        self._push_sock: socket.socket | None = None
        self._peer_sock: socket.socket | None = None
        self.subtree = SubtreeLedger(config.period)     # the web view's tree (client.treeview)
        #: Called as ``watch("block", Stored)`` after each stored block and
        #: ``watch("status", None)`` after each change of status; must not block.
        self.watchers: list = []
        self.library = None  # a client.library.Library when this client offers films
        self._wanted_channel: int | None = config.channel  # what the user asked for; None: idle
        self._channel_problem: str | None = None  # set by a search the server's channels end
        self.problem: str | None = None  # why the client is idle, for the user
        self.failure: str | None = None  # why a core thread failed
        self.server_reachable = True
        self.server_failures = 0  # server requests that failed in a row (connection refused...)
        self.failed = threading.Event()
        #: Called (from the failed thread) when a core thread fails: the program stops.
        self.on_failure = None
        #: Called with the new folder when a channel switch moves the store (``store_of_channel``).
        self.on_store_moved = None
        self.recorder = None  # a client.record.Recorder with --record

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Listen on both ports (before asking anyone anything), then join."""
        # A short queue on the push port: when this process is frozen (SIGSTOP) the
        # kernel would otherwise accept the server's block connections for it, the
        # server's sends would succeed, and a dead client would hold a server slot
        # until 64 blocks had piled up. With a queue of 2 the server's third send
        # fails, and its two-failures rule frees the slot within a few periods.
        self._push_sock = listen_on(self.config.ip, self.config.push_port, PUSH_BACKLOG)
        try:
            self._peer_sock = listen_on(self.config.ip, self.config.peer_port, PEER_BACKLOG)
        except OSError:
            self._push_sock.close()
            raise
        for target, name in ((self._accept_loop_push, "push-listener"),
                             (self._accept_loop_peer, "peer-listener"),
                             (self._control_loop, "controller")):
            thread = threading.Thread(target=supervised(target, name, self._core_failed), name=name)
            thread.start()
            self._threads.append(thread)
        self._write_status()

    def stop(self) -> None:
        """Leave gracefully (server, parent, children told), then end every thread."""
        if self._stopping.is_set():
            return
        self._inputs.put(inputs.Leave(time.monotonic()))
        for thread in self._threads:
            if thread.name == "controller":
                thread.join(timeout=10)
        if self.failed.is_set() and self.state == State.FAILED:
            self._leave_after_failure()  # the controller is gone: it could not leave
        self._stopping.set()
        for sock in (self._push_sock, self._peer_sock):
            if sock is not None:
                _close_listener(sock)
        for thread in self._threads:
            thread.join(timeout=5)
        for handler in list(self._handlers):
            handler.join(timeout=5)
        stuck = [t.name for t in (*self._threads, *list(self._handlers)) if t.is_alive()]
        if stuck:  # a wait without a deadline somewhere: a bug to find, said at least
            log.error("threads still running after the stop: %s", ", ".join(stuck))
        self.state = State.FAILED if self.failed.is_set() else State.STOPPED
        self._write_status()

    def _core_failed(self, name: str, exc: BaseException) -> None:
        """A core thread died (its traceback is logged): stop the client with an error."""
        with self._lock:
            self.state = State.FAILED
            self.failure = f"internal error in the {name} thread: {exc!r}"
        self._write_status()
        self.failed.set()
        if self.on_failure is not None:
            self.on_failure()

    def _leave_after_failure(self) -> None:
        """Tell the server, the parent and the children, though the controller is gone."""
        try:
            self._leave()
        except Exception:
            log.exception("could not leave the channel cleanly")

    @property
    def wanted_channel(self) -> int | None:
        """The channel the user asked for last (None after ``leave``)."""
        with self._lock:
            return self._wanted_channel

    def switch_channel(self, channel: int) -> bool:
        """Leave the current channel (children handed over) and join ``channel``.

        False when ``channel`` is already the one asked for: nothing to do.
        """
        with self._lock:
            if self._wanted_channel == channel:
                return False
            self._wanted_channel = channel
        self._inputs.put(inputs.SwitchChannel(time.monotonic(), channel))
        return True

    def leave_channel(self) -> bool:
        """Leave the channel but keep running; ``switch_channel`` joins again.

        False when the client has already left (or is leaving).
        """
        with self._lock:
            if self._wanted_channel is None:
                return False
            self._wanted_channel = None
        self._inputs.put(inputs.GoIdle(time.monotonic()))
        return True

    def check_channel(self, channel: int) -> str | None:
        """Why ``channel`` cannot be joined now, for the user; None when the server has it."""
        return channels.why_not_join(self.server, channel)

    def server_channels(self) -> int | None:
        """How many channels the server has (0 to N-1); None when it cannot be asked now."""
        return channels.channel_count(self.server)

    def _move_store(self, channel: int) -> None:
        """With the default store, a new channel's blocks go to its own ``channel<N>`` folder."""
        if self.config.store_of_channel is None:
            return  # --store named one folder for every channel
        folder = self.config.store_of_channel(channel)
        if folder == self.config.store:
            return
        with self._deliver_lock, self._lock:
            self.store = BlockStore(folder)
            self.config.store = folder
        log.info("blocks of channel %d go to %s", channel, folder)
        if self.on_store_moved is not None:
            self.on_store_moved(folder)

    # -- the server's pushes -----------------------------------------------

    def _accept_loop_push(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, (peer_ip, _) = self._push_sock.accept()
            except OSError:
                break
            if not strangers.push_allowed(self._server_ips, peer_ip):
                self._blame.report(strangers.VIOLATION, peer_ip,
                                   "pushes come from the channel server "
                                   f"({self.config.server_host}) only: connection ignored")
                _abort(conn)
                continue
            self._spawn_handler(self._handle_push, conn, peer_ip, self._push_gate)

    def _handle_push(self, conn: socket.socket, peer_ip: str, ticket: strangers.Ticket) -> None:
        """Read one push to its end; a block's bytes go on to the children as they come.

        The first bytes tell a block (the EBML magic) from a join answer; from
        then on each piece read is forwarded at once (:meth:`_begin_relay`),
        and the block is delivered when the server closes.
        """
        data = bytearray()
        relay, began = None, None
        deadline = time.monotonic() + PUSH_DEADLINE
        try:
            while len(data) <= MAX_BLOCK:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout(f"the push did not end within {PUSH_DEADLINE:.0f} s")
                conn.settimeout(min(5.0, remaining))
                chunk = conn.recv(MAX_PART)
                if not chunk:
                    break
                data += chunk
                if began is None and len(data) >= len(stock.EBML_MAGIC):
                    if not data.startswith(stock.EBML_MAGIC):
                        began = 0.0  # not a block: read on, nothing to forward
                        continue
                    began = time.time()
                    relay = self._begin_relay(SERVER, 0, began)
                    chunk = bytes(data)
                if relay is not None:
                    self._relay_part(relay, chunk)
        except OSError as exc:
            self._abort_relay_now(relay, "the server's push was cut short")
            self._discarded(began is not None and began > 0)
            log.warning("push connection from %s failed after %d bytes: %s", peer_ip, len(data), exc)
            return
        if len(data) > MAX_BLOCK:
            self._abort_relay_now(relay, "the server's push is too large")
            self._blame.report(strangers.LIMIT, peer_ip, "a push larger than "
                               f"{MAX_BLOCK >> 20} MiB, the largest block relaytv stores and "
                               "relays: refused")
            self._write_status()
        elif bytes(data) in (stock.JOINED, stock.FULL):
            self._join_answers.put(bytes(data))
        elif data.startswith(stock.EBML_MAGIC):
            block = Block.of(0, bytes(data))
            self.crosscheck.witnessed(self.config.channel, block.digest)  # what we vouch for
            self.deliver(block, SERVER, relay, began)
        else:
            log.warning("push from %s is neither a join answer nor a Matroska block "
                        "(%d bytes): ignored", peer_ip, len(data))

    # -- blocks ------------------------------------------------------------

    def deliver(self, block: Block, source, relay: Forward | None = None,
                wall: float | None = None) -> None:
        """Store a block from the current parent (or the server) and relay it to every child.

        The gate (:mod:`client.delivery`) ignores blocks from anyone else (a
        stale link, or the server still pushing to a client that moved into
        the tree), holds live blocks while a repair runs so that storage stays
        in play order, and numbers the server's. A block from a parent is
        stored only if the server's feed names it. ``relay``: the forward of
        its parts begun as it came (ended here with the block, or aborted);
        ``wall``: when it began to come (a push's start, the server's send).
        """
        with self._deliver_lock:
            if source != SERVER and source == self.gate.source and not self._authentic(
                    block.digest, source.addr):
                self._abort_relay(relay, "forged: the server does not vouch for it")
                self._inputs.put(inputs.ParentForged(time.monotonic(), source))
                return
            wall = time.time() if wall is None else wall
            stored = self._perform(self.gate.arrived(block, source, wall), relay)
        if stored:
            self._write_status()

    def _perform(self, step: Step, relay: Forward | None = None) -> bool:
        """(Under the deliver lock.) Store what the gate passed, in order; True if any.

        ``relay``: the forward in parts of the block that just came; it ends with
        that block if the gate passed it under the number it began with, and is
        aborted otherwise (held, skipped, ignored: the children get it whole, if
        and when it is stored).
        """
        for passed in step.passes:
            if passed.source == SERVER:
                self._last_server_block = time.monotonic()
            self._store_and_relay(passed.block, relay)
        self._abort_relay(relay, "not stored now")  # (nothing left to do when it ended)
        if step.check_gap:
            self._inputs.put(inputs.ServerBlockHeld(time.monotonic()))  # client.joining
        return bool(step.passes)

    # -- cut-through: a block's parts go on before all of it is in ------------------

    def _begin_relay(self, source, seq: int, wall: float) -> Forward | None:
        """A block from ``source`` begins to come: forward its parts to every child now?

        Only when the gate would store it live as it stands
        (:meth:`client.delivery.Gate.streams`) and no other block is being
        forwarded (pushes may overlap); otherwise the children get it whole,
        when it is stored. A forward left by a link we have left is aborted;
        one kept for its rest (its sender lost in its middle) only when a live
        block is forwarded instead.
        """
        with self._deliver_lock:
            current = self.forwarder.current
            if current is not None and current.source != self.gate.source and not current.cut_short:
                self._abort_relay(current, "its sender is no longer followed")
            number = self.gate.streams(source, seq, wall)
            if number is None:
                return None
            if current is not None and current.cut_short:   # a live block goes on first
                self._abort_relay(current, "its rest did not come")
            if self.forwarder.current is not None:
                return None
            with self._lock:
                children = list(self.children.values())
            return self.forwarder.begin(source, number, children)

    def _relay_part(self, relay: Forward | None, data: bytes) -> None:
        """More bytes of the block ``relay`` forwards: queued to its children at once."""
        with self._deliver_lock:
            self._aborted(self.forwarder.part(relay, data), "too large")

    def _join_relay(self, child: ChildLink, after: bytes | None) -> None:
        """(Under the deliver lock.) A child taken while a block is being forwarded in parts
        gets what came of it so far and the rest as it comes, if that block is its next.

        Otherwise it would get that block whole at its end, a block's transfer
        later (measured: an orphan placed 1.06 s after a freeze, in the middle
        of its new parent's block, had it at 3.03 s, 1.13 s after its parent).
        """
        latest = self.window.latest(1)
        if after is not None and latest and latest[0].digest == after:
            self.forwarder.join(child)

    def _abort_relay(self, relay: Forward | None, reason: str) -> None:
        """(Under the deliver lock.) The block ``relay`` forwards will not be stored (now):
        its children discard it."""
        self._aborted(self.forwarder.abort(relay, reason), reason)

    def _abort_relay_now(self, relay: Forward | None, reason: str) -> None:
        with self._deliver_lock:
            self._abort_relay(relay, reason)

    @staticmethod
    def _aborted(forward: Forward | None, reason: str) -> None:
        if forward is not None:
            log.info("block %d forwarded in parts is aborted: %s", forward.seq, reason)

    def _discarded(self, begun: bool = True) -> None:
        """A block begun (in parts, or a push) was dropped before it was whole."""
        if begun:
            with self._lock:
                self.counters.blocks_discarded += 1

    def _authentic(self, digest: bytes, sender: Addr) -> bool:
        """May a block from ``sender`` be stored? A forged one gets the sender distrusted."""
        verdict = self.verifier.check(self.config.channel, digest)
        if verdict is verify.Verdict.STOCK:   # no feed: ask a direct client (client.crosscheck)
            with self._lock:
                path = self.path
            verdict = self.crosscheck.check(self.config.channel, digest, sender, path)
        if verdict is verify.Verdict.FORGED:
            self._distrust(sender, f"sent block {digest.hex()[:8]}, which the server's feed "
                           "(or, without one, a direct client) refutes: discarded")
        return verdict in (verify.Verdict.GENUINE, verify.Verdict.STOCK)

    def _distrust(self, addr: Addr, why: str) -> None:
        """Blame ``addr`` for a lie and choose it as a parent no more for a while."""
        self._blame.report(strangers.LIE, str(addr), why)
        with self._lock:
            self._distrusted[addr] = time.monotonic() + max(DISTRUST_PERIODS * self.config.period, 30.0)

    def _is_distrusted(self, addr: Addr) -> bool:
        with self._lock:
            return self._distrusted.get(addr, 0.0) > time.monotonic()

    def _store_and_relay(self, block: Block, relay: Forward | None = None) -> None:
        """(Under the deliver lock.) The one place a block is stored and passed on.

        The children that got its parts (``relay``, when it forwarded this very
        block under this number) get its end; the others get all of it, in
        parts, which they forward as they come. Any
        other forward still open is aborted first: frames of two blocks never
        interleave. The children's frames are queued before the disk write.
        """
        with self._lock:
            children = list(self.children.values())
        self._aborted(self.forwarder.stored(block, relay, children), "another block is stored first")
        stored_at = time.time()
        self.window.append(Stored(block, stored_at))
        self.store.write(block.data, block.seq)  # a refusal (full disk) is said once; relay goes on
        if self.recorder is not None:
            self.recorder.keep(self.config.channel, block.data)  # --record (client/record.py)
        for watch in self.watchers:
            watch("block", Stored(block, stored_at))
        # Only now: moves made then must follow the relay.
        self._inputs.put(inputs.BlockStored(time.monotonic(), block.digest))
        with self._lock:
            self.counters.blocks_received += 1
            self.counters.bytes_received += len(block.data)
            self.counters.last_block_at = stored_at
            self.counters.blocks_relayed += len(children)
            if self._pending_rejoin is not None:
                self._pending_rejoin.took = time.monotonic() - self._pending_rejoin.started
                log.info("receiving again %.3f s after %s", self._pending_rejoin.took,
                         self._pending_rejoin.cause)
                self._pending_rejoin = None
        log.debug("stored block seq=%d %s (%d bytes)", block.seq, block.digest.hex()[:8], len(block.data))

    # -- repairs -------------------------------------------------------------

    def _repair_job(self, missing: list[bytes], sources: list[Addr],
                    rejoin: Rejoin | None, held: bytes = b"") -> RepairJob:
        """A job fetching ``missing`` from several sources (started once the gate holds live
        blocks); ``held``: the beginning of the first, which is fetched from there on."""
        plan = RepairPlan(missing, sources, time.monotonic(), stall_after=max(self.config.period, 1.0))
        job = RepairJob(plan, self.me, self.config.channel,
                        lambda digest, block: self._repaired_block(job, digest, block),
                        self._repair_done, deadline=max(4 * self.config.period, 5.0),
                        check=self._authentic, emit=self.events.emit, held=held)
        if rejoin is not None:
            rejoin.missed = len(missing)
        log.info("repairing %d missed block(s) from %s", len(missing),
                 ", ".join(str(s) for s in sources[:3]))
        self.events.emit("repair_started", missing=len(missing), sources=sources, held=len(held))
        return job

    def _repaired_block(self, job: RepairJob, digest: bytes, block: Block | None) -> None:
        if block is None:
            log.warning("block %s could not be repaired from any source: lost", digest.hex()[:8])
            with self._lock:
                self.counters.blocks_lost += 1
            return
        with self._deliver_lock:
            if self._perform(self.gate.repaired(job, block)):
                with self._lock:
                    self.counters.blocks_repaired += 1

    def _repair_done(self, job: RepairJob) -> None:
        """Store the live blocks that waited, in order, and go back to live delivery."""
        with self._deliver_lock:
            if self.gate.repair is not job:
                return
            self._perform(self.gate.repair_done(job, time.time()))
        with self._lock:
            self.counters.blocks_finished += job.finished
        log.info("repair done: %d block(s) from %s, %d lost", sum(job.fetched_from.values()),
                 job.fetched_from or "nobody", job.plan.lost)
        self.events.emit("repair_done", by_source=job.fetched_from,
                         repaired=sum(job.fetched_from.values()), lost=job.plan.lost)
        self._write_status()

    def _cancel_repair(self) -> None:
        """No live source any more: drop what was held, end the repair that ran."""
        with self._deliver_lock, self._lock:
            job = self.gate.unfollow()
        if job is not None:
            job.cancel()
            job.join()

    def _serve_fetch(self, conn: socket.socket, hello: Hello) -> None:
        """Send the wanted blocks we still hold, in the order asked, then what we lacked."""
        with self._deliver_lock:
            held = self.window.find(hello.want)
        *blocks, end = fetch_answer(hello, held)
        for block in blocks:
            if not self._send_paced(conn, encode(block)):
                return
        conn.sendall(encode(end))
        log.info("served %d of %d wanted block(s) to %s", len(blocks), len(hello.want), hello.addr)

    def _send_paced(self, conn: socket.socket, frame: bytes) -> bool:
        """Send a repair frame, in small pieces at ``--repair-rate`` when it is set.

        Small pieces keep bytes flowing, so that the fetching client sees a
        slow source, not a stalled one. A send fails only when no byte
        leaves for ``link_stall`` (:func:`client.links.send_progressing`):
        a bound on the whole send cut repairs that a busy uplink served
        slowly but surely (measured: three 1 MB blocks from a direct client
        with two children on 16 Mbit/s, cut after 3 s in the middle of a
        frame, and lost for the fetcher's whole subtree). False when the
        node is stopping.
        """
        rate = self.config.repair_rate * 1000
        step = len(frame) if not rate else max(1024, int(rate / 20))
        for start in range(0, len(frame), step):
            piece = frame[start:start + step]
            send_progressing(conn, piece, stall=self.config.link_stall)
            with self._lock:
                self.counters.bytes_served += len(piece)
            if rate and self._stopping.wait(len(piece) / rate):
                return False
        return True

    # -- other clients' connections ------------------------------------------

    def _accept_loop_peer(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, (peer_ip, _) = self._peer_sock.accept()
            except OSError:
                break
            self._spawn_handler(self._handle_peer, conn, peer_ip, self._peer_gate)

    def _spawn_handler(self, target, conn: socket.socket, peer_ip: str,
                       gate: strangers.Gate) -> None:
        ticket = gate.admit(peer_ip)
        if isinstance(ticket, str):
            self._blame.report(strangers.LIMIT, peer_ip, f"{ticket}: connection refused")
            _abort(conn)
            return

        def run():
            try:
                target(conn, peer_ip, ticket)
            except Exception:
                log.exception("handler for %s failed", peer_ip)
            finally:
                conn.close()
                ticket.close()
                self._handlers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"handler-{gate.name}-{peer_ip}")
        self._handlers.add(thread)
        thread.start()

    def _handle_peer(self, conn: socket.socket, peer_ip: str, ticket: strangers.Ticket) -> None:
        # A stranger sends control frames only: no block is ever buffered for it.
        decoder = FrameDecoder(max_frame=MAX_CONTROL)
        deadline = time.monotonic() + strangers.HANDSHAKE_DEADLINE
        talk = roles.Conversation(roles.PEER)  # what it may send first (client.roles)
        try:
            hello = read_message_by(conn, decoder, deadline, chunk=HEADER.size + MAX_CONTROL)
            talk.received(hello)
            talk.answering(hello)
            if isinstance(hello, TreeQuery):
                send_checked(conn, talk, TreeAnswer(tuple(self.subtree.subtree(self.snapshot()))))
                return
            if isinstance(hello, Vouch):  # a joiner checks the place it is offered (client.places)
                with self._lock:
                    yes = hello.channel == self.config.channel and hello.child in self.children
                send_checked(conn, talk, VouchAnswer(yes))
                return
        except socket.timeout:
            self._blame.report(strangers.LIMIT, peer_ip, "no Hello within "
                               f"{strangers.HANDSHAKE_DEADLINE:.0f} s: connection cut")
            return
        except VersionMismatch as exc:
            # Said, not just closed: the peer can tell its user why (client.roles).
            self._blame.report(strangers.VIOLATION, peer_ip, f"{exc}: refused")
            try:
                conn.sendall(encode(roles.version_refusal(exc.theirs)))
            except OSError:
                pass
            return
        except PeerProtocolError as exc:
            self._blame.report(strangers.VIOLATION, peer_ip, f"{exc}: connection closed")
            return
        except (EOFError, OSError) as exc:
            self._blame.report(strangers.VIOLATION, peer_ip, f"no Hello ({exc})")
            return
        finally:
            ticket.handshake_done()
        if isinstance(hello, DigestQuery):   # after the handshake: it may wait for a block
            self.crosscheck.serve(conn, talk, hello)
            return
        if hello.addr.ip != peer_ip:
            self._blame.report(strangers.LIE, peer_ip, f"{type(hello).__name__} claims "
                               f"{hello.addr.ip}: connection closed")
            return
        conn.settimeout(3.0)
        if isinstance(hello, LibraryFetch):
            serve_fetch(conn, hello, self.library, self._send_paced)  # the film library
        elif hello.kind == "probe":
            send_checked(conn, talk, self._info(hello))
        elif hello.kind == "join":
            self._handle_join(conn, decoder, hello, ticket, talk)
        else:
            self._serve_fetch(conn, hello)

    def _expect(self, addrs) -> None:
        """Keep a slot for each of ``addrs`` (swap partners) for a few periods."""
        with self._lock:
            now = time.monotonic()
            deadline = now + 2 * self.config.link_stall
            self._expected = {a: t for a, t in self._expected.items() if t > now}
            self._expected.update((a, deadline) for a in addrs)

    def _situation(self) -> Situation:
        """(Under the lock.) The node as :mod:`client.moves` sees it, now."""
        return Situation(time.monotonic(), self.state == State.DIRECT,
                         self.state == State.ATTACHED, self.depth,
                         self.gate.repair is not None, len(self.window) > 0)

    def _relay_view(self) -> tree.RelayView:
        with self._lock:
            return tree.RelayView(
                me=self.me, channel=self.config.channel, max_children=self.config.max_children,
                attached=self.state in (State.DIRECT, State.ATTACHED), depth=max(self.depth, 1),
                path=self.path, sent=self.counters.bytes_sent,
                children=places.advertised(self.child_views, self.moves.declines),
                expected=frozenset(a for a, t in self._expected.items() if t > time.monotonic()),
                places=self._places())

    # -- the uplink's capacity (client.capacity) ----------------------------------

    def _metered(self, link: ChildLink, now: float, written: int, queued: int,
                 writing: bool, count: KernelCount | None) -> None:
        """(A child link's sender thread.) What it wrote, what is not acknowledged yet, and
        the kernel's count of its sending."""
        busy, bandwidth = (count.busy, count.bandwidth) if count is not None else (None, None)
        with self._uplink_lock:
            self.uplink.observe(link, now, written - queued, queued, writing, busy, bandwidth)

    def _drain_rate(self, link: ChildLink) -> float | None:
        with self._uplink_lock:
            return self.uplink.rate_of(link)

    def _stream_rate(self) -> float | None:
        """(Under the lock.) Bytes/s of the stream, from the latest blocks received."""
        return capacity.stream_rate((len(b.data) for b in self.window.latest(STREAM_BLOCKS)),
                                    self.config.period)

    def _uplink_now(self) -> tuple[float | None, float | None]:
        """(Under the lock.) The uplink's estimate and the stream's rate, bytes/s; an old
        estimate that feeds nobody is forgotten while joiners are turned away
        (:func:`client.capacity.retry_due`)."""
        now = time.monotonic()
        stream = self._stream_rate()
        with self._uplink_lock:
            estimate, age = self.uplink.estimate(now), self.uplink.age(now)
            if capacity.retry_due(self.config.max_children, estimate, stream, age,
                                  self.shedding.jammed(now), self.config.period):
                self.uplink.forget_estimate()
                estimate = None
        return estimate, stream

    def _uplink_hopeless(self) -> bool:
        """(Under the lock.) The uplink cannot carry one stream (:func:`client.capacity.cannot_carry`)."""
        estimate, stream = self._uplink_now()
        with self._uplink_lock:
            busy = self.uplink.busy(time.monotonic())
        return capacity.cannot_carry(estimate, busy, stream, self.config.period)

    def _places(self) -> int:
        """(Under the lock.) How many children the measured uplink can feed, at most K."""
        return capacity.places(self.config.max_children, *self._uplink_now())

    def _can_take(self) -> int:
        """(Under the lock.) The ``max_children`` this client reports: K until measured."""
        return capacity.can_take(self.config.max_children, *self._uplink_now(), self.uplink.retried)

    def _uplink_status(self) -> dict:
        estimate, stream = self._uplink_now()
        return {"estimate_bps": _bits(estimate), "stream_bps": _bits(stream),
                "places": capacity.places(self.config.max_children, estimate, stream),
                "children_moved": self.counters.children_moved}

    def _info(self, probe: Hello) -> Info:
        view = self._relay_view()
        after, missed = None, []
        if probe.have and probe.channel == self.config.channel:
            with self._deliver_lock:
                after, missed = self.window.after(probe.have, probe.have_seq)
        return Info(view.attached, view.depth, view.free, view.sent, tree.free_places(view),
                    after, tuple(b.digest for b in missed[-MAX_WANT:]))

    def _handle_join(self, conn: socket.socket, decoder: FrameDecoder, hello: Hello,
                     ticket: strangers.Ticket, talk: roles.Conversation) -> None:
        with self._deliver_lock, self._lock:
            clash = strangers.identity_clash(self.children, hello.addr)
            if clash is not None:
                decision = tree.RejectJoin(f"{clash} is already a child here: one client "
                                           "per address")
            else:
                self._free_silent_child(hello)
                decision = tree.decide_join(self._relay_view(), hello)
            if isinstance(decision, tree.DisplaceJoin):
                decision = self._displace(decision.leaf, hello.addr)
            if isinstance(decision, tree.AcceptJoin):
                child = self._adopt(conn, hello, talk)
        if isinstance(decision, tree.RedirectJoin):
            log.info("redirecting %s to %s", hello.addr, ", ".join(str(c.addr) for c in decision.candidates))
            send_checked(conn, talk, Redirect(decision.candidates))
            return
        if isinstance(decision, tree.RejectJoin):
            if clash is not None:
                self._blame.report(strangers.LIMIT, hello.addr.ip, f"a second identity "
                                   f"{hello.addr}: {decision.reason}")
            else:
                log.info("refusing %s: %s", hello.addr, decision.reason)
                with self._lock:
                    self.shedding.turned_away(time.monotonic())
            send_checked(conn, talk, Reject(decision.reason))
            return
        ticket.give_back_slot()     # children are bounded by max_children, not by the pool
        child.start()
        self._read_child(conn, decoder, child)

    def _free_silent_child(self, hello: Hello) -> None:
        """(Under both locks.) The joiner's parent, our child, went silent: free its place.

        Both ends must have found it silent: the joiner heard no byte from it
        for its parent silence (about a second: its senders stopped), and we
        none for :data:`CLAIM_SILENCE` (its keepalives up stopped). A frozen
        or unplugged relay is then gone, and its place goes to its orphan at
        once, not after the seconds a relay takes to give up on a child link
        on its own (:attr:`client.model.Config.link_stall`); a joiner cannot
        free a child that still speaks.
        """
        link = self.children.get(hello.lost) if hello.lost is not None else None
        if link is None or hello.lost == hello.addr:
            return
        quiet = time.monotonic() - link.heard_at
        if quiet < CLAIM_SILENCE:
            log.info("%s says our child %s is silent; we heard it %.2f s ago: kept",
                     hello.addr, hello.lost, quiet)
            return
        self.counters.silent_children_freed += 1
        link.cut(f"silent for {quiet:.2f} s, and for its child {hello.addr}")
        self._forget_child(link, f"silent for {quiet:.2f} s: its place goes to its child {hello.addr}")

    def _adopt(self, conn: socket.socket, hello: Hello, talk: roles.Conversation) -> ChildLink:
        """Take a child (under both locks): queue the acceptance and what it missed."""
        old = self.children.pop(hello.addr, None)
        if old is not None:
            old.drop("replaced by a new connection from the same client")
        after, missed = self.window.after(hello.have, hello.have_seq)
        if after is None and not hello.have and hello.catch_up:
            missed = self.window.latest(hello.catch_up)
        child = ChildLink(conn, hello.addr, backlog=8, keepalive=self.config.keepalive_interval,
                          send_timeout=self.config.link_stall, on_gone=self._child_gone,
                          conversation=talk, meter=self._metered)
        child.enqueue(Accept(max(self.depth, 1), self.path, after,
                             tuple(b.digest for b in missed)))
        if not missed:
            self._join_relay(child, after)
        self.children[hello.addr] = child
        self.child_views[hello.addr] = tree.ChildView(hello.addr, free=hello.max_children,
                                                      members=hello.subtree)
        self._advice_sent.pop(hello.addr, None)
        self.moves.children_changed(time.monotonic())
        log.info("new child %s (resumes %s, %d missed block(s) to fetch)", hello.addr,
                 "after its latest block" if after else "live", len(missed))
        self.events.emit("child_added", child=hello.addr, resumes="latest" if after else "live",
                         missed=len(missed))
        self._write_status()
        return child

    def _read_child(self, conn: socket.socket, decoder: FrameDecoder, child: ChildLink) -> None:
        """The child's side of the link: reports, and its goodbye."""
        conn.settimeout(self.config.link_stall + self.config.period)
        reason = "closed"
        try:
            while True:
                message = read_message(conn, decoder)
                child.conversation.received(message)  # a child may send only these (client.roles)
                child.heard_at = time.monotonic()
                if isinstance(message, Report):
                    with self._lock:
                        if self.children.get(child.addr) is child:
                            self.child_views[child.addr] = tree.ChildView(
                                child.addr, message.free, message.sent, message.subtree, message.members,
                                message.max_children, message.children, reported=True,
                                parents=message.parents)
                            if message.nodes and self.subtree.child_reported(child.addr,
                                                                             message.nodes):
                                self._inputs.put(inputs.SubtreeChanged(time.monotonic()))
                elif isinstance(message, Bye):
                    reason = "left"
                    if message.successor is not None:
                        self._expect((message.successor,))  # its slot is for the swap partner
                    break
                elif isinstance(message, SwapAnswer):
                    self._inputs.put(inputs.SwapAnswered(time.monotonic(), child, message.accept))
        except socket.timeout:
            reason = "silent"
        except EOFError:
            reason = "connection closed"
        except (PeerProtocolError, OSError) as exc:
            reason = str(exc)
        except Exception as exc:  # a bug here must not leave a child that holds a slot
            log.exception("reader of child %s failed", child.addr)
            reason = f"internal error: {exc!r}"
        self._forget_child(child, reason)
        child.close()

    def _child_gone(self, child: ChildLink, reason: str) -> None:
        self._forget_child(child, reason)

    def _forget_child(self, child: ChildLink, reason: str) -> None:
        with self._lock:
            if self.children.get(child.addr) is not child:
                return
            del self.children[child.addr]
            self.child_views.pop(child.addr, None)
            self.subtree.child_gone(child.addr)
            self.moves.child_gone(child.addr, time.monotonic())
            key = str(child.addr)
            self._sent_before[key] = self._sent_before.get(key, 0) + child.bytes_sent
        with self._uplink_lock:
            self.uplink.forget(child, time.monotonic())
        log.info("child %s gone: %s", child.addr, reason)
        self.events.emit("child_gone", child=child.addr, kind=events.child_gone_kind(reason),
                         reason=reason)
        self._write_status()

    # -- the parent link -----------------------------------------------------

    def _on_parent_message(self, link: ParentLink, message) -> None:
        """(The link's reader.) A block whole or in parts, or a control frame.

        A block in parts is forwarded as it comes and checked at its end
        (:class:`client.peerproto.Reassembly`: a wrong size or digest is the
        parent's protocol error, which ends the link; its forward is aborted).
        """
        if isinstance(message, Block):
            self.deliver(message, link)
        elif isinstance(message, BlockStart):
            link.incoming.start(message.seq)
            link.relay = self._begin_relay(link, message.seq, time.time())
        elif isinstance(message, BlockPart):
            link.incoming.add(message.data)
            self._relay_part(link.relay, message.data)
        elif isinstance(message, BlockEnd):
            relay, link.relay = link.relay, None
            try:
                block = link.incoming.end(message)
            except PeerProtocolError:
                self._abort_relay_now(relay, "corrupt: its end does not match its bytes")
                self._discarded()
                raise
            self.deliver(block, link, relay)
        elif isinstance(message, BlockAbort):
            link.incoming.abort()
            self._discarded()
            relay, link.relay = link.relay, None
            self._abort_relay_now(relay, f"aborted above: {message.reason}")
        elif isinstance(message, Keepalive):
            pass
        elif isinstance(message, Advice):
            with self._lock:
                if link is self.parent_link:
                    self._backup, self._advice = message.backup, message.advice
        else:  # Swap, PathUpdate, Move, Drop (the link checked the rest: client.roles)
            self._inputs.put(inputs.FromParent(time.monotonic(), link, message))

    def _on_parent_lost(self, link: ParentLink, reason: str) -> None:
        relay, link.relay = link.relay, None
        with self._deliver_lock:
            if link.incoming.open and link.incoming.seq == self.gate.seq + 1 and link.incoming.size:
                # Our next block's beginning: its rest is fetched once we are placed, and
                # the children keep what they got of it (client.forwarding).
                self._cut_short = link.incoming.held()
                self.forwarder.keep(relay)
            else:
                self._discarded(link.incoming.open)  # (a block cut short: its parts are dropped)
                self._abort_relay(relay, f"cut short: parent lost ({reason})")
        self._inputs.put(inputs.ParentLost(time.monotonic(), link, reason))

    # -- the controller ------------------------------------------------------

    def _control_loop(self) -> None:
        tick = self.config.period / 4
        next_report = next_root_probe = time.monotonic()
        self._find_place(f"joining channel {self.config.channel}", server_first=True)
        while not self._stopping.is_set():
            checkpoint("controller")
            try:
                event = self._inputs.get(timeout=tick)
            except queue.Empty:
                event = None
            if isinstance(event, inputs.Leave):
                self._leave()
                return
            if event is not None:
                self._handle_input(event)
            if self.state == State.DIRECT and not self.gate.holding and (
                    time.monotonic() - self._last_server_block > self.config.server_silence):
                # (while a repair runs, the server's blocks wait in _held: not silence)
                self._orphaned(None, "no block from the server for "
                               f"{self.config.server_silence:.1f} s", server_first=True)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + self.config.period / 2
                self._report_to_parent()
                self._advise_children()
            self._relieve_uplink()
            self._yield_server_slot()
            if self.state == State.DIRECT and time.monotonic() >= next_root_probe:
                next_root_probe = time.monotonic() + 4 * self.config.period
                self._advise_as_root()

    def _just_stored(self, digest: bytes) -> None:
        """Moves that must happen right after a block, when the next one is a period away.

        A relay handing its place to a child, and a client climbing to a
        shallower place, each leave a gap of a few milliseconds in which a
        block from above would reach nobody. The block's phase keeps moves
        that would collide apart (:func:`client.tree.may_swap`).
        """
        with self._lock:
            move = self.moves.after_block(self._situation(), digest)
        if isinstance(move, OfferSwap):
            self._maybe_swap()
        elif isinstance(move, Climb):
            self._maybe_climb(to_server=move.to_server)

    def _handle_input(self, event) -> None:
        """One input of :mod:`client.inputs` (all but Leave, which ends the loop)."""
        if isinstance(event, inputs.SubtreeChanged):
            self._report_to_parent()
        elif isinstance(event, inputs.SwapAnswered):
            self._on_swap_answer(event.child, event.accept)
        elif isinstance(event, inputs.ServerBlockHeld):
            self._server_gap()
        elif isinstance(event, inputs.BlockStored):
            if time.monotonic() - event.now < self.config.period / 4:
                self._just_stored(event.digest)  # (else the controller was busy: wait for the next)
        elif isinstance(event, inputs.GoIdle):
            if self.state != State.IDLE:
                self._leave()
                self.state = State.IDLE
            self._write_status()
        elif isinstance(event, inputs.SwitchChannel):
            if self.state != State.IDLE:
                self._leave()
            with self._deliver_lock, self._lock:
                self.config.channel = event.channel
                self.gate.new_channel()
                self.window.clear()
            self._move_store(event.channel)
            self._find_place(f"switching to channel {event.channel}", server_first=True)
        elif event.link is self.parent_link and event.link is not None:
            self._from_parent(event)
        # (else an input of a link we already left)

    def _from_parent(self, event) -> None:
        """An input of the current parent link."""
        link = event.link
        if isinstance(event, inputs.ParentLost):
            parent_was_direct = len(self.path) == 1
            self.events.emit("parent_lost", parent=link.addr, reason=event.reason)
            self._orphaned(link.addr, f"parent {link.addr} lost: {event.reason}",
                           silent=event.reason == "silent")
            if parent_was_direct:
                self.moves.lost_direct_parent(time.monotonic())  # (client.moves)
        elif isinstance(event, inputs.ParentForged):
            self._orphaned(link.addr, f"parent {link.addr} relayed a forged block")
        elif isinstance(event.message, Swap):
            self._on_swap_offer(link, event.message)
        elif isinstance(event.message, PathUpdate):
            self._on_path(event.message)
        elif isinstance(event.message, Drop):
            self._orphaned(link.addr, f"parent {link.addr} dropped us: {event.message.reason}")
        elif isinstance(event.message, Move):
            move = event.message
            seeds = [Candidate(a, i + 1, 1, 0) for i, a in enumerate(move.candidates)]
            self._orphaned(link.addr, f"parent {link.addr} is leaving", seeds=seeds,
                           server_first=move.server,
                           insist=move.candidates[-1] if move.candidates else None,
                           moved_by=link.addr)

    # -- the tree around this client --------------------------------------------

    def _on_path(self, update: PathUpdate) -> None:
        if self.me in update.path:
            self._orphaned(self.parent_link.addr, "loop: this client is in its own new path")
            return
        with self._lock:
            self.path = update.path + (self.parent_link.addr,)
            self.depth = update.depth + 1
        self._tell_children_path()
        self._write_status()

    def _tell_children_path(self) -> None:
        with self._lock:
            update = PathUpdate(max(self.depth, 1), self.path)
            children = list(self.children.values())
        for child in children:
            child.enqueue(update)

    def _report_to_parent(self) -> None:
        with self._lock:
            link = self.parent_link
            view = self._relay_view()
            can_take = self._can_take()
        if link is not None:
            link.send(Report(view.free, view.sent, tree.free_places(view), tree.members_below(view),
                             can_take, tuple(view.children), tree.member_parents(view),
                             self.subtree.for_report(self.snapshot())))

    # -- what the menu and tools read -----------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            parent = self.parent
            return {
                "ip": self.config.ip, "peer_port": self.config.peer_port,
                "push_port": self.config.push_port, "channel": self.config.channel,
                "max_children": self.config.max_children, "state": self.state.value,
                "parent": (parent if parent in (SERVER, None) else
                           {"ip": parent.ip, "port": parent.port}),
                "parent_server": f"{self.server.host}:{self.server.port}",
                "path": [str(a) for a in self.path],
                "children": [{"ip": a.ip, "port": a.port, "bytes_sent": link.bytes_sent,
                              "blocks_sent": link.blocks_sent,
                              "below": len(self.child_views.get(a, tree.ChildView(a)).members),
                              "drain_bps": _bits(self._drain_rate(link))}
                             for a, link in self.children.items()],
                "depth": self.depth,
                "blocks_received": self.counters.blocks_received,
                "bytes_received": self.counters.bytes_received,
                "bytes_sent": self.counters.bytes_sent,
                "bytes_served": self.counters.bytes_served,
                "blocks_repaired": self.counters.blocks_repaired,
                "blocks_lost": self.counters.blocks_lost,
                "blocks_discarded": self.counters.blocks_discarded,
                "blocks_finished": self.counters.blocks_finished,
                "repairing": self.gate.repair is not None,
                "backup": str(self._backup.addr) if self._backup else None,
                "rejoins": max(0, len(self.rejoins) - 1),
                "swaps": self.counters.swaps,
                "climbs": self.counters.climbs,
                "silent_children_freed": self.counters.silent_children_freed,  # Hello.lost
                "last_block_at": self.counters.last_block_at,
                "members": [str(a) for a in tree.members_below(self._relay_view())],
                "refusals": dict(self._blame.counts),   # strangers refused, by blame
                "verify": {**self.verifier.snapshot(),  # authenticated blocks (client.verify)
                           "crosscheck": self.crosscheck.snapshot()},   # (client.crosscheck)
                **self.player_watch.snapshot(),
                "store": self.store.status(),
                "tree": tree.subtree(self._relay_view()),
                "problem": self.failure or self.problem,
                "server_reachable": self.server_reachable,
                "server_failures": self.server_failures,
                "parent_silence": self.config.parent_silence,  # a silent parent is lost after this
                "cut_at_deadline": dict(self.counters.cut_at_deadline),  # client.links.ANSWER_DEADLINE
                "incompatible_peers": dict(self.counters.incompatible_peers),  # refused our version
                "uplink": self._uplink_status(),
            }

    def stats(self) -> dict:
        snap = self.snapshot()
        with self._lock:
            return {**{k: snap[k] for k in ("ip", "channel", "max_children", "blocks_received",
                                             "bytes_received", "bytes_sent", "bytes_served",
                                             "blocks_repaired", "blocks_lost", "swaps",
                                             "climbs")},
                    "blocks_relayed": self.counters.blocks_relayed,
                    "verify": snap["verify"],
                    "bytes_sent_to": dict(self.counters.bytes_sent_to),
                    "rejoins": [r.to_json() for r in self.rejoins[1:]],
                    "behind_live": self.player_watch.stats(), "store": snap["store"]}

    def _write_status(self) -> None:
        with self._lock:
            sent_to = dict(self._sent_before)
            for addr, link in self.children.items():
                sent_to[str(addr)] = sent_to.get(str(addr), 0) + link.bytes_sent
            self.counters.bytes_sent_to = sent_to
            self.counters.bytes_sent = sum(sent_to.values()) + self.counters.bytes_served
            write_json_atomically(self.config.store / "status.json", self.snapshot())
        for watch in self.watchers:
            watch("status", None)


#: A child not heard for this long (its keepalives come every quarter second at most) whose
#: own child finds it silent too is gone (:meth:`Node._free_silent_child`).
CLAIM_SILENCE = 0.75

#: How long (in periods, at least 30 s) a relay caught lying is not chosen as a parent.
DISTRUST_PERIODS = 30

#: An uplink estimate this many periods old is forgotten: a child is tried again.
UPLINK_STALE_PERIODS = 150

#: The stream's rate is the mean of this many latest blocks.
STREAM_BLOCKS = 8


def _bits(rate: float | None) -> int | None:
    """Bytes/s as whole bits/s, for status.json."""
    return None if rate is None else int(rate * 8)


def _abort(sock: socket.socket) -> None:
    """Close with a reset, at once (a refused stranger gets no orderly goodbye)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _close_listener(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
