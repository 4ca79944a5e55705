"""Channel membership, failure rules and pacing, as pure code.

No sockets and no sleeping here. Time comes in as numbers (the caller passes
``clock()`` readings), so every rule is testable with a fake clock:

* :class:`Channel`: the members of one channel in join order, the limit, the
  two-strikes failure rule and the channel's statistics. Not thread-safe on
  its own: only a :class:`Registry` mutates it.
* :class:`Registry`: all channels behind one lock; a client (an IP address) is
  in at most one channel. Every thread of the server goes through it.
* :class:`Schedule`: the absolute schedule ``block k at start + k * period``.

Joining is two-phase, because a join is recorded only once the answer reached
the client's push port: :meth:`Registry.join` reserves a place and returns a
:class:`Ticket`; :meth:`Registry.confirm` records it after the answer was
delivered, :meth:`Registry.cancel` drops it when it could not be. A reserved
place counts towards the limit but receives no blocks and is not listed.
"""

from __future__ import annotations

import enum
import itertools
import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Iterable


class Outcome(enum.Enum):
    """What a send result did to the client."""

    OK = "ok"            # delivered; the failure count is back to 0
    SKIPPED = "skipped"  # first failure in a row: kept, tried again next round
    REMOVED = "removed"  # second failure in a row: taken out of the channel
    STALE = "stale"      # the client left (or rejoined) meanwhile: ignored


@dataclass(frozen=True)
class Ticket:
    """A reserved or held place: ``ip`` in ``channel``; ``serial`` tells apart
    successive memberships of the same address."""

    ip: str
    channel: int
    serial: int


@dataclass
class _Member:
    ticket: Ticket
    confirmed: bool = False
    failures: int = 0


@dataclass
class ChannelStats:
    """Counters of one channel, written to the ``--stats`` file."""

    channel: int
    film: str
    rounds: int = 0
    blocks_sent: int = 0        # blocks delivered, summed over clients
    bytes_sent: int = 0
    clients_served: int = 0     # distinct addresses that received a block
    send_failures: int = 0
    removals: int = 0
    joins: int = 0
    full_answers: int = 0
    leaves: int = 0
    overruns: int = 0
    skipped_slots: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Channel:
    """One channel's members (in join order), limit and failure rule."""

    def __init__(self, number: int, limit: int, film: str = ""):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.number = number
        self.limit = limit
        self._members: dict[str, _Member] = {}   # insertion order = join order
        self._served: set[str] = set()
        self.stats = ChannelStats(number, film)

    # membership ------------------------------------------------------------
    def __contains__(self, ip: str) -> bool:
        return ip in self._members

    def members(self) -> list[str]:
        """Confirmed members, in join order."""
        return [ip for ip, m in self._members.items() if m.confirmed]

    def has_room(self) -> bool:
        return len(self._members) < self.limit

    def reserve(self, ticket: Ticket) -> bool:
        """Hold a place for ``ticket.ip`` if there is room (the ip is not a member)."""
        assert ticket.ip not in self._members
        if not self.has_room():
            self.stats.full_answers += 1
            return False
        self._members[ticket.ip] = _Member(ticket)
        return True

    def confirm(self, ticket: Ticket) -> bool:
        member = self._members.get(ticket.ip)
        if member is None or member.ticket != ticket or member.confirmed:
            return False
        member.confirmed = True
        self.stats.joins += 1
        return True

    def discard(self, ip: str, ticket: Ticket | None = None) -> bool:
        """Take ``ip`` out (only if it still holds ``ticket``, when given)."""
        member = self._members.get(ip)
        if member is None or (ticket is not None and member.ticket != ticket):
            return False
        del self._members[ip]
        return True

    # failure rule ------------------------------------------------------------
    def round_targets(self) -> list[Ticket]:
        """Whom this round's block goes to: the confirmed members, in join order."""
        return [m.ticket for m in self._members.values() if m.confirmed]

    def record(self, ticket: Ticket, ok: bool, nbytes: int = 0) -> Outcome:
        """Apply one send result: success resets the count, a failure skips the
        client, the second failure in a row removes it."""
        member = self._members.get(ticket.ip)
        if member is None or member.ticket != ticket:
            return Outcome.STALE
        if ok:
            member.failures = 0
            self.stats.blocks_sent += 1
            self.stats.bytes_sent += nbytes
            if ticket.ip not in self._served:
                self._served.add(ticket.ip)
                self.stats.clients_served += 1
            return Outcome.OK
        self.stats.send_failures += 1
        member.failures += 1
        if member.failures >= 2:
            del self._members[ticket.ip]
            self.stats.removals += 1
            return Outcome.REMOVED
        return Outcome.SKIPPED

    def failures_of(self, ip: str) -> int:
        member = self._members.get(ip)
        return member.failures if member else 0


@dataclass(frozen=True)
class JoinResult:
    """What :meth:`Registry.join` did: the reserved place (None: channel full)
    and the channel the client was taken out of (None: it was in none)."""

    ticket: Ticket | None
    previous: int | None

    @property
    def joined(self) -> bool:
        return self.ticket is not None


class Registry:
    """All channels behind one lock: a client is in at most one channel."""

    def __init__(self, channels: Iterable[Channel]):
        self._channels = list(channels)
        if not self._channels:
            raise ValueError("a registry needs at least one channel")
        self._lock = threading.Lock()
        self._serials = itertools.count(1)

    def __len__(self) -> int:
        return len(self._channels)

    def channel(self, number: int) -> Channel:
        """The channel object (for reading its settings; mutate through the registry)."""
        return self._channels[number]

    def join(self, ip: str, channel: int) -> JoinResult:
        """Take ``ip`` out of whichever channel it is in, then reserve a place in
        ``channel`` if there is room."""
        with self._lock:
            previous = None
            for ch in self._channels:
                if ch.discard(ip):
                    previous = ch.number
            ticket = Ticket(ip, channel, next(self._serials))
            if not self._channels[channel].reserve(ticket):
                ticket = None
            return JoinResult(ticket, previous)

    def confirm(self, ticket: Ticket) -> bool:
        """Record a reserved join (its answer reached the client)."""
        with self._lock:
            return self._channels[ticket.channel].confirm(ticket)

    def cancel(self, ticket: Ticket) -> bool:
        """Drop a reserved join (its answer could not be delivered)."""
        with self._lock:
            return self._channels[ticket.channel].discard(ticket.ip, ticket)

    def leave(self, ip: str, channel: int) -> bool:
        """Take ``ip`` out of ``channel``; False when it was not in it."""
        with self._lock:
            ch = self._channels[channel]
            left = ch.discard(ip)
            if left:
                ch.stats.leaves += 1
            return left

    def members(self, channel: int) -> list[str]:
        with self._lock:
            return self._channels[channel].members()

    def count(self, channel: int) -> int:
        with self._lock:
            return len(self._channels[channel].members())

    def where(self, ip: str) -> int | None:
        """The channel ``ip`` holds a place in, or None."""
        with self._lock:
            for ch in self._channels:
                if ip in ch:
                    return ch.number
            return None

    def round_targets(self, channel: int) -> list[Ticket]:
        with self._lock:
            return self._channels[channel].round_targets()

    def record(self, ticket: Ticket, ok: bool, nbytes: int = 0) -> Outcome:
        with self._lock:
            return self._channels[ticket.channel].record(ticket, ok, nbytes)

    def update_stats(self, channel: int, **increments: int) -> None:
        with self._lock:
            stats = self._channels[channel].stats
            for name, value in increments.items():
                setattr(stats, name, getattr(stats, name) + value)

    def stats(self) -> list[dict]:
        with self._lock:
            return [ch.stats.as_dict() for ch in self._channels]


@dataclass(frozen=True)
class Slot:
    """One round of the schedule: slot ``index`` is due at ``due`` and must be
    over by ``deadline``; ``skipped`` slots were missed before it."""

    index: int
    due: float
    deadline: float
    skipped: int = 0


@dataclass(frozen=True)
class Schedule:
    """Block ``k`` goes out at ``start + k * period``: an absolute schedule, so
    lateness in one round never shifts the next ones.

    ``margin`` is kept free at the end of each period: a round's sends must be
    over by ``due + period - margin``.
    """

    start: float
    period: float
    margin: float = field(default=-1.0)

    def __post_init__(self):
        if not self.period > 0 or math.isinf(self.period):
            raise ValueError(f"period must be a positive number of seconds, not {self.period}")
        if self.margin < 0:
            object.__setattr__(self, "margin", min(0.1 * self.period, 0.2))

    def due(self, index: int) -> float:
        return self.start + index * self.period

    def slot(self, index: int, skipped: int = 0) -> Slot:
        due = self.due(index)
        return Slot(index, due, due + self.period - self.margin, skipped)

    def next_slot(self, previous: int | None, now: float) -> Slot:
        """The slot to run after slot ``previous`` (None: the first), at ``now``.

        Normally ``previous + 1``, even if it is somewhat late. When ``now`` is
        already past that slot's whole period (a round overran by more than a
        period), the missed slots are skipped: the channel goes on with the
        slot of the current moment, as live television does.
        """
        index = 0 if previous is None else previous + 1
        current = math.floor((now - self.start) / self.period)
        if current > index:
            return self.slot(current, skipped=current - index)
        return self.slot(index)

    def block_of(self, index: int, blocks: int) -> int:
        """Which of a film's ``blocks`` slot ``index`` sends (wrapping around)."""
        return index % blocks
