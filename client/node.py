"""A relay client: joins a channel, stores its blocks, relays them to its children.

Threads, each with one job and a way to end:

* push listener: the server's connections to the push port (join answers, blocks),
  from the server's address only (:mod:`client.strangers` bounds what strangers get);
* peer listener: other clients' connections (join, probe), one handler each,
  which becomes the child's reader when the join is accepted;
* controller: every decision that takes time (joining, rejoining, leaving),
  driven by an event queue and a tick;
* one reader for the parent link, one sender per child link;
* during a repair, a driver and one fetcher per source (:mod:`client.fetcher`).

The join and rejoin policy lives in :mod:`client.joining`, the upkeep of the
tree (backup parents, balance rotation, climbing) in :mod:`client.upkeep`;
both are mixins of :class:`Node` run by the controller. State is owned by the node and guarded by one lock; blocks pass through
:meth:`Node.deliver` under a second lock so that storing and relaying happen
in one order for everyone.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time

from client import capacity, channels, places, strangers, tree, verify
from client.fetcher import RepairJob
from client.joining import Joining
from client.library import serve_fetch
from client.links import (ChildLink, ParentLink, StockServer, addresses_of, listen_on,
                          read_message, read_message_by)
from client.model import SERVER, Config, Counters, Rejoin, State
from client.peerproto import (HEADER, MAX_BLOCK, MAX_CONTROL, MAX_WANT, Accept, Addr, Advice,
                              Block, Bye, Candidate, Drop, FetchEnd, FrameDecoder, Hello, Info,
                              Keepalive, LibraryFetch, Move, PathUpdate, PeerProtocolError,
                              Redirect, Reject, Report, Swap, SwapAnswer, TreeAnswer, TreeQuery,
                              Vouch, VouchAnswer, encode)
from client.repair import RepairPlan
from client.behind import PlayerWatch
from client.store import BlockStore, RecentWindow, Stored, write_json_atomically
from client.supervise import checkpoint, supervised
from client.treeview import SubtreeLedger
from client.upkeep import SwapOffer, Upkeep
from server import protocol as stock

__all__ = ["Node", "Config", "State", "SERVER"]

log = logging.getLogger(__name__)

PUSH_BACKLOG = 2
PEER_BACKLOG = 16


class Node(Joining, Upkeep):
    """One relay client in one channel."""

    def __init__(self, config: Config):
        self.config = config
        self.me = Addr(config.ip, config.peer_port)
        self.store = BlockStore(config.store, config.store_limit, quiet_limit=not config.player)
        self.player_watch = PlayerWatch(config.store)
        self.window = RecentWindow(int(config.window_seconds / config.period) + 1)
        self.server = StockServer(config.server_host, config.server_port, config.ip)
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
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
        self._distrusted: dict[Addr, float] = {}  # relays caught lying: not chosen until then
        self._declines: dict[Addr, int] = {}      # swap offers each child declined in a row
        # What the uplink delivers, told by the child links' senders (client.capacity).
        self.uplink = capacity.Uplink(stale_after=UPLINK_STALE_PERIODS * config.period)
        self._uplink_lock = threading.Lock()
        self._relief_at = 0.0                     # monotonic: no child moved before then
        self._yield_at = 0.0                      # monotonic: no server slot yielded before then
        self._avoid_server_until = 0.0            # monotonic: the server slot was given up
        self._turned_away_at = -1e9               # monotonic: a joiner last found no place here

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
        self._seq = -1
        self._skip: list[bytes] = []
        self._server_member = False
        self._sent_before: dict[str, int] = {}
        self._repair: RepairJob | None = None
        self._held: list[tuple[Block, object]] = []
        self._gap_check = False                         # live blocks wait for it too
        self._gap_waits_for_server = False              # ... until the server's first block
        self._backup: Candidate | None = None           # where I go if my parent dies
        self._advice: Candidate | None = None           # my children's backup if I die
        self._advice_sent: dict[Addr, Advice] = {}
        self._expected: dict[Addr, float] = {}          # swap partners, until a deadline
        self._swap_offer: SwapOffer | None = None
        self._moved_at = time.monotonic()             # last change of parent
        self._children_changed_at = time.monotonic()
        self._last_block = time.monotonic()
        self._next_climb = time.monotonic()
        self._swap_turn, self._climb_turn = tree.PhaseTurn(), tree.PhaseTurn()
        self._slot_watch_until = 0.0  # monotonic: ask the server for the slot a dead parent left
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
        self._events.put(("leave", None, None))
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
        self._events.put(("channel", None, channel))
        return True

    def leave_channel(self) -> bool:
        """Leave the channel but keep running; ``switch_channel`` joins again.

        False when the client has already left (or is leaving).
        """
        with self._lock:
            if self._wanted_channel is None:
                return False
            self._wanted_channel = None
        self._events.put(("idle", None, None))
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
        data = bytearray()
        try:
            conn.settimeout(5.0)
            while len(data) <= MAX_BLOCK:
                chunk = conn.recv(1024 * 1024)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            log.warning("push connection from %s failed after %d bytes: %s", peer_ip, len(data), exc)
            return
        if len(data) > MAX_BLOCK:
            self._blame.report(strangers.LIMIT, peer_ip, "a push larger than "
                               f"{MAX_BLOCK >> 20} MiB, the largest block relaytv stores and "
                               "relays: refused")
            self._write_status()
        elif bytes(data) in (stock.JOINED, stock.FULL):
            self._join_answers.put(bytes(data))
        elif data.startswith(stock.EBML_MAGIC):
            self.deliver(Block.of(0, bytes(data)), SERVER)
        else:
            log.warning("push from %s is neither a join answer nor a Matroska block "
                        "(%d bytes): ignored", peer_ip, len(data))

    # -- blocks ------------------------------------------------------------

    def deliver(self, block: Block, source) -> None:
        """Store a block from the current parent and relay it to every child.

        Blocks from anyone but the current parent are ignored (a stale link,
        or the server still pushing to a client that moved into the tree).
        While a repair runs, live blocks wait so that storage stays in play
        order.
        """
        with self._deliver_lock:
            with self._lock:
                if source != (self.parent_link if self.parent != SERVER else SERVER):
                    return
                if self._repair is not None or self._gap_check:
                    if len(self._held) < self.window.capacity:
                        self._held.append((block, source))
                    if source == SERVER and self._gap_waits_for_server:
                        self._gap_waits_for_server = False
                        self._events.put(("server_gap", None, None))  # client.joining
                    return
            self._deliver_live(block, source)
        self._write_status()

    def _deliver_live(self, block: Block, source) -> None:
        """(Under the deliver lock.) Skip what we already have, number, store and relay."""
        with self._lock:
            if block.digest in self._skip:
                # Stored before this parent resumed us: skip it and what preceded it.
                del self._skip[:self._skip.index(block.digest) + 1]
                return
            self._skip = []
        if source != SERVER and not self._authentic(block.digest, source.addr):
            if self.parent_link is source:
                self._events.put(("forged", source, None))
            return
        with self._lock:
            if source == SERVER:
                self._seq = self._seq + 1 if self._seq >= 0 else int(time.time() / self.config.period)
                block = Block(self._seq, block.digest, block.data)
                self._last_server_block = time.monotonic()
            else:
                self._seq = block.seq
        self._store_and_relay(block)

    def _authentic(self, digest: bytes, sender: Addr) -> bool:
        """May a block from ``sender`` be stored? A forged one gets the sender distrusted."""
        verdict = self.verifier.check(self.config.channel, digest)
        if verdict is verify.Verdict.FORGED:
            self._distrust(sender, f"sent block {digest.hex()[:8]}, which the server's feed "
                           "does not name: discarded")
        return verdict in (verify.Verdict.GENUINE, verify.Verdict.STOCK)

    def _distrust(self, addr: Addr, why: str) -> None:
        """Blame ``addr`` for a lie and choose it as a parent no more for a while."""
        self._blame.report(strangers.LIE, str(addr), why)
        with self._lock:
            self._distrusted[addr] = time.monotonic() + max(DISTRUST_PERIODS * self.config.period, 30.0)

    def _is_distrusted(self, addr: Addr) -> bool:
        with self._lock:
            return self._distrusted.get(addr, 0.0) > time.monotonic()

    def _store_and_relay(self, block: Block) -> None:
        """(Under the deliver lock.) The one place a block is stored and passed on."""
        with self._lock:
            children = list(self.children.values())
        stored_at = time.time()
        self._last_block = time.monotonic()
        self.store.write(block.data, block.seq)  # a refusal (full disk) is said once; relay goes on
        if self.recorder is not None:
            self.recorder.keep(self.config.channel, block.data)  # --record (client/record.py)
        self.window.append(Stored(block, stored_at))
        for child in children:
            child.enqueue(block)
        for watch in self.watchers:
            watch("block", Stored(block, stored_at))
        # Only now: moves made then must follow the relay.
        self._events.put(("stored", None, block.digest))
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

    def _start_repair(self, missing: list[bytes], sources: list[Addr],
                      rejoin: Rejoin | None) -> None:
        """(Under both locks.) Fetch ``missing`` from several sources; hold live blocks meanwhile."""
        plan = RepairPlan(missing, sources, time.monotonic(), stall_after=max(self.config.period, 1.0))
        job = RepairJob(plan, self.me, self.config.channel, self._repaired_block, self._repair_done,
                        deadline=max(4 * self.config.period, 5.0), check=self._authentic)
        self._repair = job
        if rejoin is not None:
            rejoin.missed = len(missing)
        log.info("repairing %d missed block(s) from %s", len(missing),
                 ", ".join(str(s) for s in sources[:3]))
        job.start()

    def _repaired_block(self, digest: bytes, block: Block | None) -> None:
        if block is None:
            log.warning("block %s could not be repaired from any source: lost", digest.hex()[:8])
            with self._lock:
                self.counters.blocks_lost += 1
            return
        with self._deliver_lock:
            if self._repair is not None:
                self._store_and_relay(block)
                with self._lock:
                    self.counters.blocks_repaired += 1

    def _repair_done(self, job: RepairJob) -> None:
        """Store the live blocks that waited, in order, and go back to live delivery."""
        with self._deliver_lock:
            with self._lock:
                if self._repair is not job:
                    return
                self._repair = None
            self._release_held()
        log.info("repair done: %d block(s) from %s, %d lost", sum(job.fetched_from.values()),
                 job.fetched_from or "nobody", job.plan.lost)
        self._write_status()

    def _release_held(self) -> None:
        """(Under the deliver lock.) Deliver the live blocks that waited, in order."""
        with self._lock:
            held, self._held = self._held, []
            current = self.parent_link if self.parent != SERVER else SERVER
        for block, source in held:
            if source == current:
                self._deliver_live(block, source)

    def _cancel_repair(self) -> None:
        with self._deliver_lock, self._lock:
            job, self._repair, self._held = self._repair, None, []
        if job is not None:
            job.cancel()
            job.join()

    def _serve_fetch(self, conn: socket.socket, hello: Hello) -> None:
        """Send the wanted blocks we still hold, in the order asked, then what we lacked."""
        with self._deliver_lock:
            held = self.window.find(hello.want)
        lacking = []
        for digest in hello.want:
            block = held.get(digest)
            if block is None:
                lacking.append(digest)
            elif not self._send_paced(conn, encode(block)):
                return
        conn.sendall(encode(FetchEnd(tuple(lacking))))
        log.info("served %d of %d wanted block(s) to %s", len(hello.want) - len(lacking),
                 len(hello.want), hello.addr)

    def _send_paced(self, conn: socket.socket, frame: bytes) -> bool:
        """Send a repair frame, in small pieces at ``--repair-rate`` when it is set.

        Small pieces keep bytes flowing, so that the fetching client sees a
        slow source, not a stalled one. False when the node is stopping.
        """
        rate = self.config.repair_rate * 1000
        step = len(frame) if not rate else max(1024, int(rate / 20))
        for start in range(0, len(frame), step):
            piece = frame[start:start + step]
            conn.sendall(piece)
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
        try:
            hello = read_message_by(conn, decoder, deadline, chunk=HEADER.size + MAX_CONTROL)
            if isinstance(hello, TreeQuery):
                conn.sendall(encode(TreeAnswer(tuple(self.subtree.subtree(self.snapshot())))))
                return
            if isinstance(hello, Vouch):  # a joiner checks the place it is offered (client.places)
                with self._lock:
                    yes = hello.channel == self.config.channel and hello.child in self.children
                conn.sendall(encode(VouchAnswer(yes)))
                return
            if not isinstance(hello, (Hello, LibraryFetch)):
                raise PeerProtocolError(f"expected Hello, got {type(hello).__name__}")
        except socket.timeout:
            self._blame.report(strangers.LIMIT, peer_ip, "no Hello within "
                               f"{strangers.HANDSHAKE_DEADLINE:.0f} s: connection cut")
            return
        except PeerProtocolError as exc:
            self._blame.report(strangers.VIOLATION, peer_ip, f"{exc}: connection closed")
            return
        except (EOFError, OSError) as exc:
            self._blame.report(strangers.VIOLATION, peer_ip, f"no Hello ({exc})")
            return
        finally:
            ticket.handshake_done()
        if hello.addr.ip != peer_ip:
            self._blame.report(strangers.LIE, peer_ip, f"{type(hello).__name__} claims "
                               f"{hello.addr.ip}: connection closed")
            return
        conn.settimeout(3.0)
        if isinstance(hello, LibraryFetch):
            serve_fetch(conn, hello, self.library, self._send_paced)  # the film library
        elif hello.kind == "probe":
            conn.sendall(encode(self._info(hello)))
        elif hello.kind == "join":
            self._handle_join(conn, decoder, hello, ticket)
        else:
            self._serve_fetch(conn, hello)

    def _expect(self, addrs) -> None:
        """Keep a slot for each of ``addrs`` (swap partners) for a few periods."""
        with self._lock:
            now = time.monotonic()
            deadline = now + 2 * self.config.link_stall
            self._expected = {a: t for a, t in self._expected.items() if t > now}
            self._expected.update((a, deadline) for a in addrs)

    def _relay_view(self) -> tree.RelayView:
        with self._lock:
            return tree.RelayView(
                me=self.me, channel=self.config.channel, max_children=self.config.max_children,
                attached=self.state in (State.DIRECT, State.ATTACHED), depth=max(self.depth, 1),
                path=self.path, sent=self.counters.bytes_sent,
                children=places.advertised(self.child_views, self._declines),
                expected=frozenset(a for a, t in self._expected.items() if t > time.monotonic()),
                places=self._places())

    # -- the uplink's capacity (client.capacity) ----------------------------------

    def _metered(self, link: ChildLink, now: float, written: int, queued: int,
                 writing: bool) -> None:
        """(A child link's sender thread.) What it wrote and what is not acknowledged yet."""
        with self._uplink_lock:
            self.uplink.observe(link, now, written - queued, queued, writing)

    def _drain_rate(self, link: ChildLink) -> float | None:
        with self._uplink_lock:
            return self.uplink.rate_of(link)

    def _stream_rate(self) -> float | None:
        """(Under the lock.) Bytes/s of the stream, from the latest blocks received."""
        return capacity.stream_rate((len(b.data) for b in self.window.latest(STREAM_BLOCKS)),
                                    self.config.period)

    def _uplink_now(self) -> tuple[float | None, float | None]:
        """(Under the lock.) The uplink's estimate and the stream's rate, bytes/s."""
        with self._uplink_lock:
            estimate = self.uplink.estimate(time.monotonic())
        return estimate, self._stream_rate()

    def _places(self) -> int:
        """(Under the lock.) How many children the measured uplink can feed, at most K."""
        return capacity.places(self.config.max_children, *self._uplink_now())

    def _can_take(self) -> int:
        """(Under the lock.) The ``max_children`` this client reports: K until measured."""
        return capacity.can_take(self.config.max_children, *self._uplink_now())

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
                     ticket: strangers.Ticket) -> None:
        with self._deliver_lock, self._lock:
            clash = strangers.identity_clash(self.children, hello.addr)
            if clash is not None:
                decision = tree.RejectJoin(f"{clash} is already a child here: one client "
                                           "per address")
            else:
                decision = tree.decide_join(self._relay_view(), hello)
            if isinstance(decision, tree.DisplaceJoin):
                decision = self._displace(decision.leaf, hello.addr)
            if isinstance(decision, tree.AcceptJoin):
                child = self._adopt(conn, hello)
        if isinstance(decision, tree.RedirectJoin):
            log.info("redirecting %s to %s", hello.addr, ", ".join(str(c.addr) for c in decision.candidates))
            conn.sendall(encode(Redirect(decision.candidates)))
            return
        if isinstance(decision, tree.RejectJoin):
            if clash is not None:
                self._blame.report(strangers.LIMIT, hello.addr.ip, f"a second identity "
                                   f"{hello.addr}: {decision.reason}")
            else:
                log.info("refusing %s: %s", hello.addr, decision.reason)
                self._turned_away_at = time.monotonic()
            conn.sendall(encode(Reject(decision.reason)))
            return
        ticket.give_back_slot()     # children are bounded by max_children, not by the pool
        child.start()
        self._read_child(conn, decoder, child)

    def _adopt(self, conn: socket.socket, hello: Hello) -> ChildLink:
        """Take a child (under both locks): queue the acceptance and what it missed."""
        old = self.children.pop(hello.addr, None)
        if old is not None:
            old.drop("replaced by a new connection from the same client")
        after, missed = self.window.after(hello.have, hello.have_seq)
        if after is None and not hello.have and hello.catch_up:
            missed = self.window.latest(hello.catch_up)
        child = ChildLink(conn, hello.addr, backlog=8, keepalive=self.config.keepalive_interval,
                          send_timeout=self.config.link_stall, on_gone=self._child_gone,
                          meter=self._metered)
        child.enqueue(Accept(max(self.depth, 1), self.path, after,
                             tuple(b.digest for b in missed)))
        self.children[hello.addr] = child
        self.child_views[hello.addr] = tree.ChildView(hello.addr, free=hello.max_children,
                                                      members=hello.subtree)
        self._advice_sent.pop(hello.addr, None)
        self._children_changed_at = time.monotonic()
        log.info("new child %s (resumes %s, %d missed block(s) to fetch)", hello.addr,
                 "after its latest block" if after else "live", len(missed))
        self._write_status()
        return child

    def _read_child(self, conn: socket.socket, decoder: FrameDecoder, child: ChildLink) -> None:
        """The child's side of the link: reports, and its goodbye."""
        conn.settimeout(self.config.link_stall + self.config.period)
        reason = "closed"
        try:
            while True:
                message = read_message(conn, decoder)
                if isinstance(message, Report):
                    with self._lock:
                        if self.children.get(child.addr) is child:
                            self.child_views[child.addr] = tree.ChildView(
                                child.addr, message.free, message.sent, message.subtree, message.members,
                                message.max_children, message.children, reported=True,
                                parents=message.parents)
                            if message.nodes and self.subtree.child_reported(child.addr,
                                                                             message.nodes):
                                self._events.put(("report", None, None))  # pass it up now
                elif isinstance(message, Bye):
                    reason = "left"
                    if message.successor is not None:
                        self._expect((message.successor,))  # its slot is for the swap partner
                    break
                elif isinstance(message, SwapAnswer):
                    self._events.put(("swap_answer", child, message.accept))
                else:
                    raise PeerProtocolError(f"a child may not send {type(message).__name__}")
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
            self._declines.pop(child.addr, None)
            self.subtree.child_gone(child.addr)
            self._children_changed_at = time.monotonic()
            key = str(child.addr)
            self._sent_before[key] = self._sent_before.get(key, 0) + child.bytes_sent
        with self._uplink_lock:
            self.uplink.forget(child, time.monotonic())
        log.info("child %s gone: %s", child.addr, reason)
        self._write_status()

    # -- the parent link -----------------------------------------------------

    def _on_parent_message(self, link: ParentLink, message) -> None:
        if isinstance(message, Block):
            self.deliver(message, link)
        elif isinstance(message, Keepalive):
            pass
        elif isinstance(message, Advice):
            with self._lock:
                if link is self.parent_link:
                    self._backup, self._advice = message.backup, message.advice
        elif isinstance(message, Swap):
            self._events.put(("swap", link, message))
        elif isinstance(message, PathUpdate):
            self._events.put(("path", link, message))
        elif isinstance(message, (Move, Drop)):
            self._events.put(("move" if isinstance(message, Move) else "drop", link, message))
        else:
            raise PeerProtocolError(f"a parent may not send {type(message).__name__}")

    def _on_parent_lost(self, link: ParentLink, reason: str) -> None:
        self._events.put(("lost", link, reason))

    # -- the controller ------------------------------------------------------

    def _control_loop(self) -> None:
        tick = self.config.period / 4
        next_report = next_root_probe = time.monotonic()
        self._next_climb = time.monotonic() + self._climb_interval()
        self._find_place(f"joining channel {self.config.channel}", server_first=True)
        while not self._stopping.is_set():
            checkpoint("controller")
            try:
                kind, link, arg = self._events.get(timeout=tick)
            except queue.Empty:
                kind = None
            if kind == "leave":
                self._leave()
                return
            if kind is not None:
                self._handle_event(kind, link, arg)
            if self.state == State.DIRECT and self._repair is None and not self._held and (
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
        swap_turn = self._swap_turn.turn(tree.may_swap(self.depth, digest))
        climb_turn = self._climb_turn.turn(tree.may_climb(digest))
        if (time.monotonic() < self._slot_watch_until and self.state == State.ATTACHED
                and not tree.may_swap(1, digest)):
            self._maybe_climb(to_server=True)
        elif self.state in (State.DIRECT, State.ATTACHED) and swap_turn:
            self._maybe_swap()
        elif time.monotonic() >= self._next_climb and climb_turn:
            self._next_climb = time.monotonic() + self._climb_interval()
            self._maybe_climb()

    def _handle_event(self, kind: str, link, arg) -> None:
        if kind == "report":
            self._report_to_parent()
            return
        if kind == "swap_answer":
            self._on_swap_answer(link, arg)
            return
        if kind == "server_gap":
            self._server_gap()
            return
        if kind == "stored":
            if time.monotonic() - self._last_block < self.config.period / 4:
                self._just_stored(arg)  # (else the controller was busy: wait for the next block)
            return
        if kind == "idle":
            if self.state != State.IDLE:
                self._leave()
                self.state = State.IDLE
            self._write_status()
            return
        if kind == "channel":
            if self.state != State.IDLE:
                self._leave()
            with self._lock:
                self.config.channel = arg
                self._seq = -1
                self.window.clear()
            self._move_store(arg)
            self._find_place(f"switching to channel {arg}", server_first=True)
            return
        if link is not self.parent_link or link is None:
            return  # an event of a link we already left
        if kind == "swap":
            self._on_swap_offer(link, arg)
        elif kind == "path":
            self._on_path(arg)
        elif kind == "lost":
            parent_was_direct = len(self.path) == 1
            self._orphaned(link.addr, f"parent {link.addr} lost: {arg}")
            if parent_was_direct:
                # The server frees the dead client's slot within a few periods:
                # take it back (with our subtree) rather than wait for a climb.
                self._slot_watch_until = time.monotonic() + SLOT_WATCH_PERIODS * self.config.period
        elif kind == "drop":
            self._orphaned(link.addr, f"parent {link.addr} dropped us: {arg.reason}")
        elif kind == "forged":
            self._orphaned(link.addr, f"parent {link.addr} relayed a forged block")
        elif kind == "move":
            seeds = [Candidate(a, i + 1, 1, 0) for i, a in enumerate(arg.candidates)]
            self._orphaned(link.addr, f"parent {link.addr} is leaving", seeds=seeds,
                           server_first=arg.server,
                           insist=arg.candidates[-1] if arg.candidates else None,
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
                "repairing": self._repair is not None,
                "backup": str(self._backup.addr) if self._backup else None,
                "rejoins": max(0, len(self.rejoins) - 1),
                "swaps": self.counters.swaps,
                "climbs": self.counters.climbs,
                "last_block_at": self.counters.last_block_at,
                "members": [str(a) for a in tree.members_below(self._relay_view())],
                "refusals": dict(self._blame.counts),   # strangers refused, by blame
                "verify": self.verifier.snapshot(),     # authenticated blocks (client.verify)
                **self.player_watch.snapshot(),
                "store": self.store.status(),
                "tree": tree.subtree(self._relay_view()),
                "problem": self.failure or self.problem,
                "server_reachable": self.server_reachable,
                "server_failures": self.server_failures,
                "parent_silence": self.config.parent_silence,  # a silent parent is lost after this
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


#: How long (in periods, at least 30 s) a relay caught lying is not chosen as a parent.
DISTRUST_PERIODS = 30

#: How long (in periods) an orphan of a direct client keeps asking the server for its slot.
SLOT_WATCH_PERIODS = 12

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
