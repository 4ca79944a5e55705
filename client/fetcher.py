"""Runs a :class:`~client.repair.RepairPlan` over real connections.

One thread drives the plan; each assignment is fetched on its own connection
by a short-lived thread (``Hello(kind="fetch")``, then the peer's blocks and a
``FetchEnd``). Fetch threads only report into a queue; the driver decides,
closes the sockets of stalled sources, and hands released blocks to the node
in play order. Repairs use their own connections, so they never delay the
live stream.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Callable

from client import roles
from client.links import RECV_CHUNK, connect_from, send_checked
from client.peerproto import (Addr, Block, BlockTail, FetchEnd, FrameDecoder, Hello,
                              PeerProtocolError, Reject)
from client.repair import RepairPlan

log = logging.getLogger(__name__)


class RepairJob:
    """Fetch the plan's blocks from its sources; give them to ``on_block`` in order.

    ``on_block(digest, block)`` gets each block in play order, ``block`` None
    for a block no source could give; ``on_done(job)`` is called once, always.
    ``deadline`` bounds the whole job, each fetch's reads included;
    ``emit(event, **fields)`` records each source that fails (:mod:`client.events`);
    ``held``: the beginning of the plan's first block, cut short when the
    parent was lost: a source is asked for the rest of it only.
    """

    #: What a source may answer (client.roles).
    ROLE = roles.FETCH

    def __init__(self, plan: RepairPlan, own: Addr, channel: int,
                 on_block: Callable[[bytes, Block | None], None],
                 on_done: Callable[["RepairJob"], None], deadline: float,
                 clock: Callable[[], float] = time.monotonic,
                 check: Callable[[bytes, Addr], bool] | None = None,
                 emit: Callable[..., None] | None = None, held: bytes = b""):
        self.plan, self.own, self.channel = plan, own, channel
        self._held = held
        #: Blocks completed from their beginning held and a source's rest (0 or 1).
        self.finished = 0
        self._check = check  # (digest, source): may this block be stored (client.verify)
        self._on_block, self._on_done = on_block, on_done
        self._emit = emit or (lambda event, **fields: None)  # the node's events (client.events)
        self._deadline = deadline
        self._clock = clock
        self._reports: queue.Queue = queue.Queue()
        self._sockets: dict[Addr, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._fetchers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._drive, name="repair")
        self._until = clock() + deadline  # (set again when the driver starts)
        self.fetched_from: dict[str, int] = {}
        self.failures: dict[str, str] = {}  # source: why it stopped serving
        self.failed_at: dict[str, float] = {}  # source: when (Unix time) its part went to others

    def start(self) -> None:
        self._thread.start()

    def add_source(self, source: Addr) -> None:
        """(Any thread.) Offer the plan one more source, e.g. a holder that just appeared."""
        self._reports.put(("source", source, None))

    def cancel(self) -> None:
        """Stop fetching (the node is leaving); the driver ends soon after."""
        self._cancelled.set()
        self._close_all()

    def join(self, timeout: float = 5.0) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        for fetcher in list(self._fetchers):
            fetcher.join(timeout)

    def _drive(self) -> None:
        try:
            self._run_plan()
        except Exception:  # a bug here must not leave live blocks held forever
            log.exception("repair driver failed: giving up on the rest")
        finally:
            self._close_all()
            self._on_done(self)

    def _run_plan(self) -> None:
        started = self._clock()
        self._until = started + self._deadline
        self._launch(self.plan.start())
        tick = max(0.05, self.plan.stall_after / 4)
        while not self.plan.done and not self._cancelled.is_set():
            try:
                report = self._reports.get(timeout=tick)
            except queue.Empty:
                report = None
            now = self._clock()
            if report is not None:
                kind, source, payload = report
                if kind == "progress":
                    self.plan.progressed(source, now)
                elif kind == "block":
                    key, block = payload
                    self.plan.received(source, key, block, now)
                    self.fetched_from[str(source)] = self.fetched_from.get(str(source), 0) + 1
                elif kind == "end":
                    self._launch(self.plan.lacked(source, payload, now))
                elif kind == "source":
                    log.info("new source %s joins the fetch", source)
                    self._launch(self.plan.add_source(source, now))
                elif kind == "failed":
                    log.warning("repair source %s failed: %s", source, payload)
                    self._emit("repair_source_failed", source=source, why=payload)
                    self.failures.setdefault(str(source), payload)
                    self.failed_at.setdefault(str(source), time.time())
                    self._launch(self.plan.failed(source, now))
            for source in self.plan.stalled(now):
                log.warning("repair source %s stalled: the others take over its part", source)
                self._emit("repair_source_failed", source=source,
                           why=f"stalled for {self.plan.stall_after:.1f} s")
                self.failures.setdefault(str(source), f"stalled for {self.plan.stall_after:.1f} s")
                self.failed_at.setdefault(str(source), time.time())
                self._close(source)
                self._launch(self.plan.failed(source, now))
            if now - started > self._deadline:
                log.warning("repair not complete after %.1f s: giving up on the rest", self._deadline)
                self.plan.give_up()
            for digest, block in self.plan.release():
                self._on_block(digest, block)

    def _launch(self, work: dict[Addr, list[bytes]]) -> None:
        for source, digests in work.items():
            thread = threading.Thread(target=self._fetch, args=(source, digests),
                                      name=f"fetch-{source}")
            self._fetchers.append(thread)
            thread.start()

    def _fetch(self, source: Addr, digests: list[bytes]) -> None:
        try:
            sock = connect_from(self.own.ip, source.ip, source.port, 2.0)
        except OSError as exc:
            self._reports.put(("failed", source, str(exc)))
            return
        with self._lock:
            self._sockets.setdefault(source, []).append(sock)
        decoder = FrameDecoder()
        wanted = set(digests)
        talk = roles.Conversation(self.ROLE, roles.PEER)
        try:
            sock.settimeout(self.plan.stall_after * 2)
            send_checked(sock, talk, self._request(digests))
            while True:
                message = decoder.next_message()
                if message is None:
                    # The whole job's deadline bounds the fetch too: a trickle ends there.
                    remaining = self._until - self._clock()
                    if remaining <= 0:
                        raise socket.timeout("the repair's deadline passed")
                    sock.settimeout(min(self.plan.stall_after * 2, remaining))
                    # Bytes count as progress: a source paced by --repair-rate is slow, not stalled.
                    chunk = sock.recv(RECV_CHUNK)
                    decoder.feed(chunk)
                    if chunk:
                        self._reports.put(("progress", source, None))
                    continue
                talk.received(message)
                kind, payload = self._answer(source, message, wanted)
                self._reports.put((kind, source, payload))
                if kind == "end":
                    return
        except (OSError, EOFError, PeerProtocolError) as exc:
            self._reports.put(("failed", source, str(exc)))
        except Exception as exc:  # a bug here: the others take this source's part
            log.exception("fetch from %s failed", source)
            self._reports.put(("failed", source, f"internal error: {exc!r}"))
        finally:
            with self._lock:
                open_sockets = self._sockets.get(source, [])
                if sock in open_sockets:
                    open_sockets.remove(sock)
            sock.close()

    def _request(self, keys: list):
        """The frame that asks a source for ``keys`` (a repair asks by block identity)."""
        held = self._held if keys and self.plan.missing and keys[0] == self.plan.missing[0] else b""
        return Hello("fetch", self.own, self.channel, want=tuple(keys), held=len(held))

    def _answer(self, source: Addr, message, wanted: set) -> tuple[str, object]:
        """One message of a source's answer (one :data:`ROLE` allows) as a report:
        ``("block", (key, block))`` or ``("end", keys it lacked)``."""
        if isinstance(message, BlockTail):
            message = self._completed(message, wanted)
        if isinstance(message, Block):
            if message.digest not in wanted:
                raise PeerProtocolError(f"block {message.digest.hex()[:8]} was not asked for")
            if self._check is not None and not self._check(message.digest, source):
                # Forged (or not checkable now): this source's part goes to the others.
                raise PeerProtocolError(f"block {message.digest.hex()[:8]} is not one the "
                                        "server's feed names")
            return "block", (message.digest, message)
        if isinstance(message, Reject):  # (another protocol version): it gives nothing
            log.info("repair: %s refused: %s", source, message.reason)
            return "end", list(wanted)
        assert isinstance(message, FetchEnd)
        return "end", list(message.missing)

    def _completed(self, tail: BlockTail, wanted: set) -> Block:
        """The block a source's :class:`BlockTail` ends, with the beginning held here."""
        if tail.digest not in wanted or not self.plan.missing or tail.digest != self.plan.missing[0]:
            raise PeerProtocolError(f"the rest of block {tail.digest.hex()[:8]} was not asked for")
        block = tail.completes(self._held)
        if block is None:
            # What the lost parent sent was not this block's beginning (or the source lies):
            # the others are asked for all of it.
            self._held = b""
            raise PeerProtocolError(f"the rest of block {tail.digest.hex()[:8]} does not "
                                    "complete the beginning held")
        self.finished = 1
        return block

    def _close(self, source: Addr) -> None:
        with self._lock:
            socks = list(self._sockets.get(source, []))
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_all(self) -> None:
        with self._lock:
            sources = list(self._sockets)
        for source in sources:
            self._close(source)
