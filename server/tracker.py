"""The library tracker: which peer holds which film, over HTTP and JSON.

``python -m server.tracker`` runs it alone; ``python -m server`` starts one
beside the channel server (port 6061 unless ``--tracker-port 0``). Live
viewing never depends on it. The endpoints (see docs/guide/library.rst):

========================  ==========================================================
``GET /``                 the tracker's bounds (heartbeat, drop_after, replicas)
``POST /register``        a peer's holdings, with the manifest of each item
``POST /heartbeat``       keeps a peer's holdings alive; 404 means "register again"
``POST /report``          a holder served bytes that do not match: drop it from the film
``GET /search?q=WORD``    versions whose name contains WORD (any case), with holders
``GET /films?name=NAME``  the versions of one name
``GET /films/VERSION``    one version: manifest, holders, replication per block
``GET /events``           Server-Sent Events: film_registered, holder_joined,
                          holder_left, replication_started, replication_done
========================  ==========================================================

Errors are JSON ``{"error": "..."}`` with 400 (malformed), 403 (an address
that is not the sender's), 404, 405, 411, 413 (body over :data:`MAX_BODY`),
429 (too many requests from one address) or 503. A request that gets an
error changes nothing.

The core (:class:`TrackerCore`) is plain code over a catalogue, the
holdings and a clock; :class:`Tracker` puts it behind a threaded HTTP server
with an explicit shutdown that joins every thread.
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import json
import logging
import queue
import signal
import socketserver
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from server.catalogue import Catalogue, CatalogueError
from server.holdings import Holdings, RateLimit, event
from server.manifest import MAX_BLOCKS, Manifest, ManifestError, check_name, check_version, from_ranges
from server.replication import Replicator

log = logging.getLogger(__name__)

DEFAULT_PORT = 6061
MAX_BODY = 4 * 1024 * 1024
MAX_ITEMS = 256
MAX_CONNECTIONS = 256
MAX_SUBSCRIBERS = 64
EVENT_BACKLOG = 256
SUBSCRIBER_QUEUE = 1024
REQUEST_TIMEOUT = 10.0


class RequestError(Exception):
    """An HTTP error answer: its status and what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _fields(body, allowed: set[str], required: set[str], what: str) -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, f"{what} must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise RequestError(400, f"unknown field(s) in {what}: {', '.join(sorted(unknown))}")
    missing = required - set(body)
    if missing:
        raise RequestError(400, f"missing field(s) in {what}: {', '.join(sorted(missing))}")
    return body


def _endpoint(body: dict, what: str) -> tuple[str, int]:
    ip, port = body.get("ip"), body.get("port")
    try:
        ipaddress.IPv4Address(ip)
    except (ValueError, TypeError):
        raise RequestError(400, f"bad ip {ip!r} in {what}") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise RequestError(400, f"bad port {port!r} in {what}")
    return ip, port


class EventHub:
    """Fan-out of tracker events to ``/events`` subscribers, each with a bounded queue.

    The latest :data:`EVENT_BACKLOG` events are kept so that a subscriber
    that reconnects with ``Last-Event-ID`` misses nothing recent. A
    subscriber whose queue is full (it does not read) is cut off.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._subscribers: set[queue.Queue] = set()
        self._backlog: deque[dict] = deque(maxlen=EVENT_BACKLOG)
        self._next_id = 1
        self._closed = False
        self._clock = clock

    def publish(self, events: list[dict]) -> None:
        with self._lock:
            for item in events:
                item = {"id": self._next_id, "at": round(self._clock(), 3), **item}
                self._next_id += 1
                self._backlog.append(item)
                for subscriber in list(self._subscribers):
                    try:
                        subscriber.put_nowait(item)
                    except queue.Full:
                        self._subscribers.discard(subscriber)
                        subscriber.put(None)  # room was made by the reader or it is gone
                log.info("event %s", json.dumps(item, separators=(",", ":")))

    def subscribe(self, after: int = 0) -> queue.Queue | None:
        """A queue of the events after id ``after``; None when full or closed."""
        with self._lock:
            if self._closed or len(self._subscribers) >= MAX_SUBSCRIBERS:
                return None
            subscriber: queue.Queue = queue.Queue(SUBSCRIBER_QUEUE)
            for item in self._backlog:
                if item["id"] > after:
                    subscriber.put_nowait(item)
            self._subscribers.add(subscriber)
            return subscriber

    def unsubscribe(self, subscriber: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """End every subscription (the tracker is stopping)."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, set()
        for subscriber in subscribers:
            while True:
                try:
                    subscriber.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        subscriber.get_nowait()
                    except queue.Empty:
                        pass


class TrackerCore:
    """Every endpoint's logic: validated input in, (status, JSON answer) out, events published."""

    def __init__(self, catalogue: Catalogue, hub: EventHub, heartbeat: float = 10.0,
                 replicas: int = 3, rate: float = 20.0, burst: float = 100.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.catalogue, self.hub = catalogue, hub
        self.heartbeat = heartbeat
        self.drop_after = 3 * heartbeat
        self.holdings = Holdings(self.drop_after)
        self.replicator = Replicator(replicas, task_timeout=6 * heartbeat)
        self.limits = RateLimit(rate, burst)
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._manifests: dict[str, Manifest] = {}
        self.requests = 0

    def _manifest(self, version: str) -> Manifest | None:
        """(Under the lock.) A version's manifest, from memory or the catalogue."""
        manifest = self._manifests.get(version)
        if manifest is None:
            manifest = self.catalogue.get(version)
            if manifest is not None:
                self._manifests[version] = manifest
        return manifest

    def check_rate(self, source: str) -> None:
        with self._lock:
            self.requests += 1
            if not self.limits.allow(source, self._clock()):
                raise RequestError(429, f"too many requests from {source}: slow down")

    # -- peers ----------------------------------------------------------------

    def register(self, source: str, body) -> dict:
        body = _fields(body, {"ip", "port", "space", "films"}, {"ip", "port", "films"}, "a registration")
        ip, port = _endpoint(body, "a registration")
        if ip != source:
            raise RequestError(403, f"a registration for {ip} must come from {ip}, not {source}")
        space = body.get("space", 0)
        if not isinstance(space, int) or isinstance(space, bool) or space < 0:
            raise RequestError(400, f"bad space {space!r}: bytes offered for replicas, >= 0")
        items = body["films"]
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise RequestError(400, f"films must be a list of at most {MAX_ITEMS} items")
        parsed: list[tuple[Manifest, frozenset[int]]] = []
        for index, item in enumerate(items):
            item = _fields(item, {"manifest", "have"}, {"manifest"}, f"film {index}")
            try:
                manifest = Manifest.parse(item["manifest"])
                have = from_ranges(item.get("have", [[0, len(manifest) - 1]]), len(manifest))
            except ManifestError as exc:
                raise RequestError(400, f"film {index}: {exc}") from None
            parsed.append((manifest, have))
        answer = []
        with self._lock:
            events = []
            for manifest, _ in parsed:
                new = self.catalogue.add(manifest, self._wall())
                self._manifests[manifest.version] = manifest
                if new:
                    events.append(event("film_registered", name=manifest.name,
                                        version=manifest.version, kind=manifest.kind,
                                        size=manifest.size, blocks=len(manifest)))
                answer.append({"name": manifest.name, "version": manifest.version, "new": new})
            held = {m.version: have for m, have in parsed if have}
            events += self.holdings.register(ip, port, held, space, self._clock())
            for version, have in held.items():
                self.replicator.delivered(f"{ip}:{port}", version, have)  # its tasks are done
            events += self._replication_progress()
        self.hub.publish(events)
        return {"heartbeat": self.heartbeat, "drop_after": self.drop_after, "films": answer}

    def heartbeat_of(self, source: str, body) -> tuple[int, dict]:
        body = _fields(body, {"ip", "port"}, {"ip", "port"}, "a heartbeat")
        ip, port = _endpoint(body, "a heartbeat")
        if ip != source:
            raise RequestError(403, f"a heartbeat for {ip} must come from {ip}, not {source}")
        key = f"{ip}:{port}"
        with self._lock:
            now = self._clock()
            if not self.holdings.heartbeat(key, now):
                return 404, {"error": f"unknown peer {key}: register again"}
            tasks = []
            if self.holdings.peers[key].space > 0:  # only they are given replicas to fetch
                tasks = self.replicator.tasks_for(key, self.holdings, self._sizes(), now)
        return 200, {"heartbeat": self.heartbeat, "replicate": tasks}

    def report(self, source: str, body) -> dict:
        body = _fields(body, {"ip", "port", "holder", "version", "block"},
                       {"ip", "port", "holder", "version", "block"}, "a report")
        ip, _ = _endpoint(body, "a report")
        if ip != source:
            raise RequestError(403, f"a report from {ip} must come from {ip}, not {source}")
        holder = _fields(body["holder"], {"ip", "port"}, {"ip", "port"}, "holder")
        holder_ip, holder_port = _endpoint(holder, "holder")
        try:
            version = check_version(body["version"])
        except ManifestError as exc:
            raise RequestError(400, str(exc)) from None
        block = body["block"]
        with self._lock:
            manifest = self._manifest(version)
            if manifest is None:
                raise RequestError(404, f"no version {version}")
            if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < len(manifest):
                raise RequestError(400, f"bad block {block!r} of {version}")
            events = self.holdings.drop(f"{holder_ip}:{holder_port}", version,
                                        f"served a block {block} that does not match the manifest "
                                        f"(reported by {ip})")
        self.hub.publish(events)
        return {"dropped": bool(events)}

    def sweep(self) -> None:
        """Drop silent peers; start replication where it is short (the sweeper, each half heartbeat)."""
        with self._lock:
            events = self.holdings.expire(self._clock())
            events += self._replication_progress()
        self.hub.publish(events)

    def _sizes(self) -> dict[str, list[int]]:
        """(Under the lock.) Block sizes of every version someone holds."""
        versions = {v for p in self.holdings.peers.values() for v in p.films}
        out = {}
        for version in versions:
            manifest = self._manifest(version)
            if manifest is not None:
                out[version] = [b["size"] for b in manifest.blocks]
        return out

    def _replication_progress(self) -> list[dict]:
        """(Under the lock.) Started/done events for every version someone holds."""
        sizes = self._sizes()
        counts = {v: self.holdings.replication(v, len(s)) for v, s in sizes.items()}
        return self.replicator.progress(counts, self.holdings, sizes, self._clock())

    # -- readers --------------------------------------------------------------

    def _summary(self, version: str, manifest: Manifest, with_manifest: bool = False) -> dict:
        out = {"name": manifest.name, "version": version, "kind": manifest.kind,
               "size": manifest.size, "blocks": len(manifest),
               "holders": self.holdings.describe(version, self._clock()),
               "replication": self.holdings.replication(version, len(manifest))}
        if manifest.kind == "film":
            out["duration"] = round(sum(b["duration"] for b in manifest.blocks), 3)
        if with_manifest:
            out["manifest"] = manifest.to_json()
        return out

    def search(self, query: dict[str, list[str]]) -> dict:
        word = query.get("q", [""])[0]
        if len(word) > 100:
            raise RequestError(400, "a search word has at most 100 characters")
        found = self.catalogue.search(word)
        with self._lock:
            return {"films": [self._summary(v, m) for v, m in found]}

    def versions(self, query: dict[str, list[str]]) -> dict:
        try:
            name = check_name(query.get("name", [None])[0])
        except ManifestError as exc:
            raise RequestError(400, str(exc)) from None
        found = [(v, m) for v, m in self.catalogue.search(name) if m.name == name]
        with self._lock:
            return {"films": [self._summary(v, m) for v, m in found]}

    def film(self, version: str) -> dict:
        try:
            check_version(version)
        except ManifestError as exc:
            raise RequestError(400, str(exc)) from None
        with self._lock:
            manifest = self._manifest(version)
            if manifest is None:
                raise RequestError(404, f"no version {version}")
            return self._summary(version, manifest, with_manifest=True)

    def about(self) -> dict:
        return {"service": "relaytv-tracker", "heartbeat": self.heartbeat,
                "drop_after": self.drop_after, "replicas": self.replicator.replicas,
                "max_body": MAX_BODY, "max_blocks": MAX_BLOCKS}


class _HTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Threads per request, joined on close (no daemon threads), bounded in number."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address, handler, tracker: "Tracker"):
        self.tracker = tracker
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.warning("too many connections: refusing %s", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        log.exception("request from %s failed", client_address[0])

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "relaytv-tracker/1"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.client_address[0], fmt % args)

    @property
    def core(self) -> TrackerCore:
        return self.server.tracker.core

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "send a Content-Length, not a chunked body")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "a POST needs a Content-Length")
        if int(length) > MAX_BODY:
            self.close_connection = True  # the body is not read
            raise RequestError(413, f"body of {length} bytes exceeds {MAX_BODY}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise RequestError(400, f"malformed JSON: {type(exc).__name__}") from None

    def _dispatch(self, method: str) -> None:
        source = self.client_address[0]
        url = urlsplit(self.path)
        try:
            if method == "POST":
                self.core.check_rate(source)
                routes = {"/register": lambda b: (200, self.core.register(source, b)),
                          "/heartbeat": lambda b: self.core.heartbeat_of(source, b),
                          "/report": lambda b: (200, self.core.report(source, b))}
                if url.path not in routes:
                    raise RequestError(404 if url.path not in _GET_PATHS else 405,
                                       f"no POST {url.path}")
                status, answer = routes[url.path](self._body())
                self._answer(status, answer)
                return
            self.core.check_rate(source)
            query = parse_qs(url.query, max_num_fields=8)
            if url.path == "/events":
                self._events()
                return
            if url.path == "/":
                answer = self.core.about()
            elif url.path == "/search":
                answer = self.core.search(query)
            elif url.path == "/films":
                answer = self.core.versions(query)
            elif url.path.startswith("/films/"):
                answer = self.core.film(url.path[len("/films/"):])
            else:
                raise RequestError(405 if url.path in _POST_PATHS else 404, f"no GET {url.path}")
            self._answer(200, answer)
        except RequestError as exc:
            log.info("%s %s %s: %d %s", source, method, url.path, exc.status, exc)
            self._answer(exc.status, {"error": str(exc)})
        except CatalogueError as exc:
            log.error("%s", exc)
            self._answer(503, {"error": "the catalogue is unavailable"})
        except ValueError as exc:  # parse_qs past its field bound
            self._answer(400, {"error": str(exc)})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _events(self) -> None:
        after = self.headers.get("Last-Event-ID", "0")
        hub = self.server.tracker.hub
        subscriber = hub.subscribe(int(after) if after.isdigit() else 0)
        if subscriber is None:
            raise RequestError(503, "no room for another subscriber")
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(b": relaytv tracker events\n\n")
            self.wfile.flush()
            keepalive = self.server.tracker.keepalive
            while True:
                try:
                    item = subscriber.get(timeout=keepalive)
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if item is None:
                    return
                data = json.dumps(item, separators=(",", ":"))
                self.wfile.write(f"id: {item['id']}\nevent: {item['type']}\ndata: {data}\n\n".encode())
                self.wfile.flush()
        except OSError:
            pass  # the subscriber went away
        finally:
            hub.unsubscribe(subscriber)


_GET_PATHS = {"/", "/search", "/films", "/events"}
_POST_PATHS = {"/register", "/heartbeat", "/report"}


class Tracker:
    """The tracker's HTTP server, its sweeper thread and its catalogue; ``stop()`` joins them."""

    def __init__(self, host: str, port: int, db: str | Path, heartbeat: float = 10.0,
                 replicas: int = 3, rate: float = 20.0, burst: float = 100.0,
                 keepalive: float = 15.0):
        self.catalogue = Catalogue(db)
        self.hub = EventHub()
        self.core = TrackerCore(self.catalogue, self.hub, heartbeat, replicas, rate, burst)
        self.keepalive = keepalive
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            self._httpd = _HTTPServer((host, port), _Handler, self)
        except OSError:
            self.catalogue.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self._httpd.server_address[:2]

    def start(self) -> None:
        for target, name in ((self._httpd.serve_forever, "tracker-http"),
                             (self._sweep_loop, "tracker-sweeper")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            self._threads.append(thread)
        host, port = self.address
        log.info("tracker on %s:%d, catalogue %s (%d item(s)); heartbeat %.3g s, "
                 "a silent peer is dropped after %.3g s; %d replicas",
                 host, port, self.catalogue.where, len(self.catalogue.all()), self.core.heartbeat,
                 self.core.drop_after, self.core.replicator.replicas)

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self.core.heartbeat / 2):
            try:
                self.core.sweep()
            except CatalogueError as exc:
                log.error("sweep failed: %s", exc)

    def stop(self) -> None:
        """End the subscriptions, the server and the sweeper, and say which did not end."""
        self._stopping.set()
        self.hub.close()
        if self._threads:
            self._httpd.shutdown()
        self._httpd.server_close()  # joins the request threads
        for thread in self._threads:
            thread.join(timeout=5)
            if thread.is_alive():
                log.error("thread %s did not end", thread.name)
        self.catalogue.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m server.tracker``."""
    parser.add_argument("--db", default=None, metavar="PATH|URL",
                        help="the catalogue: an SQLite file, or postgresql://... "
                             "(default: store/tracker-PORT.db in the project)")
    parser.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                        help="how often peers refresh their holdings; a peer silent for 3 "
                             "heartbeats is dropped (default 10)")
    parser.add_argument("--replicas", type=int, default=3, metavar="R",
                        help="keep every block on at least R holders (default 3)")
    parser.add_argument("--rate", type=float, default=20.0, metavar="PER_S",
                        help="requests a second allowed per address, in bursts of 5x (default 20)")


def add_beside_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the tracker that ``python -m server`` starts beside the channels."""
    group = parser.add_argument_group("library tracker")
    group.add_argument("--tracker-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                       help="port of the library tracker started beside the channel server "
                            "(default 6061; 0: no tracker)")
    group.add_argument("--tracker-db", default=None, metavar="PATH|URL",
                       help="its catalogue: an SQLite file or postgresql://... "
                            "(default: store/tracker-PORT.db in the project)")
    group.add_argument("--tracker-heartbeat", type=float, default=10.0, metavar="SECONDS",
                       help="how often peers refresh their holdings (default 10)")
    group.add_argument("--replicas", type=int, default=3, metavar="R",
                       help="keep every library block on at least R holders (default 3)")


def start_beside_server(args: argparse.Namespace, host: str) -> "Tracker | None":
    """Start the tracker beside the channel server; None when off or when it cannot start
    (live viewing never depends on it)."""
    if not args.tracker_port:
        return None
    try:
        tracker = Tracker(host, args.tracker_port,
                          args.tracker_db or default_db(args.tracker_port),
                          heartbeat=args.tracker_heartbeat, replicas=args.replicas)
    except (OSError, CatalogueError) as exc:
        log.error("library tracker not started on %s:%d: %s", host or "*", args.tracker_port, exc)
        return None
    tracker.start()
    return tracker


def stop_beside_server(tracker: "Tracker | None") -> None:
    if tracker is not None:
        tracker.stop()


def default_db(port: int) -> Path:
    """``store/tracker-PORT.db`` in the project: trackers of one machine on one port share it."""
    return Path(__file__).resolve().parent.parent / "store" / f"tracker-{port}.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.tracker",
                                     description="relaytv library tracker (HTTP + JSON).")
    parser.add_argument("--host", default="", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 6061)")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        tracker = Tracker(args.host, args.port, args.db or default_db(args.port),
                          heartbeat=args.heartbeat, replicas=args.replicas, rate=args.rate,
                          burst=5 * args.rate)
    except (OSError, CatalogueError) as exc:
        log.error("cannot start the tracker on %s:%d: %s", args.host or "*", args.port, exc)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    tracker.start()
    stop.wait()
    log.info("stopping")
    tracker.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
