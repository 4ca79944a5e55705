"""Keeping every block on at least R holders, as pure code with an injected clock.

The tracker cannot reach peers (they may be behind anything), so it hands
out work in its answers to their heartbeats: a peer that offers space
(``--library-space``) is told ``replicate: [{version, blocks}]``, fetches
those blocks from their holders like any download, and announces them with
its next heartbeat (``got``). A block counts as covered by its holders plus
the copies in flight; a task not announced within ``task_timeout`` seconds
is forgotten, so its blocks are handed to someone else.

Algorithm, at each heartbeat of a peer P with free space F (offered space
minus the blocks it holds and the tasks it has in flight): for every
version someone holds, oldest listed first, the blocks with fewer than R
copies (holders + in flight) that P lacks, lowest index first, while they
fit in F. A whole short film thus goes to one peer when it fits, so the new
replica can serve whole parts.

``replication_started`` is published when a version falls short of R with
a peer able to take a copy, ``replication_done`` when every block is back
to R.
"""

from __future__ import annotations

from server.holdings import Holdings, event
from server.manifest import ranges

MAX_TASK_BLOCKS = 4096


class Replicator:
    """Replication tasks in flight and the versions being replicated."""

    def __init__(self, replicas: int, task_timeout: float):
        self.replicas = replicas
        self.task_timeout = task_timeout
        self._inflight: dict[tuple[str, int], dict[str, float]] = {}
        self._short: set[str] = set()

    def _expire(self, now: float) -> None:
        for key in list(self._inflight):
            peers = {p: t for p, t in self._inflight[key].items() if t > now}
            if peers:
                self._inflight[key] = peers
            else:
                del self._inflight[key]

    def _covered(self, version: str, index: int, count: int) -> int:
        return count + len(self._inflight.get((version, index), ()))

    def progress(self, counts: dict[str, list[int]], holdings: Holdings,
                 sizes: dict[str, list[int]], now: float) -> list[dict]:
        """Started/done events given each version's holder count per block."""
        self._expire(now)
        events = []
        for version, per_block in counts.items():
            short = [i for i, c in enumerate(per_block) if c < self.replicas]
            if short and version not in self._short and self._has_taker(version, holdings, sizes):
                self._short.add(version)
                events.append(event("replication_started", version=version, short_blocks=len(short),
                                    lowest=min(per_block), target=self.replicas))
            elif not short and version in self._short:
                self._short.discard(version)
                events.append(event("replication_done", version=version, lowest=min(per_block),
                                    target=self.replicas))
        for version in self._short - set(counts):
            self._short.discard(version)  # nobody holds it any more: nothing to copy from
        return events

    def _free(self, key: str, holdings: Holdings, sizes: dict[str, list[int]]) -> int:
        peer = holdings.peers[key]
        pending = sum(sizes[v][i] for (v, i), peers in self._inflight.items()
                      if key in peers and v in sizes)
        return peer.space - peer.used(sizes) - pending

    def _has_taker(self, version: str, holdings: Holdings, sizes: dict[str, list[int]]) -> bool:
        return any(p.space > 0 and len(p.films.get(version, ())) < len(sizes[version])
                   for p in holdings.peers.values())

    def tasks_for(self, key: str, holdings: Holdings, sizes: dict[str, list[int]],
                  now: float) -> list[dict]:
        """The blocks peer ``key`` should fetch now (and they count as in flight)."""
        self._expire(now)
        peer = holdings.peers.get(key)
        if peer is None or peer.space <= 0:
            return []
        free = self._free(key, holdings, sizes)
        tasks = []
        for version, block_sizes in sizes.items():
            counts = holdings.replication(version, len(block_sizes))
            held = peer.films.get(version, frozenset())
            chosen = []
            for index, count in enumerate(counts):
                if len(chosen) >= MAX_TASK_BLOCKS:
                    break
                if (index in held or key in self._inflight.get((version, index), {})
                        or count == 0 or self._covered(version, index, count) >= self.replicas):
                    continue
                if block_sizes[index] > free:
                    break
                free -= block_sizes[index]
                chosen.append(index)
            for index in chosen:
                self._inflight.setdefault((version, index), {})[key] = now + self.task_timeout
            if chosen:
                tasks.append({"version": version, "blocks": ranges(chosen)})
        return tasks

    def delivered(self, key: str, version: str, blocks) -> None:
        """``key`` announced these blocks: they are held now, no longer in flight."""
        for index in blocks:
            peers = self._inflight.get((version, index))
            if peers is not None:
                peers.pop(key, None)
                if not peers:
                    del self._inflight[(version, index)]
