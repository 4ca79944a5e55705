"""Appends the client's events (:mod:`client.events`) to ``<store>/events.jsonl``.

Safe to call from any thread: one lock orders the lines, and each line is
one ``write`` of a file opened for appending, so a reader never sees two
lines mixed. Bounded: a file that would pass ``limit`` bytes becomes
``events.jsonl.1`` (replacing the one before), so at most twice ``limit``
stays on disk. A disk that refuses a line costs that line only, said in
the log once until a line passes again: relaying never fails on its record.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from client import events

log = logging.getLogger(__name__)

#: Bytes one file may hold before it is rotated (two files at most: 4 MB).
LIMIT = 2 * 1024 * 1024


class EventLog:
    """``emit(event, **fields)``: one line in the file ``path()`` names now.

    ``path`` is asked at every line, so that events follow the store when a
    channel switch moves it.
    """

    def __init__(self, path: Callable[[], Path], limit: int = LIMIT,
                 clock: Callable[[], float] = time.time):
        self._path, self._limit, self._clock = path, limit, clock
        self._lock = threading.Lock()
        self._failing = False

    def emit(self, event: str, **fields) -> None:
        line = events.record(self._clock(), event, **fields).encode()
        with self._lock:
            path = self._path()
            try:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(line) > self._limit:
                    os.replace(path, path.with_name(path.name + ".1"))
                with open(path, "ab") as file:
                    file.write(line)
            except OSError as exc:
                if not self._failing:
                    log.warning("cannot write events to %s: %s", path, exc)
                self._failing = True
            else:
                self._failing = False


def read(path: Path) -> list[dict]:
    """The events in the file ``path`` (none when it does not exist yet)."""
    try:
        return events.parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []
