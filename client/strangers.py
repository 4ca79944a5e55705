"""What a client grants the connections it did not ask for, before it knows who they are.

Two ports take connections from anyone: the push port (the channel server's
join answers and blocks) and the peer port (other clients' joins, probes and
fetches). Nothing a stranger does on one may cost the other anything, and no
stranger may hold more than a bounded share of either (issue 11 item 18,
issue 16 "bounded strangers"):

* each port has its own pool of handler slots (:class:`Gate`): a slowloris on
  the peer port can never make the server's pushes fail;
* the push port serves the server's address alone (:func:`push_allowed`);
* on the peer port, connections still in their handshake are counted per
  address; past :data:`MAX_HANDSHAKES_PER_ADDRESS` the next one is refused
  at once, and each has :data:`HANDSHAKE_DEADLINE` seconds for its whole
  handshake (not per ``recv``), during which only control frames of at most
  ``MAX_CONTROL`` bytes are accepted;
* a child link gives its handler slot back once accepted (children are
  bounded by ``max_children`` already), so it never holds a slot strangers need;
* one client identity per address (:func:`identity_clash`): the stock server
  knows clients by address alone, and one host must not take every free place.

Refusals are reported by blame (:class:`BlameLog`), once per address and kind
in a while, so that a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from client.peerproto import Addr

log = logging.getLogger(__name__)

#: Handler slots of the push port (the server sends a block a period, and join answers).
MAX_PUSH_HANDLERS = 8
#: Handler slots of the peer port: handshakes, probes and repairs served (not child links).
MAX_PEER_HANDLERS = 64
#: Peer connections from one address that may be in their handshake at once.
MAX_HANDSHAKES_PER_ADDRESS = 4
#: Seconds a peer connection has for its whole handshake (its Hello).
HANDSHAKE_DEADLINE = 3.0

#: Kinds of blame, as :class:`BlameLog` reports them.
LIE = "lie"                    # the peer said something provably false
VIOLATION = "protocol violation"
LIMIT = "resource limit"       # the peer asked for more than a stranger gets


class Gate:
    """The handler slots of one port, and the per-address count of handshakes."""

    def __init__(self, name: str, slots: int, per_address: int | None = None):
        self.name = name
        self.slots = slots
        self.per_address = per_address
        self._lock = threading.Lock()
        self._free = slots
        self._handshakes: dict[str, int] = {}

    def admit(self, ip: str) -> "Ticket | str":
        """A ticket for a new connection from ``ip``, or why it is refused."""
        with self._lock:
            if self._free <= 0:
                return f"all {self.slots} {self.name} handler slots are busy"
            if self.per_address is not None:
                if self._handshakes.get(ip, 0) >= self.per_address:
                    return (f"{self.per_address} connections from this address are "
                            f"already in their handshake")
                self._handshakes[ip] = self._handshakes.get(ip, 0) + 1
            self._free -= 1
        return Ticket(self, ip)

    def in_use(self) -> int:
        with self._lock:
            return self.slots - self._free

    def _release_slot(self) -> None:
        with self._lock:
            self._free += 1

    def _end_handshake(self, ip: str) -> None:
        if self.per_address is None:
            return
        with self._lock:
            left = self._handshakes[ip] - 1
            if left:
                self._handshakes[ip] = left
            else:
                del self._handshakes[ip]


class Ticket:
    """What one admitted connection holds: a slot, and (peer port) a handshake place."""

    def __init__(self, gate: Gate, ip: str):
        self._gate, self.ip = gate, ip
        self._lock = threading.Lock()
        self._slot = True
        self._handshake = True

    def handshake_done(self) -> None:
        """The peer said who it is (or failed to): its address's count goes down."""
        with self._lock:
            held, self._handshake = self._handshake, False
        if held:
            self._gate._end_handshake(self.ip)

    def give_back_slot(self) -> None:
        """The connection goes on without a handler slot (it became a child link)."""
        with self._lock:
            held, self._slot = self._slot, False
        if held:
            self._gate._release_slot()

    def close(self) -> None:
        self.handshake_done()
        self.give_back_slot()


def push_allowed(server_ips: Iterable[str], peer_ip: str) -> bool:
    """Only the channel server may push: the peer port checks its peers, this its server."""
    return peer_ip in server_ips


def identity_clash(children: Iterable[Addr], addr: Addr) -> Addr | None:
    """A child of this client with ``addr``'s address but another port, if any.

    A new connection from the very same client (same address and port)
    replaces its old link and is no clash.
    """
    for child in children:
        if child.ip == addr.ip and child != addr:
            return child
    return None


class BlameLog:
    """Logs refusals by blame, the first of each (blame, address) in ``window`` seconds
    as a warning and the rest quietly (counted, and their number said next time)."""

    def __init__(self, logger: logging.Logger = log, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._log, self._window, self._clock = logger, window, clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}
        self.counts: dict[str, int] = {}

    def report(self, blame: str, ip: str, what: str) -> bool:
        """Record one refusal; True when it was logged as a warning."""
        key = (blame, ip)
        now = self._clock()
        with self._lock:
            self.counts[blame] = self.counts.get(blame, 0) + 1
            last = self._last.get(key)
            if last is not None and now - last < self._window:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                loud, quiet = False, 0
            else:
                self._last[key] = now
                loud, quiet = True, self._quiet.pop(key, 0)
        if loud:
            more = f" ({quiet} more like it since the last report)" if quiet else ""
            self._log.warning("%s by %s: %s%s", blame, ip, what, more)
        else:
            self._log.debug("%s by %s: %s", blame, ip, what)
        return loud
