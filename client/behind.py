"""How far behind live the player is, as the client reports it (status.json, stats.json, menu).

The player replaces ``player.json`` in the store about twice a second
(:mod:`player.report`); :class:`PlayerWatch` reads it when the client writes
its status, keeps the latest figures and the distribution of the distance to
live over the run (one sample per new player state). A file older than the
client (a player of an earlier run) is ignored; a file that stops changing
(a stopped or frozen player) is reported with its age.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Callable

from player.report import STATE_FILE

#: Width of the histogram's bins, in seconds behind live.
BIN_SECONDS = 1.0
#: A player state older than this (seconds) is stale: the player is stopped or stuck.
STALE_AFTER = 5.0


class BehindStats:
    """The distribution of the seconds behind live: a histogram with 1-s bins, exact max (pure)."""

    def __init__(self):
        self.bins: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.bins[int(seconds // BIN_SECONDS)] = self.bins.get(int(seconds // BIN_SECONDS), 0) + 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding the ``q`` quantile (None without samples)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return min(self.max, (index + 1) * BIN_SECONDS)
        return self.max

    def to_json(self) -> dict:
        return {"samples": self.count,
                "mean_s": round(self.total / self.count, 3) if self.count else None,
                "median_s": self.quantile(0.5), "p90_s": self.quantile(0.9),
                "p99_s": self.quantile(0.99), "max_s": round(self.max, 3) if self.count else None,
                "histogram_1s": {str(k): v for k, v in sorted(self.bins.items())}}


class PlayerWatch:
    """Reads the player's state file in ``store``; thread-safe."""

    def __init__(self, store: Path, clock: Callable[[], float] = time.time):
        self.path = Path(store) / STATE_FILE
        self._clock = clock
        self._since = clock()
        self._lock = threading.Lock()
        self._state: dict | None = None
        self._sampled_at: float | None = None
        self.behind = BehindStats()

    def refresh(self) -> dict | None:
        """Read the state file; add a sample when the player wrote a new state."""
        try:
            state = json.loads(self.path.read_text())
            updated = float(state["updated_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return self._state
        if updated < self._since - STALE_AFTER:
            return None  # a player of an earlier run
        with self._lock:
            self._state = state
            behind = state.get("behind_live_s")
            if (updated != self._sampled_at and isinstance(behind, (int, float))
                    and state.get("state") not in ("buffering", "stopped")):
                self._sampled_at = updated
                self.behind.add(float(behind))
        return state

    def snapshot(self) -> dict:
        """The fields of status.json: ``behind_live_s``, ``play_rate``, ``player`` details."""
        state = self.refresh()
        if state is None:
            return {"behind_live_s": None, "play_rate": None, "player": None}
        age = max(0.0, self._clock() - float(state["updated_at"]))
        return {"behind_live_s": state.get("behind_live_s"), "play_rate": state.get("rate"),
                "player": {"state": state.get("state"), "pid": state.get("pid"),
                           "played": state.get("played"), "skipped": state.get("skipped"),
                           "skipped_ahead": state.get("skipped_ahead"),
                           "waits": state.get("waits"), "max_behind_s": state.get("max_behind_s"),
                           "age_s": round(age, 1), "stale": age > STALE_AFTER}}

    def stats(self) -> dict:
        """The distribution for stats.json."""
        self.refresh()
        with self._lock:
            return self.behind.to_json()
