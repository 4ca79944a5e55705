"""A relay client: joins a channel, stores its blocks, relays them to its children.

Threads, each with one job and a way to end:

* push listener: the server's connections to the push port (join answers, blocks);
* peer listener: other clients' connections (join, probe), one handler each,
  which becomes the child's reader when the join is accepted;
* controller: every decision that takes time (joining, rejoining, leaving),
  driven by an event queue and a tick;
* one reader for the parent link, one sender per child link.

State is owned by the node and guarded by one lock; blocks pass through
:meth:`Node.deliver` under a second lock so that storing and relaying happen
in one order for everyone.
"""

from __future__ import annotations

import enum
import logging
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from client import tree
from client.fetcher import RepairJob
from client.links import (ChildLink, ParentLink, StockServer, connect_from, listen_on,
                          read_message)
from client.peerproto import (MAX_WANT, Accept, Addr, Advice, Block, Bye, Candidate, Drop,
                              FetchEnd, FrameDecoder, Hello, Info, Keepalive, Move, PathUpdate,
                              PeerProtocolError, Redirect, Reject, Report, Swap, encode)
from client.repair import RepairPlan
from client.store import BlockStore, RecentWindow, Stored, write_json_atomically
from server import protocol as stock

log = logging.getLogger(__name__)

MAX_PUSH = 64 * 1024 * 1024
MAX_PEER_HANDLERS = 64
HAVE_COUNT = 8


class State(enum.Enum):
    JOINING = "joining"      # looking for a first place
    DIRECT = "direct"        # served by the channel server
    ATTACHED = "attached"    # served by a parent relay
    ORPHANED = "orphaned"    # lost its parent, looking for a new one; children stay
    LEAVING = "leaving"
    IDLE = "idle"            # left the channel on the user's request, still running
    STOPPED = "stopped"


SERVER = "server"


@dataclass
class Config:
    ip: str
    server_host: str
    server_port: int
    channel: int
    max_children: int
    store: Path
    push_port: int = 9091
    peer_port: int = 9092
    period: float = 2.0
    window_seconds: float = 30.0
    catch_up_seconds: float = 0.0
    balance_blocks: float = 8.0

    @property
    def swap_cooldown(self) -> float:
        """A relay that just moved waits this long before it swaps or climbs.

        A swap changes the parent or children of everyone around it; together
        with :attr:`children_cooldown` this keeps neighbouring swaps from
        overlapping.
        """
        return 4 * self.period

    @property
    def children_cooldown(self) -> float:
        """A relay whose children just changed waits this long before it swaps.

        Shorter than :attr:`swap_cooldown`: the relays near the root see their
        children change often (their children swap too) and must still get
        their turn to hand their place over.
        """
        return self.period

    @property
    def parent_silence(self) -> float:
        """Silence (no block, no keepalive) after which a parent counts as dead.

        Keepalives come every quarter period, so two periods is eight missed
        keepalives: a frozen or unreachable parent, not a busy one.
        """
        return max(2 * self.period, 1.5)

    @property
    def server_silence(self) -> float:
        """No block from the server for three periods: it dropped us or is down.

        The server sends one block per period; a round may end late by up to
        a period, so three leaves a full period of margin.
        """
        return max(3 * self.period, 2.0)


@dataclass
class Rejoin:
    cause: str
    started: float          # monotonic
    started_at: float       # Unix time
    took: float | None = None
    resumed_after_latest: bool | None = None
    missed: int = 0

    def to_json(self) -> dict:
        return {"cause": self.cause, "at": round(self.started_at, 3),
                "took": None if self.took is None else round(self.took, 3),
                "resumed_after_latest": self.resumed_after_latest, "missed": self.missed}


@dataclass
class Counters:
    blocks_received: int = 0
    bytes_received: int = 0
    blocks_relayed: int = 0
    bytes_sent: int = 0
    bytes_sent_to: dict = field(default_factory=dict)
    bytes_served: int = 0           # repair blocks sent to peers that fetched them
    blocks_repaired: int = 0
    blocks_lost: int = 0
    swaps: int = 0
    climbs: int = 0
    last_block_at: float | None = None


class Node:
    """One relay client in one channel."""

    def __init__(self, config: Config):
        self.config = config
        self.me = Addr(config.ip, config.peer_port)
        self.store = BlockStore(config.store)
        self.window = RecentWindow(int(config.window_seconds / config.period) + 1)
        self.server = StockServer(config.server_host, config.server_port, config.ip)
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self._join_answers: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handlers: set[threading.Thread] = set()
        self._handler_slots = threading.BoundedSemaphore(MAX_PEER_HANDLERS)

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
        self._backup: Candidate | None = None           # where I go if my parent dies
        self._advice: Candidate | None = None           # my children's backup if I die
        self._advice_sent: dict[Addr, Advice] = {}
        self._expected: dict[Addr, float] = {}          # swap partners, until a deadline
        self._moved_at = time.monotonic()             # last change of parent
        self._children_changed_at = time.monotonic()
        self._last_block = time.monotonic()
        self._last_server_block = time.monotonic()
        self._push_sock: socket.socket | None = None
        self._peer_sock: socket.socket | None = None

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Listen on both ports (before asking anyone anything), then join."""
        self._push_sock = listen_on(self.config.ip, self.config.push_port)
        try:
            self._peer_sock = listen_on(self.config.ip, self.config.peer_port)
        except OSError:
            self._push_sock.close()
            raise
        for target, name in ((self._accept_loop_push, "push-listener"),
                             (self._accept_loop_peer, "peer-listener"),
                             (self._control_loop, "controller")):
            thread = threading.Thread(target=target, name=name)
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
        self._stopping.set()
        for sock in (self._push_sock, self._peer_sock):
            if sock is not None:
                _close_listener(sock)
        for thread in self._threads:
            thread.join(timeout=5)
        for handler in list(self._handlers):
            handler.join(timeout=5)
        self.state = State.STOPPED
        self._write_status()

    def switch_channel(self, channel: int) -> None:
        """Leave the current channel (children handed over) and join ``channel``."""
        self._events.put(("channel", None, channel))

    def leave_channel(self) -> None:
        """Leave the channel but keep running; ``switch_channel`` joins again."""
        self._events.put(("idle", None, None))

    # -- the server's pushes -----------------------------------------------

    def _accept_loop_push(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, (peer_ip, _) = self._push_sock.accept()
            except OSError:
                break
            self._spawn_handler(self._handle_push, conn, peer_ip)

    def _handle_push(self, conn: socket.socket, peer_ip: str) -> None:
        data = bytearray()
        try:
            conn.settimeout(5.0)
            while len(data) <= MAX_PUSH:
                chunk = conn.recv(1024 * 1024)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            log.warning("push connection from %s failed after %d bytes: %s", peer_ip, len(data), exc)
            return
        if len(data) > MAX_PUSH:
            log.warning("push from %s exceeds %d bytes: ignored", peer_ip, MAX_PUSH)
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
                if self._repair is not None:
                    if len(self._held) < self.window.capacity:
                        self._held.append((block, source))
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
            if source == SERVER:
                self._seq = self._seq + 1 if self._seq >= 0 else int(time.time() / self.config.period)
                block = Block(self._seq, block.digest, block.data)
                self._last_server_block = time.monotonic()
            else:
                self._seq = block.seq
        self._store_and_relay(block)

    def _store_and_relay(self, block: Block) -> None:
        """(Under the deliver lock.) The one place a block is stored and passed on."""
        with self._lock:
            children = list(self.children.values())
        stored_at = time.time()
        self._last_block = time.monotonic()
        self.store.write(block.data)
        self.window.append(Stored(block, stored_at))
        for child in children:
            child.enqueue(block)
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

    def _start_repair(self, missing: list[bytes], sources: list[Addr], rejoin: Rejoin) -> None:
        """(Under both locks.) Fetch ``missing`` from several sources; hold live blocks meanwhile."""
        plan = RepairPlan(missing, sources, time.monotonic(), stall_after=max(self.config.period, 1.0))
        job = RepairJob(plan, self.me, self.config.channel, self._repaired_block, self._repair_done,
                        deadline=max(4 * self.config.period, 5.0))
        self._repair, self._held = job, []
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
                self._repair, held, self._held = None, self._held, []
                current = self.parent_link if self.parent != SERVER else SERVER
            for block, source in held:
                if source == current:
                    self._deliver_live(block, source)
        log.info("repair done: %d block(s) from %s, %d lost", sum(job.fetched_from.values()),
                 job.fetched_from or "nobody", job.plan.lost)
        self._write_status()

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
            else:
                frame = encode(block)
                conn.sendall(frame)
                with self._lock:
                    self.counters.bytes_served += len(frame)
        conn.sendall(encode(FetchEnd(tuple(lacking))))
        log.info("served %d of %d wanted block(s) to %s", len(hello.want) - len(lacking),
                 len(hello.want), hello.addr)

    # -- other clients' connections ------------------------------------------

    def _accept_loop_peer(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, (peer_ip, _) = self._peer_sock.accept()
            except OSError:
                break
            self._spawn_handler(self._handle_peer, conn, peer_ip)

    def _spawn_handler(self, target, conn: socket.socket, peer_ip: str) -> None:
        if not self._handler_slots.acquire(blocking=False):
            log.warning("too many connections: refusing one from %s", peer_ip)
            conn.close()
            return

        def run():
            try:
                target(conn, peer_ip)
            except Exception:
                log.exception("handler for %s failed", peer_ip)
            finally:
                conn.close()
                self._handler_slots.release()
                self._handlers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"handler-{peer_ip}")
        self._handlers.add(thread)
        thread.start()

    def _handle_peer(self, conn: socket.socket, peer_ip: str) -> None:
        decoder = FrameDecoder()
        conn.settimeout(3.0)
        try:
            hello = read_message(conn, decoder)
            if not isinstance(hello, Hello):
                raise PeerProtocolError(f"expected Hello, got {type(hello).__name__}")
            if hello.addr.ip != peer_ip:
                raise PeerProtocolError(f"Hello claims {hello.addr.ip} but comes from {peer_ip}")
        except (PeerProtocolError, EOFError, OSError) as exc:
            log.warning("bad peer connection from %s: %s", peer_ip, exc)
            return
        if hello.kind == "probe":
            conn.sendall(encode(self._info()))
        elif hello.kind == "join":
            self._handle_join(conn, decoder, hello)
        else:
            self._serve_fetch(conn, hello)

    def _relay_view(self) -> tree.RelayView:
        with self._lock:
            return tree.RelayView(
                me=self.me, channel=self.config.channel, max_children=self.config.max_children,
                attached=self.state in (State.DIRECT, State.ATTACHED), depth=max(self.depth, 1),
                path=self.path, sent=self.counters.bytes_sent,
                children=dict(self.child_views),
                expected=frozenset(a for a, t in self._expected.items() if t > time.monotonic()))

    def _info(self) -> Info:
        view = self._relay_view()
        return Info(view.attached, view.depth, view.free, view.sent, tree.free_places(view))

    def _handle_join(self, conn: socket.socket, decoder: FrameDecoder, hello: Hello) -> None:
        with self._deliver_lock, self._lock:
            decision = tree.decide_join(self._relay_view(), hello)
            if isinstance(decision, tree.AcceptJoin):
                child = self._adopt(conn, hello)
        if isinstance(decision, tree.RedirectJoin):
            log.info("redirecting %s to %s", hello.addr, ", ".join(str(c.addr) for c in decision.candidates))
            conn.sendall(encode(Redirect(decision.candidates)))
            return
        if isinstance(decision, tree.RejectJoin):
            log.info("refusing %s: %s", hello.addr, decision.reason)
            conn.sendall(encode(Reject(decision.reason)))
            return
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
        child = ChildLink(conn, hello.addr, backlog=8, keepalive=self.config.period / 4,
                          send_timeout=self.config.parent_silence, on_gone=self._child_gone)
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
        conn.settimeout(self.config.parent_silence + self.config.period)
        reason = "closed"
        try:
            while True:
                message = read_message(conn, decoder)
                if isinstance(message, Report):
                    with self._lock:
                        if self.children.get(child.addr) is child:
                            self.child_views[child.addr] = tree.ChildView(
                                child.addr, message.free, message.sent, message.subtree, message.members,
                                message.max_children, message.children, reported=True)
                elif isinstance(message, Bye):
                    reason = "left"
                    break
                else:
                    raise PeerProtocolError(f"a child may not send {type(message).__name__}")
        except socket.timeout:
            reason = "silent"
        except EOFError:
            reason = "connection closed"
        except (PeerProtocolError, OSError) as exc:
            reason = str(exc)
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
            self._children_changed_at = time.monotonic()
            key = str(child.addr)
            self._sent_before[key] = self._sent_before.get(key, 0) + child.bytes_sent
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
            with self._lock:
                if link is not self.parent_link:
                    return
                # Ready before anyone acts on it: the swap partners may connect any moment.
                deadline = time.monotonic() + 2 * self.config.parent_silence
                self._expected = {a: deadline for a in message.expected}
                self.path, self.depth = message.path, len(message.path) + 1
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
        next_climb = time.monotonic() + self._climb_interval()
        self._find_place(f"joining channel {self.config.channel}", server_first=True)
        while not self._stopping.is_set():
            try:
                kind, link, arg = self._events.get(timeout=tick)
            except queue.Empty:
                kind = None
            if kind == "leave":
                self._leave()
                return
            if kind is not None:
                self._handle_event(kind, link, arg)
            if self.state == State.DIRECT and (
                    time.monotonic() - self._last_server_block > self.config.server_silence):
                self._orphaned(None, "no block from the server for "
                               f"{self.config.server_silence:.1f} s", server_first=True)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + self.config.period / 2
                self._report_to_parent()
                self._advise_children()
                self._maybe_swap()
            if self.state == State.DIRECT and time.monotonic() >= next_root_probe:
                next_root_probe = time.monotonic() + 4 * self.config.period
                self._advise_as_root()
            if time.monotonic() >= next_climb and self._maybe_climb():
                next_climb = time.monotonic() + self._climb_interval()

    def _climb_interval(self) -> float:
        """Every 6 to 10 periods, at random, so that clients do not all look at once."""
        return self.config.period * random.uniform(6, 10)

    def _maybe_climb(self) -> bool:
        """Move up a level when a shallower place is free: the tree compacts again after churn.

        A child of a direct client tries the server itself (a slot freed by a
        dead direct client is taken back); deeper clients look for a free
        place at least one level shallower through the direct clients. The
        subtree moves along, and the move resumes without a hole like any
        rejoin. Only just after a block, so that the server's next one is a
        period away: False (try again at the next tick) until then.
        """
        with self._lock:
            if time.monotonic() - self._last_block > self.config.period / 4:
                return False
            if (self.state != State.ATTACHED or self._repair is not None
                    or time.monotonic() - self._moved_at < self.config.swap_cooldown):
                return True
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
        return True

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

    def _handle_event(self, kind: str, link, arg) -> None:
        if kind == "idle":
            self._leave()
            self.state = State.IDLE
            self._write_status()
            return
        if kind == "channel":
            self._leave()
            with self._lock:
                self.config.channel = arg
                self._seq = -1
                self.window.clear()
            self._find_place(f"switching to channel {arg}", server_first=True)
            return
        if link is not self.parent_link or link is None:
            return  # an event of a link we already left
        if kind == "swap":
            self._take_place(link, arg)
        elif kind == "path":
            self._on_path(arg)
        elif kind == "lost":
            self._orphaned(link.addr, f"parent {link.addr} lost: {arg}")
        elif kind == "drop":
            self._orphaned(link.addr, f"parent {link.addr} dropped us: {arg.reason}")
        elif kind == "move":
            seeds = [Candidate(a, i + 1, 1, 0) for i, a in enumerate(arg.candidates)]
            self._orphaned(link.addr, f"parent {link.addr} is leaving", seeds=seeds,
                           server_first=arg.server,
                           insist=arg.candidates[-1] if arg.candidates else None)

    # -- the balance rotation ------------------------------------------------------

    def _maybe_swap(self) -> None:
        """Swap places with the lightest-sending child once this relay is ahead by a margin."""
        with self._lock:
            if (self.config.balance_blocks <= 0 or self._repair is not None
                    or time.monotonic() - self._moved_at < self.config.swap_cooldown
                    or time.monotonic() - self._children_changed_at < self.config.children_cooldown
                    or not len(self.window)):
                return
            if (self.parent == SERVER and
                    time.monotonic() - self._last_server_block > self.config.period / 4):
                # The server's slot passes from us to the child with a gap of a few
                # milliseconds; a block sent in that gap would reach nobody. Hand it
                # over just after a block, when the next one is a period away.
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

    def _on_path(self, update: PathUpdate) -> None:
        if self.me in update.path:
            self._orphaned(self.parent_link.addr, "loop: this client is in its own new path")
            return
        with self._lock:
            self.path = update.path + (self.parent_link.addr,)
            self.depth = update.depth + 1
        self._tell_children_path()
        self._write_status()

    def _orphaned(self, lost: Addr | None, cause: str, seeds=None, server_first=False,
                  insist: Addr | None = None) -> None:
        log.warning("%s: rejoining", cause)
        self._cancel_repair()
        with self._lock:
            link, self.parent_link = self.parent_link, None
            was_direct = self.parent == SERVER
            self.parent = None
            self.state = State.ORPHANED
            path, backup = self.path, self._backup
        if link is not None:
            link.close()
        if seeds is None:
            seeds = tree.rejoin_seeds(path, lost)
        self._write_status()
        self._find_place(cause, server_first=server_first or was_direct, seeds=seeds,
                         exclude=(lost,) if lost else (), backup=backup, insist=insist)

    def _find_place(self, cause: str, server_first: bool, seeds=(), exclude=(),
                    backup: Candidate | None = None, insist: Addr | None = None) -> None:
        """Try places until one takes us (or we are stopping): the whole rejoin policy.

        Order: the place we were sent to (``insist``: a swap partner or where
        a leaving parent sent us, retried for a moment since it may still be
        getting ready); the backup parent our parent advised (one
        connection, no search); the server when asked (a new client, or one
        the server served); then the given seeds (ancestors); then the
        server's list of direct clients, probed so the best free place is
        known; then the server. Repeats with a pause while nothing takes us;
        the children stay attached meanwhile.
        """
        rejoin = Rejoin(cause, time.monotonic(), time.time())
        with self._lock:
            self.rejoins.append(rejoin)
            self._pending_rejoin = rejoin
            members = tree.members_below(self._relay_view())
        if insist is not None and insist not in members:
            for _ in range(10):
                answer = self._try_join(insist, rejoin)
                if answer is True:
                    return
                if not isinstance(answer, Reject) or self._stopping.wait(self.config.period / 20):
                    break
        if (backup is not None and backup.addr not in exclude and backup.addr not in members
                and self._try_join(backup.addr, rejoin) is True):
            log.info("rejoined at the backup parent %s", backup.addr)
            return
        pause = self.config.period / 4
        while not self._stopping.is_set():
            if not self._events.empty() and self._peek_leave():
                return
            if server_first and self._try_server():
                return
            with self._lock:
                members = tree.members_below(self._relay_view())
            search = tree.JoinSearch(self.me, exclude=(*members, *exclude))
            search.add(seeds)
            if self._run_search(search, rejoin):
                return
            search.add(self._probe_listed(members))
            if self._run_search(search, rejoin):
                return
            if not server_first and self._try_server():
                return
            self._stopping.wait(pause)
            pause = min(pause * 2, self.config.period)

    def _peek_leave(self) -> bool:
        """True when a leave is queued (the event stays queued for the loop)."""
        with self._events.mutex:
            return any(event[0] == "leave" for event in self._events.queue)

    def _server_call(self, call, *args):
        try:
            return call(*args)
        except (OSError, TimeoutError, stock.ProtocolError) as exc:
            log.warning("server %s:%d: %s", self.server.host, self.server.port, exc)
            return None

    def _try_server(self) -> bool:
        if not self._server_call(self.server.join, self.config.channel, self._join_answers):
            return False
        with self._lock:
            self.state, self.parent, self.path, self.depth = State.DIRECT, SERVER, (), 1
            self.parent_link = None
            self._moved_at = time.monotonic()
            self._server_member = True
            self._last_server_block = time.monotonic()
            self._skip = list(self.window.latest_digests(3))
        log.info("direct client of the server %s:%d, channel %d", self.server.host,
                 self.server.port, self.config.channel)
        self._tell_children_path()
        self._write_status()
        return True

    def _leave_server(self) -> None:
        """Free our slot at the server (``12X``) if it still counts us as a client."""
        with self._lock:
            member, self._server_member = self._server_member, False
        if member:
            self._server_call(self.server.leave, self.config.channel)

    def _probe_listed(self, members) -> list[Candidate]:
        """Ask each direct client the server lists where the free places are."""
        ips = self._server_call(self.server.clients, self.config.channel) or []
        found: list[Candidate] = []
        for ip in ips:
            addr = Addr(ip, self.config.peer_port)
            if addr == self.me or addr in members:
                continue
            info = self._ask(addr, Hello("probe", self.me, self.config.channel))
            if isinstance(info, Info) and info.attached:
                found.append(Candidate(addr, info.depth, info.free, info.sent))
                found.extend(info.candidates)
        return found

    def _ask(self, addr: Addr, hello: Hello):
        """One request, one answer, connection closed."""
        try:
            with connect_from(self.config.ip, addr.ip, addr.port, 2.0) as sock:
                sock.sendall(encode(hello))
                return read_message(sock, FrameDecoder())
        except (OSError, EOFError, PeerProtocolError) as exc:
            log.info("peer %s: %s", addr, exc)
            return None

    def _run_search(self, search: tree.JoinSearch, rejoin: Rejoin) -> bool:
        while not self._stopping.is_set():
            candidate = search.next()
            if candidate is None:
                return False
            answer = self._try_join(candidate.addr, rejoin)
            if answer is True:
                return True
            if isinstance(answer, Redirect):
                search.add(answer.candidates)
        return False

    def _try_join(self, addr: Addr, rejoin: Rejoin):
        """Ask ``addr`` to be our parent; True once attached, else its answer."""
        with self._lock:
            have = self.window.latest_digests(HAVE_COUNT)
            catch_up = 0 if have else min(int(self.config.catch_up_seconds / self.config.period),
                                          self.window.capacity, MAX_WANT)
            hello = Hello("join", self.me, self.config.channel, self.config.max_children,
                          have=have, have_seq=max(self._seq, 0),
                          subtree=tree.members_below(self._relay_view()),
                          catch_up=catch_up)
        decoder = FrameDecoder()
        try:
            sock = connect_from(self.config.ip, addr.ip, addr.port, 2.0)
        except OSError as exc:
            log.info("cannot reach %s: %s", addr, exc)
            return None
        try:
            sock.settimeout(3.0)
            sock.sendall(encode(hello))
            answer = read_message(sock, decoder)
        except (OSError, EOFError, PeerProtocolError) as exc:
            log.info("join at %s failed: %s", addr, exc)
            sock.close()
            return None
        if not isinstance(answer, Accept):
            sock.close()
            if isinstance(answer, Reject):
                log.info("%s refused us: %s", addr, answer.reason)
            return answer
        if self.me in answer.path:
            log.warning("%s would put us under ourselves: refused", addr)
            sock.close()
            return None
        link = ParentLink(sock, decoder, addr, self.config.parent_silence,
                          self._on_parent_message, self._on_parent_lost)
        self._leave_server()
        with self._deliver_lock, self._lock:
            self.parent, self.parent_link, self.state = addr, link, State.ATTACHED
            self._moved_at = time.monotonic()
            self.path, self.depth = answer.path + (addr,), answer.depth + 1
            self._backup = self._advice = None  # the new parent will advise
            latest = self.window.latest_digests(1)
            rejoin.resumed_after_latest = bool(latest) and answer.after == latest[0]
            if answer.after:
                self._skip = self.window.since(answer.after)
                missing = [d for d in answer.missing if d not in set(self._skip)]
            else:
                self._skip = list(self.window.latest_digests(3))
                missing = [] if latest else list(answer.missing)
            if missing:
                sources = [addr, *reversed(answer.path)]
                self._start_repair(missing, sources, rejoin)
        link.start()
        log.info("attached to %s at depth %d", addr, self.depth)
        self._tell_children_path()
        self._report_to_parent()
        self._write_status()
        return True

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
        if link is not None:
            link.send(Report(view.free, view.sent, tree.free_places(view), tree.members_below(view),
                             view.max_children, tuple(view.children)))

    def _leave(self) -> None:
        """Tell the server, the parent and the children, then close every link."""
        self._cancel_repair()
        with self._lock:
            self.state = State.LEAVING
            was_direct = self.parent == SERVER
            link, self.parent_link, self.parent = self.parent_link, None, None
            path = self.path
            children = list(self.children.values())
        self._leave_server()
        if link is not None:
            link.send(Bye())
            link.close()
        move = Move(path, server=was_direct or not path)
        for child in children:
            child.enqueue(move)
        for child in children:
            child.close()
            self._forget_child(child, "handed over")
        log.info("left channel %d (%d children handed over)", self.config.channel, len(children))
        self._write_status()

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
                              "below": len(self.child_views.get(a, tree.ChildView(a)).members)}
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
            }

    def stats(self) -> dict:
        snap = self.snapshot()
        with self._lock:
            return {**{k: snap[k] for k in ("ip", "channel", "max_children", "blocks_received",
                                             "bytes_received", "bytes_sent", "bytes_served",
                                             "blocks_repaired", "blocks_lost", "swaps",
                                             "climbs")},
                    "blocks_relayed": self.counters.blocks_relayed,
                    "bytes_sent_to": dict(self.counters.bytes_sent_to),
                    "rejoins": [r.to_json() for r in self.rejoins[1:]]}

    def _write_status(self) -> None:
        with self._lock:
            sent_to = dict(self._sent_before)
            for addr, link in self.children.items():
                sent_to[str(addr)] = sent_to.get(str(addr), 0) + link.bytes_sent
            self.counters.bytes_sent_to = sent_to
            self.counters.bytes_sent = sum(sent_to.values()) + self.counters.bytes_served
            write_json_atomically(self.config.store / "status.json", self.snapshot())


def _close_listener(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
