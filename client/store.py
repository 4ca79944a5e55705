"""A client's blocks: on disk for the player, and a recent window in memory for relaying.

Blocks are written atomically (a hidden temporary name, then ``os.replace``)
as ``NNNNNNNNNN.mkv``, numbered in the order they are stored, so that name
order is play order and a name is never reused, even across a restart in the
same folder. The player deletes them after display; the window keeps the
latest ones in memory so that a child that reconnects can resume without a
hole.

The store on disk is bounded (:class:`StoreLimit`): past the limit the oldest
blocks on disk, which are the oldest the player has not played, are removed.
A disk that refuses a block (full, or failing) is reported once; the block
still goes to the window and to the children, and storing resumes by itself
with the next block that fits. Which blocks were not stored is kept as
ranges of their sequence numbers (:attr:`BlockStore.not_stored`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


log = logging.getLogger(__name__)

BLOCK_NAME = re.compile(r"^(\d{10})\.mkv$")

@dataclass(frozen=True)
class StoreLimit:
    """At most ``blocks`` blocks and at most ``bytes`` bytes of blocks on disk (None: no bound)."""

    blocks: int | None = None
    size_bytes: int | None = None

    def __post_init__(self):
        if (self.blocks is not None and self.blocks < 1) or (self.size_bytes is not None
                                                             and self.size_bytes < 1):
            raise ValueError("a store limit must allow at least one block")

    def describe(self) -> str:
        parts = []
        if self.blocks is not None:
            parts.append(f"{self.blocks} blocks")
        if self.size_bytes is not None:
            parts.append(f"{self.size_bytes / 1e6:g} MB")
        return " and ".join(parts) or "no limit"

    def to_json(self) -> dict:
        return {"blocks": self.blocks, "bytes": self.size_bytes}


_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mb|min)\s*$", re.IGNORECASE)


def parse_store_limit(text: str, period: float) -> StoreLimit | None:
    """``200MB`` (megabytes of blocks) or ``10min`` (the blocks of the last 10 minutes,
    at one block per ``period``); ``none``: no bound (for tests and benchmarks that
    read every block afterwards); ValueError for anything else."""
    if text.strip().lower() == "none":
        return None
    match = _LIMIT.match(text)
    if not match:
        raise ValueError(f"not a store limit (say e.g. 200MB or 10min): {text!r}")
    value, unit = float(match.group(1)), match.group(2).lower()
    if unit == "mb":
        return StoreLimit(size_bytes=int(value * 1e6))
    return StoreLimit(blocks=max(1, int(value * 60 / period)))


#: How often removals for the store limit are summed up in the log (seconds).
EVICTION_REPORT_EVERY = 60.0
#: How many ranges of blocks not stored are remembered (the newest).
MAX_NOT_STORED_RANGES = 1000


class BlockStore:
    """Writes blocks into the store folder, in play order, never overwriting.

    ``limit``: the bound of the blocks on disk (None: unbounded);
    ``quiet_limit``: removals for the limit are the normal case (a client
    without a player keeps only the recent window), logged at DEBUG.
    """

    def __init__(self, folder: Path, limit: StoreLimit | None = None, *,
                 quiet_limit: bool = False, clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._next = 1 + max((int(m.group(1)) for p in self.folder.iterdir()
                              if (m := BLOCK_NAME.match(p.name))), default=-1)
        self._lock = threading.Lock()
        self.limit = limit
        self.quiet_limit = quiet_limit
        self._clock = clock
        #: Blocks removed unplayed to keep the store within its limit.
        self.evicted = 0
        self._evicted_unreported = 0
        self._next_eviction_report: float | None = None
        #: The disk refuses blocks right now (full, or failing): said once per episode.
        self.refusing: str | None = None
        self.blocks_not_stored = 0
        #: ``[first_seq, last_seq]`` ranges of the blocks the disk refused, oldest first.
        self.not_stored: deque[list[int]] = deque(maxlen=MAX_NOT_STORED_RANGES)
        self._refused_now = 0

    def write(self, data: bytes, seq: int | None = None) -> Path | None:
        """Store one block (``seq``: its sequence number, for the record of refusals).

        Its path, or None when the disk refused it: the first refusal of an
        episode is logged, the next ones only counted, and the first block
        that fits again ends the episode.
        """
        with self._lock:
            name = f"{self._next:010d}.mkv"
            final = self.folder / name
            temp = self.folder / f".{name}.part"
            try:
                with open(temp, "wb") as f:
                    f.write(data)
                self._make_room(len(data))
                os.replace(temp, final)
            except OSError as exc:
                try:
                    temp.unlink(missing_ok=True)
                except OSError:
                    pass
                self._refused(exc, seq)
                return None
            self._next += 1
            if self.refusing is not None:
                log.warning("storing blocks in %s again: %d block(s) were not stored",
                            self.folder, self._refused_now)
                self.refusing, self._refused_now = None, 0
            return final

    def _refused(self, exc: OSError, seq: int | None) -> None:
        self.blocks_not_stored += 1
        self._refused_now += 1
        if seq is not None:
            if self.not_stored and self.not_stored[-1][1] == seq - 1:
                self.not_stored[-1][1] = seq
            else:
                self.not_stored.append([seq, seq])
        if self.refusing is None:
            self.refusing = exc.strerror or str(exc)
            log.error("cannot store blocks in %s: %s. Relaying to children goes on from "
                      "memory; storing resumes by itself when the disk takes blocks again "
                      "(this is said once)", self.folder, self.refusing)

    def _make_room(self, incoming: int) -> None:
        """(Under the lock.) Remove the oldest blocks so that one more of ``incoming`` bytes fits.

        Done before the new block takes its name, so that the folder never
        holds more than the limit, not even for an instant (the player and
        anyone watching the folder see it as it is).
        """
        if self.limit is None:
            return
        blocks = self.waiting()
        total = sum(size for _, size in blocks) + incoming
        removed = []
        while blocks and ((self.limit.blocks is not None and len(blocks) + 1 > self.limit.blocks)
                          or (self.limit.size_bytes is not None and total > self.limit.size_bytes)):
            name, size = blocks.pop(0)   # the new block stays, whatever its size
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass  # the player took it meanwhile
            except OSError as exc:
                log.warning("cannot remove %s for the store limit: %s", name, exc)
                break
            else:
                removed.append(name)
            total -= size
        if removed:
            self.evicted += len(removed)
            self._report_eviction(removed)

    def _report_eviction(self, removed: list[str]) -> None:
        if self.quiet_limit:
            log.debug("store limit (%s): removed %s", self.limit.describe(), ", ".join(removed))
            return
        now = self._clock()
        self._evicted_unreported += len(removed)
        if self._next_eviction_report is None or now >= self._next_eviction_report:
            log.warning("the store is at its limit (%s) with blocks the player has not "
                        "played: removed the %d oldest (%s), %d in all", self.limit.describe(),
                        self._evicted_unreported, removed[0], self.evicted)
            self._evicted_unreported = 0
            self._next_eviction_report = now + EVICTION_REPORT_EVERY

    def status(self) -> dict:
        """The figures of status.json and stats.json."""
        with self._lock:
            return {"disk_refusing": self.refusing, "blocks_not_stored": self.blocks_not_stored,
                    "not_stored_seqs": [list(r) for r in self.not_stored],
                    "evicted": self.evicted,
                    "limit": self.limit.to_json() if self.limit else None}

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


_failing_json: set[Path] = set()


def write_json_atomically(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` so that a reader never sees half a file.

    A failure (a full disk) is logged once per file until a write succeeds again.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temp, path)
    except OSError as exc:
        if path not in _failing_json:
            _failing_json.add(path)
            log.error("could not write %s: %s (said once until it works again)", path, exc)
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
    else:
        _failing_json.discard(path)
