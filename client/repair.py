"""Fetching missed blocks from several peers at once, as a pure planner.

A client that rejoins (or starts behind live with ``--catch-up``) is told
which blocks it lacks, oldest first. :class:`RepairPlan` splits that list
into contiguous parts, one per source (up to three at once: the new parent
and its ancestors, which are upstream and therefore hold the blocks), hands
a failed, stalled or empty-handed source's remaining part to the others, and
releases the blocks in play order as soon as a prefix is complete. A block
that no source can give is declared lost, so the repair always ends.

Time comes from the caller (``now`` arguments): the planner has no clock,
no sockets and no threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from client.peerproto import Addr, Block, BlockTail, FetchEnd, Hello

MAX_ACTIVE_SOURCES = 3


def fetch_answer(hello: Hello, held: dict[bytes, Block]) -> list[Block | BlockTail | FetchEnd]:
    """What a source sends for a fetch (``hello.want``), given the wanted blocks it holds:
    each in the order asked, then a :class:`~client.peerproto.FetchEnd` naming the others.

    The first comes as its rest only (:class:`~client.peerproto.BlockTail`) when the
    asker holds its beginning (``hello.held``: a block cut short by its parent's loss).
    """
    frames: list[Block | BlockTail | FetchEnd] = []
    for index, digest in enumerate(hello.want):
        block = held.get(digest)
        if block is None:
            continue
        if index == 0 and 0 < hello.held < len(block.data):
            frames.append(BlockTail(block.seq, digest, hello.held, block.data[hello.held:]))
        else:
            frames.append(block)
    frames.append(FetchEnd(tuple(d for d in hello.want if d not in held)))
    return frames


@dataclass
class _Source:
    addr: Addr
    pending: list[bytes] = field(default_factory=list)
    last_progress: float = 0.0
    failed: bool = False


class RepairPlan:
    """The state of one multi-source repair."""

    def __init__(self, missing: Sequence[bytes], sources: Sequence[Addr], now: float,
                 stall_after: float, max_active: int = MAX_ACTIVE_SOURCES):
        self.missing = list(dict.fromkeys(missing))
        self.stall_after = stall_after
        self._sources = {a: _Source(a, last_progress=now) for a in dict.fromkeys(sources)}
        self._received: dict[bytes, bytes] = {}
        self._refused: dict[bytes, set[Addr]] = {d: set() for d in self.missing}
        self._lost: set[bytes] = set()
        self._released = 0
        self._released_set: set[bytes] = set()
        self._max_active = max_active

    # -- what to fetch from whom --------------------------------------------

    def start(self) -> dict[Addr, list[bytes]]:
        """The first assignments: the missing list cut into contiguous parts."""
        active = list(self._sources.values())[:self._max_active]
        if not active:
            self._lost.update(self.missing)
            return {}
        size = -(-len(self.missing) // len(active))
        work = {}
        for index, source in enumerate(active):
            part = self.missing[index * size:(index + 1) * size]
            if part:
                source.pending = list(part)
                work[source.addr] = list(part)
        return work

    def _reassign(self, digests: list[bytes], now: float) -> dict[Addr, list[bytes]]:
        """Give ``digests`` to the live source with the least work that has not refused them."""
        work: dict[Addr, list[bytes]] = {}
        for digest in digests:
            if (digest not in self._refused or digest in self._received
                    or digest in self._released_set or digest in self._lost):
                continue  # not wanted, or already settled
            takers = [s for s in self._sources.values()
                      if not s.failed and s.addr not in self._refused[digest]]
            if not takers:
                self._lost.add(digest)
                continue
            taker = min(takers, key=lambda s: (len(s.pending), list(self._sources).index(s.addr)))
            if not taker.pending:
                taker.last_progress = now
            taker.pending.append(digest)
            work.setdefault(taker.addr, []).append(digest)
        return work

    def add_source(self, addr: Addr, now: float) -> dict[Addr, list[bytes]]:
        """A new source (a holder that just appeared): it takes the last half of the
        longest part still pending, which its old source would have fetched last.

        The old source's connection may still bring those blocks; the first copy counts.
        """
        if addr in self._sources:
            return {}
        self._sources[addr] = source = _Source(addr, last_progress=now)
        busiest = max((s for s in self._sources.values() if not s.failed and s.pending),
                      key=lambda s: len(s.pending), default=None)
        if busiest is None or len(busiest.pending) < 2:
            return {}
        keep = len(busiest.pending) // 2
        busiest.pending, source.pending = busiest.pending[:keep], busiest.pending[keep:]
        return {addr: list(source.pending)}

    # -- what the fetches report ----------------------------------------------

    def received(self, source: Addr, digest: bytes, data: bytes, now: float) -> None:
        """A wanted block arrived (from any source: the first copy counts)."""
        state = self._sources.get(source)
        if digest not in self._refused:
            return  # not wanted
        if state is not None:
            state.last_progress = now
            if digest in state.pending:
                state.pending.remove(digest)
        if digest not in self._lost and digest not in self._released_set:
            self._received.setdefault(digest, data)

    def progressed(self, source: Addr, now: float) -> None:
        """Bytes of a block are arriving from ``source``: it is slow, perhaps, but not stalled."""
        state = self._sources.get(source)
        if state is not None:
            state.last_progress = now

    def lacked(self, source: Addr, digests: Sequence[bytes], now: float) -> dict[Addr, list[bytes]]:
        """``source`` finished its fetch without these blocks: others try them."""
        state = self._sources[source]
        for digest in digests:
            if digest in self._refused:
                self._refused[digest].add(source)
            if digest in state.pending:
                state.pending.remove(digest)
        state.last_progress = now
        return self._reassign(list(digests), now)

    def failed(self, source: Addr, now: float) -> dict[Addr, list[bytes]]:
        """``source`` died or broke the protocol: its remaining part goes to the others."""
        state = self._sources[source]
        if state.failed:
            return {}
        state.failed = True
        remaining, state.pending = state.pending, []
        return self._reassign(remaining, now)

    def stalled(self, now: float) -> list[Addr]:
        """Sources with work left that made no progress for ``stall_after`` seconds."""
        return [s.addr for s in self._sources.values()
                if not s.failed and s.pending and now - s.last_progress > self.stall_after]

    def give_up(self) -> None:
        """Declare every block not yet received lost (the repair took too long)."""
        self._lost.update(d for d in self.missing
                          if d not in self._received and d not in self._released_set)

    # -- what the client stores ------------------------------------------------

    def release(self) -> list[tuple[bytes, bytes | None]]:
        """Blocks now ready in play order: (digest, data), data None for a lost block."""
        out = []
        while self._released < len(self.missing):
            digest = self.missing[self._released]
            if digest in self._received:
                out.append((digest, self._received.pop(digest)))
            elif digest in self._lost:
                out.append((digest, None))
            else:
                break
            self._released += 1
            self._released_set.add(digest)
        return out

    @property
    def done(self) -> bool:
        return self._released == len(self.missing)

    @property
    def lost(self) -> int:
        return len(self._lost)
