"""``--record``: keep the live channel's blocks and offer them as a film once a lap is whole.

The server's blocks are byte-identical to the film's files, and a channel
repeats its film, so a viewer that has received every block of one lap
holds the whole film. The recorder keeps each new block (by sha256) in a
hidden folder; when the first recorded block comes round again, the lap is
complete. If the tracker knows a film whose blocks are exactly these, the
recording is laid out as that film (same name, same version: the recorder
becomes one more holder); otherwise it is offered as ``channelN``, in the
order received, each block lasting one period. A lap during which a block
was lost (the node's ``blocks_lost`` moved) or the channel changed starts
over.

The node hands blocks over through :meth:`Recorder.keep`, which only
queues them: the recorder's own thread writes, so relaying never waits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import threading
from typing import Callable

from client.library import (Library, TrackerClient, TrackerError, block_path, load_fetched,
                            manifest_path, write_atomically)
from server.manifest import Manifest, ManifestError, of_blocks

log = logging.getLogger(__name__)

QUEUE = 64


class Recorder:
    """Records one lap of the channel the node watches, then offers it."""

    def __init__(self, library: Library, tracker: TrackerClient, period: float,
                 lost: Callable[[], int]):
        self.library, self.tracker, self.period, self._lost = library, tracker, period, lost
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._thread = threading.Thread(target=self._run, name="recorder")
        self.offered: list[str] = []  # versions offered so far
        self._reset(None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def keep(self, channel: int, data: bytes) -> None:
        """(The node's deliver path.) Queue a stored block; never blocks."""
        try:
            self._queue.put_nowait((channel, data))
        except queue.Full:
            log.warning("record: falling behind, a block was not recorded: this lap starts over")
            self._overflowed = True

    def _reset(self, channel: int | None) -> None:
        self._channel = channel
        self._order: list[str] = []
        self._seen: set[str] = set()
        self._lost_at = self._lost()
        self._overflowed = False
        self._done = False
        self._folder = self.library.folder / f".record-channel{channel}"
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            channel, data = item
            try:
                self._record(channel, data)
            except OSError as exc:
                log.error("record: cannot write the recording: %s", exc)

    def _record(self, channel: int, data: bytes) -> None:
        if channel != self._channel or self._overflowed or self._lost() != self._lost_at:
            self._reset(channel)
        if self._done:
            return
        digest = hashlib.sha256(data).hexdigest()
        if self._order and digest == self._order[0]:
            self._finish()
            return
        if digest in self._seen:
            return
        self._seen.add(digest)
        self._folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self._folder / f"{len(self._order):05d}", data)
        self._order.append(digest)

    def _finish(self) -> None:
        """A whole lap: lay it out as the film the tracker knows, or as ``channelN``."""
        blocks = [(self._folder / f"{i:05d}").read_bytes() for i in range(len(self._order))]
        manifest = self._known_film() or of_blocks(f"channel{self._channel}", "film", blocks,
                                                    durations=[self.period] * len(blocks))
        by_digest = dict(zip(self._order, blocks))
        folder = self.library.folder / manifest.name
        folder.mkdir(parents=True, exist_ok=True)
        for index, entry in enumerate(manifest.blocks):
            write_atomically(block_path(folder, manifest, index), by_digest[entry["sha256"]])
        write_atomically(manifest_path(folder, manifest),
                         json.dumps(manifest.to_json(), separators=(",", ":")).encode())
        for item in load_fetched(folder):
            if item.version == manifest.version:
                self.library.add(item)
        shutil.rmtree(self._folder, ignore_errors=True)
        self._done = True
        self.offered.append(manifest.version)
        log.info("record: a whole lap of channel %s (%d blocks) offered as %s@%s", self._channel,
                 len(blocks), manifest.name, manifest.version)

    def _known_film(self) -> Manifest | None:
        """The catalogue's film made of exactly the recorded blocks, if any."""
        recorded = set(self._order)
        try:
            for film in self.tracker.search(""):
                if film.get("kind") == "film" and film.get("blocks", 0) >= len(recorded):
                    manifest = Manifest.parse(self.tracker.film(film["version"])["manifest"])
                    if {b["sha256"] for b in manifest.blocks} == recorded:
                        return manifest
        except (TrackerError, ManifestError, KeyError, TypeError) as exc:
            log.info("record: no film of the catalogue could be matched: %s", exc)
        return None
