"""A lying relay for tests and demonstrations, written with the project's own codec.

It attaches as a child like any client, advertises free places (at its true
depth, or falsely at depth 1), declines every swap, and after ``honest_blocks``
true blocks lies (``lie``):

* ``tamper``: rewrites 64 bytes in the middle of every block it relays,
  recomputing the digest so that the frames themselves are well-formed
  (issue 16: what authenticated blocks and verified places must withstand);
* ``cut``: begins the next block in parts, sends half of them, and dies
  (issue 15: a block cut off in the middle of a cut-through forward);
* ``corrupt-end``: sends the next block's parts with an end whose digest is
  not theirs, then goes on honestly.

Blocks come from its parent whole or in parts; it relays them whole, or in
parts with ``in_parts`` (as a real relay does).
"""

from __future__ import annotations

import logging
import socket
import threading

from client.links import connect_from, listen_on, read_message
from client.peerproto import (Accept, Addr, Block, BlockEnd, BlockPart, BlockStart, Candidate,
                              FetchEnd, FrameDecoder, Hello, Info, PeerProtocolError, Reassembly,
                              Report, Swap, SwapAnswer, Vouch, VouchAnswer, encode, parts_of)

log = logging.getLogger(__name__)

FREE = 4
LIES = ("tamper", "cut", "corrupt-end")


def tamper(data: bytes) -> bytes:
    """``data`` with 64 bytes in the middle inverted (the Matroska header kept)."""
    middle = max(4, len(data) // 2 - 32)
    altered = bytearray(data)
    altered[middle:middle + 64] = bytes(b ^ 0xFF for b in altered[middle:middle + 64])
    return bytes(altered)


class LyingRelay:
    """One fake relay on ``ip``; :meth:`stop` ends and joins every thread it started."""

    def __init__(self, ip: str, port: int, channel: int = 0, claim_depth_one: bool = False,
                 honest_blocks: int = 0, period: float = 0.5, lie: str = "tamper",
                 in_parts: bool = False):
        if lie not in LIES:
            raise ValueError(f"lie is one of {LIES}, not {lie!r}")
        self.me = Addr(ip, port)
        self.channel, self.claim_depth_one = channel, claim_depth_one
        self.honest_blocks, self.period = honest_blocks, period
        self.lie, self.in_parts = lie, in_parts or lie != "tamper"
        self.lied: Block | None = None         # the (first) block it cut, corrupted or altered
        self.blocks_seen = 0                   # from its parent (a test sets honest_blocks to it)
        self.depth, self.path = 1, ()
        self.joins: list[Addr] = []            # clients that asked it for a place
        self.swaps_declined = 0
        self.blocks_relayed = 0                # blocks sent to children (altered ones counted)
        self.bytes_sent = 0                    # reported as a real relay reports its upload
        self.free = FREE                       # the places it advertises (a test may set 0)
        self.reports_sent = 0
        self._children: dict[Addr, socket.socket] = {}
        self._below: dict[Addr, tuple[Candidate, ...]] = {}  # free places its children report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._parent: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._listener = listen_on(ip, port, 16)

    # -- life cycle -----------------------------------------------------------

    def start(self, parent: Addr) -> None:
        """Join ``parent`` (raises if it does not take us), then serve."""
        sock = connect_from(self.me.ip, parent.ip, parent.port, 2.0)
        decoder = FrameDecoder()
        sock.settimeout(3.0)
        sock.sendall(encode(Hello("join", self.me, self.channel, FREE)))
        answer = read_message(sock, decoder)
        if not isinstance(answer, Accept):
            sock.close()
            raise OSError(f"{parent} did not take the liar: {answer!r}")
        self._parent, self.depth, self.path = sock, answer.depth + 1, answer.path + (parent,)
        for target in (lambda: self._read_parent(sock, decoder), self._report, self._accept):
            self._spawn(target)

    def stop(self) -> None:
        self._stop.set()
        for sock in [self._listener, self._parent, *self.children()]:
            if sock is not None:
                _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def children(self) -> list[socket.socket]:
        with self._lock:
            return list(self._children.values())

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="liar")
        self._threads.append(thread)
        thread.start()

    # -- what it claims -------------------------------------------------------

    def _place(self) -> tuple[int, tuple[Addr, ...]]:
        """(depth, ancestors) as advertised: depth 1 and no ancestor when it lies about it."""
        return (1, ()) if self.claim_depth_one else (self.depth, self.path)

    def _candidate(self) -> Candidate:
        return Candidate(self.me, self._place()[0], self.free, self.bytes_sent)

    # -- the parent link --------------------------------------------------------

    def _read_parent(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        sock.settimeout(None)
        seen = 0
        whole = Reassembly()
        try:
            while not self._stop.is_set():
                message = read_message(sock, decoder)
                if isinstance(message, BlockStart):
                    whole.start(message.seq)
                elif isinstance(message, BlockPart):
                    whole.add(message.data)
                elif isinstance(message, BlockEnd):
                    message = whole.end(message)
                if isinstance(message, Block):
                    self.blocks_seen = seen = seen + 1
                    if seen <= self.honest_blocks or (self.lie != "tamper" and self.lied):
                        self._relay(message)
                    elif self.lie == "tamper":
                        self.lied = self.lied or message
                        self._relay(Block.of(message.seq, tamper(message.data)))
                    else:
                        self.lied = message
                        self._relay(message, self.lie)
                elif isinstance(message, Swap):
                    self.swaps_declined += 1
                    sock.sendall(encode(SwapAnswer(False)))
        except (OSError, EOFError, PeerProtocolError):
            pass

    def _relay(self, block: Block, lie: str | None = None) -> None:
        if not self.in_parts:
            frames = [encode(block)]
        else:
            parts = parts_of(block.data)
            digest = block.digest if lie != "corrupt-end" else bytes(b ^ 1 for b in block.digest)
            if lie == "cut":  # the start and half the parts, then nothing more: it dies
                parts = parts[:max(1, len(parts) // 2)]
            frames = [encode(m) for m in (BlockStart(block.seq), *parts)]
            if lie != "cut":
                frames.append(encode(BlockEnd(len(block.data), digest)))
        for addr, child in list(self._children.items()):
            try:
                for frame in frames:
                    child.sendall(frame)
                    self.bytes_sent += len(frame)
                self.blocks_relayed += 1
            except OSError:
                self._forget(addr)
        if lie == "cut":
            self._die()

    def _die(self) -> None:
        """End at once, from its own reader: every socket closed, as a killed relay's are."""
        self._stop.set()
        for sock in [self._listener, self._parent, *self.children()]:
            if sock is not None:
                _close(sock)

    def _report(self) -> None:
        while not self._stop.wait(self.period / 2):
            try:
                with self._lock:
                    below = tuple(c for places in self._below.values() for c in places)
                own = (self._candidate(),) if self.free else ()
                self._parent.sendall(encode(Report(self.free, self.bytes_sent, own + below,
                                                   max_children=FREE)))
                self.reports_sent += 1
            except OSError:
                return

    # -- other clients ----------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        conn.settimeout(3.0)
        try:
            hello = read_message(conn, decoder)
            if isinstance(hello, Vouch):        # its own children it names truly
                with self._lock:
                    yes = hello.child in self._children
                conn.sendall(encode(VouchAnswer(yes)))
                conn.close()
                return
            if not isinstance(hello, Hello):
                conn.close()
                return
            depth, path = self._place()
            if hello.kind == "probe":
                conn.sendall(encode(Info(True, depth, self.free, self.bytes_sent, (self._candidate(),))))
            elif hello.kind == "fetch":
                conn.sendall(encode(FetchEnd(hello.want)))
            else:
                self.joins.append(hello.addr)
                conn.sendall(encode(Accept(depth, path)))
                with self._lock:
                    self._children[hello.addr] = conn
                conn.settimeout(None)
                while True:                                     # its reports, until it goes
                    report = read_message(conn, decoder)
                    if isinstance(report, Report):
                        with self._lock:
                            self._below[hello.addr] = report.subtree
        except (OSError, EOFError, PeerProtocolError):
            pass
        finally:
            self._forget_conn(conn)

    def _forget(self, addr: Addr) -> None:
        with self._lock:
            conn = self._children.pop(addr, None)
            self._below.pop(addr, None)
        if conn is not None:
            _close(conn)

    def _forget_conn(self, conn: socket.socket) -> None:
        with self._lock:
            for addr, sock in list(self._children.items()):
                if sock is conn:
                    del self._children[addr]
                    self._below.pop(addr, None)
        _close(conn)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
