"""The digest feed: what the channel server vouches for, signed, over HTTP on its own port.

A relay can rewrite a block and recompute the frame's digest (that digest is
only a hash of the bytes beside it). So the server publishes, per channel, the
digest of every block it sends (and of the next :data:`AHEAD` slots, which the
schedule already fixes) with its slot number, in a small text document signed
with Ed25519. Clients fetch it from the server directly and store or relay
only blocks it names (:mod:`client.verify`).

The document (ASCII, one item a line, the signature over every byte before
its line)::

    relaytv-feed 1
    key <public key, 64 hex>
    channel <n>
    period <seconds>
    now <current slot>
    block <slot> <digest, 32 hex>        (slots from the asked ``since``, at most BEHIND back)
    signature <128 hex>

``GET /feed/<channel>?since=<slot>`` answers it; a client that already knows
the older entries asks only for the new ones (a few dozen bytes a block).
This module holds the pure document code, the book of published digests and
the thin HTTP edge; :mod:`server.app` publishes each round into it.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.peerproto import DIGEST_SIZE, block_digest

log = logging.getLogger("server.feed")

DEFAULT_PORT = 6062
#: Slots published ahead of the current one (the schedule fixes them already).
AHEAD = 16
#: Slots kept behind the current one: a client's repair and catch-up window.
BEHIND = 64
#: A document is at most this long; a longer answer is refused by clients.
MAX_DOCUMENT = 16 * 1024
#: Feed requests served at once; past this a connection is closed at once.
MAX_REQUESTS = 16
MAGIC = "relaytv-feed 1"
KEY_SIZE = 32


class FeedError(ValueError):
    """A feed document that is malformed, too long, or not signed by the pinned key."""


@dataclass(frozen=True)
class Document:
    """One verified feed answer."""

    key: bytes
    channel: int
    period: float
    now: int
    blocks: tuple[tuple[int, bytes], ...]


def encode_document(signer: Ed25519PrivateKey, channel: int, period: float, now: int,
                    blocks: list[tuple[int, bytes]]) -> bytes:
    key = signer.public_key().public_bytes_raw()
    lines = [MAGIC, f"key {key.hex()}", f"channel {channel}", f"period {period:g}", f"now {now}"]
    lines += [f"block {slot} {digest.hex()}" for slot, digest in blocks]
    body = ("\n".join(lines) + "\n").encode("ascii")
    return body + f"signature {signer.sign(body).hex()}\n".encode("ascii")


_SIGNATURE = re.compile(rb"signature ([0-9a-f]{128})\n\Z")


def decode_document(data: bytes, pinned: bytes | None) -> Document:
    """The document in ``data``, checked against ``pinned`` (None: trust its own key once).

    Raises :class:`FeedError` for anything but a well-formed document that the
    key signed; bounded in length before anything is parsed.
    """
    if len(data) > MAX_DOCUMENT:
        raise FeedError(f"feed document longer than {MAX_DOCUMENT} bytes")
    cut = data.rfind(b"signature ")
    match = _SIGNATURE.match(data, cut) if cut >= 0 else None
    if match is None:
        raise FeedError("feed document without a signature line")
    body = data[:cut]
    try:
        lines = body.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FeedError("feed document is not ASCII") from None
    if lines[-1] != "" or lines[0] != MAGIC or len(lines) < 6:
        raise FeedError("not a relaytv feed document")
    try:
        key = bytes.fromhex(_field(lines[1], "key"))
        channel = int(_field(lines[2], "channel"))
        period = float(_field(lines[3], "period"))
        now = int(_field(lines[4], "now"))
        blocks = []
        for line in lines[5:-1]:
            slot, digest = _field(line, "block").split(" ")
            blocks.append((int(slot), bytes.fromhex(digest)))
    except ValueError as exc:
        raise FeedError(f"malformed feed document: {exc}") from None
    if len(key) != KEY_SIZE or any(len(d) != DIGEST_SIZE for _, d in blocks):
        raise FeedError("feed document with a key or digest of the wrong size")
    if pinned is not None and key != pinned:
        raise FeedError(f"feed signed by key {key.hex()[:16]}..., not the pinned "
                        f"{pinned.hex()[:16]}...")
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(match.group(1).decode()), body)
    except InvalidSignature:
        raise FeedError("feed document with a bad signature") from None
    return Document(key, channel, period, now, tuple(blocks))


def _field(line: str, name: str) -> str:
    prefix = name + " "
    if not line.startswith(prefix):
        raise ValueError(f"expected {name!r}, got {line[:40]!r}")
    return line[len(prefix):]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The server's signing key from ``path`` (32 raw bytes), made (mode 0600) if missing."""
    path = Path(path)
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != KEY_SIZE:
            raise OSError(f"{path}: not a relaytv feed key ({len(raw)} bytes, not {KEY_SIZE})")
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes_raw())
    return key


class FeedBook:
    """The digests published per channel, slot by slot; thread-safe.

    Each film block is hashed once (the schedule repeats the film).
    """

    def __init__(self, signer: Ed25519PrivateKey, period: float):
        self.signer, self.period = signer, period
        self._lock = threading.Lock()
        self._slots: dict[int, dict[int, bytes]] = {}
        self._now: dict[int, int] = {}
        self._film_digests: dict[int, dict[int, bytes]] = {}

    def publish_round(self, channel: int, slot: int, film) -> None:
        """Before slot ``slot`` is sent: vouch for it and the next :data:`AHEAD` slots."""
        cache = self._film_digests.setdefault(channel, {})
        entries = []
        for index in range(slot, slot + AHEAD + 1):
            block = index % len(film)
            if block not in cache:
                cache[block] = block_digest(film.read_block(block))
            entries.append((index, cache[block]))
        with self._lock:
            slots = self._slots.setdefault(channel, {})
            slots.update(entries)
            for old in [s for s in slots if s < slot - BEHIND]:
                del slots[old]
            self._now[channel] = slot

    def document(self, channel: int, since: int | None) -> bytes | None:
        """The signed document of ``channel`` from slot ``since`` on; None: nothing yet."""
        with self._lock:
            if channel not in self._now:
                return None
            now, slots = self._now[channel], dict(self._slots[channel])
        start = max(now - BEHIND, since if since is not None else now - BEHIND)
        blocks = sorted((s, d) for s, d in slots.items() if s >= start)
        return encode_document(self.signer, channel, self.period, now, blocks)


class FeedServer:
    """``GET /feed/<channel>[?since=<slot>]`` on its own port; explicit start and stop."""

    def __init__(self, book: FeedBook, host: str, port: int):
        self.book = book
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self._httpd = _HTTPServer((host, port), _handler_for(book), self._slots)
        self.address = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="feed")

    def start(self) -> None:
        self._thread.start()

    def requests_in_progress(self) -> int:
        return self._httpd.in_progress

    def stop(self) -> None:
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()      # joins the request threads (block_on_close)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    request_queue_size = 64     # past MAX_REQUESTS, closed at once rather than left in the queue

    def __init__(self, address, handler, slots: threading.BoundedSemaphore):
        self._request_slots = slots
        self._count_lock = threading.Lock()
        self.in_progress = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._request_slots.acquire(blocking=False):
            self.shutdown_request(request)   # too many at once: closed, nothing read
            return
        with self._count_lock:
            self.in_progress += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.in_progress -= 1
            self._request_slots.release()


_PATH = re.compile(r"/feed/(\d)\Z")


def _handler_for(book: FeedBook):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 2.0  # a whole request line and headers, or the connection is dropped

        def do_GET(self):
            url = urlsplit(self.path)
            match = _PATH.match(url.path)
            since = parse_qs(url.query).get("since", [None])[0]
            if match is None or (since is not None and not re.fullmatch(r"-?\d{1,15}", since)):
                self.send_error(404, "GET /feed/<channel>?since=<slot>")
                return
            body = book.document(int(match.group(1)), int(since) if since is not None else None)
            if body is None:
                self.send_error(404, "no block sent on this channel yet")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=ascii")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            log.debug("%s: %s", self.address_string(), format % args)

    return Handler


def add_arguments(parser) -> None:
    """The feed's options of ``python -m server``."""
    group = parser.add_argument_group("digest feed (authenticated blocks)")
    group.add_argument("--feed-port", type=int, default=DEFAULT_PORT, metavar="PORT",
                       help="port of the signed digest feed clients check blocks against "
                            f"(default {DEFAULT_PORT}; 0: no feed, as the stock server)")
    group.add_argument("--feed-key", type=Path, default=None, metavar="FILE",
                       help="the feed's Ed25519 signing key, made if missing "
                            "(default: store/feed-key-HOST-PORT in the project)")


def start_feed(args, host: str, period: float) -> tuple[FeedBook | None, FeedServer | None]:
    """The feed's book and server, started; (None, None) when ``--feed-port 0``."""
    if not args.feed_port:
        return None, None
    path = args.feed_key or (Path(__file__).resolve().parent.parent / "store"
                             / f"feed-key-{host or 'all'}-{args.feed_port}")
    signer = load_or_create_key(path)
    book = FeedBook(signer, period)
    server = FeedServer(book, host, args.feed_port)
    server.start()
    log.info("digest feed on %s:%d; server key %s (clients pin it with --server-key)",
             host or "*", server.address[1], signer.public_key().public_bytes_raw().hex())
    return book, server
