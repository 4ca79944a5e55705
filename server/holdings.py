"""Who holds which blocks: the tracker's soft state, as pure code with an injected clock.

A peer announces its holdings with a registration and keeps them alive with
heartbeats; a peer silent for ``drop_after`` seconds is dropped with every
holding it had. Nothing here is persistent: after a tracker restart the
peers announce themselves again (a heartbeat the tracker does not know is
answered "register again").

Every change returns the events it causes (``holder_joined``,
``holder_left``), which the tracker publishes on ``/events``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from server.manifest import ranges


@dataclass
class PeerHoldings:
    """One peer: its endpoint, the space it offers for replicas, what it holds, when last heard."""

    ip: str
    port: int
    space: int
    last_seen: float
    films: dict[str, frozenset[int]] = field(default_factory=dict)
    joined: float = 0.0  # since when it is known without a break

    @property
    def key(self) -> str:
        return f"{self.ip}:{self.port}"

    def used(self, sizes: dict[str, list[int]]) -> int:
        """Bytes of the blocks it holds, for the versions whose block sizes are known."""
        return sum(sizes[v][i] for v, held in self.films.items() if v in sizes for i in held)


def event(kind: str, /, **fields) -> dict:
    """A tracker event as published on ``/events``."""
    return {"type": kind, **fields}


class Holdings:
    """Every live peer's holdings, by peer key ``ip:port``."""

    def __init__(self, drop_after: float):
        self.drop_after = drop_after
        self.peers: dict[str, PeerHoldings] = {}

    def register(self, ip: str, port: int, films: dict[str, frozenset[int]], space: int,
                 now: float) -> list[dict]:
        """Replace what ``ip:port`` holds with ``films``; the joins and leaves this makes."""
        key = f"{ip}:{port}"
        before = self.peers.get(key)
        old = before.films if before else {}
        self.peers[key] = PeerHoldings(ip, port, space, now, dict(films),
                                       joined=before.joined if before else now)
        events = [event("holder_joined", version=v, peer=key, blocks=len(films[v]))
                  for v in films if v not in old]
        events += [event("holder_left", version=v, peer=key, reason="no longer announced")
                   for v in old if v not in films]
        return events

    def add_blocks(self, key: str, version: str, blocks: frozenset[int], now: float) -> list[dict]:
        """A peer announces more blocks of one version (a replica it fetched)."""
        peer = self.peers.get(key)
        if peer is None:
            return []
        peer.last_seen = now
        joined = version not in peer.films
        peer.films[version] = peer.films.get(version, frozenset()) | blocks
        return [event("holder_joined", version=version, peer=key, blocks=len(peer.films[version]))] \
            if joined else []

    def heartbeat(self, key: str, now: float) -> bool:
        """Refresh ``key``; False when it is unknown (it must register again)."""
        peer = self.peers.get(key)
        if peer is None:
            return False
        peer.last_seen = now
        return True

    def expire(self, now: float) -> list[dict]:
        """Drop the peers not heard of for ``drop_after`` seconds."""
        events = []
        for key in [k for k, p in self.peers.items() if now - p.last_seen > self.drop_after]:
            for version in self.peers.pop(key).films:
                events.append(event("holder_left", version=version, peer=key, reason="silent"))
        return events

    def drop(self, key: str, version: str, reason: str) -> list[dict]:
        """Forget that ``key`` holds ``version`` (it served bytes that do not match)."""
        peer = self.peers.get(key)
        if peer is None or version not in peer.films:
            return []
        del peer.films[version]
        return [event("holder_left", version=version, peer=key, reason=reason)]

    def holders(self, version: str) -> list[PeerHoldings]:
        return [p for p in self.peers.values() if version in p.films]

    def replication(self, version: str, count: int) -> list[int]:
        """How many live peers hold each block of ``version``."""
        counts = [0] * count
        for peer in self.holders(version):
            for index in peer.films[version]:
                if index < count:
                    counts[index] += 1
        return counts

    def describe(self, version: str, now: float) -> list[dict]:
        """The holders of ``version``: endpoint, blocks, seconds since it joined and since last heard."""
        return [{"ip": p.ip, "port": p.port, "blocks": ranges(p.films[version]),
                 "since": round(now - p.joined, 3), "seen": round(now - p.last_seen, 3)}
                for p in self.holders(version)]


class RateLimit:
    """A token bucket per source address: ``rate`` requests a second, bursts of ``burst``.

    At most ``max_sources`` buckets are kept (the oldest forgotten first), so
    a flood from many addresses cannot grow it without bound.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 10_000):
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        tokens, then = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
