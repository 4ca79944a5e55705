"""Authenticated blocks: a block is stored or relayed only if the server's signed feed names it.

The rules (pure, with an injected clock and fetch function, so that they are
tested without sockets):

* A digest the :class:`DigestBook` knows (learnt from a verified feed
  document, for its slot and :data:`KEEP` slots after) is **genuine**.
* An unknown digest makes the client fetch the feed (only the entries since
  the newest it knows), at most once per :attr:`Verifier.refetch` seconds, each
  fetch bounded by :data:`FEED_WAIT`. The server publishes every slot
  :data:`server.feed.AHEAD` slots before sending it, so a digest still unknown
  after a fetch made after the block came is **forged**: the block is
  discarded and its sender blamed.
* The feed unreachable: a client that has a key (``--server-key``, or pinned
  on first use) fails closed: the block is **unchecked**, not stored nor
  relayed (counted; it is neither blamed on the parent nor played). A client
  that never reached a feed and has no key runs in **stock** mode: the stock
  server has no feed, so blocks are accepted unauthenticated (said once, and
  in status.json); the feed is tried again every :data:`STOCK_RETRY` seconds.
* Blocks pushed by the server itself come from the server's address
  (:func:`client.strangers.push_allowed`) and are not checked.
"""

from __future__ import annotations

import enum
import http.client
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from client import httpask
from server.feed import MAX_DOCUMENT, Document, FeedError, decode_document

log = logging.getLogger(__name__)

#: Seconds a feed fetch (connect, request, answer) may take: the delay a check may add.
FEED_WAIT = 1.0
#: Slots a learnt digest stays genuine after its own slot (the repair and catch-up window).
KEEP = 128
#: Seconds between tries of the feed while none answered (stock mode).
STOCK_RETRY = 20.0


class Verdict(enum.Enum):
    GENUINE = "genuine"       # named by the feed
    FORGED = "forged"         # not named by a fresh feed: a lie of the sender
    UNCHECKED = "unchecked"   # the feed of a keyed server is unreachable: not stored
    STOCK = "stock"           # no feed (stock server, no key): accepted unauthenticated


class DigestBook:
    """Digests the feed vouched for, by slot, forgotten :data:`KEEP` slots after their slot."""

    def __init__(self):
        self._slot_of: dict[bytes, int] = {}
        self.newest: int | None = None       # the newest slot known
        self.server_now: int | None = None   # the server's slot at the last document
        self.learnt_at = 0.0                  # clock of the last document
        self.period = 2.0

    def learn(self, doc: Document, now: float) -> bool:
        """Take a document's entries; False when it shows the server restarted (its slots
        began again): the book is then emptied, and the whole feed must be asked again."""
        if self.server_now is not None and doc.now < self.server_now:
            self._slot_of.clear()
            self.newest = self.server_now = None
            return False
        for slot, digest in doc.blocks:
            if self._slot_of.get(digest, slot - 1) < slot:
                self._slot_of[digest] = slot
            self.newest = slot if self.newest is None else max(self.newest, slot)
        self.server_now, self.learnt_at, self.period = doc.now, now, doc.period
        oldest = doc.now - KEEP
        for digest in [d for d, s in self._slot_of.items() if s < oldest]:
            del self._slot_of[digest]
        return True

    def knows(self, digest: bytes, now: float) -> bool:
        slot = self._slot_of.get(digest)
        if slot is None or self.server_now is None:
            return False
        estimated_now = self.server_now + (now - self.learnt_at) / self.period
        return slot >= estimated_now - KEEP

    def __len__(self) -> int:
        return len(self._slot_of)


class Verifier:
    """Answers "may this block be stored?" for one client; thread-safe.

    ``fetch(channel, since)`` returns a feed answer's bytes or raises OSError;
    ``pinned`` is the server's key (``--server-key``, or read back from
    ``pin_file``); ``enabled`` False (``--no-verify``, for the benchmark)
    accepts everything.
    """

    def __init__(self, fetch: Callable[[int, int | None], bytes], pinned: bytes | None = None,
                 pin_file: Path | None = None, enabled: bool = True, refetch: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self._fetch, self._clock, self.enabled, self.refetch = fetch, clock, enabled, refetch
        self._pin_file = pin_file
        if pinned is None and pin_file is not None and pin_file.exists():
            pinned = _read_pin(pin_file)
        self.pinned = pinned
        self._lock = threading.Lock()
        self._book, self._channel = DigestBook(), None
        self._last_try: float | None = None
        self._last_ok: float | None = None
        self.counts = {"genuine": 0, "forged": 0, "unchecked": 0, "stock": 0,
                       "feed_fetches": 0, "feed_bytes": 0, "feed_failures": 0,
                       "feed_wait_s": 0.0, "feed_wait_max_s": 0.0}  # time blocks waited for it
        self._said: set[str] = set()

    @property
    def mode(self) -> str:
        if not self.enabled:
            return "off"
        if self.pinned is not None:
            return "feed"
        return "stock" if self.counts["feed_fetches"] else "unpinned"  # (nothing checked yet)

    def check(self, channel: int, digest: bytes) -> Verdict:
        """The verdict on a block of ``channel`` with ``digest`` (may fetch the feed)."""
        if not self.enabled:
            return Verdict.GENUINE
        with self._lock:
            asked = self._clock()
            if self._channel != channel:
                self._book, self._channel, self._last_try, self._last_ok = DigestBook(), channel, None, None
            verdict = self._judge(channel, digest, asked)
            self.counts[verdict.value] += 1
            return verdict

    def _judge(self, channel: int, digest: bytes, asked: float) -> Verdict:
        book = self._book
        if book.knows(digest, asked):
            return Verdict.GENUINE
        retry = self.refetch if self.pinned is not None else STOCK_RETRY
        if self._last_try is None or asked - self._last_try >= retry:
            self._refresh(channel, asked)
            if book.knows(digest, self._clock()):
                return Verdict.GENUINE
        if self._last_ok is not None and self._last_ok == self._last_try:
            return Verdict.FORGED       # the last fetch answered, and does not name it
        if self.pinned is not None:
            self._say_once("unreachable", "the server's digest feed is unreachable: blocks "
                           "from other clients are not stored until it answers again")
            return Verdict.UNCHECKED
        self._say_once("stock", "the server has no digest feed (a stock server?) and no "
                       "--server-key is given: blocks from other clients are NOT authenticated")
        return Verdict.STOCK

    def _refresh(self, channel: int, now: float) -> None:
        """(Under the lock.) Fetch the feed's entries we lack, and learn them."""
        self._last_try = now
        if self._fetch_and_learn(channel, self._book.newest) is False:
            self._fetch_and_learn(channel, None)    # the server restarted: all it has

    def _fetch_and_learn(self, channel: int, newest: int | None) -> bool | None:
        """One fetch of the entries after ``newest``; None when it failed."""
        since = newest + 1 if newest is not None else None
        self.counts["feed_fetches"] += 1
        started = self._clock()
        try:
            data = self._fetch(channel, since)
            self.counts["feed_bytes"] += len(data)
            doc = decode_document(data, self.pinned)
        except (OSError, FeedError) as exc:
            self.counts["feed_failures"] += 1
            log.debug("digest feed: %s", exc)
            if isinstance(exc, FeedError):
                self._say_once(f"bad {exc}", f"digest feed refused: {exc}")
            return None
        finally:
            waited = self._clock() - started
            self.counts["feed_wait_s"] += waited
            self.counts["feed_wait_max_s"] = max(self.counts["feed_wait_max_s"], waited)
        if doc.channel != channel:
            log.warning("digest feed answered for channel %d, not %d: ignored", doc.channel, channel)
            return None
        if self.pinned is None:
            self._pin(doc.key)
        self._last_ok = self._last_try
        self._unsay("unreachable")
        return self._book.learn(doc, self._clock())

    def _pin(self, key: bytes) -> None:
        self.pinned = key
        log.warning("digest feed: pinned the server key %s on first use; pass it with "
                    "--server-key to be sure it is the server's", key.hex())
        if self._pin_file is not None:
            try:
                self._pin_file.write_text(key.hex() + "\n")
            except OSError as exc:
                log.warning("cannot keep the pinned key in %s: %s", self._pin_file, exc)

    def _say_once(self, what: str, text: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warning("%s", text)

    def _unsay(self, what: str) -> None:
        if what in self._said:
            self._said.discard(what)
            log.info("the server's digest feed answers again")

    def snapshot(self) -> dict:
        with self._lock:
            return {"mode": self.mode, "key": self.pinned.hex() if self.pinned else None,
                    "known": len(self._book), **self.counts}


def _read_pin(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        log.warning("ignoring %s: not a pinned server key", path)
        return None
    return key if len(key) == 32 else None


def parse_key(text: str) -> bytes:
    """A ``--server-key`` value: 64 hex digits."""
    key = bytes.fromhex(text)
    if len(key) != 32:
        raise ValueError("a server key is 64 hex digits")
    return key


def http_fetcher(own_ip: str, host: str, port: int) -> Callable[[int, int | None], bytes]:
    """The thin socket edge: ``GET /feed/<channel>?since=<slot>`` from the server, bounded."""
    def fetch(channel: int, since: int | None) -> bytes:
        if not port:
            raise OSError("no feed port (--feed-port 0)")
        path = f"/feed/{channel}" + (f"?since={since}" if since is not None else "")
        try:
            status, reason, data = httpask.ask(own_ip, host, port, "GET", path,
                                               limit=MAX_DOCUMENT, within=FEED_WAIT)
        except http.client.HTTPException as exc:
            raise OSError(f"feed: {exc!r}") from None
        if status != 200:
            raise OSError(f"feed answered {status} {reason}")
        return data
    return fetch
