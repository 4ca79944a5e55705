"""The cross-check among independent paths: whom to believe about a relayed block, with the stock server.

The stock server sends bytes only (``/work/shared/PROTOCOL.md``): no digest
feed, no numbering. What it sends is known first hand only to its direct
clients (the ones its ``11X`` list names). So before a client below depth 1
stores or relays a block from another client, it asks a direct client that is
not the sender (an **independent path**: a direct client's parent is the
server, so no relay can sit between it and the server) whether the server
sent it that block (:class:`~client.peerproto.DigestQuery`), and:

* the witness got it: **confirmed** (cached, so that a block asked about again,
  a repair retry or a re-sent catch-up block, costs no second question);
* the witness did not, although it got a server block after the question
  came (it is listening, and its round has passed) and its unbroken memory of
  the server's blocks reaches back over :attr:`CrossCheck.need` seconds (the
  recent window, this client's ``--window`` taken for the sender's, plus the
  relay delay: any genuine block a relay may still pass on): **refuted**, the
  node treats the block as forged;
* no answer, or one that shows neither (a witness that has just become a
  direct client, or is not one any more): the next witness is asked, at most
  :data:`MAX_WITNESSES` (the server's list asked again first when a witness
  was gone: a balance swap changes the direct clients); when none answers
  conclusively the block is **unanswered**;
* no direct client but the sender and this client (a lone chain: the only
  first-hand witness is the relay itself): **lone**.

Unanswered and lone blocks are stored unauthenticated (the node's STOCK
verdict, said once): a lone chain cannot be checked, and failing closed would
lose every block below depth 1 whenever the direct clients cannot be asked.

Why one question per block, answered by a waiting witness: the server sends
a block to each direct client in turn within one round, so a witness later in
the round than the sender's top ancestor may not have it yet when asked. It
waits (up to :attr:`CrossCheck.wait_ms`, bounded by the peer protocol) until
it has every asked block or the server's next block comes: a genuine block is
confirmed with one round trip and no retry, and a forged one is refuted as
soon as the witness's round moves on.

Pure: the question to a witness, the server's list and the clock are passed
in (the socket edge is :mod:`client.crosswire`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Callable, Iterable

from client.peerproto import MAX_CHECK_WAIT_MS, Addr, DigestAnswer, DigestQuery, encode

#: Digests of the server's blocks a witness remembers (its answers' reach).
KEEP = 128
#: Periods between two server blocks that break a witness's unbroken run: a push it missed
#: (the server goes on to the next client when a send fails) starts its memory anew, so that
#: it never refutes the block it missed; longer than this without one, it is not listening.
RUN_GAP = 1.5
#: Witnesses asked per block at most, until one answers conclusively.
MAX_WITNESSES = 3
#: Periods a copy of the server's ``11X`` list is used before it is asked again.
LIST_REFRESH = 10
#: How long (in periods) a witness may wait for the server's next block before it answers.
WAIT_PERIODS = 1.25


class Outcome(enum.Enum):
    CONFIRMED = "confirmed"     # an independent direct client got it from the server
    REFUTED = "refuted"         # one that listened all along did not: a lie of the sender
    UNANSWERED = "unanswered"   # independent paths exist, none answered conclusively
    LONE = "lone"               # no independent path (a lone chain)


def independent(listed: Iterable[str], port: int, me: Addr, sender: Addr,
                path: tuple[Addr, ...]) -> list[Addr]:
    """The direct clients that can vouch for a block ``sender`` relayed to ``me``, best first.

    Every direct client but the sender is outside the sender's subtree (its
    parent is the server). Those outside this client's own branch come
    first; the ancestors in ``path`` (outside the sender's subtree too when
    they are above it) after them: an ancestor may be the sender's
    accomplice, a client of another branch less likely so. Known by address
    (one client identity per address), on the channel's peer ``port``.
    """
    ours = {a.ip for a in path}
    outside, ancestors = [], []
    for ip in dict.fromkeys(listed):
        if ip not in (me.ip, sender.ip):
            (ancestors if ip in ours else outside).append(Addr(ip, port))
    return outside + ancestors


def judge(digest: bytes, answer: DigestAnswer | None, need: float) -> Outcome | None:
    """What one witness's answer says about ``digest``; None: nothing conclusive."""
    if answer is None:
        return None
    if digest in answer.got:
        return Outcome.CONFIRMED
    if answer.fresh and answer.covered_ms >= need * 1000:
        return Outcome.REFUTED
    return None


class Witness:
    """A direct client's memory of the server's blocks, and its answer to a question.

    ``saw`` is called for every block the server pushes (whether stored or
    not: the push port takes the server's address only); ``answer`` with the
    time the question came and now, and ``final`` when its wait is over.
    """

    def __init__(self, period: float, keep: int = KEEP):
        self.period, self.keep = period, keep
        self.channel: int | None = None
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> when, oldest first
        self._run_start: float | None = None
        self._last: float | None = None

    def saw(self, channel: int, digest: bytes, now: float) -> None:
        if channel != self.channel:
            self._seen.clear()
            self.channel, self._last = channel, None
        if not self.listening(now):
            self._run_start = now
        self._last = now
        self._seen[digest] = now
        self._seen.move_to_end(digest)
        while len(self._seen) > self.keep:
            self._seen.popitem(last=False)

    def listening(self, now: float) -> bool:
        """Has the server sent a block lately (within :data:`RUN_GAP` periods)?"""
        return self._last is not None and now - self._last <= RUN_GAP * self.period

    def covered(self, now: float) -> float:
        """Seconds back the unbroken memory of the server's blocks reaches (0: not listening)."""
        if not self.listening(now):
            return 0.0
        oldest = next(iter(self._seen.values()))
        return now - max(self._run_start, oldest)

    def answer(self, query: DigestQuery, asked_at: float, now: float,
               final: bool = False) -> DigestAnswer | None:
        """The answer to ``query`` now, or None: wait for the server's next block."""
        if query.channel != self.channel:
            return DigestAnswer()
        got = tuple(d for d in query.want if d in self._seen)
        fresh = self._last is not None and self._last > asked_at
        if len(got) == len(query.want) or fresh or final or not self.listening(now):
            return DigestAnswer(got, fresh, int(self.covered(now) * 1000))
        return None


class CrossCheck:
    """The asking side, for one client: :meth:`check` one relayed block. Not thread-safe.

    ``ask(witness, query)`` returns the witness's :class:`DigestAnswer` or
    None (no answer in time); ``list_direct()`` the server's ``11X`` list
    (None: the server could not be asked).
    """

    def __init__(self, me: Addr, port: int, period: float, window: float,
                 ask: Callable[[Addr, DigestQuery], DigestAnswer | None],
                 list_direct: Callable[[], list[str] | None], clock: Callable[[], float]):
        self.me, self.port, self.period = me, port, period
        #: Seconds a witness must have listened to refute: the oldest genuine block a relay
        #: still passes on (its window) plus the delay a block may have on its way down.
        self.need = window + 2 * period
        #: How long the witnesses of one block may wait for the server's next block, together
        #: (a round and a quarter): the block is held that long at most, plus the round trips.
        self.wait_ms = min(int(WAIT_PERIODS * period * 1000), MAX_CHECK_WAIT_MS)
        self._ask, self._list_direct, self._clock = ask, list_direct, clock
        self._confirmed: dict[bytes, float] = {}     # digest -> cached until
        self._listed: list[str] = []
        self._listed_at: float | None = None
        self.counts = {"confirmed": 0, "refuted": 0, "unanswered": 0, "lone": 0, "cached": 0,
                       "queries": 0, "unanswered_queries": 0, "control_bytes": 0,
                       "wait_s": 0.0, "wait_max_s": 0.0, "waits_over_100ms": 0,
                       "wait_over_100ms_s": 0.0}

    def check(self, channel: int, digest: bytes, sender: Addr,
              path: tuple[Addr, ...]) -> Outcome:
        """The outcome for a block with ``digest`` that ``sender`` relayed (``path``: our ancestors)."""
        started = self._clock()
        self._confirmed = {d: t for d, t in self._confirmed.items() if t > started}
        if digest in self._confirmed:
            self.counts["cached"] += 1
            return self._count(Outcome.CONFIRMED, started)
        witnesses = independent(self._direct(started), self.port, self.me, sender, path)
        if not witnesses:
            return self._count(Outcome.LONE, started)
        asked: set[Addr] = set()
        while witnesses and len(asked) < MAX_WITNESSES:
            stale = False
            for witness in witnesses[:MAX_WITNESSES - len(asked)]:
                asked.add(witness)
                answer = self._question(channel, digest, witness, started)
                outcome = judge(digest, answer, self.need)
                if outcome is Outcome.CONFIRMED:
                    self._confirmed[digest] = self._clock() + self.need
                if outcome is not None:
                    return self._count(outcome, started)
                self.counts["unanswered_queries"] += 1
                stale |= answer is None or answer.covered_ms == 0   # gone, or not direct now
            # A witness that is not a direct client any more (a balance swap moved it): the
            # server's list is stale; the new direct clients are asked (a list a period old at most).
            witnesses = [w for w in independent(self._direct(self._clock(), stale), self.port,
                                                self.me, sender, path) if w not in asked]
        return self._count(Outcome.UNANSWERED, started)

    def _question(self, channel: int, digest: bytes, witness: Addr,
                  started: float) -> DigestAnswer | None:
        # One wait for the block, shared by its witnesses: the block is held meanwhile.
        left = self.wait_ms - int((self._clock() - started) * 1000)
        query = DigestQuery(channel, (digest,), max(0, left))
        answer = self._ask(witness, query)
        self.counts["queries"] += 1
        self.counts["control_bytes"] += len(encode(query)) + (
            len(encode(answer)) if answer is not None else 0)
        return answer

    def _direct(self, now: float, stale: bool = False) -> list[str]:
        """The server's list: asked again every :data:`LIST_REFRESH` periods, or after a period
        when it proved ``stale``."""
        if self._listed_at is None or now - self._listed_at >= (
                self.period if stale else LIST_REFRESH * self.period):
            listed = self._list_direct()
            if listed is not None:
                self._listed = list(listed)
            self._listed_at = now
        return self._listed

    def _count(self, outcome: Outcome, started: float) -> Outcome:
        waited = self._clock() - started
        self.counts[outcome.value] += 1
        self.counts["wait_s"] += waited
        self.counts["wait_max_s"] = max(self.counts["wait_max_s"], waited)
        if waited > 0.1:
            self.counts["waits_over_100ms"] += 1
            self.counts["wait_over_100ms_s"] += waited
        return outcome

