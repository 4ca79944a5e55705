"""Helpers of the library tests: a tracker process, simulated peers, an event recorder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import pytest
from pathlib import Path

from bench.cluster import Cluster, Proc, next_address, session_ports, wait_until
from client.library import TrackerClient, TrackerError

TRACKER_PORT = session_ports().tracker  # this session's, never a user's 6061
PEER_PORT = session_ports().peer
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def start_tracker(cluster: Cluster, db: str | Path, *extra: str, ip: str | None = None,
                  heartbeat: float = 1.0, name: str = "tracker") -> Proc:
    """``python -m server.tracker`` on its own address; returns once it answers."""
    ip = ip or next_address()
    proc = cluster.spawn(name, ip, [cluster.python, "-m", "server.tracker", "--host", ip,
                                    "--port", str(TRACKER_PORT), "--db", str(db),
                                    "--heartbeat", str(heartbeat), "--log-level", "INFO",
                                    *extra])
    wait_until(lambda: _answers(ip) or not proc.alive, 20, "the tracker to answer")
    assert proc.alive, proc.log_text()
    return proc


def _answers(ip: str) -> bool:
    try:
        TrackerClient(ip, TRACKER_PORT).get("/")
        return True
    except TrackerError:
        return False


def file_manifest(name: str, data: bytes, fragment: int = 1000) -> dict:
    parts = [data[i:i + fragment] for i in range(0, len(data), fragment)]
    return {"name": name, "kind": "file", "size": len(data), "block_size": fragment,
            "blocks": [{"size": len(p), "sha256": hashlib.sha256(p).hexdigest()} for p in parts]}


class Peer:
    """A simulated peer: its own loopback address, talking to the tracker from it."""

    def __init__(self, tracker_ip: str, port: int = PEER_PORT):
        self.ip, self.port = next_address(), port
        self.api = TrackerClient(tracker_ip, TRACKER_PORT, own_ip=self.ip)

    @property
    def key(self) -> str:
        return f"{self.ip}:{self.port}"

    def register(self, *manifests: dict, space: int = 0, **extra) -> tuple[int, dict]:
        return self.api.request("POST", "/register", {
            "ip": self.ip, "port": self.port, "space": space,
            "films": [{"manifest": m} for m in manifests], **extra})

    def heartbeat(self) -> tuple[int, dict]:
        return self.api.request("POST", "/heartbeat", {"ip": self.ip, "port": self.port})


class EventRecorder:
    """Records the tracker's ``/events`` in a thread until the stream ends."""

    def __init__(self, tracker_ip: str):
        self.events: list[dict] = []
        self.connected = threading.Event()
        self._api = TrackerClient(tracker_ip, TRACKER_PORT, timeout=60)
        self._thread = threading.Thread(target=self._run, name="events")
        self._thread.start()

    def _run(self) -> None:
        try:
            stream = self._api.events()
            self.connected.set()
            for item in stream:  # until the tracker stops
                self.events.append(item)
        except TrackerError:
            pass
        finally:
            self.connected.set()

    def of(self, kind: str, **match) -> list[dict]:
        return [e for e in self.events
                if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]

    def join(self, timeout: float = 20) -> None:
        self._thread.join(timeout)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster in a temporary folder, for the whole session.

    Runs as the ``postgres`` user when the tests run as root (PostgreSQL
    refuses root); yields a function that makes a fresh database and
    returns its URL.
    """
    if not PG_BIN.is_dir():
        pytest.fail(f"PostgreSQL is not installed ({PG_BIN}): scripts/ensure-system.sh installs it")
    folder = Path(tempfile.mkdtemp(prefix="relaytv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    ip = next_address()
    data = folder / "data"
    subprocess.run(as_user + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "relaytv",
                              "-N"], check=True, capture_output=True, timeout=120)
    subprocess.run(as_user + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w",
                              "-o", f"-k {folder} -c listen_addresses={ip} -p 5432 -c fsync=off",
                              "start"], check=True, capture_output=True, timeout=120)
    import psycopg
    count = [0]

    def database() -> str:
        count[0] += 1
        name = f"t{count[0]}"
        with psycopg.connect(f"postgresql://relaytv@{ip}:5432/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://relaytv@{ip}:5432/{name}"

    try:
        yield database
    finally:
        subprocess.run(as_user + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                  "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalogue(request, tmp_path) -> str:
    """Where a test's tracker keeps its catalogue: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres")()
    return str(tmp_path / "catalogue.db")
