"""Downloading a library item from several holders at once, with takeover.

The tracker names the version's holders; the repair planner
(:class:`~client.repair.RepairPlan`) cuts the blocks still missing into 3
contiguous parts, one per holder, and hands a part's rest to the others when
its holder fails, stalls or serves a block whose sha256 is not the
manifest's. :class:`LibraryJob` is the repair fetcher
(:class:`~client.fetcher.RepairJob`) speaking the library frames
(:class:`~client.peerproto.LibraryFetch` / ``LibraryEnd``) and checking
every block against the manifest before the plan sees it. Blocks are written
atomically as they are released, so an interrupted download resumes with
what is on disk (verified again).

States of a download: resolving (ask the tracker) -> resuming (check what is
on disk) -> fetching (the plan) -> complete (assembled, registered) or
incomplete (the blocks no holder gave, and why).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from client import roles
from client.fetcher import RepairJob
from client.library import (Library, TrackerClient, TrackerError, block_path, load_fetched,
                            manifest_path, part_folder, read_fragment, whole_file, write_atomically)
from client.peerproto import Addr, Block, LibraryEnd, LibraryFetch, PeerProtocolError, Reject
from client.repair import MAX_ACTIVE_SOURCES, RepairPlan
from server.manifest import Manifest, ManifestError, check_name, from_ranges

log = logging.getLogger(__name__)

STALL_AFTER = 3.0
DEADLINE = 600.0


class DownloadError(RuntimeError):
    """The item cannot be downloaded at all (unknown name, no holder, tracker down)."""


class LibraryJob(RepairJob):
    """The repair fetcher over library frames; every block checked against the manifest."""

    ROLE = roles.LIBRARY

    def __init__(self, plan: RepairPlan, own: Addr, manifest: Manifest,
                 on_block: Callable, on_done: Callable, deadline: float):
        super().__init__(plan, own, 0, on_block, on_done, deadline)
        self.manifest = manifest
        self.corrupt: dict[str, int] = {}  # holder: the first block it served wrong

    def _request(self, keys: list):
        return LibraryFetch(self.own, self.manifest.version, tuple(keys))

    def _answer(self, source: Addr, message, wanted: set) -> tuple[str, object]:
        if isinstance(message, Block):
            if message.seq not in wanted:
                raise PeerProtocolError(f"block {message.seq} was not asked for")
            if not self.manifest.matches(message.seq, message.data):
                self.corrupt.setdefault(str(source), message.seq)
                raise PeerProtocolError(f"block {message.seq} does not match its sha256")
            return "block", (message.seq, message.data)
        if isinstance(message, Reject):
            log.info("library: %s refused: %s", source, message.reason)
            return "end", sorted(wanted)
        assert isinstance(message, LibraryEnd)  # (the only other frame LIBRARY allows)
        return "end", list(message.missing)


@dataclass
class Result:
    """What a download did: the statistics ``--get`` prints as JSON."""

    name: str
    version: str
    kind: str
    folder: str
    blocks: int
    resumed: int = 0
    fetched: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    served_by: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    taken_over_at: dict[str, float] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    path: str | None = None

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "folder": self.folder, "path": self.path, "complete": self.complete,
                "blocks": self.blocks, "resumed": self.resumed, "fetched": self.fetched,
                "bytes": self.bytes_fetched, "seconds": round(self.seconds, 3),
                "served_by": self.served_by, "failures": self.failures,
                "taken_over_at": {k: round(v, 3) for k, v in self.taken_over_at.items()},
                "missing": self.missing}


def resolve(tracker: TrackerClient, wanted: str) -> dict:
    """The tracker's view of ``NAME`` or ``NAME@VERSION`` (the best-held version of a name)."""
    name, _, version = wanted.partition("@")
    try:
        if version:
            return tracker.film(version)
        check_name(name)
        versions = tracker.versions(name)
    except ManifestError as exc:
        raise DownloadError(str(exc)) from None
    except TrackerError as exc:
        raise DownloadError(str(exc)) from None
    if not versions:
        raise DownloadError(f"no film or file named {name!r} in the library of tracker {tracker}")
    best = max(versions, key=lambda v: (min(v["replication"], default=0), len(v["holders"])))
    if len(versions) > 1:
        log.info("library: %d versions of %s; taking %s (best held); NAME@VERSION picks one",
                 len(versions), name, best["version"])
    try:
        return tracker.film(best["version"])
    except TrackerError as exc:
        raise DownloadError(str(exc)) from None


def sources_of(film: dict, manifest: Manifest, wanted: list[int], me: Addr | None) -> list[Addr]:
    """The holders, those with more of the wanted blocks first (ourselves left out)."""
    scored = []
    for holder in film.get("holders", []):
        try:
            addr = Addr(holder["ip"], holder["port"])
            held = from_ranges(holder["blocks"], len(manifest))
        except (KeyError, TypeError, ValueError):
            continue
        if addr != me:
            scored.append((-len(held.intersection(wanted)), addr))
    return [addr for _, addr in sorted(scored)]


class Download:
    """One download of one version into ``folder``; :meth:`run` blocks until it ends."""

    def __init__(self, tracker: TrackerClient, own: Addr, folder: Path, wanted: str,
                 blocks: set[int] | None = None, stall_after: float = STALL_AFTER,
                 deadline: float = DEADLINE, progress: Callable[[int, int], None] | None = None,
                 me: Addr | None = None, parts: int = MAX_ACTIVE_SOURCES):
        self.tracker, self.own, self.folder = tracker, own, Path(folder)
        self.parts = parts
        self.wanted, self.only = wanted, blocks
        self.stall_after, self.deadline = stall_after, deadline
        self._progress = progress or (lambda done, total: None)
        self._me = me
        self._job: LibraryJob | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._job is not None:
            self._job.cancel()

    def run(self) -> Result:
        started = time.monotonic()
        film = resolve(self.tracker, self.wanted)
        try:
            manifest = Manifest.parse(film.get("manifest"))
        except ManifestError as exc:
            raise DownloadError(f"the tracker's manifest is not valid: {exc}") from None
        if manifest.version != film.get("version"):
            raise DownloadError("the tracker's manifest does not hash to its version")
        self.folder.mkdir(parents=True, exist_ok=True)
        if manifest.kind == "file":
            part_folder(self.folder, manifest).mkdir(exist_ok=True)
        write_atomically(manifest_path(self.folder, manifest),
                         json.dumps(manifest.to_json(), separators=(",", ":")).encode())
        result = Result(manifest.name, manifest.version, manifest.kind, str(self.folder),
                        len(manifest))
        targets = sorted(self.only) if self.only is not None else list(range(len(manifest)))
        have = self._verified(manifest, targets)
        result.resumed = len(have)
        missing = [i for i in targets if i not in have]
        done = [len(have)]
        self._progress(done[0], len(targets))
        if missing:
            sources = sources_of(film, manifest, missing, self._me)
            if not sources:
                raise DownloadError(f"{manifest.name}@{manifest.version} has no holder right now")
            log.info("library: fetching %d block(s) of %s@%s from %s", len(missing), manifest.name,
                     manifest.version, ", ".join(map(str, sources[:3])))
            lost: list[int] = []

            def on_block(index: int, data: bytes | None) -> None:
                if data is None:
                    lost.append(index)
                    return
                write_atomically(block_path(self.folder, manifest, index), data)
                result.fetched += 1
                result.bytes_fetched += len(data)
                done[0] += 1
                self._progress(done[0], len(targets))

            finished = threading.Event()
            plan = RepairPlan(missing, sources, time.monotonic(), stall_after=self.stall_after,
                              max_active=self.parts)
            self._job = LibraryJob(plan, self.own, manifest, on_block,
                                   lambda job: finished.set(), self.deadline)
            if self._cancelled.is_set():
                return result
            watcher = self._watch_holders(manifest.version, self._job)
            self._job.start()
            finished.wait()
            self._job.join()
            if watcher is not None:
                watcher[0].close()
                watcher[1].join(timeout=10)
            result.served_by = dict(self._job.fetched_from)
            result.failures = dict(self._job.failures)
            result.taken_over_at = dict(self._job.failed_at)
            self._report_corrupt(manifest, self._job.corrupt)
            result.missing = sorted(lost)
        if not result.missing and self.only is None:
            result.path = str(self._assemble(manifest))
        result.seconds = time.monotonic() - started
        return result

    def _watch_holders(self, version: str, job: LibraryJob):
        """Follow the tracker's events: a holder that appears mid-download joins the plan
        (it takes the end of the longest part). None when the tracker cannot be followed."""
        try:
            stream = self.tracker.events()
        except TrackerError as exc:
            log.info("library: not following new holders: %s", exc)
            return None

        def watch():
            try:
                for event in stream:
                    if event.get("type") != "holder_joined" or event.get("version") != version:
                        continue
                    ip, _, port = str(event.get("peer", "")).rpartition(":")
                    try:
                        addr = Addr(ip, int(port))
                    except (ValueError, PeerProtocolError):
                        continue
                    if addr != self._me:
                        job.add_source(addr)
            except TrackerError:
                pass  # the tracker went away: the download goes on with the holders it has

        thread = threading.Thread(target=watch, name="download-holders")
        thread.start()
        return stream, thread

    def _verified(self, manifest: Manifest, targets: list[int]) -> set[int]:
        """The target blocks already on disk with the right bytes (a resumed download)."""
        whole = whole_file(self.folder, manifest)
        have = set()
        for index in targets:
            try:
                data = (read_fragment(whole, index, manifest.block_size) if whole
                        else block_path(self.folder, manifest, index).read_bytes())
            except OSError:
                continue
            if manifest.matches(index, data):
                have.add(index)
        return have

    def _assemble(self, manifest: Manifest) -> Path:
        """A film is its blocks; a file's fragments become the file, atomically."""
        if manifest.kind == "film":
            return self.folder
        final = self.folder / manifest.name
        if whole_file(self.folder, manifest) is None:
            tmp = self.folder / f".{manifest.name}.{manifest.version}.tmp"
            with open(tmp, "wb") as out:
                for index in range(len(manifest)):
                    out.write(block_path(self.folder, manifest, index).read_bytes())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        shutil.rmtree(part_folder(self.folder, manifest), ignore_errors=True)
        return final

    def _report_corrupt(self, manifest: Manifest, corrupt: dict[str, int]) -> None:
        for holder, block in corrupt.items():
            ip, _, port = holder.rpartition(":")
            try:
                self.tracker.request("POST", "/report", {
                    "ip": self.own.ip, "port": self.own.port, "holder": {"ip": ip, "port": int(port)},
                    "version": manifest.version, "block": block})
            except TrackerError as exc:
                log.warning("library: could not report %s to the tracker: %s", holder, exc)


def offer_download(library: Library, result: Result) -> None:
    """A finished (or partial replica) download becomes an item this client offers."""
    for item in load_fetched(Path(result.folder)):
        if item.version == result.version:
            library.add(item)


def terminal_progress(name: str, stream=sys.stderr) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        stream.write(f"\r{name}: {done}/{total} blocks")
        if done == total:
            stream.write("\n")
        stream.flush()
    return show


def run_get(tracker: TrackerClient, own: Addr, wanted: str, folder: Path,
            stats: Path | None = None, stall_after: float = STALL_AFTER,
            deadline: float = DEADLINE, parts: int = MAX_ACTIVE_SOURCES) -> int:
    """``python client.py --get NAME [--to DIR]``: download, print the statistics, exit status.

    0: complete; 1: nothing could be fetched (unknown name, no holder,
    tracker unreachable); 3: incomplete (the missing blocks are named).
    """
    download = Download(tracker, own, folder, wanted, stall_after=stall_after, deadline=deadline,
                        progress=terminal_progress(wanted), parts=parts)
    try:
        result = download.run()
    except DownloadError as exc:
        print(f"client: cannot get {wanted}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result.to_json(), indent=1)
    print(text)
    if stats is not None:
        write_atomically(stats, text.encode())
    if not result.complete:
        print(f"client: {result.name}@{result.version} is incomplete: block(s) "
              f"{', '.join(map(str, result.missing))} could not be fetched from any holder "
              f"({'; '.join(f'{h}: {why}' for h, why in result.failures.items()) or 'all refused'})",
              file=sys.stderr)
        return 3
    print(f"client: {result.name} complete in {result.path} ({result.fetched} block(s) fetched, "
          f"{result.resumed} already there)", file=sys.stderr)
    return 0
