"""The client's read-only web view: one page, an HLS stream, a JSON API, pushed events.

One thread runs a selector loop over every HTTP connection, so an idle or
hostile connection costs a socket and a few bytes, never a thread:

* at most :data:`MAX_CONNECTIONS` at once; when full, the oldest connection
  that has not yet sent a whole request is dropped for the new one;
* a request head must be whole within :data:`HEAD_DEADLINE` seconds and
  :data:`~client.httpwire.MAX_HEAD` bytes; only the paths of :data:`ROUTES`,
  ``/seg/N.mp4|ts`` and the library's films (:mod:`client.vod`: looked up in
  the library's table) exist (no file system path is ever built from a request);
* a reader that takes nothing for :data:`SEND_STALL` seconds, or lets more
  than :data:`MAX_OUTBUF` bytes of events pile up, is dropped.

Segments are remuxed by :class:`client.remux.Remuxer` (one worker, a small
cache). The relay's own threads only append to a queue and wake the loop
(:meth:`WebView.watch`), so relaying never waits for a browser. A second
thread gathers the whole tree (:mod:`client.treeview`) while anybody watches.
"""

from __future__ import annotations

import logging
import queue
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from client import httpwire, vod
from client.httpwire import HttpError
from client import roles
from client.links import ANSWER_DEADLINE, ask, connect_from
from client.peerproto import PeerProtocolError, TreeAnswer, TreeQuery, encode
from client.remux import Remuxer
from client.treeview import merge_tree, wire_size
from client.webfeed import BlockFeed, live_edge_json, status_events, to_json

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_CONNECTIONS = 64
MAX_EVENT_STREAMS = 16
HEAD_DEADLINE = 5.0
SEND_STALL = 10.0
DRAIN_TIME = 2.0
MAX_OUTBUF = 1024 * 1024
SEND_BUFFER = 64 * 1024
#: The tree is gathered while a page is open or /api/tree was asked this recently.
VIEWER_GRACE = 10.0
SEGMENT = re.compile(r"^/seg/(\d{1,10})\.(mp4|ts)$")
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/library.js": ("library.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8"),
                "/pace.js": ("pace.js", "text/javascript; charset=utf-8")}
ROUTES = tuple(STATIC_FILES) + ("/live.m3u8", "/events", "/api/status", "/api/tree",
                                "/api/stats", "/api/blocks", "/api/library")


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    opened: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    phase: str = "head"          # head -> [wait (remux)] -> send -> drain, or head -> events
    progress: float = 0.0        # last time the peer took bytes
    close_when_sent: bool = True


class WebView:
    """The HTTP server of one client (``--http-port``)."""

    def __init__(self, node, ip: str, port: int, clock=time.monotonic, max_behind: float = 8.0):
        self.node = node
        self.live_edge = live_edge_json(max_behind)   # the page's player follows it
        self.ip, self.port = ip, port
        self._clock = clock
        self.period = node.config.period
        self.remuxer = Remuxer()
        self._feed_lock = threading.Lock()
        self.feed = BlockFeed(node.window.capacity)
        self._static = {path: ((STATIC / name).read_bytes(), kind)
                        for path, (name, kind) in STATIC_FILES.items()}
        self._posted: queue.Queue = queue.Queue()       # (kind, payload) from other threads
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: dict[socket.socket, _Conn] = {}
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._last_status: dict | None = None
        self._last_block_mono = clock()
        self._stalled = False
        self._event_id = 0
        self._tree_lock = threading.Lock()
        self._tree: dict | None = None
        self._tree_asked = -VIEWER_GRACE
        self._mimes: dict[str, str | None] = {}   # film version -> MSE type of its first block
        self.counters = {"requests": 0, "refused": 0, "dropped_idle": 0, "dropped_slow": 0,
                         "evicted": 0, "events_sent": 0, "tree_query_bytes": 0,
                         "tree_queries": 0}

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}/"

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Listen (raises OSError when the port is taken), then serve on two threads."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.ip, self.port))
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.remuxer.start()
        self.node.watchers.append(self.watch)
        for target, name in ((self._serve, "web-http"), (self._gather_tree, "web-tree")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            self._threads.append(thread)
        log.info("web view on %s", self.url)

    def stop(self) -> None:
        """Close every connection, end both threads and the remux worker, join them."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.watch in self.node.watchers:
            self.node.watchers.remove(self.watch)
        self._wake()
        for thread in self._threads:
            thread.join(timeout=10)
            if thread.is_alive():
                log.error("web thread %s did not end", thread.name)
        self.remuxer.stop()
        for conn in list(self._conns.values()):
            self._close(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    # -- what the node tells us (its threads: never block) -------------------------

    def watch(self, kind: str, arg) -> None:
        """(The node's threads, under its deliver lock.) A stored block, or a change of status."""
        if kind == "block":
            try:
                with self._feed_lock:
                    block = self.feed.add(arg.block.data, arg.stored_at)
            except Exception:  # never let the web view break relaying
                log.exception("web: could not index a stored block")
                return
            self._posted.put(("block", block))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass  # already awake (the pipe is full), or closing

    # -- the loop ----------------------------------------------------------------

    def _serve(self) -> None:
        tick = min(0.5, self.period / 4)
        next_tick = self._clock()
        while not self._stopping.is_set():
            for key, mask in self._selector.select(timeout=max(0.0, next_tick - self._clock())):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    self._service(key.data, mask)
            self._drain_posted()
            if self._clock() >= next_tick:
                next_tick = self._clock() + tick
                self._look_at_status()
                self._enforce_deadlines()

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, (peer, _) = self._listener.accept()
            except (BlockingIOError, OSError):
                return
            if len(self._conns) >= MAX_CONNECTIONS and not self._evict_one():
                self.counters["refused"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            conn = _Conn(sock, peer, self._clock())
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self) -> bool:
        waiting = [c for c in self._conns.values() if c.phase in ("head", "drain")]
        if not waiting:
            return False
        self.counters["evicted"] += 1
        self._close(min(waiting, key=lambda c: c.opened))
        return True

    def _service(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536 if conn.phase == "drain" else 4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._close(conn)
                return
            if data and conn.phase == "head":
                conn.inbuf += data
                self._maybe_request(conn)
            # Bytes after the head (or on an event stream) are ignored: no bodies here.
        if mask & selectors.EVENT_WRITE and conn.sock in self._conns:
            self._flush(conn)

    def _maybe_request(self, conn: _Conn) -> None:
        try:
            end = httpwire.head_end(bytes(conn.inbuf))
            if end < 0:
                return
            request = httpwire.parse_head(bytes(conn.inbuf[:end]))
            conn.inbuf.clear()
            self.counters["requests"] += 1
            self._route(conn, request)
        except HttpError as exc:
            self.counters["refused"] += 1
            conn.inbuf.clear()
            self._send(conn, httpwire.error_response(exc))

    def _send(self, conn: _Conn, data: bytes, close: bool = True) -> None:
        if conn.sock not in self._conns:
            return
        if conn.phase != "events":
            conn.phase = "send"
        conn.close_when_sent = close
        conn.outbuf += data
        if not conn.progress:
            conn.progress = self._clock()
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del conn.outbuf[:sent]
            conn.progress = self._clock()
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if not conn.outbuf and conn.close_when_sent and conn.phase == "send":
            # Half-close and read what the peer still sends: closing with unread bytes
            # would reset the connection and could destroy the answer before it is read.
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            conn.phase, conn.opened = "drain", self._clock()
        self._selector.modify(conn.sock, wanted, conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            conn.sock.close()
        except OSError:
            pass

    def _enforce_deadlines(self) -> None:
        now = self._clock()
        for conn in list(self._conns.values()):
            if conn.phase == "head" and now - conn.opened > HEAD_DEADLINE:
                self.counters["dropped_idle"] += 1
                self._close(conn)
            elif conn.phase == "drain" and now - conn.opened > DRAIN_TIME:
                self._close(conn)
            elif conn.outbuf and (now - conn.progress > SEND_STALL or len(conn.outbuf) > MAX_OUTBUF):
                self.counters["dropped_slow"] += 1
                log.info("web: dropping %s, a reader that does not read", conn.peer)
                self._close(conn)

    # -- routes ---------------------------------------------------------------------

    def _route(self, conn: _Conn, request: httpwire.Request) -> None:
        head_only = request.method == "HEAD"
        path = request.path
        if path in self._static:
            body, kind = self._static[path]
            self._send(conn, httpwire.response(200, body, kind, head_only))
        elif path == "/live.m3u8":
            with self._feed_lock:
                text = self.feed.playlist()
            self._send(conn, httpwire.response(200, text.encode(), "application/vnd.apple.mpegurl",
                                               head_only))
        elif path == "/events":
            self._open_events(conn)
        elif path.startswith("/api/"):
            body = self._api(path)
            if body is None:
                raise HttpError(404, "no such API")
            self._send(conn, httpwire.response(200, body.encode(), "application/json", head_only))
        elif match := SEGMENT.match(path):
            self._segment(conn, int(match.group(1)), match.group(2), head_only)
        elif match := vod.PLAYLIST.match(path):
            film = self._film(match.group(1))
            self._send(conn, httpwire.response(200, film.playlist().encode(),
                                               "application/vnd.apple.mpegurl", head_only))
        elif match := vod.SEGMENT.match(path):
            self._film_segment(conn, self._film(match.group(1)), int(match.group(2)),
                               match.group(3), head_only)
        else:
            raise HttpError(404, "no such page")

    def _api(self, path: str) -> str | None:
        if path == "/api/status":
            return to_json(self.status())
        if path == "/api/stats":
            return to_json(self.stats())
        if path == "/api/tree":
            self._tree_asked = self._clock()
            return to_json(self.tree())
        if path == "/api/blocks":
            with self._feed_lock:
                return to_json({"blocks": [b.to_json() for b in self.feed.latest(64)]})
        if path == "/api/library":
            films = vod.complete_films(self.node.library)
            return to_json({"films": [self._film_of(item).to_json() for item in films]})
        return None

    def _film_of(self, item) -> vod.Film:
        if item.version not in self._mimes:
            self._mimes[item.version] = vod.first_block_mime(item)
        return vod.Film(item, self._mimes[item.version])

    def _film(self, key: str) -> vod.Film:
        item = vod.find_film(self.node.library, key)
        if item is None:
            raise HttpError(404, "no such film in this client's library")
        return self._film_of(item)

    def _film_segment(self, conn: _Conn, film: vod.Film, index: int, kind: str,
                      head_only: bool) -> None:
        if index >= len(film.manifest):
            raise HttpError(404, "the film has no such block")
        conn.phase = "wait"
        content_type = "video/mp4" if kind == "mp4" else "video/mp2t"

        def done(segment: bytes | None) -> None:
            self._posted.put(("segment", (conn, segment, content_type, head_only)))
            self._wake()

        item = film.item
        self.remuxer.request((item.version, index), kind, lambda: item.read(index),
                             film.ts_offset(index), done)

    def _segment(self, conn: _Conn, number: int, kind: str, head_only: bool) -> None:
        with self._feed_lock:
            block = self.feed.get(number)
        if block is None:
            raise HttpError(404, "that block is no longer (or not yet) in the recent window")
        conn.phase = "wait"
        content_type = "video/mp4" if kind == "mp4" else "video/mp2t"

        def done(segment: bytes | None) -> None:
            self._posted.put(("segment", (conn, segment, content_type, head_only)))
            self._wake()

        self.remuxer.request(number, kind, block.data, block.ts_offset, done)

    def _open_events(self, conn: _Conn) -> None:
        streams = sum(1 for c in self._conns.values() if c.phase == "events")
        if streams >= MAX_EVENT_STREAMS:
            raise HttpError(503, "too many event streams")
        conn.phase = "events"
        first = httpwire.sse_head() + b"retry: 2000\n\n"
        status = self.status()
        if self._last_status is None:
            self._last_status = status   # changes from here on are events
        first += self._event("hello", {"status": status, "tree": self.tree()})
        self._send(conn, first, close=False)

    def _event(self, name: str, data) -> bytes:
        self._event_id += 1
        return httpwire.sse_event(name, to_json(data), self._event_id)

    def _broadcast(self, name: str, data) -> None:
        streams = [c for c in self._conns.values() if c.phase == "events"]
        if not streams:
            return
        payload = self._event(name, data)
        for conn in streams:
            self.counters["events_sent"] += 1
            self._send(conn, payload, close=False)

    def _drain_posted(self) -> None:
        while True:
            try:
                kind, payload = self._posted.get_nowait()
            except queue.Empty:
                return
            if kind == "block":
                self._last_block_mono = self._clock()
                if self._stalled:
                    self._stalled = False
                    self._broadcast("stall_ended", {"number": payload.number})
                self._broadcast("block", payload.to_json())
            elif kind == "segment":
                conn, segment, content_type, head_only = payload
                if segment is None:
                    self._send(conn, httpwire.error_response(HttpError(503, "remux failed or busy")))
                else:
                    self._send(conn, httpwire.response(200, segment, content_type, head_only))
            elif kind == "tree":
                self._broadcast("tree", payload)

    def _look_at_status(self) -> None:
        """Events from the change of status since the last look (nobody watching: no look)."""
        if not any(c.phase == "events" for c in self._conns.values()):
            self._last_status = None
            return
        snapshot = self.node.snapshot()
        for name, data in status_events(self._last_status, snapshot):
            self._broadcast(name, data)
        self._last_status = snapshot
        silent = self._clock() - self._last_block_mono
        if not self._stalled and silent > 1.5 * self.period and snapshot["blocks_received"]:
            self._stalled = True
            self._broadcast("stall", {"seconds": round(silent, 3)})

    # -- the whole tree ------------------------------------------------------------------

    def _watched(self) -> bool:
        return (any(c.phase == "events" for c in list(self._conns.values()))
                or self._clock() - self._tree_asked < VIEWER_GRACE)

    def _gather_tree(self) -> None:
        last = None
        while not self._stopping.wait(self.period / 2):
            if not self._watched():
                continue
            tree = self._collect_tree()
            with self._tree_lock:
                self._tree = tree
            shown = {k: v for k, v in tree.items() if k != "updated_at"}
            if shown != last:
                last = shown
                self._posted.put(("tree", tree))
                self._wake()

    def _collect_tree(self) -> dict:
        """Ask the server for the direct clients, and each of them for its subtree."""
        node = self.node
        me = node.snapshot()
        own = node.subtree.subtree(me)
        channel = me["channel"]
        answers, complete = [own], True
        try:
            roots = node.server.clients(channel)
        except (OSError, ValueError) as exc:
            log.info("web: no list of direct clients from the server: %s", exc)
            roots, complete = [], False
        for ip in roots[:64]:
            if self._stopping.is_set():
                break
            if ip == me["ip"]:
                continue
            try:
                answers.append(self._ask_subtree(ip, me["peer_port"], channel))
            except (OSError, EOFError, PeerProtocolError) as exc:
                log.info("web: no subtree from direct client %s: %s", ip, exc)
                complete = False
            except roles.OwnViolation:  # a bug of ours, not the peer's
                log.exception("web: the tree query to %s", ip)
                complete = False
        nodes = merge_tree([answers[0]] + answers[1:])
        return {"channel": channel, "self": f"{me['ip']}:{me['peer_port']}",
                "updated_at": round(time.time(), 3), "complete": complete,
                "direct_clients": roots, "nodes": [n.to_json() for n in nodes]}

    def _ask_subtree(self, ip: str, port: int, channel: int):
        query = TreeQuery(channel)
        with connect_from(self.node.config.ip, ip, port, timeout=2.0) as sock:
            answer = ask(sock, roles.Conversation(roles.TREE, roles.PEER), query,
                         time.monotonic() + ANSWER_DEADLINE)
        if not isinstance(answer, TreeAnswer):  # (a Reject: another protocol version)
            raise PeerProtocolError(f"{ip} refused the tree query: {answer.reason}")
        self.counters["tree_queries"] += 1
        self.counters["tree_query_bytes"] += len(encode(query)) + wire_size(answer.nodes) + 5
        return list(answer.nodes)

    def tree(self) -> dict:
        """The latest whole tree gathered; until there is one, this client's own subtree."""
        with self._tree_lock:
            tree = self._tree
        if tree is not None:
            return tree
        me = self.node.snapshot()
        return {"channel": me["channel"], "self": f"{me['ip']}:{me['peer_port']}",
                "updated_at": None, "complete": False, "direct_clients": [],
                "nodes": [n.to_json() for n in self.node.subtree.subtree(me)]}

    def status(self) -> dict:
        """/api/status: the node's status, the page's address and the live edge's rule."""
        return {**self.node.snapshot(), "url": self.url, "live_edge": self.live_edge}

    def stats(self) -> dict:
        with self._feed_lock:
            blocks = len(self.feed.latest(1000))
        return {**self.node.stats(), "web": {
            **self.counters, "connections": len(self._conns),
            "event_streams": sum(1 for c in list(self._conns.values()) if c.phase == "events"),
            "recent_blocks": blocks, "remux": self.remuxer.stats(),
            "tree_report_bytes": self.node.subtree.control_bytes}}
