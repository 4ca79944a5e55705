"""Thin socket adapters of a relay client: the server, a parent link, a child link.

Each wraps one socket and turns bytes into calls on the node (``on_*``
callbacks) or frames from the node into bytes. All decisions are the node's.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from typing import Callable

from client.peerproto import (Block, Drop, FrameDecoder, Keepalive, Message,
                              PeerProtocolError, encode)
from client.roles import Conversation, OwnViolation
from client.supervise import checkpoint
from server import protocol as stock

log = logging.getLogger(__name__)

RECV_CHUNK = 256 * 1024
#: Seconds an asked peer has for its whole answer (join, probe, vouch, tree query).
ANSWER_DEADLINE = 3.0


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


def send_progressing(sock: socket.socket, data: bytes, stall: float) -> None:
    """Send all of ``data``, failing only when no byte at all leaves for ``stall`` seconds.

    ``sendall`` with a timeout bounds the whole send, which would cut a
    healthy child that needs longer than that for one large block on a thin
    uplink; here each piece waits at most ``stall`` seconds for room, and
    any progress starts the wait anew. The socket's own timeout is left
    alone (its reader uses it). ``socket.timeout`` when the peer stopped
    taking bytes.
    """
    view = memoryview(data)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while view:
        if not poller.poll(stall * 1000):
            raise socket.timeout(f"no byte could be sent for {stall:.1f} s")
        view = view[sock.send(view):]


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
            data = _read_until_closed(sock, answer_limit, deadline)
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
                data = _read_until_closed(sock, stock.MAX_COUNT_ANSWER, deadline, data)
            except OSError:
                pass  # reset or silence after the request: what came is the answer
        return stock.parse_count(bytes(data)) if data.strip() else None

    def leave(self, channel: int) -> None:
        self._request(stock.LEAVE, channel)


def _read_until_closed(sock: socket.socket, limit: int, deadline: float,
                       data: bytearray | None = None) -> bytes:
    """What the peer sends until it closes (at most ``limit`` + 1 bytes), before ``deadline``.

    ``data`` collects the bytes as they come (a caller that takes a timeout
    as the end of the answer keeps what came). ``socket.timeout`` at the deadline.
    """
    data = bytearray() if data is None else data
    while len(data) <= limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the server's answer did not end in time")
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
    a malformed frame. Silence is judged on bytes, each ``recv`` waiting at
    most ``silence``: a block that takes longer than that to arrive is
    alive as long as its bytes keep coming.
    """

    def __init__(self, sock: socket.socket, decoder: FrameDecoder, addr, silence: float,
                 on_message: Callable, on_lost: Callable, conversation: Conversation):
        """``conversation``: the join's (:data:`client.roles.JOIN`), in its ``attached`` state."""
        self.sock, self.addr = sock, addr
        self._decoder = decoder
        self._conversation = conversation
        self._on_message, self._on_lost = on_message, on_lost
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        sock.settimeout(silence)
        self._thread = threading.Thread(target=self._read_loop, name=f"parent-{addr}")

    def start(self) -> None:
        self._thread.start()

    def _read_loop(self) -> None:
        reason = "closed"
        try:
            while not self._closed.is_set():
                message = read_message(self.sock, self._decoder)
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
    A child whose queue overflows is too slow; it is told (``Drop``) and cut.
    Keepalives go out whenever the queue stays empty for ``keepalive`` seconds.
    A child whose socket takes no byte for ``send_timeout`` seconds is cut
    (:func:`send_progressing`: a slow but moving send is never cut).
    """

    def __init__(self, sock: socket.socket, addr, backlog: int, keepalive: float,
                 send_timeout: float, on_gone: Callable, conversation: Conversation):
        """``conversation``: the handshake's, answering a ``Hello(join)`` (its Accept not sent yet)."""
        self.sock, self.addr = sock, addr
        self.conversation = conversation
        self.bytes_sent = 0
        self.blocks_sent = 0
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
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
        try:
            self._queue.put_nowait(message)
            return True
        except queue.Full:
            self.drop("too slow: its backlog of blocks overflowed")
            return False

    def drop(self, reason: str) -> None:
        """Tell the child why, then close once that is sent."""
        if self._closing.is_set():
            return
        log.warning("dropping child %s: %s", self.addr, reason)
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(Drop(reason))
        self._closing.set()

    def _send_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                try:
                    message = self._queue.get(timeout=self._keepalive)
                except queue.Empty:
                    if self._closing.is_set():
                        break
                    message = Keepalive()
                if message is None:
                    break
                try:
                    self.conversation.sending(message)
                except OwnViolation:
                    log.exception("not sent to the child %s", self.addr)
                    continue
                frame = encode(message)
                send_progressing(self.sock, frame, self._send_timeout)
                if isinstance(message, Block):
                    self.bytes_sent += len(frame)
                    self.blocks_sent += 1
                if isinstance(message, Drop):
                    reason = f"dropped: {message.reason}"
                    break
        except OSError as exc:
            reason = f"send failed: {exc}"
        except Exception as exc:  # a bug here must not leave a child that holds a slot
            log.exception("sender to %s failed", self.addr)
            reason = f"internal error: {exc!r}"
        self._closing.set()
        _shutdown(self.sock)
        self._on_gone(self, reason)

    def close(self) -> None:
        """Stop the sender after what is queued, and wait for it."""
        self._closing.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            _shutdown(self.sock)
        if threading.current_thread() is not self._thread and self._thread.ident:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                _shutdown(self.sock)
                self._thread.join(timeout=5)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
