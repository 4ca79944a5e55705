"""A client's blocks: on disk for the player, and a recent window in memory for relaying.

Blocks are written atomically (a hidden temporary name, then ``os.replace``)
as ``NNNNNNNNNN.mkv``, numbered in the order they are stored, so that name
order is play order and a name is never reused, even across a restart in the
same folder. The player deletes them after display; the window keeps the
latest ones in memory so that a child that reconnects can resume without a
hole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from client.peerproto import Block

log = logging.getLogger(__name__)

BLOCK_NAME = re.compile(r"^(\d{10})\.mkv$")

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


class BlockStore:
    """Writes blocks into the store folder, in play order, never overwriting."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._next = 1 + max((int(m.group(1)) for p in self.folder.iterdir()
                              if (m := BLOCK_NAME.match(p.name))), default=-1)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> Path | None:
        """Store one block; its path, or None when the disk refused it (logged)."""
        with self._lock:
            name = f"{self._next:010d}.mkv"
            final = self.folder / name
            temp = self.folder / f".{name}.part"
            try:
                with open(temp, "wb") as f:
                    f.write(data)
                os.replace(temp, final)
            except OSError as exc:
                log.error("could not store block %s in %s: %s", name, self.folder, exc)
                temp.unlink(missing_ok=True)
                return None
            self._next += 1
            return final

    def waiting(self) -> list[tuple[str, int]]:
        """Blocks on disk not yet played (and deleted) by the player, oldest first."""
        out = []
        for path in sorted(self.folder.glob("*.mkv")):
            if BLOCK_NAME.match(path.name):
                try:
                    out.append((path.name, path.stat().st_size))
                except FileNotFoundError:
                    pass  # the player deleted it meanwhile
        return out


def write_json_atomically(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` so that a reader never sees half a file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temp, path)
    except OSError as exc:
        log.error("could not write %s: %s", path, exc)
        temp.unlink(missing_ok=True)
