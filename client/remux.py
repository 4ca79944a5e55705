"""Blocks remuxed for browsers and HLS players: ffmpeg ``-c copy``, once per block, on demand.

A Matroska block becomes fragmented MP4 (Media Source Extensions) or MPEG-TS
(HLS) without re-encoding. One worker thread runs one ffmpeg at a time, so
the web view never takes more than one core's slice however many viewers ask;
the results are kept in a small cache bounded in entries, so that each block
is remuxed at most once while it is recent, whoever asks for it.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

FFMPEG = "ffmpeg"
#: Remuxed segments kept (both kinds together): a few blocks of each for each kind.
CACHE_ENTRIES = 24
#: Requests waiting for the worker; past that a request is refused (the page asks again).
QUEUE_LIMIT = 16
TIMEOUT = 10.0


def remux_command(kind: str, ts_offset: float = 0.0) -> list[str]:
    """The ffmpeg command that remuxes a Matroska block on stdin to ``kind`` on stdout."""
    head = [FFMPEG, "-nostdin", "-v", "error", "-f", "matroska", "-i", "pipe:0", "-map", "0",
            "-c", "copy"]
    if kind == "mp4":
        return head + ["-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof",
                       "pipe:1"]
    if kind == "ts":
        return head + ["-muxdelay", "0", "-muxpreload", "0", "-output_ts_offset",
                       f"{ts_offset:.6f}", "-f", "mpegts", "pipe:1"]
    raise ValueError(f"unknown segment kind {kind!r}")


@dataclass
class _Job:
    key: tuple
    data: bytes | Callable[[], bytes] = field(repr=False)
    ts_offset: float
    waiters: list = field(default_factory=list)


class Remuxer:
    """One worker thread, a bounded queue, a bounded cache; ``request`` never blocks."""

    def __init__(self, run=subprocess.run):
        self._run = run
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._pending: dict[tuple, _Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.remuxed = 0
        self.seconds = 0.0          # wall time spent in ffmpeg
        self.last_seconds = 0.0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="web-remux")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=TIMEOUT + 5)
            self._thread = None

    def request(self, number, kind: str, data: bytes | Callable[[], bytes], ts_offset: float,
                done: Callable[[bytes | None], None]) -> None:
        """Call ``done(segment)`` (None on failure) from the worker, or now when cached.

        ``number`` names the segment (a live block's number, or a library film's
        ``(version, index)``); ``data`` may be a function that reads the block,
        so that a film's file is read by the worker, only when not cached.
        """
        key = (number, kind)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            elif key in self._pending:
                self._pending[key].waiters.append(done)
                return
            elif len(self._pending) >= QUEUE_LIMIT:
                cached = b""
            else:
                job = self._pending[key] = _Job(key, data, ts_offset, [done])
                self._queue.put(job)
                return
        done(cached or None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            started = time.monotonic()
            result = None
            try:
                data = job.data() if callable(job.data) else job.data
                done = self._run(remux_command(job.key[1], job.ts_offset), input=data,
                                 capture_output=True, timeout=TIMEOUT)
                if done.returncode == 0 and done.stdout:
                    result = done.stdout
                else:
                    log.warning("remux of block %s to %s failed: %s", job.key[0], job.key[1],
                                done.stderr.decode(errors="replace").strip()[-300:])
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("remux of block %s to %s failed: %s", job.key[0], job.key[1], exc)
            took = time.monotonic() - started
            with self._lock:
                self._pending.pop(job.key, None)
                if result is not None:
                    self.remuxed += 1
                    self.seconds += took
                    self.last_seconds = took
                    self._cache[job.key] = result
                    while len(self._cache) > CACHE_ENTRIES:
                        self._cache.popitem(last=False)
                else:
                    self.failed += 1
            for waiter in job.waiters:
                waiter(result)

    def stats(self) -> dict:
        with self._lock:
            return {"remuxed": self.remuxed, "failed": self.failed,
                    "seconds_total": round(self.seconds, 3),
                    "seconds_last": round(self.last_seconds, 3),
                    "cached": len(self._cache),
                    "cached_bytes": sum(len(v) for v in self._cache.values())}
