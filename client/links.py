"""Thin socket adapters of a relay client: the server, a parent link, a child link.

Each wraps one socket and turns bytes into calls on the node (``on_*``
callbacks) or frames from the node into bytes. All decisions are the node's.
"""

from __future__ import annotations

import fcntl
import logging
import queue
import select
import socket
import struct
import termios
import threading
import time
from typing import Callable, NamedTuple

from client.peerproto import (Block, BlockAbort, BlockEnd, BlockPart, BlockStart, Drop,
                              FrameDecoder, Keepalive, Message, Move, PeerProtocolError,
                              Reassembly, encode)
from client.roles import Conversation, OwnViolation
from client.supervise import checkpoint
from server import protocol as stock

log = logging.getLogger(__name__)

RECV_CHUNK = 256 * 1024
#: Seconds an asked peer has for its whole answer (join, probe, vouch, tree query). A
#: frozen peer (SIGSTOP: its kernel still accepts) costs this much per question, so it
#: is no longer than the connection timeout the probes always had.
ANSWER_DEADLINE = 2.0

#: While a block drains from the kernel, its sender looks this often (client.capacity).
DRAIN_LOOK = 0.02


def connect_from(ip: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port whose source address is ``ip``.

    Binding before connect() makes the peer (and the stock server, which
    knows clients by IP alone) see this client's own address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((ip, 0))
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_on(ip: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on ip:port whose kernel accepts at most ``backlog`` waiting connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def read_message(sock: socket.socket, decoder: FrameDecoder) -> Message:
    """Block until one whole message is in (socket timeouts apply)."""
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        decoder.feed(sock.recv(RECV_CHUNK))


def read_message_by(sock: socket.socket, decoder: FrameDecoder, deadline: float,
                    chunk: int = RECV_CHUNK,
                    clock: Callable[[], float] = time.monotonic) -> Message:
    """One whole message before ``deadline`` (a ``clock()`` time) or ``socket.timeout``.

    The bound is on the whole read, not on each ``recv``: a peer that sends
    one byte a second is cut at the deadline all the same.
    """
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        remaining = deadline - clock()
        if remaining <= 0:
            raise socket.timeout("deadline passed before a whole message came")
        sock.settimeout(remaining)
        decoder.feed(sock.recv(chunk))


def send_checked(sock: socket.socket, conversation: Conversation, message: Message) -> None:
    """Send one frame that the peer's role allows (else :class:`~client.roles.OwnViolation`: a bug)."""
    conversation.sending(message)
    sock.sendall(encode(message))


def ask(sock: socket.socket, conversation: Conversation, message: Message, deadline: float,
        decoder: FrameDecoder | None = None,
        clock: Callable[[], float] = time.monotonic) -> Message:
    """Send ``message``, then the answer, both checked by ``conversation``, before ``deadline``.

    ``socket.timeout`` when the whole answer is not in by then.
    """
    send_checked(sock, conversation, message)
    answer = read_message_by(sock, decoder or FrameDecoder(), deadline, clock=clock)
    conversation.received(answer)
    return answer


def send_progressing(sock: socket.socket, data: bytes, stall: float,
                     progress: Callable[[int, int], None] | None = None,
                     look_every: float | None = None) -> None:
    """Send all of ``data``, failing only when no byte at all leaves for ``stall`` seconds.

    ``sendall`` with a timeout bounds the whole send, which would cut a
    healthy child that needs longer than that for one large block on a thin
    uplink; here each piece waits at most ``stall`` seconds for room, and
    any progress starts the wait anew. The socket's own timeout is left
    alone (its reader uses it). ``socket.timeout`` when the peer stopped
    taking bytes. ``progress(sent, left)`` after each piece, and, with
    ``look_every``, at least that often while waiting for room (``sent`` 0).
    """
    view = memoryview(data)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    wait = min(stall, look_every) if look_every else stall
    stalled_at = time.monotonic() + stall
    while view:
        if not poller.poll(wait * 1000):
            if time.monotonic() >= stalled_at:
                raise socket.timeout(f"no byte could be sent for {stall:.1f} s")
            if progress is not None:
                progress(0, len(view))
            continue
        sent = sock.send(view)
        view = view[sent:]
        stalled_at = time.monotonic() + stall
        if progress is not None:
            progress(sent, len(view))


def unacknowledged(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that its peer has not acknowledged yet (0 once closed)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                              struct.pack("i", 0)))[0]
    except (OSError, ValueError):
        return 0


#: Offsets in Linux's ``struct tcp_info`` (4.10 and later): the byte whose lowest bit is
#: ``tcpi_delivery_rate_app_limited``, ``tcpi_delivery_rate`` and ``tcpi_busy_time``.
_TCPI_APP_LIMITED_BYTE = 7
_TCPI_DELIVERY_RATE = 160
_TCPI_BUSY_TIME = 168
_TCP_INFO_SIZE = 192


class KernelCount(NamedTuple):
    """What the kernel counts of a link's sending (:func:`kernel_count`)."""

    busy: float             # seconds it has had bytes in flight
    delivery_rate: float    # bytes/s of its latest delivery sample
    app_limited: bool       # that sample was limited by what we gave it, not by the path

    @property
    def bandwidth(self) -> float | None:
        """The delivery rate where it measured the path (not app-limited), else None."""
        return self.delivery_rate if self.delivery_rate > 0 and not self.app_limited else None


def kernel_count(sock: socket.socket) -> KernelCount | None:
    """The kernel's count of ``sock``'s sending (``tcpi_busy_time``, in jiffies,
    receive-window-limited time included; ``tcpi_delivery_rate`` and whether it
    was app-limited); None where it is not known.

    The time between two looks at a link says nothing of when its bytes left:
    with cut-through a link is looked at as each part comes in, and a part
    that drained in 3 ms looked busy until the next one, 20 ms later (measured
    under a 16 Mbit/s cap: estimates of 8.5-13 Mbit/s, about the pace at which
    parts came in). The kernel's count is the time the link really worked.
    The delivery rate is the kernel's own bandwidth sample (what BBR steers
    by), which acknowledgements held up on the child's side do not stretch
    as they stretch the busy time (:mod:`client.capacity`).
    """
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < _TCPI_BUSY_TIME + 8:
        return None
    return KernelCount(struct.unpack_from("Q", raw, _TCPI_BUSY_TIME)[0] / 1e6,
                       float(struct.unpack_from("Q", raw, _TCPI_DELIVERY_RATE)[0]),
                       bool(raw[_TCPI_APP_LIMITED_BYTE] & 1))


def addresses_of(host: str) -> frozenset[str]:
    """The IPv4 addresses of ``host`` (itself when it is one: no look-up then)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror:
            return frozenset()
    return frozenset(info[4][0] for info in infos)


class NoJoinAnswer(stock.ProtocolError):
    """The server took a join request but sent no answer to the push port.

    The stock server does that for a channel it does not have (its handler
    crashes); :meth:`StockServer.count` tells that case from a slow server.
    """


class StockServer:
    """Requests to the channel server, as the stock protocol (docs/report/protocol.rst) has them.

    The join answer does not come back on the request connection but on the
    client's push port; :meth:`join` therefore takes the queue into which the
    push listener puts the answers it receives.
    """

    def __init__(self, host: str, port: int, own_ip: str, timeout: float = 3.0):
        self.host, self.port, self.own_ip, self.timeout = host, port, own_ip, timeout

    def _request(self, code: str, channel: int, answer_limit: int = 0) -> bytes:
        """One request, its answer read until the server closes; all within ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        with connect_from(self.own_ip, self.host, self.port, self.timeout) as sock:
            sock.sendall(stock.encode_request(code, channel))
            if not answer_limit:
                return b""
            data = read_until_closed(sock, answer_limit, deadline)
            if len(data) > answer_limit:
                raise stock.BadAnswer(f"answer to {code}{channel} longer than {answer_limit} bytes")
            return data

    def join(self, channel: int, answers: "queue.Queue[bytes]") -> bool:
        """Ask to be a direct client; True when the server answered ``10``."""
        while not answers.empty():
            answers.get_nowait()  # stale answers of an earlier attempt
        self._request(stock.JOIN, channel)
        try:
            return stock.parse_join_answer(answers.get(timeout=self.timeout))
        except queue.Empty:
            raise NoJoinAnswer("the server did not answer the join request") from None

    def clients(self, channel: int) -> list[str]:
        return stock.parse_client_list(self._request(stock.LIST, channel, stock.MAX_LIST_ANSWER))

    def count(self, channel: int) -> int | None:
        """``13X``: how many direct clients ``channel`` has; None when the server has no such channel.

        Both our server and the stock one close a request for a channel they
        do not have without a word, and answer a count for every other
        one. OSError: the server is not reachable.
        """
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        with connect_from(self.own_ip, self.host, self.port, self.timeout) as sock:
            sock.sendall(stock.encode_request(stock.COUNT, channel))
            try:
                data = read_until_closed(sock, stock.MAX_COUNT_ANSWER, deadline, data)
            except OSError:
                pass  # reset or silence after the request: what came is the answer
        return stock.parse_count(bytes(data)) if data.strip() else None

    def leave(self, channel: int) -> None:
        self._request(stock.LEAVE, channel)


def read_until_closed(sock: socket.socket, limit: int, deadline: float,
                       data: bytearray | None = None) -> bytes:
    """What the peer sends until it closes (at most ``limit`` + 1 bytes), before ``deadline``.

    ``data`` collects the bytes as they come (a caller that takes a timeout
    as the end of the answer keeps what came). ``socket.timeout`` at the deadline.
    """
    data = bytearray() if data is None else data
    while len(data) <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the answer did not end in time")
        sock.settimeout(remaining)
        chunk = sock.recv(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class ParentLink:
    """This client's connection to its parent relay.

    A reader thread turns incoming frames into node callbacks; silence longer
    than ``silence`` seconds counts as the parent's death, as does a reset or
    a malformed frame. Silence is judged on bytes: a block that takes longer
    than that to arrive is alive as long as its bytes keep coming.

    The same thread sends a keepalive up whenever nothing went up for
    ``keepalive`` seconds, so that the parent hears this child even while
    its controller is busy: an orphan of this client that finds the parent
    silent too may take its place there (``Hello.lost``).
    """

    def __init__(self, sock: socket.socket, decoder: FrameDecoder, addr, silence: float,
                 on_message: Callable, on_lost: Callable, conversation: Conversation,
                 keepalive: float | None = None):
        """``conversation``: the join's (:data:`client.roles.JOIN`), in its ``attached`` state."""
        self.sock, self.addr = sock, addr
        #: The block arriving in parts, and the node's forward of it to its children
        #: (both touched by this link's reader thread only, through ``on_message``).
        self.incoming = Reassembly()
        self.relay = None
        self._decoder = decoder
        self._conversation = conversation
        self._on_message, self._on_lost = on_message, on_lost
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._silence = silence
        self._keepalive = keepalive or silence
        self._heard = self._said = time.monotonic()
        sock.settimeout(min(silence, self._keepalive))
        self._thread = threading.Thread(target=self._read_loop, name=f"parent-{addr}")

    def start(self) -> None:
        self._thread.start()

    def _next_message(self) -> Message:
        """The next whole message; ``socket.timeout`` after ``silence`` without a byte."""
        while True:
            message = self._decoder.next_message()
            if message is not None:
                return message
            try:
                data = self.sock.recv(RECV_CHUNK)
            except socket.timeout:
                data = None
            now = time.monotonic()
            if data is not None:
                self._heard = now
                self._decoder.feed(data)
            elif now - self._heard >= self._silence:
                raise socket.timeout(f"no byte for {now - self._heard:.2f} s")
            if now - self._said >= self._keepalive:
                self.send(Keepalive())

    def _read_loop(self) -> None:
        reason = "closed"
        try:
            while not self._closed.is_set():
                message = self._next_message()
                self._conversation.received(message)
                self._on_message(self, message)
                checkpoint("parent-link")
        except socket.timeout:
            reason = "silent"
        except EOFError:
            reason = "connection closed"
        except PeerProtocolError as exc:
            reason = f"protocol error: {exc}"
        except OSError as exc:
            reason = f"connection error: {exc}"
        except Exception as exc:  # a bug here must not leave a client that never rejoins
            log.exception("reader of the link to %s failed", self.addr)
            reason = f"internal error: {exc!r}"
        if not self._closed.is_set():
            self._on_lost(self, reason)

    def send(self, message: Message) -> bool:
        """False when it could not be sent (or was one a child may not send: a bug, logged)."""
        try:
            with self._send_lock:
                send_checked(self.sock, self._conversation, message)
                self._said = time.monotonic()
            return True
        except OwnViolation:
            log.exception("not sent to the parent %s", self.addr)
            return False
        except OSError:
            return False

    def close(self) -> None:
        """Close from our side; the reader thread ends without reporting a loss."""
        self._closed.set()
        _shutdown(self.sock)
        if threading.current_thread() is not self._thread and self._thread.ident:
            self._thread.join(timeout=5)
        self.sock.close()


class ChildLink:
    """A child's connection: a bounded queue of frames drained by a sender thread.

    Relaying to one child never waits on another: the node only enqueues.
    The queue holds at most ``backlog`` blocks and control frames; a block in
    parts counts once, at its :class:`BlockStart` (its parts, bounded by the
    block's own bound, and its end follow it). A child whose queue overflows
    is too slow; it is told (``Drop``) and cut.
    Keepalives go out whenever the queue stays empty for ``keepalive`` seconds.
    A child whose socket takes no byte for ``send_timeout`` seconds is cut
    (:func:`send_progressing`: a slow but moving send is never cut).

    ``meter(link, now, written, unacknowledged, writing)`` is told, at each
    piece of a block or a part written and every :data:`DRAIN_LOOK` seconds
    until the kernel has it all acknowledged, what the link has written and
    what its peer has not acknowledged yet (:class:`client.capacity.Uplink`).
    """

    def __init__(self, sock: socket.socket, addr, backlog: int, keepalive: float,
                 send_timeout: float, on_gone: Callable, conversation: Conversation,
                 meter: Callable | None = None):
        """``conversation``: the handshake's, answering a ``Hello(join)`` (its Accept not sent yet)."""
        self.sock, self.addr = sock, addr
        self.conversation = conversation
        self.started = self.heard_at = time.monotonic()   # heard_at: the child's latest frame
        self.bytes_sent = 0
        self.blocks_sent = 0
        self._meter = meter
        self._cut: str | None = None  # why the link is being reset (cut())
        self._written = 0            # bytes of every frame written to the socket
        self._draining = False       # a block's bytes are still unacknowledged
        self._load_lock = threading.Lock()
        self._waiting_bytes = 0      # of the blocks queued and the one being written
        self._waiting_blocks = 0     # blocks queued, not yet being written
        self._backlog = backlog
        self._queued = 0             # frames queued that count against the backlog
        self._queue: queue.Queue = queue.Queue()
        self._keepalive = keepalive
        self._on_gone = on_gone
        self._closing = threading.Event()
        self._send_timeout = send_timeout
        self._thread = threading.Thread(target=self._send_loop, name=f"child-{addr}")

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, message: Message) -> bool:
        """Queue a frame; False (and the child is being dropped) when it cannot keep up."""
        if self._closing.is_set():
            return False
        counts = not isinstance(message, _FOLLOWERS)
        with self._load_lock:
            full = counts and self._queued >= self._backlog
            if not full:
                self._queued += counts
                if isinstance(message, (Block, BlockPart)):
                    self._waiting_bytes += len(message.data)
                self._waiting_blocks += isinstance(message, (Block, BlockStart))
        if full:
            self.drop("too slow: its backlog of blocks overflowed")
            return False
        self._queue.put_nowait(message)
        return True

    def load(self) -> tuple[int, int]:
        """(bytes not yet delivered to the child, blocks waiting in the queue)."""
        with self._load_lock:
            return self._waiting_bytes + unacknowledged(self.sock), self._waiting_blocks

    def drop(self, reason: str) -> None:
        """Tell the child why, then close once that is sent."""
        if self._closing.is_set():
            return
        log.warning("dropping child %s: %s", self.addr, reason)
        self._last_word(Drop(reason))

    def move(self, message: Move) -> bool:
        """Send the child elsewhere: what is queued is not sent, ``message`` is, then close.

        The frame being written is finished first (a frame cut in the middle
        would look like a failure). False when the link is already closing.
        """
        if self._closing.is_set():
            return False
        self._last_word(message)
        return True

    def cut(self, reason: str) -> bool:
        """Reset the link now: what it holds, in the queue and in the kernel, is discarded.

        The socket is shut down at once (the sender's next write fails, the
        child's reader ends) and reset when the reader closes it
        (``SO_LINGER`` 0). False when the link is already closing.
        """
        if self._closing.is_set():
            return False
        log.info("cutting the link to child %s: %s", self.addr, reason)
        self._cut = reason
        self._last_word(None)
        try:  # a reset when the child's reader closes it: the kernel's queue is discarded
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        _shutdown(self.sock)  # wakes the sender (waiting for room) and the reader now
        return True

    def _last_word(self, message: Message | None) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._load_lock:
            self._waiting_bytes = self._waiting_blocks = self._queued = 0
        self._queue.put_nowait(message)
        self._closing.set()

    def _look(self, writing: bool) -> int:
        """Tell the meter what the link wrote and the child has not acknowledged; that amount."""
        queued = unacknowledged(self.sock)
        if self._meter is not None:
            self._meter(self, time.monotonic(), self._written, queued, writing,
                        kernel_count(self.sock))
        return queued

    def _wrote(self, sent: int, left: int) -> None:
        self._written += sent

    def _wrote_block_piece(self, sent: int, left: int) -> None:
        if self._cut is not None:
            raise _LinkCut(self._cut)
        self._written += sent
        with self._load_lock:
            self._waiting_bytes = max(0, self._waiting_bytes - sent)
        self._look(writing=left > 0)

    def _send_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                if self._cut is not None:
                    raise _LinkCut(self._cut)
                if self._draining:  # watch the block leave: the uplink's estimate (client.capacity)
                    self._draining = self._look(writing=False) > 0
                try:
                    message = self._queue.get(timeout=DRAIN_LOOK if self._draining
                                              else self._keepalive)
                except queue.Empty:
                    if self._closing.is_set():
                        break
                    if self._draining:
                        continue  # bytes are on their way: no keepalive needed
                    message = Keepalive()
                if message is None:
                    if self._cut is not None:
                        raise _LinkCut(self._cut)
                    break
                with self._load_lock:
                    self._queued = max(0, self._queued - (not isinstance(message, _FOLLOWERS)))
                    if isinstance(message, (Block, BlockStart)):
                        self._waiting_blocks = max(0, self._waiting_blocks - 1)
                try:
                    self.conversation.sending(message)
                except OwnViolation:
                    log.exception("not sent to the child %s", self.addr)
                    continue
                frame = encode(message)
                carries = isinstance(message, (Block, BlockPart))  # a block's bytes: metered
                if carries:
                    with self._load_lock:
                        # the frame's header and fields count too, from now on
                        self._waiting_bytes += len(frame) - len(message.data)
                    self._look(writing=True)
                send_progressing(self.sock, frame, self._send_timeout,
                                 self._wrote_block_piece if carries else self._wrote,
                                 look_every=DRAIN_LOOK if carries and self._meter else None)
                if isinstance(message, _BLOCK_FRAMES):
                    self.bytes_sent += len(frame)
                    self.blocks_sent += isinstance(message, (Block, BlockEnd))
                if carries:
                    self._draining = self._meter is not None
                if isinstance(message, (Drop, Move)):
                    reason = (f"dropped: {message.reason}" if isinstance(message, Drop)
                              else "moved elsewhere")
                    break
        except _LinkCut as cut:
            reason = f"cut: {cut}"
        except OSError as exc:
            reason = f"cut: {self._cut}" if self._cut is not None else f"send failed: {exc}"
        except Exception as exc:  # a bug here must not leave a child that holds a slot
            log.exception("sender to %s failed", self.addr)
            reason = f"internal error: {exc!r}"
        self._closing.set()
        _shutdown(self.sock)
        self._on_gone(self, reason)

    def close(self) -> None:
        """Stop the sender after what is queued, and wait for it."""
        self._closing.set()
        self._queue.put_nowait(None)
        if threading.current_thread() is not self._thread and self._thread.ident:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                _shutdown(self.sock)
                self._thread.join(timeout=5)


#: Frames that follow a BlockStart: not counted against a child's backlog (the start is).
_FOLLOWERS = (BlockPart, BlockEnd, BlockAbort)
#: Frames of the blocks themselves: a link's upload (``bytes_sent``).
_BLOCK_FRAMES = (Block, BlockStart, BlockPart, BlockEnd, BlockAbort)


class _LinkCut(Exception):
    """Raised in a child link's sender once :meth:`ChildLink.cut` was called."""


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
