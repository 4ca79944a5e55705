"""Bounded strangers: what a client grants connections it did not ask for.

Unit tests of :mod:`client.strangers` (pure, fake clock), then attacks on a
real tree (server and clients as processes) by fake peers written with the
project's own codec (:mod:`client.peerproto`): slowloris on the peer port,
oversized frames before the handshake, a second identity from one address,
pushes from an address that is not the server's, a push larger than a block.
Issue 11 item 18 and issue 16 "bounded strangers".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from bench.cluster import Cluster, next_address, session_ports, wait_until
from bench.strangers import Slowloris, connect_from, flood_oversized, rss_kib
from client import strangers
from client.links import read_message_by
from client.peerproto import (HEADER, MAX_BLOCK, MAX_CONTROL, Accept, Addr, Block, FrameDecoder,
                              Hello, PeerProtocolError, Reject, block_digest, encode)
from server import protocol as stock

PERIOD = 0.5
PORTS = session_ports()


# ------------------------------------------------------------------- unit

def test_each_gate_has_its_own_slots_and_a_child_gives_its_slot_back():
    push = strangers.Gate("push", 2)
    peer = strangers.Gate("peer", 3, per_address=2)
    held = [peer.admit(f"10.0.0.{n}") for n in range(3)]
    assert all(isinstance(t, strangers.Ticket) for t in held)
    assert "busy" in peer.admit("10.0.0.9")
    assert isinstance(push.admit("10.0.0.1"), strangers.Ticket)   # the other port is untouched
    held[0].give_back_slot()                                       # became a child link
    held[0].give_back_slot()                                       # (once only)
    assert peer.in_use() == 2
    assert isinstance(peer.admit("10.0.0.9"), strangers.Ticket)
    assert "busy" in peer.admit("10.0.0.8")


def test_connections_in_handshake_are_bounded_per_address():
    gate = strangers.Gate("peer", 64, per_address=2)
    first, second = gate.admit("10.0.0.1"), gate.admit("10.0.0.1")
    assert "handshake" in gate.admit("10.0.0.1")
    assert isinstance(gate.admit("10.0.0.2"), strangers.Ticket)
    first.handshake_done()            # said Hello: no longer counts for its address
    third = gate.admit("10.0.0.1")
    assert isinstance(third, strangers.Ticket)
    for ticket in (first, second, third):
        ticket.close()
        ticket.close()
    assert gate.in_use() == 1


def test_one_identity_per_address_and_pushes_from_the_server_only():
    a, b = Addr("10.0.0.1", 9092), Addr("10.0.0.2", 9092)
    assert strangers.identity_clash([a, b], Addr("10.0.0.1", 9093)) == a
    assert strangers.identity_clash([a, b], a) is None              # the same client reconnecting
    assert strangers.identity_clash([b], Addr("10.0.0.1", 9093)) is None
    assert strangers.push_allowed({"10.0.0.100"}, "10.0.0.100")
    assert not strangers.push_allowed({"10.0.0.100"}, "10.0.0.1")


def test_blame_is_logged_once_per_address_and_kind_in_a_while(caplog):
    now = [0.0]
    blame = strangers.BlameLog(logging.getLogger("test.blame"), window=60, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, "test.blame"):
        assert blame.report(strangers.LIMIT, "10.0.0.1", "slow")
        assert not blame.report(strangers.LIMIT, "10.0.0.1", "slow")
        assert blame.report(strangers.LIE, "10.0.0.1", "claims")        # another kind
        assert blame.report(strangers.LIMIT, "10.0.0.2", "slow")        # another address
        now[0] = 61.0
        assert blame.report(strangers.LIMIT, "10.0.0.1", "slow")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and "1 more like it" in warnings[-1]
    assert blame.counts == {strangers.LIMIT: 4, strangers.LIE: 1}


def test_a_decoder_for_strangers_refuses_a_block_header_at_once():
    decoder = FrameDecoder(max_frame=MAX_CONTROL)
    decoder.feed(HEADER.pack(Block.TYPE, MAX_BLOCK))
    with pytest.raises(PeerProtocolError):
        decoder.next_message()
    assert FrameDecoder().next_message() is None      # no bound: as before


def test_the_handshake_deadline_bounds_the_whole_read_not_each_recv():
    now = [0.0]
    mine, theirs = socket.socketpair()
    with mine, theirs:
        hello = encode(Hello("probe", Addr("10.0.0.1", 9092), 0))
        theirs.sendall(hello[:3])
        now[0] = 3.5                          # the clock says the deadline passed meanwhile
        with pytest.raises(socket.timeout):
            read_message_by(mine, FrameDecoder(), deadline=3.0, clock=lambda: now[0])
        theirs.sendall(hello[3:])             # (nothing was read: the deadline came first)
        assert read_message_by(mine, FrameDecoder(), deadline=10.0,
                               clock=lambda: now[0]).kind == "probe"


# ------------------------------------------------------ real processes

def status(proc) -> dict:
    return Cluster.status_of(proc) or {}


def film_index(films: Path, name: str = "canal0") -> tuple[dict[bytes, int], int]:
    blocks = sorted(films.glob(f"{name}_*.mkv"))
    return {block_digest(p.read_bytes()): i for i, p in enumerate(blocks)}, len(blocks)


def assert_continuous(proc, films: Path) -> list[int]:
    """Every stored block is the film's, in order, without hole or duplicate."""
    index, count = film_index(films)
    got = [index.get(block_digest(p.read_bytes()), -1)
           for p in sorted(Cluster.store_of(proc).glob("*.mkv"))]
    assert got and -1 not in got, f"{proc.ip} stored {got} (-1: not a block of the film)"
    breaks = [(a, b) for a, b in zip(got, got[1:]) if b != (a + 1) % count]
    assert not breaks, f"{proc.ip} stored {got}: breaks at {breaks}"
    return got


def refusals(proc, blame: str) -> int:
    return status(proc).get("refusals", {}).get(blame, 0)


def start_pair(cluster: Cluster, tmp_path: Path, max_children: int = 2):
    """A server with one slot, a direct client and its child, both receiving."""
    server = cluster.start_server("--stats", str(tmp_path / "server-stats.json"),
                                  max_clients=1, period=PERIOD)
    direct = cluster.start_client(server, max_children=max_children, period=PERIOD)
    wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
    child = cluster.start_client(server, max_children=2, period=PERIOD)
    wait_until(lambda: status(child).get("state") == "attached", 20, "the child to attach")
    wait_until(lambda: all(status(p).get("blocks_received", 0) >= 2 for p in (direct, child)),
               20, "both to receive")
    return server, direct, child


def server_send_failures(server, tmp_path: Path) -> int:
    assert server.stop() == 0
    stats = json.loads((tmp_path / "server-stats.json").read_text())
    return sum(c["send_failures"] for c in stats["channels"])


def test_slowloris_on_the_peer_port_costs_no_block_and_no_push(cluster, tmp_path, films):
    server, direct, child = start_pair(cluster, tmp_path)
    before = {p.ip: status(p)["blocks_received"] for p in (direct, child)}
    attackers = [next_address() for _ in range(16)]        # 16 addresses x 4 = 64 connections
    with Slowloris((direct.ip, PORTS.peer), attackers, 63, PORTS.peer) as attack:
        wait_until(lambda: len(attack.held) >= 63, 20, "the relay to cut every slow connection")
        wait_until(lambda: all(status(p)["blocks_received"] >= before[p.ip] + 12
                               for p in (direct, child)), 30, "six more seconds of blocks")
    wait_until(lambda: refusals(direct, strangers.LIMIT) >= 63, 10, "the cuts counted")
    held = sorted(attack.held)
    print(f"\nslowloris: {len(held)} connections cut, held {held[0]:.2f}-{held[-1]:.2f} s, "
          f"median {held[len(held) // 2]:.2f} s (deadline {strangers.HANDSHAKE_DEADLINE:.0f} s), "
          f"{attack.refused_at_once} refused at once, {attack.open_at_end} open at the end")
    # (a connection may wait a moment in the kernel's accept queue before its deadline starts)
    assert max(attack.held) < strangers.HANDSHAKE_DEADLINE + 5.0, attack.held
    for proc in (direct, child):
        assert status(proc)["blocks_lost"] == 0
        got = assert_continuous(proc, films)
        print(f"slowloris: {proc.ip} stored {len(got)} blocks, none lost")
    assert server_send_failures(server, tmp_path) == 0      # no push of the server refused
    assert "Traceback" not in direct.log_text()


def test_one_address_gets_a_few_handshakes_at_a_time(cluster, tmp_path, films):
    server, direct, child = start_pair(cluster, tmp_path)
    one = next_address()
    with Slowloris((direct.ip, PORTS.peer), [one], 12, PORTS.peer) as attack:
        # 4 are held to the deadline, the other 8 reset at once, again and again
        wait_until(lambda: attack.refused_at_once >= 16, 10, "connections past 4 refused at once")
    assert all(held > 1.0 for held in attack.held), attack.held
    wait_until(lambda: refusals(direct, strangers.LIMIT) >= 16, 10, "the refusals counted")
    for proc in (direct, child):
        assert status(proc)["blocks_lost"] == 0


def test_oversized_frames_before_the_handshake_keep_memory_bounded(cluster, tmp_path, films):
    server, direct, child = start_pair(cluster, tmp_path)
    before = rss_kib(direct.pid)
    attacker = next_address()                   # half of them from one address
    sources = [attacker if n % 2 else next_address() for n in range(16)]
    accepted = flood_oversized((direct.ip, PORTS.peer), sources)
    after = rss_kib(direct.pid)
    print(f"\npre-handshake blocks: 16 x 32 MiB frames; {accepted >> 20} MiB got through the "
          f"socket; relay RSS {before['VmRSS'] // 1024} MiB before, {after['VmRSS'] // 1024} MiB "
          f"after, peak {after['VmHWM'] // 1024} MiB (peak before {before['VmHWM'] // 1024} MiB)")
    assert after["VmHWM"] - before["VmHWM"] < 64 * 1024, (before, after)
    wait_until(lambda: refusals(direct, strangers.VIOLATION) >= 1, 10, "the frames refused")
    now = status(child)["blocks_received"]
    wait_until(lambda: status(child)["blocks_received"] >= now + 3, 20, "the child to go on")
    for proc in (direct, child):
        assert status(proc)["blocks_lost"] == 0
        assert_continuous(proc, films)


def test_a_second_identity_from_one_address_is_refused(cluster, tmp_path, films):
    server, direct, child = start_pair(cluster, tmp_path, max_children=3)
    host = next_address()
    first = connect_from(host, (direct.ip, PORTS.peer))
    with first:
        first.sendall(encode(Hello("join", Addr(host, PORTS.peer), 0)))
        assert isinstance(read_message_by(first, FrameDecoder(), time.monotonic() + 5), Accept)
        wait_until(lambda: len(status(direct).get("children", [])) == 2, 10, "the first child")
        with connect_from(host, (direct.ip, PORTS.peer)) as second:
            second.sendall(encode(Hello("join", Addr(host, PORTS.peer + 1), 0)))
            answer = read_message_by(second, FrameDecoder(), time.monotonic() + 5)
        assert isinstance(answer, Reject), answer
        children = {(c["ip"], c["port"]) for c in status(direct)["children"]}
        assert (host, PORTS.peer + 1) not in children and (host, PORTS.peer) in children
    wait_until(lambda: refusals(direct, strangers.LIMIT) >= 1, 10, "the refusal counted")


def test_pushes_from_another_address_than_the_server_are_ignored(cluster, tmp_path, films):
    server, direct, child = start_pair(cluster, tmp_path)
    intruder = next_address()
    fake = stock.EBML_MAGIC + os.urandom(100_000)
    for _ in range(3):
        try:
            with connect_from(intruder, (direct.ip, PORTS.push)) as sock:
                sock.sendall(fake)
        except OSError:
            pass                                 # reset by the client: what it should do
    now = status(child)["blocks_received"]
    wait_until(lambda: status(child)["blocks_received"] >= now + 3, 20, "blocks to go on")
    for proc in (direct, child):
        assert_continuous(proc, films)           # nothing of the intruder's stored anywhere
    assert refusals(direct, strangers.VIOLATION) >= 1


class FakeServer:
    """A stock server on ``ip``: answers requests and joins; the test pushes the blocks."""

    def __init__(self, ip: str):
        self.ip = ip
        self.client_ip: str | None = None
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((ip, PORTS.server))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-server")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, (ip, _) = self._listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                request = conn.recv(3)
                self.client_ip = ip
                if request[:2] == b"10":
                    self.push(b"10")
                elif request[:2] == b"11":
                    conn.sendall(stock.encode_list([ip]))
                elif request[:2] == b"13":
                    conn.sendall(b"1")

    def push(self, data: bytes) -> None:
        try:
            with connect_from(self.ip, (self.client_ip, PORTS.push)) as sock:
                sock.sendall(data)
        except OSError:
            pass                                  # refused part way: the client said no

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def test_a_push_larger_than_a_block_is_refused_clearly(cluster, tmp_path, films):
    fake = FakeServer(next_address())
    try:
        ip = next_address()
        store = tmp_path / "stores" / ip
        argv = [cluster.python, "-m", "client", "--server", f"{fake.ip}:{PORTS.server}",
                "--push-port", str(PORTS.push), "--peer-port", str(PORTS.peer), "--ip", ip,
                "--store", str(store), "--max-children", "2", "--period", "5",
                "--no-player", "--no-menu"]
        proc = cluster.spawn("client", ip, argv)
        wait_until(lambda: (Cluster.status_of(proc) or {}).get("state") == "direct", 20,
                   "the client to join the fake server")
        fake.push(stock.EBML_MAGIC + b"\0" * (40 * 1000 * 1000))      # 40 MB: past 32 MiB
        wait_until(lambda: refusals(proc, strangers.LIMIT) == 1, 10, "the push refused")
        block = sorted(films.glob("canal0_*.mkv"))[0].read_bytes()
        fake.push(block)
        wait_until(lambda: status(proc).get("blocks_received", 0) >= 1, 10, "the real block")
        stored = sorted(store.glob("*.mkv"))
        assert [p.read_bytes() for p in stored] == [block]
        assert proc.alive and "Traceback" not in proc.log_text()
    finally:
        fake.close()
