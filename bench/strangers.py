"""``python -m bench.strangers``: what hostile strangers cost a tree, measured.

Against real processes on loopback (a server with one slot, a direct client
and its child, a block every ``--period``), one after the other:

* **idle connections** on the server: ``--idle`` connections that send nothing,
  then a valid ``130`` from another address: its answer and how long it took
  (issue 11, item 15);
* **slowloris** on the direct client's peer port: ``--slow`` connections from
  16 addresses, each sending one byte of a Hello a second and opened again when
  cut, for ``--seconds``: how long the client held them, the blocks the two
  clients lost meanwhile, the server's failed pushes (issue 16);
* **oversized frames before the handshake**: 16 connections each sending the
  header of a 32 MiB Block frame and then the bytes: the direct client's
  resident memory before and after, and its peak (issue 16).

``--code REF`` runs the server and the clients of an older commit (exported
with ``git archive``), to compare. The attack helpers are shared with
``tests/test_client_strangers.py``.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cluster import Cluster, next_address, wait_until
from client.peerproto import HEADER, MAX_BLOCK, Addr, Block, Hello, block_digest, encode


def connect_from(ip: str, target: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A connection to ``target`` whose source address is ``ip``."""
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.bind((ip, 0))
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Slowloris:
    """``n`` connections to ``target`` from ``addresses``, each sending one byte of
    a join Hello a second, each opened again at once when the target cuts it.

    ``held`` records how long the target held each connection it cut (from
    the end of ``connect()`` to the close seen here).
    """

    def __init__(self, target: tuple[str, int], addresses: list[str], n: int, peer_port: int):
        self.target, self.addresses, self.n, self.peer_port = target, addresses, n, peer_port
        self.held: list[float] = []
        self.refused_at_once = 0
        self.open_at_end = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris")

    def __enter__(self) -> "Slowloris":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self, n: int, selector: selectors.BaseSelector, conns: dict) -> None:
        ip = self.addresses[n % len(self.addresses)]
        hello = encode(Hello("join", Addr(ip, self.peer_port), 0))
        try:
            sock = connect_from(ip, self.target)
        except OSError:
            self.refused_at_once += 1
            return
        sock.setblocking(False)
        conns[sock] = [n, time.monotonic(), hello, 0]
        selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        conns: dict[socket.socket, list] = {}
        for n in range(self.n):
            self._open(n, selector, conns)
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                try:
                    closed = sock.recv(4096) == b""
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                except BlockingIOError:
                    closed = False
                if closed:
                    n, opened, _, sent = conns.pop(sock)
                    selector.unregister(sock)
                    sock.close()
                    held = time.monotonic() - opened
                    if held < 0.2 and sent <= 1:
                        self.refused_at_once += 1
                    else:
                        self.held.append(held)
                    self._open(n, selector, conns)
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for sock, entry in conns.items():
                    try:
                        sock.send(entry[2][entry[3]:entry[3] + 1])
                        entry[3] += 1
                    except OSError:
                        pass                      # cut: the selector sees it
        self.open_at_end = len(conns)
        for sock in conns:
            sock.close()
        selector.close()


def flood_oversized(target: tuple[str, int], sources: list[str], chunk: int = 1 << 20) -> int:
    """One connection per source sending a 32 MiB Block frame before any Hello,
    all at once; the bytes the kernel took (until the target cut each)."""
    sent = [0] * len(sources)
    payload = b"\x1a" * chunk

    def flood(n: int) -> None:
        try:
            sock = connect_from(sources[n], target)
        except OSError:
            return
        with sock:
            try:
                sock.sendall(HEADER.pack(Block.TYPE, 16 + MAX_BLOCK))
                for _ in range(MAX_BLOCK // chunk):
                    sock.sendall(payload)
                    sent[n] += chunk
            except OSError:
                pass                              # cut by the target

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return sum(sent)


def request_while_idle(server: tuple[str, int], idle_from: str, ask_from: str, idle: int,
                       payload: bytes = b"130") -> tuple[bytes, float]:
    """Open ``idle`` connections that send nothing, then send ``payload``:
    the answer (``b""`` when refused) and the seconds it took."""
    held = [connect_from(idle_from, server) for _ in range(idle)]
    try:
        started = time.monotonic()
        answer = b""
        with connect_from(ask_from, server) as sock:
            try:
                sock.sendall(payload)
                while chunk := sock.recv(4096):
                    answer += chunk
            except OSError:
                pass
        return answer, time.monotonic() - started
    finally:
        for sock in held:
            sock.close()


def missing_blocks(proc, films: Path) -> int:
    """Blocks of the film absent between the first and the last one a client stored."""
    blocks = sorted(films.glob("canal0_*.mkv"))
    index = {block_digest(p.read_bytes()): i for i, p in enumerate(blocks)}
    got = [index.get(block_digest(p.read_bytes()), -1)
           for p in sorted(Cluster.store_of(proc).glob("*.mkv"))]
    return sum((b - a - 1) % len(blocks) for a, b in zip(got, got[1:]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.strangers",
                                description=__doc__.split("\n")[0])
    p.add_argument("--code", metavar="REF", help="run the server and clients of this commit")
    p.add_argument("--films", type=Path, help="film folder (default: a 60 s sample film)")
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--idle", type=int, default=50, help="idle connections on the server")
    p.add_argument("--slow", type=int, default=63, help="slowloris connections")
    p.add_argument("--seconds", type=float, default=8.0, help="how long the slowloris runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="relaytv-strangers-"))
    code = None
    if args.code:
        from bench.overlay import export_code
        code = root / "code"
        print(f"code: {export_code(args.code, code)}")
    films = args.films
    if films is None:
        films = root / "filme"
        subprocess.run([sys.executable, "separa.py", "--sample", "--channels", "1",
                        "--seconds-long", "60", "--size", "160x90", "--out", str(films)],
                       cwd=code or Path(__file__).resolve().parent.parent, check=True,
                       capture_output=True, timeout=300)
    stats = root / "server-stats.json"
    with Cluster(root / "run", films, code=code) as cluster:
        ports = cluster.ports
        server = cluster.start_server("--stats", str(stats), max_clients=1, period=args.period)
        wait_until(lambda: "listening on" in server.log_text(), 20, "the server")
        direct = cluster.start_client(server, max_children=2, period=args.period)
        wait_until(lambda: (Cluster.status_of(direct) or {}).get("state") == "direct", 30, "direct")
        child = cluster.start_client(server, max_children=2, period=args.period)
        wait_until(lambda: (Cluster.status_of(child) or {}).get("blocks_received", 0) >= 2, 30,
                   "the child to receive")

        answer, took = request_while_idle((server.ip, ports.server), next_address(),
                                          next_address(), args.idle)
        print(f"idle: {args.idle} idle connections on the server; '130' answered "
              f"{answer!r} in {took * 1000:.1f} ms")

        with Slowloris((direct.ip, ports.peer), [next_address() for _ in range(16)],
                       args.slow, ports.peer) as attack:
            time.sleep(args.seconds)
        held = sorted(attack.held) or [0.0]
        print(f"slowloris: {args.slow} connections for {args.seconds:.0f} s: {len(attack.held)} "
              f"cut after {held[0]:.2f}-{held[-1]:.2f} s (median {held[len(held) // 2]:.2f} s), "
              f"{attack.refused_at_once} refused at once, {attack.open_at_end} open at the end")

        before = rss_kib(direct.pid)
        accepted = flood_oversized((direct.ip, ports.peer), [next_address() for _ in range(16)])
        after = rss_kib(direct.pid)
        print(f"oversized: 16 x 32 MiB Block frames before any Hello, {accepted >> 20} MiB "
              f"taken by the kernel; direct client RSS {before['VmRSS'] >> 10} MiB before, "
              f"{after['VmRSS'] >> 10} MiB after, peak {before['VmHWM'] >> 10} -> "
              f"{after['VmHWM'] >> 10} MiB")
        for proc in (direct, child):
            print(f"blocks: {proc.ip} stored {len(list(Cluster.store_of(proc).glob('*.mkv')))}, "
                  f"{missing_blocks(proc, films)} missing in between")
        server.stop()
    failures = sum(c["send_failures"] for c in json.loads(stats.read_text())["channels"])
    print(f"server: {failures} failed push(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
