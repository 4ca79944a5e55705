"""A discrete-event world for client cores: a fake network, a model of the stock server, a clock.

Real :class:`client.core.ClientCore` objects, unchanged, are wired through
:class:`World`: each command a core returns is performed here (a connection,
a frame, a close, a server request, a timer) and comes back to the cores
as the inputs of :mod:`client.inputs`, at the simulated time it would
happen. Used by the in-memory tests (``tests/test_client_core.py``) and by
the simulator (:mod:`bench.sim`).

The network: every client has an upload capacity and a one-way latency
(a link's is the mean of its two ends'). A block, or a part of one a relay
forwards as it comes (cut-through, :mod:`client.forwarding`), leaves its
sender's uplink after the frames queued before it (one uplink, first come
first served: the parts of one block to two children interleave as they
come in) and arrives a latency later (a repair's block tells its fetcher a latency after
it is sent that its bytes are coming, as TCP's shared uplink would: the
fetch is slow, not stalled); a control frame takes its latency, never
overtaking what went before it on its link. A connection costs a round trip
before its first frame. A killed client's links end a latency later for its
peers; a frozen client answers nothing, and its peers find out as the real
links do: a child after the parent's silence (1 s), a parent after a child
link's stall plus a period.

The server (:class:`SimServer`): the stock server's rules from
:mod:`server.channel` (S places, the absolute schedule, the two-failures
rule, the ``11X`` list), pushing each block to its direct clients; a frozen
client's kernel takes two pushes, then they fail.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from client import inputs
from client.commands import (COUNT, JOIN, LEAVE, LIST, AskServer, Close, Connect, Placed, SetTimer,
                             Send, StoreBlock)
from client.core import ClientCore, CoreConfig
from client.peerproto import Addr, Block, BlockPart, BlockTail, block_digest
from server.channel import Channel, Registry, Schedule

__all__ = ["World", "SimClient", "SimServer", "Film", "PARENT_SILENCE", "PEER_PORT"]

PEER_PORT = 9092
#: Seconds without a byte after which a child takes its parent for dead (client.model).
PARENT_SILENCE = 1.0
#: Bytes of a frame's header, and what a control frame is taken to weigh.
FRAME_HEADER = 29
CONTROL_BYTES = 300
#: A frozen client's push port takes this many connections before the server's sends fail.
PUSH_BACKLOG = 2


@dataclass
class Film:
    """A channel's blocks, and which film index each digest is."""

    blocks: list[bytes]
    index: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self):
        self.index = {block_digest(b): i for i, b in enumerate(self.blocks)}

    @classmethod
    def synthetic(cls, count: int, size: int, seed: int = 0) -> "Film":
        """``count`` distinct blocks of ``size`` bytes (starting as Matroska does)."""
        rng = random.Random(seed)
        return cls([b"\x1a\x45\xdf\xa3" + rng.randbytes(max(0, size - 4)) for _ in range(count)])


class _Conn:
    """One connection: two ends, the arrival time of the latest frame each way."""

    __slots__ = ("ends", "latency", "last")

    def __init__(self, a, b, latency: float):
        self.ends = (a, b)          # (SimClient, link) each
        self.latency = latency
        self.last = [0.0, 0.0]      # arrival of the latest frame sent by end 0 / end 1


class SimClient:
    """One core and its place in the world: links, uplink, what it stored."""

    def __init__(self, world: "World", ip: str, config: CoreConfig, upload_bps: float,
                 latency: float, rng: random.Random):
        self.world, self.ip = world, ip
        self.addr = Addr(ip, PEER_PORT)
        self.config = config
        self.core = ClientCore(self.addr, config, world.now, rng)
        self.upload = upload_bps / 8.0              # bytes/s
        self.latency = latency
        self.up_free = 0.0                          # when the uplink has sent what it holds
        self.ends: dict[object, tuple[_Conn, int]] = {}
        self.meters: dict[object, list[int]] = {}   # child link -> [written, delivered]
        self.incoming = 0
        self.fate = "alive"                         # alive | killed | frozen | left
        self.fate_at: float | None = None
        self.started_at: float | None = None
        self.stored: list[tuple[int | None, float]] = []   # (film index, time)
        self.placed: list[Placed] = []
        self.pushes_while_frozen = 0

    @property
    def alive(self) -> bool:
        return self.fate == "alive"

    def handle(self, event) -> None:
        if self.fate == "alive":
            self.perform(self.core.handle(event))

    def perform(self, commands) -> None:
        world = self.world
        for command in commands:
            kind = type(command)
            if kind is Send:
                self._send(command.link, command.message)
            elif kind is StoreBlock:
                self.stored.append((world.film_index(self.core.channel, command.block.digest),
                                    world.now))
            elif kind is SetTimer:
                world.at(command.at, self.handle, inputs.TimerFired(command.at, command.key))
            elif kind is Connect:
                self._connect(command.link, command.addr, command.first)
            elif kind is Close:
                self._close(command.link, command.reset)
            elif kind is AskServer:
                world.server.request(self, command.token, command.code, command.channel)
            elif kind is Placed:
                self.placed.append(command)

    # -- links ---------------------------------------------------------------------------

    def _connect(self, link, addr: Addr, first) -> None:
        world = self.world
        peer = world.clients.get(addr.ip)
        latency = (self.latency + (peer.latency if peer else self.latency)) / 2
        if peer is None or peer.fate in ("killed", "left"):
            world.after(2 * latency, self.handle,
                        inputs.LinkClosed(world.now + 2 * latency, link, "connection refused"))
            return
        peer.incoming += 1
        theirs = -peer.incoming
        conn = _Conn((self, link), (peer, theirs), latency)
        self.ends[link] = (conn, 0)
        peer.ends[theirs] = (conn, 1)
        conn.last[0] = world.now + 2 * latency       # the handshake's round trip
        self._send(link, first)

    def _send(self, link, message) -> None:
        end = self.ends.get(link)
        if end is None:
            return
        conn, side = end
        world = self.world
        now = world.now
        kind = type(message)
        if kind is Block or kind is BlockPart or kind is BlockTail:   # (a block or some of it)
            size = len(message.data) + FRAME_HEADER
            start = self.up_free if self.up_free > now else now
            self.up_free = done = start + size / self.upload
            meter = self.meters.get(link)
            if meter is None and self.core.links.get(link, ("",))[0] == "child":
                meter = self.meters[link] = [0, 0]
            if meter is not None:
                meter[0] += size
                self.perform(self.core.handle(inputs.Metered(now, link, meter[1],
                                                             meter[0] - meter[1])))
            else:  # a repair's block: its bytes flow from now on, beside the others' (TCP)
                world.at(now + conn.latency, _progress, conn, side)
        else:
            size, done, meter = CONTROL_BYTES, now + CONTROL_BYTES / self.upload, None
        arrival = done + conn.latency
        if arrival < conn.last[side]:
            arrival = conn.last[side]
        conn.last[side] = arrival
        world.at(arrival, _arrive, conn, side, message, size if meter is not None else 0)

    def _close(self, link, reset: bool) -> None:
        end = self.ends.pop(link, None)
        self.meters.pop(link, None)
        if end is None:
            return
        conn, side = end
        world = self.world
        arrival = world.now + conn.latency
        if not reset and conn.last[side] > arrival:
            arrival = conn.last[side]
        conn.last[side] = arrival
        peer, theirs = conn.ends[1 - side]
        world.at(arrival, _end, peer, theirs, conn, "connection closed")

    # -- fates -----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL: the kernel resets every connection; the server's pushes fail."""
        self.fate, self.fate_at = "killed", self.world.now
        for link, (conn, side) in list(self.ends.items()):
            peer, theirs = conn.ends[1 - side]
            self.world.after(conn.latency, _end, peer, theirs, conn, "connection reset")
        self.ends.clear()

    def freeze(self) -> None:
        """SIGSTOP: nothing more from this client; each peer finds out by its link's silence."""
        self.fate, self.fate_at = "frozen", self.world.now
        for link, (conn, side) in list(self.ends.items()):
            peer, theirs = conn.ends[1 - side]
            entry = peer.core.links.get(theirs)
            kind = entry[0] if entry else None
            if kind == "parent":
                silence = PARENT_SILENCE
            elif kind == "child":
                silence = self.config.link_stall + self.config.period
            else:
                continue  # a question: the asker's own deadline ends it
            self.world.after(silence, _end, peer, theirs, conn, "silent")

    def leave(self) -> None:
        """SIGTERM: the core leaves gracefully (its goodbyes go out), then it is gone."""
        self.handle(inputs.Leave(self.world.now))
        self.fate, self.fate_at = "left", self.world.now


def _arrive(conn: _Conn, side: int, message, metered: int) -> None:
    peer, theirs = conn.ends[1 - side]
    sender, link = conn.ends[side]
    world = sender.world
    if peer.fate == "alive" and theirs in peer.ends:
        peer.perform(peer.core.handle(inputs.Received(world.now, theirs, message)))
    if metered and sender.fate == "alive":
        meter = sender.meters.get(link)
        if meter is not None:
            meter[1] += metered
            sender.perform(sender.core.handle(inputs.Metered(world.now, link, meter[1],
                                                             meter[0] - meter[1])))


def _progress(conn: _Conn, side: int) -> None:
    peer, theirs = conn.ends[1 - side]
    if peer.fate == "alive" and theirs in peer.ends:
        peer.perform(peer.core.handle(inputs.Progress(peer.world.now, theirs)))


def _end(client: SimClient, link, conn: _Conn, reason: str) -> None:
    end = client.ends.get(link)
    if end is None or end[0] is not conn:
        return
    del client.ends[link]
    client.meters.pop(link, None)
    client.handle(inputs.LinkClosed(client.world.now, link, reason))


class SimServer:
    """The stock server's behaviour (server.channel's rules) in simulated time."""

    def __init__(self, world: "World", slots: int, period: float, channels: int = 1,
                 upload_bps: float = 1e9):
        self.world, self.slots, self.period, self.channels = world, slots, period, channels
        self.upload = upload_bps / 8.0
        self.epoch = 0
        self.requests: list[tuple[float, str, str]] = []     # (time, ip, code)
        self.bytes_sent = 0
        self.start()

    def start(self) -> None:
        """(Re)start: no member, a new absolute schedule from now."""
        self.epoch += 1
        self.registry = Registry([Channel(i, self.slots) for i in range(self.channels)])
        self.schedule = Schedule(self.world.now, self.period)
        self.started_at = self.world.now
        self.world.at(self.world.now, self._round, self.epoch, 0)

    def request(self, client: SimClient, token, code: str, channel: int) -> None:
        self.requests.append((self.world.now, client.ip, code))
        self.world.after(client.latency, self._serve, client, token, code, channel)

    def _serve(self, client: SimClient, token, code: str, channel: int) -> None:
        world, latency = self.world, client.latency
        if code == JOIN:
            result = self.registry.join(client.ip, channel)
            answer = result.joined
            if answer:
                if client.fate in ("killed", "left"):
                    self.registry.cancel(result.ticket)
                    return
                self.registry.confirm(result.ticket)
        elif code == LIST:
            answer = self.registry.members(channel)
        elif code == COUNT:
            answer = self.registry.count(channel)
        else:
            assert code == LEAVE
            self.registry.leave(client.ip, channel)
            return
        world.after(latency, client.handle, inputs.ServerAnswered(world.now + latency, token, answer))

    def _round(self, epoch: int, index: int) -> None:
        if epoch != self.epoch:
            return  # a round of the server before its restart
        world = self.world
        for channel in range(self.channels):
            film = world.films[channel % len(world.films)]
            data = film.blocks[self.schedule.block_of(index, len(film.blocks))]
            at = world.now
            for ticket in self.registry.round_targets(channel):
                client = world.clients.get(ticket.ip)
                ok = client is not None and client.fate in ("alive", "frozen")
                if ok and client.fate == "frozen":
                    client.pushes_while_frozen += 1
                    ok = client.pushes_while_frozen <= PUSH_BACKLOG
                self.registry.record(ticket, ok, len(data))
                if ok and client.fate == "alive":
                    at += len(data) / self.upload
                    self.bytes_sent += len(data)
                    world.at(at + client.latency, client.handle,
                             inputs.ServerBlock(at + client.latency, data))
        world.at(self.schedule.due(index + 1), self._round, epoch, index + 1)


class World:
    """The clock, the event queue, the clients and the server."""

    def __init__(self, films: list[Film], slots: int, period: float = 2.0, channels: int = 1):
        self.now = 0.0
        self._queue: list = []
        self._seq = 0
        self.films = films
        self.clients: dict[str, SimClient] = {}
        self.events = 0
        self.server = SimServer(self, slots, period, channels)

    def at(self, when: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def after(self, delay: float, fn, *args) -> None:
        self.at(self.now + delay, fn, *args)

    def run_until(self, end: float) -> None:
        queue = self._queue
        pop = heapq.heappop
        while queue and queue[0][0] <= end:
            when, _, fn, args = pop(queue)
            if when > self.now:
                self.now = when
            self.events += 1
            fn(*args)
        self.now = max(self.now, end)

    def run_until_true(self, predicate, end: float) -> bool:
        """Run event by event until ``predicate()`` holds (True) or ``end`` (False)."""
        queue = self._queue
        while not predicate():
            if not queue or queue[0][0] > end:
                self.now = max(self.now, end)
                return False
            when, _, fn, args = heapq.heappop(queue)
            self.now = max(self.now, when)
            self.events += 1
            fn(*args)
        return True

    def film_index(self, channel: int, digest: bytes) -> int | None:
        return self.films[channel % len(self.films)].index.get(digest)

    def add_client(self, ip: str, config: CoreConfig, upload_mbit: float = 8.0,
                   latency: float = 0.0005, seed: int = 0) -> SimClient:
        """A client that starts now (it listens, then asks the server)."""
        client = SimClient(self, ip, config, upload_mbit * 1e6, latency, random.Random(seed))
        client.started_at = self.now
        self.clients[ip] = client
        client.handle(inputs.Start(self.now))
        return client
