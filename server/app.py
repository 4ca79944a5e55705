"""The channel server's socket edges and command line.

Everything that decides lives in pure modules: :mod:`server.protocol` (what
bytes mean), :mod:`server.channel` (membership, failure rule, schedule) and
:mod:`server.films` (which files to send). This module only moves bytes:

* the listener (main thread) accepts request connections and reads each one's
  request in its selector (at most 1,024 bytes, within :data:`REQUEST_TIMEOUT`;
  :mod:`server.intake` bounds how many are read at once, per address and in
  all), so that idle connections hold no thread;
* a complete, valid request goes to a handler thread, which answers it and
  closes; at most :data:`MAX_HANDLERS` run at once, a request past that is
  closed at once;
* one thread per channel sends a block every period on an absolute schedule,
  to all the channel's clients in parallel through a small pool of sender
  threads, every send bounded by the end of the period.

Stopping (Ctrl-C, SIGTERM: the signal handler only writes to a pipe, see
:mod:`stopsignals`) wakes the listener, sets one ``threading.Event`` the
channel threads wait on, shuts down every socket in use
so that blocked calls return, joins every thread it started, and writes the
statistics.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import json
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from server import feed, protocol
from server.channel import Channel, Outcome, Registry, Schedule, Slot
from server.films import Film, FilmError, assign_films, find_films
from server.intake import Finished, Intake
from server.tracker import add_beside_server_arguments, start_beside_server, stop_beside_server
from stopsignals import StopSignals

log = logging.getLogger("server")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILMS = REPO / "filme"

#: A request connection must deliver its request within this many seconds.
REQUEST_TIMEOUT = 2.0
#: Connecting to a push port and sending a join answer: at most this long.
ANSWER_TIMEOUT = 1.0
#: Request handlers running at once; requests past this are closed at once.
MAX_HANDLERS = 32
#: Sender threads per channel at most (fewer when --max-clients is smaller).
MAX_SENDERS = 16
#: How long stopping waits for each thread to end before giving up on it.
JOIN_TIMEOUT = 2.0
LISTEN_BACKLOG = 128

# Linux: take the local port at connect() time, not at bind() (many short
# connections from one bound source address would otherwise exhaust ports).
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# ------------------------------------------------------------------ options

@dataclass(frozen=True)
class Config:
    host: str
    port: int
    push_port: int
    channels: int | None
    max_clients: int
    period: float
    films: Path
    stats: Path | None
    log_level: str


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _channel_count(text: str) -> int:
    value = _positive_int(text)
    if value > protocol.MAX_CHANNELS:
        raise argparse.ArgumentTypeError(
            f"at most {protocol.MAX_CHANNELS} (the channel is one digit on the wire)")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value}")
    return value


def _period(text: str) -> float:
    value = float(text)
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    parser = argparse.ArgumentParser(
        prog="python -m server" if script in ("", "__main__.py", "-c") else script,
        description="relaytv channel server: broadcasts films cut into blocks "
                    "(NAME_00000.mkv, ...) to the clients of each channel, "
                    "with the stock server's wire protocol, described in "
                    "docs/report/protocol.rst (section 'The stock protocol').",
        epilog="Ctrl-C or SIGTERM stops it; --stats then receives the statistics.")
    parser.add_argument("--host", default="",
                        help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=_port, default=6060,
                        help="port for client requests (default: %(default)s)")
    parser.add_argument("--push-port", type=_port, default=9091,
                        help="the clients' port the server connects to for join "
                             "answers and blocks (default: %(default)s)")
    parser.add_argument("--channels", type=_channel_count, default=None, metavar="N",
                        help="number of channels, 1-10; channel i broadcasts film i, "
                             "films repeat when there are fewer (default: one per film)")
    parser.add_argument("--max-clients", type=_positive_int, default=2, metavar="M",
                        help="clients per channel; past it a join is answered 00 "
                             "(default: %(default)s)")
    parser.add_argument("--period", type=_period, default=2.0, metavar="SECONDS",
                        help="seconds between blocks (default: %(default)s)")
    parser.add_argument("--films", type=Path, default=DEFAULT_FILMS, metavar="DIR",
                        help="folder of the films' blocks (default: the repository's filme/)")
    parser.add_argument("--stats", type=Path, default=None, metavar="FILE",
                        help="write statistics as JSON to FILE on exit (default: none)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default: %(default)s)")
    add_beside_server_arguments(parser)
    feed.add_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    ns = build_parser().parse_args(argv)
    return Config(host=ns.host, port=ns.port, push_port=ns.push_port,
                  channels=ns.channels, max_clients=ns.max_clients, period=ns.period,
                  films=ns.films, stats=ns.stats, log_level=ns.log_level)


# ---------------------------------------------------------------- sockets

class SocketSet:
    """Sockets in use by the server's threads, shut down all at once on stop so
    that a thread blocked in connect/recv/send returns at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False

    def add(self, sock: socket.socket) -> bool:
        """Track ``sock``; False (not tracked) once stopping has begun."""
        with self._lock:
            if self._closed:
                return False
            self._sockets.add(sock)
            return True

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def shutdown_all(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _abort(sock: socket.socket) -> None:
    """Close with a reset: drop unsent data instead of letting the kernel keep it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _time_left(deadline: float, clock: Callable[[], float]) -> float:
    remaining = deadline - clock()
    if remaining <= 0:
        raise TimeoutError("no time left before the deadline")
    return remaining


def push(ip: str, port: int, data: bytes, deadline: float, sockets: SocketSet,
         source: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Connect to ``ip:port``, send ``data``, close; all before ``deadline``.

    Raises ``OSError`` (``TimeoutError`` included) on any failure.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if not sockets.add(sock):
        sock.close()
        raise OSError(errno.ECANCELED, "server stopping")
    ok = False
    try:
        if source:
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass
            sock.bind((source, 0))
        sock.settimeout(_time_left(deadline, clock))
        sock.connect((ip, port))
        sock.settimeout(_time_left(deadline, clock))   # sendall: a bound on the total
        sock.sendall(data)
        ok = True
    finally:
        sockets.discard(sock)
        if ok:
            sock.close()
        else:
            _abort(sock)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------- channels

class ChannelSender:
    """The thread of one channel: a block every period to every client."""

    def __init__(self, number: int, film: Film, server: "ChannelServer"):
        self.number = number
        self.film = film
        self.server = server
        self.workers = max(1, min(server.config.max_clients, MAX_SENDERS))
        self.thread = threading.Thread(target=self._run, name=f"channel-{number}")

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        server = self.server
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"channel-{self.number}-send")
        try:
            previous = None
            while not server.stopping.is_set():
                slot = server.schedule.next_slot(previous, server.clock())
                if slot.skipped:
                    log.warning("channel %d: %d slot(s) missed after an overrun; "
                                "going on with block slot %d", self.number, slot.skipped,
                                slot.index)
                    server.registry.update_stats(self.number, skipped_slots=slot.skipped)
                if server.stopping.wait(max(0.0, slot.due - server.clock())):
                    break
                self._round(pool, slot)
                previous = slot.index
        except Exception:
            log.exception("channel %d: thread failed", self.number)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _round(self, pool: concurrent.futures.Executor, slot: Slot) -> None:
        server, registry = self.server, self.server.registry
        registry.update_stats(self.number, rounds=1)
        if server.feed is not None:
            try:  # vouched for before it is sent: a child may check it at once
                server.feed.publish_round(self.number, slot.index, self.film)
            except OSError as exc:
                log.error("channel %d: digest feed not updated: %s", self.number, _describe(exc))
        targets = registry.round_targets(self.number)
        if not targets:
            return
        block = server.schedule.block_of(slot.index, len(self.film))
        try:
            data = self.film.read_block(block)      # once per round, for every client
        except OSError as exc:
            log.error("channel %d: cannot read %s: %s", self.number,
                      self.film.block(block), _describe(exc))
            return
        futures = {pool.submit(push, t.ip, server.config.push_port, data, slot.deadline,
                               server.sockets, server.source, server.clock): t
                   for t in targets}
        for future in concurrent.futures.as_completed(futures):
            ticket = futures[future]
            exc = future.exception()
            outcome = registry.record(ticket, exc is None, len(data))
            if outcome is Outcome.SKIPPED:
                log.info("channel %d: block %d to %s failed (%s); skipped, removed if "
                         "its next one fails too", self.number, block, ticket.ip,
                         _describe(exc))
            elif outcome is Outcome.REMOVED:
                log.warning("channel %d: removed %s: second failed send in a row (%s)",
                            self.number, ticket.ip, _describe(exc))
        late = server.clock() - (slot.due + server.schedule.period)
        if late > 0:
            registry.update_stats(self.number, overruns=1)
            log.warning("channel %d: round of block %d to %d client(s) overran the "
                        "period by %.3f s", self.number, block, len(targets), late)
        else:
            log.debug("channel %d: block %d (%d bytes) sent to %d client(s)",
                      self.number, block, len(data), len(targets))


def _warn_of_oversized_blocks(films: list[Film]) -> None:
    """Say at start which blocks relaytv clients will refuse: the stock protocol
    sends them all the same, so the server does too."""
    for film in {f.name: f for f in films}.values():
        oversized = [path for path in film.blocks if _size(path) > protocol.MAX_BLOCK]
        if oversized:
            log.warning("film %s: %d block(s) larger than %d MiB (e.g. %s), which relaytv "
                        "clients refuse; cut the film into shorter blocks", film.name,
                        len(oversized), protocol.MAX_BLOCK >> 20, oversized[0].name)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- server

class ChannelServer:
    """Listener, request handlers and channel threads of one server."""

    def __init__(self, config: Config, films: list[Film],
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        channels = config.channels or max(1, min(len(films), protocol.MAX_CHANNELS))
        self.films = assign_films(films, channels)
        _warn_of_oversized_blocks(self.films)
        self.registry = Registry(Channel(i, config.max_clients, film.name)
                                 for i, film in enumerate(self.films))
        self.source = config.host if config.host not in ("", "0.0.0.0") else None
        self.stopping = threading.Event()
        self.sockets = SocketSet()
        self.schedule: Schedule | None = None
        self.senders = [ChannelSender(i, film, self) for i, film in enumerate(self.films)]
        self.feed: feed.FeedBook | None = None   # the signed digest feed (server/feed.py)
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        self._intake = Intake(REQUEST_TIMEOUT)       # owned by the listener (serve)
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._counters = {"requests": 0, "bad_requests": 0, "refused_connections": 0}
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._dispatch = {protocol.JOIN: self._join, protocol.LIST: self._list,
                          protocol.LEAVE: self._leave, protocol.COUNT: self._count}

    # life cycle ------------------------------------------------------------
    def bind(self) -> tuple[str, int]:
        """Open the listener (SO_REUSEADDR); raises ``OSError`` when the port is taken."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listener = sock
        return sock.getsockname()[:2]

    def start_channels(self) -> None:
        self.schedule = Schedule(self.clock(), self.config.period)
        for sender in self.senders:
            sender.start()

    def request_stop(self) -> None:
        """Ask the server to stop, from any thread (not from a signal handler:
        ``Event.set`` takes a lock; pass :meth:`serve` a :class:`StopSignals`)."""
        self.stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def serve(self, signals: StopSignals | None = None) -> None:
        """Accept request connections and read their requests until :meth:`request_stop`
        or a stop signal.

        Requests are read here, in the selector (:mod:`server.intake`); only a
        complete, valid request takes a handler thread.
        """
        assert self._listener is not None, "bind() first"
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            wakers = {self._wake_r}
            if signals is not None:
                selector.register(signals.fileno(), selectors.EVENT_READ)
                wakers.add(signals.fileno())
            try:
                while not self.stopping.is_set():
                    if signals is not None and signals.is_set():
                        self.stopping.set()
                        break
                    deadline = self._intake.next_deadline()
                    timeout = 1.0 if deadline is None else min(1.0, deadline - self.clock())
                    timeout = max(0.0, timeout)
                    for key, _ in selector.select(timeout=timeout):
                        if key.fileobj is self._listener:
                            self._accept(selector)
                        elif key.fileobj not in wakers:
                            self._read_some(selector, key.fileobj, key.data)
                    for finished in self._intake.expired(self.clock()):
                        self._finish_reading(selector, finished)
            finally:
                for finished in self._intake.drain():
                    selector.unregister(finished.key)
                    finished.key.close()

    def close(self) -> None:
        """Stop everything started and join every thread (after :meth:`serve` returned)."""
        self.stopping.set()
        if self._listener is not None:
            self._listener.close()
        self.sockets.shutdown_all()
        for sender in self.senders:
            if sender.thread.ident is not None:
                sender.thread.join(JOIN_TIMEOUT)
                if sender.thread.is_alive():
                    log.error("channel %d: thread did not end", sender.number)
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.error("request handler %s did not end", thread.name)
        self._wake_r.close()
        self._wake_w.close()

    def statistics(self) -> dict:
        channels = self.registry.stats()
        with self._handlers_lock:
            counters = dict(self._counters)
        return {"period": self.config.period, "max_clients": self.config.max_clients,
                "channels": channels, **counters}

    # requests --------------------------------------------------------------
    def _count_up(self, name: str) -> None:
        with self._handlers_lock:
            self._counters[name] += 1

    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", _describe(exc))
                return
            conn.setblocking(False)
            for evicted in self._intake.add(conn, peer[0], self.clock()):
                self._count_up("refused_connections")
                log.warning("%s: too many connections without a request yet (at most %d "
                            "per address, %d in all); the oldest is closed", evicted.ip,
                            self._intake.max_per_address, self._intake.max_reading)
                selector.unregister(evicted.key)
                _abort(evicted.key)
            selector.register(conn, selectors.EVENT_READ, peer)

    def _read_some(self, selector: selectors.BaseSelector, conn: socket.socket,
                   peer: tuple[str, int]) -> None:
        try:
            chunk = conn.recv(self._intake.room(conn))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._count_up("requests")
            self._count_up("bad_requests")
            log.warning("%s:%d: reading the request failed: %s", peer[0], peer[1],
                        _describe(exc))
            self._intake.received(conn, b"")
            selector.unregister(conn)
            conn.close()
            return
        finished = self._intake.received(conn, chunk)
        if finished is not None:
            self._finish_reading(selector, finished)

    def _finish_reading(self, selector: selectors.BaseSelector, finished: Finished) -> None:
        """A connection's request is in (or will never be): answer it in a handler, or drop it."""
        conn: socket.socket = finished.key
        peer = selector.unregister(conn).data
        self._count_up("requests")
        request = self._parse(peer, finished)
        if request is None:
            conn.close()
            return
        if not self._slots.acquire(blocking=False):
            self._count_up("refused_connections")
            log.warning("%s:%d: too many requests in progress (%d); connection closed",
                        peer[0], peer[1], MAX_HANDLERS)
            _abort(conn)
            return
        conn.setblocking(True)
        thread = threading.Thread(target=self._handle, args=(conn, peer, request),
                                  name=f"request-{peer[0]}:{peer[1]}")
        with self._handlers_lock:
            self._handlers.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:   # cannot start a thread: drop this one request
            with self._handlers_lock:
                self._handlers.discard(thread)
            self._slots.release()
            log.error("%s:%d: cannot start a handler (%s); connection closed",
                      peer[0], peer[1], exc)
            _abort(conn)

    def _parse(self, peer: tuple[str, int], finished: Finished) -> protocol.Request | None:
        """The request read, or None (logged and counted) when there is none to act on."""
        if finished.why == "timeout" and not finished.data:
            self._count_up("bad_requests")
            log.warning("%s:%d: no request within %.1f s; connection closed",
                        peer[0], peer[1], REQUEST_TIMEOUT)
            return None
        try:
            return protocol.parse_request(finished.data, len(self.films))
        except protocol.BadRequest as exc:
            self._count_up("bad_requests")
            log.warning("%s:%d: bad request: %s", peer[0], peer[1], exc)
            return None

    def _handle(self, conn: socket.socket, peer: tuple[str, int],
                request: protocol.Request) -> None:
        try:
            if not self.sockets.add(conn):
                return
            try:
                self._dispatch[request.code](conn, peer[0], request.channel)
            except OSError as exc:
                if not self.stopping.is_set():
                    log.warning("%s:%d: answering %s%d failed: %s", peer[0], peer[1],
                                request.code, request.channel, _describe(exc))
            finally:
                self.sockets.discard(conn)
        except Exception:
            log.exception("%s:%d: request handler failed", peer[0], peer[1])
        finally:
            conn.close()
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())
            self._slots.release()

    def _join(self, conn: socket.socket, ip: str, channel: int) -> None:
        result = self.registry.join(ip, channel)
        if result.previous is not None:
            log.info("%s left channel %d to join channel %d", ip, result.previous, channel)
        answer = protocol.encode_join_answer(result.joined)
        try:
            push(ip, self.config.push_port, answer, self.clock() + ANSWER_TIMEOUT,
                 self.sockets, self.source, self.clock)
        except OSError as exc:
            if result.ticket is not None:
                self.registry.cancel(result.ticket)
            log.warning("%s: join of channel %d not recorded: cannot answer %s on "
                        "%s:%d (%s)", ip, channel, answer.decode(), ip,
                        self.config.push_port, _describe(exc))
            return
        if result.ticket is None:
            log.info("%s: channel %d is full (%d clients); answered 00", ip, channel,
                     self.config.max_clients)
        elif self.registry.confirm(result.ticket):
            log.info("%s joined channel %d (%d/%d)", ip, channel,
                     self.registry.count(channel), self.config.max_clients)

    def _leave(self, conn: socket.socket, ip: str, channel: int) -> None:
        if self.registry.leave(ip, channel):
            log.info("%s left channel %d", ip, channel)
        else:
            log.info("%s asked to leave channel %d, which it is not in", ip, channel)

    def _answer(self, conn: socket.socket, data: bytes) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        conn.sendall(data)

    def _list(self, conn: socket.socket, ip: str, channel: int) -> None:
        log.debug("%s: list of channel %d", ip, channel)
        self._answer(conn, protocol.encode_list(self.registry.members(channel)))

    def _count(self, conn: socket.socket, ip: str, channel: int) -> None:
        log.debug("%s: count of channel %d", ip, channel)
        self._answer(conn, protocol.encode_count(self.registry.count(channel)))


# -------------------------------------------------------------------- main

def write_stats(path: Path, stats: dict) -> None:
    """Write ``stats`` as JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns the exit status."""
    config = parse_args(argv)
    _setup_logging(config.log_level)
    try:
        films = find_films(config.films)
    except FilmError as exc:
        log.error("%s", exc)
        return 1
    server = ChannelServer(config, films)
    tracker = None  # the library tracker beside the channels (server/tracker.py)
    feed_server = None  # the signed digest feed (server/feed.py)
    signals = StopSignals().install()
    try:
        try:
            host, port = server.bind()
        except OSError as exc:
            where = f"{config.host or '*'}:{config.port}"
            if exc.errno == errno.EADDRINUSE:
                log.error("cannot listen on %s: the port is taken (another server "
                          "running?)", where)
            else:
                log.error("cannot listen on %s: %s", where, _describe(exc))
            return 1
        log.info("listening on %s:%d; %d channel(s): %s; up to %d client(s) each; "
                 "a block every %.3g s; pushes to port %d", host or "0.0.0.0", port,
                 len(server.films),
                 ", ".join(f"{i}={f.name} ({len(f)} blocks)" for i, f in enumerate(server.films)),
                 config.max_clients, config.period, config.push_port)
        args = build_parser().parse_args(argv)
        tracker = start_beside_server(args, host)
        try:
            server.feed, feed_server = feed.start_feed(args, host, config.period)
        except OSError as exc:
            log.error("cannot start the digest feed on port %d: %s", args.feed_port, _describe(exc))
            return 1
        server.start_channels()
        server.serve(signals)
        log.info("stopping")
    finally:
        server.close()
        if feed_server is not None:
            feed_server.stop()
        stop_beside_server(tracker)
        signals.close()
    if config.stats is not None:
        try:
            write_stats(config.stats, server.statistics())
        except OSError as exc:
            log.error("cannot write statistics to %s: %s", config.stats, _describe(exc))
            return 1
        log.info("statistics written to %s", config.stats)
    log.info("stopped")
    return 0
