"""Start and stop relaytv processes (server, clients) on loopback addresses.

One launcher serves the end-to-end tests, the demo and the benchmark, so that
every process any of them starts is tracked by process id and stopped on exit.
Each process gets its own address of 127.0.0.0/8 (see PROTOCOL.md): the server
identifies clients by IP alone. Each process of this module (a test session,
a benchmark, the demo) also picks ports of its own (:func:`session_ports`), so
that a relaytv server or client the user runs on the stock ports (6060, 9091,
9092 on all addresses) neither takes a cluster's traffic nor blocks its binds.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent


def _loopback_addresses():
    """Yield 127.0.x.y addresses from a random starting point.

    A random start keeps runs that follow each other from reusing an address
    whose sockets are still closing.
    """
    start = random.Random(os.getpid() ^ time.time_ns()).randrange(250 * 250)
    for n in itertools.count(start):
        n %= 250 * 250
        yield f"127.0.{n // 250 + 3}.{n % 250 + 2}"


_ADDRESSES = _loopback_addresses()

def next_address() -> str:
    """A loopback address no earlier call of this process handed out."""
    return next(_ADDRESSES)


@dataclass(frozen=True)
class Ports:
    """The ports of one cluster: the server's requests, the clients' push and
    peer ports (the same on every client, as the protocols want), the library
    tracker's and the clients' web view."""

    server: int
    push: int
    peer: int
    tracker: int
    http: int


#: Where :func:`session_ports` looks: below Linux's ephemeral range (32768-60999),
#: so that no outgoing connection of the machine holds one of them.
PORT_RANGE = range(20000, 32000, len(Ports.__dataclass_fields__))
STOCK_PORTS = Ports(6060, 9091, 9092, 6061, 8090)


def _free_on_all_addresses(port: int) -> bool:
    """True when nothing listens on ``port`` at any address (a wildcard bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _pick_ports() -> Ports:
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        base = rng.choice(PORT_RANGE)
        width = PORT_RANGE.step
        if all(_free_on_all_addresses(base + i) for i in range(width)):
            return Ports(*range(base, base + width))
    raise OSError(f"no {PORT_RANGE.step} free ports in a row in {PORT_RANGE.start}-{PORT_RANGE.stop}")


_SESSION_PORTS: list[Ports] = []


def session_ports() -> Ports:
    """The ports of every cluster of this process, chosen once at random among free ones."""
    if not _SESSION_PORTS:
        _SESSION_PORTS.append(_pick_ports())
    return _SESSION_PORTS[0]


def wait_until(predicate: Callable[[], object], timeout: float,
               message: str = "condition", interval: float = 0.05):
    """Poll ``predicate`` until it returns a true value; return that value.

    Raises ``TimeoutError`` naming ``message`` when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {message}")
        time.sleep(interval)


@dataclass
class Proc:
    """One started process, its address and its log file."""

    name: str
    ip: str
    popen: subprocess.Popen
    log_path: Path
    workdir: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the process dies without a word to anyone."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout``."""
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Cluster:
    """A set of relaytv processes under one working directory."""

    def __init__(self, workdir: Path, films: Path | None = None,
                 python: str = sys.executable, code: Path | None = None,
                 prefix: Callable[[str], list[str]] | None = None,
                 ports: Ports | None = None):
        """``code``: the folder the processes run from (``-m server``, ``-m client``);
        the repository by default, or e.g. an export of one commit.

        ``prefix``: given a process's address, the argv put before its command,
        e.g. ``["ip", "netns", "exec", NS]`` to run it on another host
        (:mod:`bench.netns`). The prefix must exec the command, so that the
        process id stays the command's own (kill, freeze and stop use it).

        ``ports``: the server, push and peer ports of every process started
        (default: :func:`session_ports`)."""
        self.code = Path(code) if code else REPO
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.films = Path(films) if films else REPO / "filme"
        self.python = python
        self.prefix = prefix
        self.ports = ports or session_ports()
        self.procs: list[Proc] = []

    def spawn(self, name: str, ip: str, argv: list[str],
              stdin=subprocess.DEVNULL) -> Proc:
        """Start ``argv`` with its output in ``<workdir>/<name>.log``
        (behind the cluster's ``prefix`` for ``ip``, if it has one)."""
        if self.prefix is not None:
            argv = list(self.prefix(ip)) + list(argv)
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        popen = subprocess.Popen(argv, cwd=self.code, stdin=stdin, stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
        log.close()
        proc = Proc(name, ip, popen, log_path, self.workdir, argv)
        self.procs.append(proc)
        return proc

    def start_server(self, *extra: str, ip: str | None = None, port: int | None = None,
                     channels: int | None = None, max_clients: int = 2,
                     period: float = 2.0, name: str = "server") -> Proc:
        ip = ip or next_address()
        argv = [self.python, "-m", "server", "--host", ip,
                "--port", str(port or self.ports.server), "--push-port", str(self.ports.push),
                "--films", str(self.films), "--max-clients", str(max_clients),
                "--period", str(period), "--log-level", "INFO"]
        if channels is not None:
            argv += ["--channels", str(channels)]
        if "--tracker-port" not in extra:
            argv += ["--tracker-port", "0"]  # no library tracker unless asked for
        return self.spawn(name, ip, argv + list(extra))

    def start_client(self, server: Proc, *extra: str, max_children: int = 2,
                     ip: str | None = None, channel: int = 0, period: float = 2.0,
                     name: str | None = None, port: int | None = None,
                     stdin=subprocess.DEVNULL, keep_store: bool = True) -> Proc:
        """``keep_store``: keep every block on disk (``--store-limit none``, before
        ``extra``, which may set another), so that the store can be read whole."""
        ip = ip or next_address()
        name = name or f"client-{ip}"
        store = self.workdir / "stores" / ip
        argv = [self.python, "-m", "client", "--max-children", str(max_children),
                "--server", f"{server.ip}:{port or self.ports.server}",
                "--push-port", str(self.ports.push), "--peer-port", str(self.ports.peer),
                "--channel", str(channel),
                "--ip", ip, "--store", str(store), "--period", str(period),
                "--no-player", "--no-menu", "--log-level", "INFO"]
        if (self.code / "client" / "web.py").exists() and not any(
                a.startswith("--http-port") for a in extra):
            argv += ["--http-port", str(self.ports.http)]
        if keep_store:
            argv += ["--store-limit", "none"]
        for wanted, default in (("--menu", "--no-menu"), ("--player", "--no-player")):
            if wanted in extra:
                extra = tuple(a for a in extra if a != wanted)
                argv.remove(default)
        return self.spawn(name, ip, argv + list(extra), stdin=stdin)

    @staticmethod
    def store_of(proc: Proc) -> Path:
        return proc.workdir / "stores" / proc.ip

    @classmethod
    def status_of(cls, proc: Proc) -> dict | None:
        """The client's status.json, or None while it has none."""
        try:
            return json.loads((cls.store_of(proc) / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every live process at once, then SIGKILL those not ended
        within ``timeout``: stopping takes as long as the slowest, not the sum."""
        live = [proc for proc in reversed(self.procs) if proc.alive]
        for proc in live:
            proc.signal(signal.SIGCONT)
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
