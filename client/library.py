"""A client's library: what it offers, its talks with the tracker, serving blocks to peers.

* :class:`TrackerClient`: the tracker's HTTP + JSON API, from this client's address.
* :class:`Library`: the items this client offers. ``--share DIR`` offers
  block sets ``NAME_00000.mkv...`` as films and any other file as a file cut
  into fixed-size fragments; downloads and replicas live in the library
  folder (``<store>/library/NAME`` for a download, ``<store>/library/VERSION``
  for a replica), each with the hidden manifest of its version.
* :func:`serve_fetch`: the answer to a :class:`~client.peerproto.LibraryFetch`
  on the peer port, bounded in concurrent uploads and paced like repairs.
* :class:`LibraryAgent`: one thread that registers the holdings, heartbeats,
  re-registers when the tracker forgot us (it restarted), and fetches the
  replicas the tracker asks for.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from client import httpask
from client.peerproto import Block, LibraryEnd, LibraryFetch, Reject, encode
from server.films import group_blocks
from server.manifest import MAX_BLOCKS, Manifest, ManifestError, from_ranges, of_blocks, ranges

log = logging.getLogger(__name__)

DEFAULT_FRAGMENT = 1024 * 1024
MAX_UPLOADS = 4
MAX_ANSWER = 16 * 1024 * 1024
TRACKER_TIMEOUT = 5.0


class TrackerError(RuntimeError):
    """The tracker could not be reached, or answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TrackerClient:
    """Requests to the tracker, sent from ``own_ip`` (the tracker checks the sender)."""

    def __init__(self, host: str, port: int, own_ip: str | None = None,
                 timeout: float = TRACKER_TIMEOUT):
        self.host, self.port, self.own_ip, self.timeout = host, port, own_ip, timeout

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """(status, JSON answer); :class:`TrackerError` when the tracker is unreachable.

        The whole request has one deadline, ``timeout`` (:mod:`client.httpask`).
        """
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            status, _, raw = httpask.ask(self.own_ip, self.host, self.port, method, path, body=data,
                                         content_type="application/json" if data else None,
                                         limit=MAX_ANSWER, within=self.timeout)
        except OSError as exc:
            raise TrackerError(f"tracker {self} unreachable: {exc}") from None
        except http.client.HTTPException as exc:
            raise TrackerError(f"tracker {self}: {exc}") from None
        try:
            answer = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise TrackerError(f"tracker {self}: answer is not JSON", status) from None
        return status, answer if isinstance(answer, dict) else {}

    def get(self, path: str) -> dict:
        status, answer = self.request("GET", path)
        if status != 200:
            raise TrackerError(f"tracker {self}: {answer.get('error', status)}", status)
        return answer

    def search(self, word: str) -> list[dict]:
        return self.get(f"/search?q={quote(word)}").get("films", [])

    def versions(self, name: str) -> list[dict]:
        return self.get(f"/films?name={quote(name)}").get("films", [])

    def film(self, version: str) -> dict:
        return self.get(f"/films/{quote(version)}")

    def events(self, after: int = 0, timeout: float = 30.0) -> "EventStream":
        """Subscribe to the tracker's events (after id ``after``).

        The subscription is made before this returns; iterate the stream for
        the events (dicts); it ends when the tracker closes it or on
        :meth:`EventStream.close`.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout,
                                          source_address=(self.own_ip, 0) if self.own_ip else None)
        try:
            conn.request("GET", "/events", headers={"Last-Event-ID": str(after)} if after else {})
            sock = conn.sock  # (the connection lets go of it once the answer says it will close)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise TrackerError(f"tracker {self} events: {exc}") from None
        if response.status != 200:
            conn.close()
            raise TrackerError(f"tracker {self}: events answered {response.status}", response.status)
        return EventStream(conn, sock, response, str(self))


class EventStream:
    """The tracker's Server-Sent Events as dicts; :meth:`close` ends it from any thread."""

    def __init__(self, conn: http.client.HTTPConnection, sock: socket.socket, response, where: str):
        self._conn, self._sock, self._response, self._where = conn, sock, response, where

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __iter__(self):
        try:
            data = []
            while True:
                line = self._response.fp.readline(64 * 1024)
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data: "):
                    data.append(line[6:])
                elif not line and data:
                    yield json.loads(b"\n".join(data))
                    data = []
        except (OSError, ValueError) as exc:
            raise TrackerError(f"tracker {self._where} events: {exc}") from None
        finally:
            self._conn.close()


# -- what this client offers ----------------------------------------------------

@dataclass
class Item:
    """One offered version: its manifest, the blocks held, how to read a block."""

    manifest: Manifest
    have: set[int]
    read: Callable[[int], bytes]
    where: Path
    origin: str  # "share", "download" or "replica"

    @property
    def version(self) -> str:
        return self.manifest.version


def block_durations(paths: list[Path]) -> list[float] | None:
    """Each film block's duration from ffprobe, or None when ffprobe cannot tell."""
    if shutil.which("ffprobe") is None:
        return None
    out = []
    for path in paths:
        result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                                 "-of", "default=nw=1:nk=1", str(path)],
                                capture_output=True, text=True, timeout=20)
        try:
            out.append(max(0.001, float(result.stdout.strip())))
        except ValueError:
            return None
    return out


def scan_share(folder: Path, fragment: int = DEFAULT_FRAGMENT) -> list[Item]:
    """The items of a shared folder: block sets as films, any other file cut into fragments."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    films = group_blocks(names)
    in_films = {n for numbered in films.values() for _, n in numbered}
    items = []
    for name, numbered in films.items():
        if [n for n, _ in numbered] != list(range(len(numbered))):
            log.warning("share: film %s has gaps in its numbering: not offered", name)
            continue
        paths = [folder / n for _, n in numbered]
        try:
            manifest = of_blocks(name, "film", [p.read_bytes() for p in paths],
                                 durations=block_durations(paths))
        except (ManifestError, OSError) as exc:
            log.warning("share: film %s not offered: %s", name, exc)
            continue
        items.append(Item(manifest, set(range(len(manifest))),
                          lambda i, paths=paths: paths[i].read_bytes(), folder, "share"))
    for file_name in names:
        if file_name in in_films:
            continue
        path = folder / file_name
        try:
            manifest = _file_manifest(path, fragment)
        except (ManifestError, OSError) as exc:
            log.warning("share: %s not offered: %s", file_name, exc)
            continue
        items.append(Item(manifest, set(range(len(manifest))),
                          lambda i, path=path, size=fragment: read_fragment(path, i, size),
                          folder, "share"))
    return items


def _file_manifest(path: Path, fragment: int) -> Manifest:
    entries = []
    with open(path, "rb") as f:
        while True:
            data = f.read(fragment)
            if not data:
                break
            entries.append({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if not entries:
        raise ManifestError("an empty file")
    return Manifest.parse({"name": path.name, "kind": "file", "size": path.stat().st_size,
                           "block_size": fragment, "blocks": entries})


def read_fragment(path: Path, index: int, size: int) -> bytes:
    """Fragment ``index`` of a file cut into fragments of ``size`` bytes."""
    with open(path, "rb") as f:
        f.seek(index * size)
        return f.read(size)


# -- the layout of a download folder ---------------------------------------------
#
# A film's blocks are written as NAME_00000.mkv... (as separa.py writes them, so
# the folder can be shared or played); a file's fragments go to a hidden part
# folder until the file is whole, then the file is NAME. A hidden manifest per
# version lets a restarted client resume and offer what it holds.

def manifest_path(folder: Path, manifest: Manifest) -> Path:
    return folder / f".{manifest.name}.{manifest.version}.manifest.json"


def part_folder(folder: Path, manifest: Manifest) -> Path:
    return folder / f".{manifest.name}.{manifest.version}.part"


def block_path(folder: Path, manifest: Manifest, index: int) -> Path:
    if manifest.kind == "film":
        return folder / manifest.block_file(index)
    return part_folder(folder, manifest) / manifest.block_file(index)


def whole_file(folder: Path, manifest: Manifest) -> Path | None:
    """The assembled file of a ``file`` item, when it is there and has the right size."""
    path = folder / manifest.name
    if manifest.kind == "file" and path.is_file() and path.stat().st_size == manifest.size:
        return path
    return None


def load_fetched(folder: Path) -> list[Item]:
    """The versions downloaded (or partly replicated) into ``folder``, from their manifests."""
    items = []
    for record in sorted(Path(folder).glob(".*.manifest.json")):
        try:
            manifest = Manifest.parse(json.loads(record.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("library: %s is not a manifest: %s", record, exc)
            continue
        whole = whole_file(folder, manifest)
        if whole is not None:
            have = set(range(len(manifest)))
            read = (lambda i, path=whole, size=manifest.block_size: read_fragment(path, i, size))
        else:
            have = {i for i in range(len(manifest)) if block_path(folder, manifest, i).is_file()}
            read = (lambda i, m=manifest: block_path(folder, m, i).read_bytes())
        if have:
            items.append(Item(manifest, have, read, Path(folder),
                              "download" if len(have) == len(manifest) else "replica"))
    return items


class Library:
    """The versions this client offers, by version; safe to share between threads."""

    def __init__(self, store: Path, share: Path | None = None, fragment: int = DEFAULT_FRAGMENT,
                 space: int = 0):
        self.folder = Path(store) / "library"
        self.share, self.fragment, self.space = share, fragment, space
        self._lock = threading.Lock()
        self._items: dict[str, Item] = {}
        self.changed = threading.Event()
        self.uploads = threading.BoundedSemaphore(MAX_UPLOADS)
        self.served: dict[str, int] = {}

    def scan(self) -> None:
        """Read the shared folder and the library folder (at start)."""
        items = scan_share(self.share, self.fragment) if self.share else []
        if self.folder.is_dir():  # one folder per download or replica
            for sub in sorted(p for p in self.folder.iterdir() if p.is_dir()):
                items += load_fetched(sub)
        with self._lock:
            for item in items:
                self._items.setdefault(item.version, item)
        self.changed.set()
        log.info("library: offering %d item(s): %s", len(items),
                 ", ".join(f"{i.manifest.name}@{i.version}" for i in items) or "none")

    def add(self, item: Item) -> None:
        with self._lock:
            self._items[item.version] = item
        self.changed.set()

    def get(self, version: str) -> Item | None:
        with self._lock:
            return self._items.get(version)

    def items(self) -> list[Item]:
        with self._lock:
            return list(self._items.values())

    def registration(self, ip: str, port: int) -> dict:
        with self._lock:
            films = [{"manifest": i.manifest.to_json(), "have": ranges(i.have)}
                     for i in self._items.values() if i.have]
        return {"ip": ip, "port": port, "space": self.space, "films": films}

    def folder_of(self, name: str) -> Path | None:
        """The folder of a complete film called ``name`` (for the player)."""
        with self._lock:
            for item in self._items.values():
                if item.manifest.name == name and item.manifest.kind == "film" \
                        and len(item.have) == len(item.manifest):
                    return item.where
        return None

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"name": i.manifest.name, "version": i.version, "kind": i.manifest.kind,
                     "blocks": len(i.manifest), "held": len(i.have), "origin": i.origin,
                     "folder": str(i.where), "served": self.served.get(i.version, 0)}
                    for i in self._items.values()]


def serve_fetch(conn: socket.socket, request: LibraryFetch, library: Library | None,
                send_paced: Callable[[socket.socket, bytes], bool]) -> None:
    """Answer a peer's library fetch: the blocks held, in the order asked, then what we lack.

    Refused (a :class:`Reject`) when the version is not offered, an index is
    out of range, or :data:`MAX_UPLOADS` uploads already run. The blocks go
    out through ``send_paced`` (``--repair-rate``) on this connection only,
    so live relaying never waits for them.
    """
    item = library.get(request.film) if library is not None else None
    if item is None:
        conn.sendall(encode(Reject(f"film {request.film} is not offered here")))
        return
    bad = [i for i in request.blocks if i >= len(item.manifest)]
    if bad:
        conn.sendall(encode(Reject(f"block {bad[0]} is out of range (0..{len(item.manifest) - 1})")))
        return
    if not library.uploads.acquire(blocking=False):
        conn.sendall(encode(Reject(f"busy: {MAX_UPLOADS} uploads already")))
        return
    lacking, sent = [], 0
    try:
        for index in request.blocks:
            data = None
            if index in item.have:
                try:
                    data = item.read(index)
                except OSError as exc:
                    log.warning("library: cannot read block %d of %s: %s", index, item.version, exc)
            if data is None:
                lacking.append(index)
                continue
            if not send_paced(conn, encode(Block.of(index, data))):
                return
            sent += 1
        conn.sendall(encode(LibraryEnd(tuple(lacking))))
        log.info("library: served %d of %d block(s) of %s to %s", sent, len(request.blocks),
                 item.manifest.name, request.addr)
    except OSError as exc:
        # The downloader closed: it got these blocks elsewhere, or it stopped.
        log.info("library: %s went away after %d block(s): %s", request.addr, sent, exc)
    finally:
        library.uploads.release()
        with library._lock:
            library.served[item.version] = library.served.get(item.version, 0) + sent


# -- the tracker, kept informed ---------------------------------------------------

@dataclass
class AgentState:
    registered: bool = False
    heartbeat: float = 10.0
    last_error: str | None = None
    registrations: int = 0
    tasks: list[dict] = field(default_factory=list)


class LibraryAgent:
    """Registers the library with the tracker and keeps it alive; fetches replicas asked for.

    ``replicate(task)`` runs a replication task (``{"version", "blocks"}``)
    and returns when it is done; the agent re-registers afterwards so the
    tracker learns the new holdings.
    """

    def __init__(self, library: Library, tracker: TrackerClient, ip: str, port: int,
                 replicate: Callable[[dict], None] | None = None):
        self.library, self.tracker, self.ip, self.port = library, tracker, ip, port
        self._replicate = replicate
        self.state = AgentState()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="library-agent")
        self._replica: threading.Thread | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.library.changed.set()
        self._thread.join(timeout=10)

    def _register(self) -> None:
        status, answer = self.tracker.request("POST", "/register",
                                              self.library.registration(self.ip, self.port))
        if status != 200:
            raise TrackerError(f"registration refused: {answer.get('error', status)}", status)
        self.state.registered = True
        self.state.registrations += 1
        self.state.heartbeat = float(answer.get("heartbeat", self.state.heartbeat))
        log.info("library: registered %d item(s) with tracker %s (heartbeat %.3g s)",
                 len(answer.get("films", [])), self.tracker, self.state.heartbeat)

    def _beat(self) -> list[dict]:
        status, answer = self.tracker.request("POST", "/heartbeat", {"ip": self.ip, "port": self.port})
        if status == 404:
            log.info("library: tracker %s forgot us (it restarted?): registering again", self.tracker)
            self._register()
            return []
        if status != 200:
            raise TrackerError(f"heartbeat refused: {answer.get('error', status)}", status)
        tasks = answer.get("replicate", [])
        return tasks if isinstance(tasks, list) else []

    def _run(self) -> None:
        must_register, next_beat = True, 0.0
        while not self._stopping.is_set():
            changed = self.library.changed.is_set()
            self.library.changed.clear()
            if changed or time.monotonic() >= next_beat:
                started = time.monotonic()
                try:
                    if changed or must_register:
                        must_register = True
                        self._register()  # learns the tracker's heartbeat
                        must_register = False
                    else:
                        self._start_replicas(self._beat())
                    self.state.last_error = None
                except TrackerError as exc:
                    if self.state.last_error != str(exc):
                        log.warning("library: %s", exc)
                    self.state.last_error = str(exc)
                    must_register = must_register or exc.status is None
                next_beat = started + self.state.heartbeat
            self.library.changed.wait(max(0.05, next_beat - time.monotonic()))
        if self._replica is not None:
            self._replica.join(timeout=30)

    def _start_replicas(self, tasks: list[dict]) -> None:
        """Run the tracker's replication tasks on their own thread, one batch at a time."""
        if not tasks or self._replicate is None or (self._replica and self._replica.is_alive()):
            return
        self.state.tasks = tasks

        def run():
            for task in tasks:
                if self._stopping.is_set():
                    return
                try:
                    self._replicate(task)
                except Exception:
                    log.exception("library: replication task %s failed", task)

        self._replica = threading.Thread(target=run, name="library-replica")
        self._replica.start()


def read_task(task) -> tuple[str, frozenset[int]] | None:
    """A replication task's version and block indices (None when malformed)."""
    if not isinstance(task, dict) or not isinstance(task.get("version"), str):
        return None
    try:
        return task["version"], from_ranges(task.get("blocks"), MAX_BLOCKS)
    except ManifestError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
