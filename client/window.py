"""The recent window: the latest blocks in memory, for children that resume and peers that repair.

Pure (no file, no clock): :mod:`client.store` keeps the blocks on disk, this
module what a relay can still give. The store re-exports these names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from client.peerproto import Block

#: How far apart two clients' numbers for the same block may be and still be
#: taken for the same occurrence (numberings of different direct clients drift
#: by a block or two; a film shorter than the window repeats every few blocks).
SEQ_TOLERANCE = 2


@dataclass(frozen=True)
class Stored:
    """A block in the window, with the time it was stored (Unix time)."""

    block: Block = field(repr=False)
    stored_at: float


class RecentWindow:
    """The latest blocks, oldest first, bounded in count."""

    def __init__(self, size: int):
        self._blocks: deque[Stored] = deque(maxlen=max(1, size))

    def append(self, stored: Stored) -> None:
        self._blocks.append(stored)

    @property
    def capacity(self) -> int:
        return self._blocks.maxlen

    def latest(self, count: int) -> list[Block]:
        return [s.block for s in list(self._blocks)[-count:]] if count > 0 else []

    def find(self, digests) -> dict[bytes, Block]:
        """The blocks of the window with these identities (the latest copy of each)."""
        wanted = set(digests)
        return {s.block.digest: s.block for s in self._blocks if s.block.digest in wanted}

    def clear(self) -> None:
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)

    def latest_digests(self, count: int) -> tuple[bytes, ...]:
        return tuple(s.block.digest for s in list(self._blocks)[-count:])

    def after(self, have: tuple[bytes, ...], have_seq: int = 0) -> tuple[bytes | None, list[Block]]:
        """Where a peer holding ``have`` (its latest identities, newest last) resumes.

        Returns the identity it resumes after and the blocks it lacks: those
        after the newest of ``have`` found in the window. A film repeats, so
        an identity may occur more than once in the window: an occurrence
        counts only if its position is within :data:`SEQ_TOLERANCE` of the
        one the peer gives (``have_seq`` for its newest block, one less for
        each older one), so that a peer just ahead of this one resumes after
        its second newest block, not a lap earlier. When no occurrence is
        that close (the two numberings differ), the nearest one is taken.
        (None, []) when none of ``have`` is in the window.
        """
        blocks = [s.block for s in self._blocks]
        nearest = None
        for back, digest in enumerate(reversed(have)):
            expected = have_seq - back
            places = [i for i, b in enumerate(blocks) if b.digest == digest]
            if not places:
                continue
            index = min(places, key=lambda i: (abs(blocks[i].seq - expected), -i))
            if abs(blocks[index].seq - expected) <= SEQ_TOLERANCE:
                return digest, blocks[index + 1:]
            if nearest is None:
                nearest = (digest, index)
        if nearest is None:
            return None, []
        digest, index = nearest
        return digest, blocks[index + 1:]

    def since(self, digest: bytes) -> list[bytes]:
        """Identities of the blocks stored after the latest ``digest`` (for duplicate skipping)."""
        digests = [s.block.digest for s in self._blocks]
        for index in range(len(digests) - 1, -1, -1):
            if digests[index] == digest:
                return digests[index + 1:]
        return []
