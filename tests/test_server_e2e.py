"""The channel server as a real process on loopback addresses, against fake stock clients.

A :class:`FakeClient` behaves as the stock client on the wire (PROTOCOL.md):
it listens on ``<its ip>:9091``, records every connection the server opens
there (full bytes, arrival time) and sends requests from its own address.
It can also play dead (stops listening), hang (connects never complete) or be
slow (accepts but never reads).

Timing checks here are correctness checks of the pacing rule (a block every
period, on an absolute schedule), stated loosely; they are not speed
benchmarks.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.cluster import REPO, Cluster, Proc, next_address, session_ports, wait_until
from server.protocol import EBML_MAGIC, encode_list, parse_client_list

PUSH_PORT = session_ports().push     # the ports of every cluster of this session
SERVER_PORT = session_ports().server
PERIOD = 0.5


# ------------------------------------------------------------------ helpers

@dataclass
class Arrival:
    """One connection the server opened to a fake client's push port."""

    data: bytes
    accepted: float      # time.monotonic() when accepted
    ended: float         # when the server closed it


class FakeClient:
    """A stock client on ``ip``: push port listener plus request sender."""

    def __init__(self, ip: str | None = None, read: bool = True, rcvbuf: int | None = None):
        self.ip = ip or next_address()
        self.read = read                     # False: accept and never read (slow client)
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self._held: list[socket.socket] = []
        self._readers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._blockers: list[socket.socket] = []
        self.listener = self._listen(16, rcvbuf)
        self._thread = threading.Thread(target=self._accept_loop, name=f"fake-{self.ip}")
        self._thread.start()

    def _listen(self, backlog: int, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((self.ip, PUSH_PORT))
        sock.listen(backlog)
        return sock

    # push port ----------------------------------------------------------------
    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(timeout=0.05):
                    continue
                conn, _ = self.listener.accept()
                accepted = time.monotonic()
                reader = threading.Thread(target=self._read, args=(conn, accepted))
                with self._lock:
                    self._readers.append(reader)
                reader.start()

    def _read(self, conn: socket.socket, accepted: float) -> None:
        chunks = []
        conn.settimeout(5.0)
        if not self.read:
            # a slow client reads its join answers, but never the blocks
            head = b""
            try:
                while len(head) < len(EBML_MAGIC) and (chunk := conn.recv(1)):
                    head += chunk
            except OSError:
                pass
            if head.startswith(EBML_MAGIC):
                with self._lock:
                    self._held.append(conn)
                return
            chunks.append(head)
        with conn:
            try:
                while chunk := conn.recv(1 << 20):
                    chunks.append(chunk)
            except OSError:
                chunks.append(b"<error>")
        with self._lock:
            self._arrivals.append(Arrival(b"".join(chunks), accepted, time.monotonic()))

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return sorted(self._arrivals, key=lambda a: a.accepted)

    def blocks(self) -> list[Arrival]:
        return [a for a in self.arrivals() if a.data.startswith(EBML_MAGIC)]

    def answers(self) -> list[bytes]:
        return [a.data for a in self.arrivals() if not a.data.startswith(EBML_MAGIC)]

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _stop_listening(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()

    def die(self) -> None:
        """Stop listening: the server's connections are refused from now on."""
        self._stop_listening()

    def hang(self) -> None:
        """From now on the server's connects never complete: a listener with a
        full accept queue, whose SYNs the kernel drops (as an unreachable host)."""
        self._stop_listening()
        self.listener = self._listen(0)
        blocker = socket.create_connection((self.ip, PUSH_PORT), timeout=2)
        self._blockers.append(blocker)          # fills the queue of one

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop_listening()
        else:
            self.listener.close()
        with self._lock:
            readers, held = list(self._readers), list(self._held)
        for reader in readers:
            reader.join(10)
        for sock in held + self._blockers:
            sock.close()

    # requests -------------------------------------------------------------
    def connect(self, server: Proc, timeout: float = 5.0) -> socket.socket:
        sock = socket.socket()
        sock.settimeout(timeout)
        sock.bind((self.ip, 0))          # the server must see this client's address
        sock.connect((server.ip, SERVER_PORT))
        return sock

    def request(self, server: Proc, payload: bytes, timeout: float = 5.0,
                half_close: bool = False) -> bytes:
        """Send ``payload`` on a new connection; return all the server sends back.

        ``half_close``: signal the end of the request (a short one is complete
        then, instead of at the server's read timeout).
        """
        with self.connect(server, timeout) as sock:
            try:
                sock.sendall(payload)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass                      # the server may close early on junk
            return read_to_end(sock)

    def join(self, server: Proc, channel: int) -> bytes:
        """``10X``; returns the answer that came on a new push connection."""
        before = len(self.answers())
        assert self.request(server, b"10%d" % channel) == b""   # nothing on the request
        wait_until(lambda: len(self.answers()) > before, 5, f"join answer to {self.ip}")
        return self.answers()[before]

    def list(self, server: Proc, channel: int) -> list[str]:
        return parse_client_list(self.request(server, b"11%d" % channel))

    def count(self, server: Proc, channel: int) -> int:
        return int(self.request(server, b"13%d" % channel))


def read_to_end(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    try:
        while len(data) < limit and (chunk := sock.recv(4096)):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.fixture
def clients():
    """A factory of fake clients, all closed (and their threads joined) after the test."""
    made: list[FakeClient] = []

    def make(**kwargs) -> FakeClient:
        client = FakeClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def start(cluster: Cluster, **kwargs) -> Proc:
    """Start a server and wait until it listens."""
    kwargs.setdefault("period", PERIOD)
    server = cluster.start_server(*kwargs.pop("extra", ()), **kwargs)
    wait_until(lambda: "listening on" in server.log_text() or not server.alive, 10,
               "the server to listen")
    assert server.alive, server.log_text()
    return server


def film_blocks(folder: Path, name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob(f"{name}_*.mkv"))]


def block_indexes(arrivals: list[Arrival], blocks: list[bytes]) -> list[int]:
    """Which block of the film each arrival is; fails on bytes that are none of them."""
    index = {data: i for i, data in enumerate(blocks)}
    found = []
    for arrival in arrivals:
        assert arrival.data in index, f"{len(arrival.data)} bytes that are no block of the film"
        found.append(index[arrival.data])
    return found


def assert_consecutive(indexes: list[int], n: int) -> None:
    """Each block is the one after the previous, wrapping around a film of ``n`` blocks."""
    for a, b in zip(indexes, indexes[1:]):
        assert b == (a + 1) % n, f"block {b} followed block {a}: {indexes}"


def mean_interval(arrivals: list[Arrival]) -> float:
    times = [a.accepted for a in arrivals]
    return (times[-1] - times[0]) / (len(times) - 1)


def log_lines(server: Proc, *words: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if all(w in line for w in words)]


def assert_no_real_overrun(server: Proc) -> None:
    """No round ended much after the next one was due (a few scheduler
    hiccups on a loaded machine are tolerated)."""
    lates = [float(line.split(" overran the period by ")[1].split()[0])
             for line in log_lines(server, "overran the period by")]
    assert all(late < 0.2 * PERIOD for late in lates), lates


# ------------------------------------------------------------ requests

def test_join_full_list_count_leave(cluster, clients):
    server = start(cluster, channels=2, max_clients=2)
    a, b, c = clients(), clients(), clients()
    assert a.join(server, 0) == b"10"
    assert b.join(server, 0) == b"10"
    assert c.join(server, 0) == b"00"                    # past the limit
    assert a.request(server, b"110") == encode_list([a.ip, b.ip])   # exact stock text
    assert a.request(server, b"130") == b"2"
    assert a.request(server, b"111") == b"[]"
    assert c.request(server, b"131") == b"0"

    # a client is in one channel at most: joining 1 takes a out of 0
    assert c.join(server, 1) == b"10"
    assert a.join(server, 1) == b"10"
    assert c.list(server, 0) == [b.ip]
    assert c.list(server, 1) == [c.ip, a.ip]             # join order

    assert b.request(server, b"120") == b""              # leave: no answer
    assert a.list(server, 0) == [] and a.count(server, 0) == 0
    assert b.request(server, b"121") == b""              # not in 1: nothing changes
    assert a.list(server, 1) == [c.ip, a.ip]

    # every answer on the push port was exactly two bytes on its own connection
    for client in (a, b, c):
        assert all(answer in (b"10", b"00") for answer in client.answers())
    assert log_lines(server, a.ip, "joined channel 0")
    assert log_lines(server, b.ip, "left channel 0")


def test_join_is_not_recorded_when_the_push_port_cannot_be_reached(cluster, clients):
    server = start(cluster, channels=1)
    ip = next_address()                                  # nobody listens on ip:9091
    sock = socket.socket()
    sock.bind((ip, 0))
    sock.connect((server.ip, SERVER_PORT))
    sock.sendall(b"100")
    assert read_to_end(sock) == b""
    sock.close()
    wait_until(lambda: log_lines(server, ip, "not recorded"), 5, "the failed join logged")
    a = clients()
    assert a.list(server, 0) == []
    assert a.join(server, 0) == b"10"
    assert a.list(server, 0) == [a.ip]


# ---------------------------------------------------------------- blocks

def test_blocks_byte_identical_in_order_paced_and_wrapping(cluster, clients, films):
    server = start(cluster, channels=2, max_clients=2)
    film0, film1 = film_blocks(films, "canal0"), film_blocks(films, "canal1")
    assert len(film0) == len(film1) == 6
    a, b = clients(), clients()
    assert a.join(server, 0) == b"10"
    assert b.join(server, 1) == b"10"
    wait_until(lambda: len(a.blocks()) >= 3, 5, "3 blocks to a")
    c = clients()                                        # joins later
    assert c.join(server, 0) == b"10"
    wait_until(lambda: len(a.blocks()) >= 9 and len(b.blocks()) >= 9
               and len(c.blocks()) >= 3, 10, "9 blocks to a and b")

    # each block is a film file, byte for byte, the next one each period,
    # wrapping around after the last (9 consecutive blocks of a 6-block film)
    ia = block_indexes(a.blocks(), film0)
    assert_consecutive(ia, 6)
    assert any(x == 5 and y == 0 for x, y in zip(ia, ia[1:])), ia
    ib = block_indexes(b.blocks(), film1)                # channel 1: its own film
    assert_consecutive(ib, 6)

    # pacing: a block every period on average (within 20 %)
    for client in (a, b):
        assert mean_interval(client.blocks()) == pytest.approx(PERIOD, rel=0.2)

    # c started with the channel's current block, the one a got in that round
    first = c.blocks()[0]
    same_round = [x for x in a.blocks() if abs(x.accepted - first.accepted) < PERIOD / 2]
    assert [x.data for x in same_round] == [first.data]
    assert_consecutive(block_indexes(c.blocks(), film0), 6)


def test_dead_and_unreachable_clients_are_skipped_then_dropped(cluster, clients, films):
    server = start(cluster, channels=1, max_clients=3)
    film0 = film_blocks(films, "canal0")
    good, dead, stuck = clients(), clients(), clients()
    for client in (good, dead, stuck):
        assert client.join(server, 0) == b"10"
    wait_until(lambda: len(dead.blocks()) >= 1 and len(stuck.blocks()) >= 1, 5,
               "a first block to everyone")
    dead.die()           # connection refused from now on
    stuck.hang()         # connect never completes from now on
    since = len(good.blocks())
    wait_until(lambda: good.list(server, 0) == [good.ip], 5, "both dropped")
    wait_until(lambda: len(good.blocks()) >= since + 3, 5, "blocks after the removals")

    for ip in (dead.ip, stuck.ip):
        skipped = log_lines(server, ip, "skipped")
        removed = log_lines(server, "removed", ip, "second failed send")
        assert len(skipped) == 1 and len(removed) == 1, server.log_text()
        log = server.log_text()
        assert log.index(skipped[0]) < log.index(removed[0])
    # the good client got every block, one per period, while the others failed
    assert_consecutive(block_indexes(good.blocks(), film0), 6)
    assert mean_interval(good.blocks()) == pytest.approx(PERIOD, rel=0.2)
    assert_no_real_overrun(server)


def test_a_client_that_never_reads_does_not_delay_the_others(tmp_path, clients):
    # Blocks bigger than what the kernel buffers (about 2 MB here), so sending
    # to a client that never reads blocks until the end of the period.
    big = tmp_path / "big"
    big.mkdir()
    blocks = [EBML_MAGIC + bytes([i]) * (4 << 20) for i in range(3)]
    for i, data in enumerate(blocks):
        (big / f"big_{i:05d}.mkv").write_bytes(data)
    with Cluster(tmp_path, big) as cluster:
        server = start(cluster, max_clients=3)
        first = clients()
        slow = clients(read=False, rcvbuf=4096)
        last = clients()
        for client in (first, slow, last):      # slow is ahead of last in join order
            assert client.join(server, 0) == b"10"
        wait_until(lambda: slow.list(server, 0) == [first.ip, last.ip], 5,
                   "the slow client dropped after two timed-out sends")
        wait_until(lambda: len(last.blocks()) >= 5, 5, "blocks after that")
        assert slow.held() >= 2
        # sent in parallel: last gets each block along with first, not after
        # the send to slow has timed out
        for b in last.blocks():
            same = [a for a in first.blocks()
                    if a.data == b.data and abs(a.ended - b.ended) < 0.3 * PERIOD]
            assert len(same) == 1, [(a.ended, a.data[4]) for a in first.blocks()]
        for client in (first, last):
            assert_consecutive(block_indexes(client.blocks(), blocks), 3)
            assert mean_interval(client.blocks()) == pytest.approx(PERIOD, rel=0.2)
        assert len(log_lines(server, f"removed {slow.ip}:", "timed out")) == 1
        assert_no_real_overrun(server)


# -------------------------------------------------------------- bad input

BAD_REQUESTS = [
    (b"1", "too short"),
    (b"10", "too short"),
    (b"   \r\n", "empty"),
    (b"ab1", "not two digits"),
    (b"1x0", "not two digits"),
    (b"140", "unknown code"),
    (b"990", "unknown code"),
    (b"10x", "not a digit"),
    (b"102", "out of range"),
    (b"139", "out of range"),
    (b"\xff\xfe\xfd", "UTF-8"),
    (b"\x00\x00\x00", "not two digits"),
    (b"x" * (1 << 20), "not two digits"),          # a megabyte of junk
    (b"\x07junk" * (1 << 18), "not two digits"),
]


def test_bad_input_changes_nothing_and_the_server_keeps_answering(cluster, clients):
    server = start(cluster, channels=2, max_clients=2)
    good, bad = clients(), clients()
    assert good.join(server, 0) == b"10"
    expected = encode_list([good.ip])

    for payload, reason in BAD_REQUESTS:
        answer = bad.request(server, payload, half_close=True)
        assert answer == b"", payload[:10]
        assert good.request(server, b"110") == expected, payload[:10]
        assert good.request(server, b"131") == b"0"
        wait_until(lambda: log_lines(server, bad.ip, "bad request", reason), 5,
                   f"{payload[:10]!r} logged as {reason}")
    with bad.connect(server) as sock:                     # connect, send nothing, close
        pass
    wait_until(lambda: log_lines(server, bad.ip, "empty request"), 5, "empty logged")
    assert bad.answers() == [] and bad.blocks() == []
    assert good.list(server, 0) == [good.ip]

    # a connection that sends nothing: others are answered meanwhile, and it is
    # closed after the read timeout
    silent = bad.connect(server)
    opened = time.monotonic()
    assert good.request(server, b"110") == expected
    assert time.monotonic() - opened < 1.0
    assert read_to_end(silent) == b""
    assert 1.5 < time.monotonic() - opened < 4.0
    silent.close()
    assert log_lines(server, bad.ip, "no request within")

    # a flood from one address: past 64 connections without a request, its
    # oldest ones are closed at once; everybody else is answered meanwhile
    flood = [bad.connect(server) for _ in range(100)]
    for sock in flood:
        sock.setblocking(False)

    def closed_by_server() -> int:
        closed = 0
        for sock in flood:
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except BlockingIOError:
                pass                                      # still waiting for its request
        return closed

    wait_until(lambda: closed_by_server() >= 36, 1.5, "the flood's oldest connections closed")
    assert log_lines(server, bad.ip, "too many connections without a request yet")
    assert good.request(server, b"130") == b"1"
    for sock in flood:
        sock.close()
    wait_until(lambda: good.request(server, b"110") == expected, 5, "service after the flood")
    assert good.request(server, b"130") == b"1"
    assert server.alive
    assert "Traceback" not in server.log_text()


# -------------------------------------------------------------- life cycle

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_writes_stats(cluster, clients, tmp_path, sig):
    stats = tmp_path / "stats.json"
    server = start(cluster, channels=2, max_clients=2, extra=("--stats", str(stats)))
    a, b = clients(), clients()
    assert a.join(server, 0) == b"10"
    assert b.join(server, 0) == b"10"
    wait_until(lambda: len(a.blocks()) >= 2, 5, "2 blocks")
    b.die()
    silent = a.connect(server)            # a handler blocked in recv at the stop
    wait_until(lambda: log_lines(server, f"removed {b.ip}:"), 5, "b removed")
    assert not stats.exists()

    t0 = time.monotonic()
    server.signal(sig)
    server.popen.wait(timeout=5)
    took = time.monotonic() - t0
    silent.close()
    log = server.log_text()
    assert server.popen.returncode == 0, log
    assert took < 1.5, f"stopped after {took:.2f} s"
    assert "Traceback" not in log and "did not end" not in log
    assert "stopped" in log.splitlines()[-1]

    data = json.loads(stats.read_text())
    ch0, ch1 = data["channels"]
    assert (ch0["film"], ch1["film"]) == ("canal0", "canal1")
    received = a.blocks()
    assert ch0["blocks_sent"] >= len(received) + len(b.blocks())
    assert ch0["bytes_sent"] >= sum(len(x.data) for x in received)
    assert ch0["clients_served"] == 2
    assert ch0["send_failures"] == 2 and ch0["removals"] == 1
    assert ch1["blocks_sent"] == ch1["clients_served"] == 0


def test_missing_or_empty_film_folder(tmp_path):
    for folder, words in ((tmp_path / "nowhere", "does not exist"),
                          (tmp_path, "holds no blocks")):
        done = subprocess.run([sys.executable, "-m", "server", "--films", str(folder),
                               "--host", next_address()], cwd=REPO, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert words in lines[0] and "python separa.py --sample" in lines[0]
        assert "Traceback" not in done.stderr


def test_port_taken(cluster):
    first = start(cluster)
    second = cluster.start_server(ip=first.ip, name="second")
    second.popen.wait(timeout=10)
    assert second.popen.returncode != 0
    assert "port is taken" in second.log_text()
    assert "Traceback" not in second.log_text()
    assert first.alive


@pytest.mark.parametrize("argv, cwd", [
    (["server.py", "--help"], REPO / "server"),
    (["server/server.py", "--help"], REPO),
    (["-m", "server", "--help"], REPO),
])
def test_help(argv, cwd):
    done = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for option in ("--host", "--port", "--push-port", "--channels", "--max-clients",
                   "--period", "--films", "--stats", "--log-level"):
        assert option in done.stdout


@pytest.mark.parametrize("same_address", [False, True], ids=["other-address", "same-address"])
def test_idle_connections_do_not_starve_a_valid_request(cluster, clients, same_address):
    """Issue 11, item 15: 50 connections that send nothing hold no handler."""
    server = start(cluster, channels=2, max_clients=2)
    idle, good = clients(), clients()
    asker = idle if same_address else good
    assert good.join(server, 0) == b"10"
    held = [idle.connect(server) for _ in range(50)]
    try:
        # (a server whose handlers all wait on the idle ones closes these at once)
        assert asker.request(server, b"130") == b"1"
        assert asker.request(server, b"110") == encode_list([good.ip])
        assert not log_lines(server, "too many")
    finally:
        for sock in held:
            sock.close()
    assert server.alive and "Traceback" not in server.log_text()


def test_blocks_larger_than_relaytv_carries_are_named_at_start(tmp_path):
    """Issue 11, item 18: one block limit; the server says which blocks clients refuse."""
    from server.protocol import MAX_BLOCK
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "huge_00000.mkv").write_bytes(EBML_MAGIC + b"\0" * 100)
    with open(folder / "huge_00001.mkv", "wb") as f:
        f.write(EBML_MAGIC)
        f.truncate(MAX_BLOCK + 1)                          # sparse: no 32 MiB written
    with Cluster(tmp_path, folder) as cluster:
        server = start(cluster)
        assert log_lines(server, "huge", "larger than 32 MiB", "huge_00001.mkv")
        assert not log_lines(server, "huge_00000.mkv")
