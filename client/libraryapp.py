"""The film library in the client's command line and menu: options, wiring, the one-shot ``--get``.

:class:`LibraryService` is what the menu talks to (``search``, ``get``,
``library``); it owns the :class:`~client.library.Library`, the tracker agent
and the downloads started from the menu, and stops them all on exit.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from client.download import Download, DownloadError, Result, offer_download, run_get
from client.library import Library, LibraryAgent, TrackerClient, TrackerError, read_task
from client.peerproto import Addr
from client.record import Recorder
from player.launch import start_player, stop_player

log = logging.getLogger(__name__)

TRACKER_PORT = 6061


def _tracker_address(value: str) -> tuple[str, int]:
    host, _, port = value.partition(":")
    try:
        return host or "127.0.0.1", int(port) if port else TRACKER_PORT
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {value!r}") from None


def _positive(value: str) -> float:
    try:
        number = float(value)
        if number <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number > 0: {value!r}") from None
    return number


def add_library_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("film library")
    group.add_argument("--tracker", type=_tracker_address, metavar="HOST[:PORT]",
                       help="the library tracker (default: the channel server's host, port 6061)")
    group.add_argument("--share", type=Path, metavar="DIR",
                       help="offer what DIR holds: NAME_00000.mkv... as films, any other file "
                            "in fragments")
    group.add_argument("--library-space", type=float, default=0.0, metavar="MB",
                       help="disk space offered for replicas the tracker asks for (default 0)")
    group.add_argument("--fragment-size", type=_positive, default=1024, metavar="KIB",
                       help="fragment size of shared files that are not films (default 1024)")
    group.add_argument("--stall", type=_positive, default=3.0, metavar="SECONDS",
                       help="a holder silent this long during a download is replaced (default 3)")
    group.add_argument("--record", action="store_true",
                       help="keep the channel's blocks and offer them as its film once a whole "
                            "lap is in")
    group.add_argument("--parts", type=int, default=3, choices=range(1, 9), metavar="N",
                       help="a download's parts, each from its own holder (default 3)")
    group.add_argument("--get", metavar="NAME[@VERSION]",
                       help="download NAME from the library and exit (no channel)")
    group.add_argument("--to", type=Path, default=Path("downloads"), metavar="DIR",
                       help="where --get writes (default ./downloads)")


def tracker_of(args: argparse.Namespace, own_ip: str) -> TrackerClient:
    host, port = args.tracker or (args.server[0], TRACKER_PORT)
    return TrackerClient(host, port, own_ip=own_ip)


def get_once(args: argparse.Namespace, own_address) -> int:
    """``--get NAME``: the one-shot download (no channel, no player, no menu)."""
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    probe = args.tracker or (args.server[0], TRACKER_PORT)
    ip = args.ip or own_address(probe)
    return run_get(tracker_of(args, ip), Addr(ip, args.peer_port), args.get, args.to,
                   stats=args.stats, stall_after=args.stall, parts=args.parts)


class LibraryService:
    """The library of one running client: offered items, the tracker agent, downloads."""

    def __init__(self, library: Library, tracker: TrackerClient, me: Addr, stall_after: float):
        self.library, self.tracker, self.me = library, tracker, me
        self.stall_after = stall_after
        self.agent = LibraryAgent(library, tracker, me.ip, me.port, replicate=self._replicate)
        self._agent_started = False
        self._lock = threading.Lock()
        self._downloads: dict[str, tuple[Download, threading.Thread]] = {}
        self.results: dict[str, Result | str] = {}
        self._player = None
        self.recorder = None  # a client.record.Recorder with --record

    def start_agent(self) -> None:
        with self._lock:
            if not self._agent_started:
                self._agent_started = True
                self.agent.start()

    def search(self, word: str) -> list[dict]:
        return self.tracker.search(word)

    def get(self, wanted: str) -> None:
        """Download ``wanted`` into the library folder in the background; offer it when done."""
        with self._lock:
            if wanted in self._downloads and self._downloads[wanted][1].is_alive():
                return
            name, _, version = wanted.partition("@")
            download = Download(self.tracker, self.me, self.library.folder / (name or version),
                                wanted, stall_after=self.stall_after, me=self.me)
            thread = threading.Thread(target=self._run, args=(wanted, download),
                                      name=f"download-{wanted}")
            self._downloads[wanted] = (download, thread)
            self.results.pop(wanted, None)
        thread.start()

    def _run(self, wanted: str, download: Download) -> None:
        try:
            result = download.run()
        except DownloadError as exc:
            log.warning("library: cannot get %s: %s", wanted, exc)
            self.results[wanted] = str(exc)
            return
        self.results[wanted] = result
        log.info("library: %s %s: %d fetched from %s", wanted,
                 "complete" if result.complete else f"incomplete (missing {result.missing})",
                 result.fetched, result.served_by)
        if result.complete:
            offer_download(self.library, result)
            self.start_agent()

    def _replicate(self, task: dict) -> None:
        """A replication task from the tracker: fetch those blocks, then offer them."""
        parsed = read_task(task)
        if parsed is None:
            log.warning("library: malformed replication task %r", task)
            return
        version, blocks = parsed
        log.info("library: replicating %d block(s) of %s", len(blocks), version)
        try:
            result = Download(self.tracker, self.me, self.library.folder / version, f"@{version}",
                              blocks=set(blocks), stall_after=self.stall_after, me=self.me).run()
        except (DownloadError, TrackerError) as exc:
            log.warning("library: replication of %s failed: %s", version, exc)
            return
        offer_download(self.library, result)

    def play(self, name: str) -> str:
        """Play a complete film of the library in its own player, keeping its blocks."""
        folder = self.library.folder_of(name)
        if folder is None:
            return f"no complete film {name!r} here (get it first)"
        with self._lock:
            if self._player is not None:
                stop_player(self._player)
            with open(self.library.folder / "player.log", "ab") as log_file:
                self._player = start_player(folder, keep=True, log=log_file)
        return f"playing {name} from {folder} (pid {self._player.pid})"

    def downloads(self) -> dict[str, str]:
        """Each menu download and where it stands."""
        with self._lock:
            running = {w for w, (_, t) in self._downloads.items() if t.is_alive()}
        out = {}
        for wanted in list(self._downloads):
            result = self.results.get(wanted)
            if wanted in running or result is None:
                out[wanted] = "running"
            elif isinstance(result, str):
                out[wanted] = f"failed: {result}"
            elif result.complete:
                out[wanted] = f"complete in {result.path}"
            else:
                out[wanted] = f"incomplete: blocks {result.missing} missing"
        return out

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        with self._lock:
            downloads = list(self._downloads.values())
        for download, thread in downloads:
            download.cancel()
            thread.join(timeout=10)
        if self._agent_started:
            self.agent.stop()
        if self._player is not None:
            stop_player(self._player)


def start_library(args: argparse.Namespace, node) -> LibraryService:
    """The library of a client with a channel: scan, serve on the peer port, register."""
    library = Library(node.config.store, share=args.share, fragment=int(args.fragment_size * 1024),
                      space=int(args.library_space * 1024 * 1024))
    library.scan()
    node.library = library
    service = LibraryService(library, tracker_of(args, node.config.ip), node.me, args.stall)
    if args.record:
        service.recorder = Recorder(library, service.tracker, node.config.period,
                                    lambda: node.counters.blocks_lost)
        node.recorder = service.recorder
        service.recorder.start()
    if args.share or args.record or library.space or library.items():
        service.start_agent()
    return service


def stop_library(service: LibraryService | None) -> None:
    if service is not None:
        service.stop()
