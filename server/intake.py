"""Requests being read: which connection to read, finish or drop, as pure logic.

A request is three bytes, but a client may take up to the read timeout to send
them, or send nothing at all. Reading them in the listener's selector, not in
a handler thread, means that idle connections hold only a buffer and a file
descriptor: handler threads go to complete requests alone, so 50 connections
that never send anything cannot crowd out a valid request (issue 11, item 15).

:class:`Intake` decides; the server's listener does the I/O. Every connection
is identified by a key the caller chooses (its socket) and the peer's address.
The number of connections being read is bounded, in all and per address; past
a bound the *oldest* connection of that address (or of all) gives way, so that
a new request always gets read and a flood only evicts the flood.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

from server import protocol

#: Connections being read at once, in all (each holds a file descriptor).
MAX_READING = 256
#: Connections being read at once from one address.
MAX_READING_PER_ADDRESS = 64


@dataclass
class Reading:
    """One connection whose request is not in yet."""

    ip: str
    deadline: float
    data: bytes = b""


@dataclass(frozen=True)
class Finished:
    """A connection done with reading: ``why`` is ``complete``, ``eof`` or ``timeout``."""

    key: Hashable
    ip: str
    data: bytes
    why: str


@dataclass
class Intake:
    """The connections whose request is being read, oldest first."""

    timeout: float
    max_reading: int = MAX_READING
    max_per_address: int = MAX_READING_PER_ADDRESS
    _reading: "OrderedDict[Hashable, Reading]" = field(default_factory=OrderedDict)
    _per_address: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._reading)

    def add(self, key: Hashable, ip: str, now: float) -> list[Finished]:
        """Start reading ``key``; returns the connections that give way to it
        (``why`` = ``evicted``), to be closed by the caller."""
        evicted = []
        if self._per_address.get(ip, 0) >= self.max_per_address:
            oldest = next(k for k, r in self._reading.items() if r.ip == ip)
            evicted.append(self._finish(oldest, "evicted"))
        if len(self._reading) >= self.max_reading:
            evicted.append(self._finish(next(iter(self._reading)), "evicted"))
        self._reading[key] = Reading(ip, now + self.timeout)
        self._per_address[ip] = self._per_address.get(ip, 0) + 1
        return evicted

    def room(self, key: Hashable) -> int:
        """How many bytes to read at most from ``key`` now."""
        return protocol.MAX_REQUEST - len(self._reading[key].data)

    def received(self, key: Hashable, chunk: bytes) -> Finished | None:
        """Bytes read from ``key`` (``b""``: the peer closed); its end once the request is in."""
        reading = self._reading[key]
        if not chunk:
            return self._finish(key, "eof")
        reading.data += chunk
        if protocol.request_complete(reading.data):
            return self._finish(key, "complete")
        return None

    def expired(self, now: float) -> list[Finished]:
        """The connections whose time to send a request is over."""
        done = []
        for key, reading in list(self._reading.items()):
            if reading.deadline > now:
                break                      # oldest first: the rest have later deadlines
            done.append(self._finish(key, "timeout"))
        return done

    def next_deadline(self) -> float | None:
        """When :meth:`expired` next has something to say (None: nobody is being read)."""
        if not self._reading:
            return None
        return next(iter(self._reading.values())).deadline

    def drain(self) -> list[Finished]:
        """Every connection still being read (the server is stopping)."""
        return [self._finish(key, "stopping") for key in list(self._reading)]

    def _finish(self, key: Hashable, why: str) -> Finished:
        reading = self._reading.pop(key)
        left = self._per_address[reading.ip] - 1
        if left:
            self._per_address[reading.ip] = left
        else:
            del self._per_address[reading.ip]
        return Finished(key, reading.ip, reading.data, why)
