"""The cross-check's edge: the question over a socket, the waiting witness, the locks.

The rules are :mod:`client.crosscheck` (pure); this is what the node holds.
It is consulted only where the verifier says STOCK (no digest feed: the stock
server), for blocks from other clients, and turns the outcome into the
verifier's verdicts, so that a refuted block takes the path a forged one
takes (discarded, the sender distrusted, the blocks repaired from elsewhere).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from client import roles
from client.crosscheck import CrossCheck, Outcome, Witness
from client.links import ANSWER_DEADLINE, ask, connect_from, send_checked
from client.peerproto import Addr, DigestAnswer, DigestQuery, PeerProtocolError
from client.verify import Verdict

log = logging.getLogger(__name__)

#: Questions a witness keeps waiting at once; past them it answers at once (a stranger's
#: questions cannot hold more of the peer port's handler pool than this, each for 5 s at most).
MAX_WAITING = 8


class CrossChecker:
    """Both sides of the cross-check for one client; thread-safe.

    ``list_direct()`` is the server's ``11X`` list (None: not reachable);
    ``ask`` (for tests) replaces the question over a socket.
    """

    def __init__(self, me: Addr, period: float, window: float,
                 list_direct: Callable[[], list[str] | None], enabled: bool = True,
                 ask: Callable[[Addr, DigestQuery], DigestAnswer | None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled, self._clock = enabled, clock
        self._asking = CrossCheck(me, me.port, period, window, ask or digest_asker(me.ip),
                                  list_direct, clock)
        self._witness = Witness(period)
        # One question at a time: a block the live path and a repair both check is asked once.
        self._ask_lock = threading.Lock()
        self._seen = threading.Condition()   # guards the witness; notified on each server block
        self._waiting = 0
        self._answered = 0
        self._said: set[Outcome] = set()

    def check(self, channel: int, digest: bytes, sender: Addr, path: tuple[Addr, ...]) -> Verdict:
        """The verdict on a block ``sender`` relayed that no feed can check (may ask a witness)."""
        if not self.enabled:
            return Verdict.STOCK
        with self._ask_lock:
            outcome = self._asking.check(channel, digest, sender, path)
        if outcome is Outcome.CONFIRMED:
            return Verdict.GENUINE
        if outcome is Outcome.REFUTED:
            return Verdict.FORGED
        if outcome not in self._said:
            self._said.add(outcome)
            log.warning("%s: blocks relayed by other clients are stored unauthenticated",
                        f"no direct client but {sender} can vouch for its blocks (a lone chain)"
                        if outcome is Outcome.LONE else "no direct client answered the cross-check")
        return Verdict.STOCK

    def witnessed(self, channel: int, digest: bytes) -> None:
        """The server pushed a block: remember it, and wake the questions waiting for it."""
        with self._seen:
            self._witness.saw(channel, digest, self._clock())
            self._seen.notify_all()

    def serve(self, conn, talk: roles.Conversation, query: DigestQuery) -> None:
        """Answer a question on the peer port, once the server's block is in (or the wait is over)."""
        asked = self._clock()
        deadline = asked + query.wait_ms / 1000
        with self._seen:
            waits = self._waiting < MAX_WAITING
            self._waiting += waits
            try:
                while True:
                    now = self._clock()
                    answer = self._witness.answer(query, asked, now,
                                                  final=not waits or now >= deadline)
                    if answer is not None:
                        break
                    self._seen.wait(deadline - now)
            finally:
                self._waiting -= waits
            self._answered += 1
        try:
            send_checked(conn, talk, answer)
        except OSError as exc:
            log.info("cross-check: the answer could not be sent: %s", exc)

    def snapshot(self) -> dict:
        """The counts, read without the question's lock: a question may take seconds, and the
        status is written under the node's lock, which the question's server call takes."""
        return {"enabled": self.enabled, **dict(self._asking.counts), "answered": self._answered}


def digest_asker(own_ip: str) -> Callable[[Addr, DigestQuery], DigestAnswer | None]:
    """The question over a socket: the whole answer within its wait plus the answer deadline."""
    def ask_witness(witness: Addr, query: DigestQuery) -> DigestAnswer | None:
        deadline = time.monotonic() + query.wait_ms / 1000 + ANSWER_DEADLINE
        try:
            with connect_from(own_ip, witness.ip, witness.port, ANSWER_DEADLINE) as sock:
                answer = ask(sock, roles.Conversation(roles.DIGEST, roles.PEER), query, deadline)
        except (OSError, EOFError, PeerProtocolError) as exc:   # (a timeout is an OSError)
            log.info("cross-check: %s gave no answer: %s", witness, exc)
            return None
        return answer if isinstance(answer, DigestAnswer) else None   # (a Reject: no answer)
    return ask_witness
