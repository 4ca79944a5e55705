"""What the player tells others: its state file and its played-blocks log.

- ``player.json`` in the store (:class:`StateFile`), replaced atomically about
  twice a second: the distance to live, the rate, the counters. The client
  reads it into its ``status.json`` and ``stats.json``; a reader never sees
  half a file, and the name is not a block's.
- The played-blocks log (:class:`PlayedLog`, ``--played-log FILE``): one JSON
  object per line for every block played, skipped or skipped ahead, and for
  every rate change. It is bounded: past :data:`PLAYED_LOG_LIMIT` bytes it is
  renamed to ``FILE.1`` (replacing the previous one) and started again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "player.json"
PLAYED_LOG_LIMIT = 1024 * 1024


class StateFile:
    """``player.json``: replaced atomically; a failure (a full disk) is logged once."""

    def __init__(self, store: Path):
        self.path = Path(store) / STATE_FILE
        self._temp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        self._failing = False

    def write(self, state: dict) -> None:
        try:
            self._temp.write_text(json.dumps(state, sort_keys=True))
            os.replace(self._temp, self.path)
        except OSError as e:
            if not self._failing:
                log.warning("cannot write %s: %s (trying again quietly)", self.path,
                            e.strerror or e)
                self._failing = True
            try:
                self._temp.unlink(missing_ok=True)
            except OSError:
                pass
        else:
            if self._failing:
                log.info("%s written again", self.path)
                self._failing = False


class PlayedLog:
    """JSON lines, one per event; rotated at ``limit`` bytes so that it never grows without bound."""

    def __init__(self, path: Path, limit: int = PLAYED_LOG_LIMIT):
        self.path = Path(path)
        self.limit = limit
        self._failing = False

    def add(self, event: dict) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        try:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.limit:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with open(self.path, "a") as f:
                f.write(line)
        except OSError as e:
            if not self._failing:
                log.warning("cannot write the played-blocks log %s: %s", self.path,
                            e.strerror or e)
                self._failing = True
        else:
            self._failing = False


def read_played_log(path: Path) -> list[dict]:
    """The events of a played-blocks log (its rotated part first), for tests and benchmarks."""
    path = Path(path)
    events = []
    for part in (path.with_name(path.name + ".1"), path):
        try:
            text = part.read_text()
        except FileNotFoundError:
            continue
        events += [json.loads(line) for line in text.splitlines() if line.strip()]
    return events
