"""A client that becomes direct while the server's round is still on its way to the others.

The stock server pushes each block to its direct clients in parallel; a
1 MB block on a real link takes most of a second. A client that joins
the server just after a round began is not in it, and the one other
place that block exists, for a while, is half-way to another direct
client. These tests play the server themselves (a small stand-in that
speaks the stock protocol, docs/report/protocol.rst) so that the round
can be held half-sent at exactly that moment.
"""

from __future__ import annotations

import socket
import threading
import time
import types

from bench.cluster import Cluster, next_address, wait_until
from client.delivery import SERVER
from client.links import connect_from, listen_on
from client.model import Config
from client.node import Node
from client.peerproto import Addr, Block, Info
from client.window import Stored
from server import protocol as stock
from test_client_e2e import assert_continuous, status


class StagedServer:
    """Answers join, list, leave and count requests as the stock server does; pushes on demand.

    Every client is let in. ``requests`` records (code, client ip) in
    order; ``arrived`` is notified after each request.
    """

    def __init__(self, ip: str, port: int, push_port: int):
        self.ip, self.push_port = ip, push_port
        self.members: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.arrived = threading.Condition()
        self._sock = listen_on(ip, port, 16)
        self._sock.settimeout(0.2)  # accept() wakes to see a close(): closing alone does not wake it
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="staged-server")
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, (peer_ip, _) = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                data = b""
                try:
                    while not stock.request_complete(data):
                        chunk = conn.recv(64)
                        if not chunk:
                            break
                        data += chunk
                    request = stock.parse_request(data)
                    if request.code == stock.LIST:
                        conn.sendall(stock.encode_list(self.members))
                    elif request.code == stock.COUNT:
                        conn.sendall(stock.encode_count(len(self.members)))
                except (OSError, stock.ProtocolError):
                    continue
            if request.code == stock.JOIN:
                if peer_ip not in self.members:
                    self.members.append(peer_ip)
                self.push(peer_ip, stock.JOINED)
            elif request.code == stock.LEAVE and peer_ip in self.members:
                self.members.remove(peer_ip)
            with self.arrived:
                self.requests.append((request.code, peer_ip))
                self.arrived.notify_all()

    def push(self, ip: str, data: bytes, hold: threading.Event | None = None) -> None:
        """One push connection; with ``hold``, half the bytes go, the rest once it is set."""
        with connect_from(self.ip, ip, self.push_port, 5.0) as sock:
            if hold is None:
                sock.sendall(data)
                return
            sock.sendall(data[:len(data) // 2])
            hold.wait(10)
            sock.sendall(data[len(data) // 2:])

    def wait_for(self, code: str, ip: str, after: int, timeout: float) -> bool:
        """True once a request ``code`` from ``ip`` came past the first ``after`` requests."""
        with self.arrived:
            return self.arrived.wait_for(
                lambda: (code, ip) in self.requests[after:], timeout=timeout)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)
        self._sock.close()


def test_a_new_direct_client_fetches_the_block_still_on_its_way_to_the_other(
        tmp_path, long_film):
    blocks = [p.read_bytes() for p in sorted(long_film.glob("canal0_*.mkv"))]
    with Cluster(tmp_path, long_film) as cluster:
        server = StagedServer(next_address(), cluster.ports.server, cluster.ports.push)
        try:
            where = types.SimpleNamespace(ip=server.ip)
            keeper = cluster.start_client(where, max_children=0, period=1.0)
            wait_until(lambda: status(keeper).get("state") == "direct", 20, "the keeper to join")
            joiner = cluster.start_client(where, max_children=0, period=1.0)
            wait_until(lambda: status(joiner).get("state") == "direct", 20, "the joiner to join")
            for block in blocks[:3]:
                for proc in (keeper, joiner):
                    server.push(proc.ip, block)
                wait_until(lambda: all(status(p).get("blocks_received", 0) >= blocks.index(block) + 1
                                       for p in (keeper, joiner)), 10, "both to store the block")
            # The joiner hears nothing more: after 3 s (3 periods) it counts itself
            # dropped and joins the server again. The keeper gets a block every 0.5 s.
            seen = len(server.requests)
            n = 3
            while not server.wait_for(stock.JOIN, joiner.ip, seen, timeout=0.5):
                server.push(keeper.ip, blocks[n])
                n += 1
                assert n < 15, "the joiner never joined the server again"
            # Block n is half-way to the keeper when the joiner is back, and stays so
            # for a second (a 1 MB block on a thin link): the time a client that asks
            # the other direct clients at once hears "nothing missed".
            hold = threading.Event()
            halfway = threading.Thread(target=server.push, args=(keeper.ip, blocks[n], hold))
            halfway.start()
            time.sleep(1.0)  # the slow round itself, not a wait for a condition
            hold.set()
            halfway.join(timeout=10)
            wait_until(lambda: status(keeper).get("blocks_received", 0) >= n + 1, 10,
                       f"the keeper to store block {n}")
            # The next rounds, one at a time (as a server's period keeps them apart).
            for i in range(n + 1, n + 4):
                for proc in (keeper, joiner):
                    server.push(proc.ip, blocks[i])
                wait_until(lambda: status(joiner).get("blocks_received", 0) >= i + 1
                           and not status(joiner).get("repairing"), 20,
                           f"the joiner to store everything up to block {i}")
            assert status(joiner)["blocks_repaired"] >= n - 3 + 1, status(joiner)
            assert_continuous(joiner, long_film)
            assert len(list(Cluster.store_of(joiner).glob("*.mkv"))) == n + 4
        finally:
            cluster.stop_all()
            server.close()


def test_a_new_direct_client_fetches_the_fullest_list_of_what_it_missed_from_every_source(
        tmp_path, monkeypatch):
    """The other direct client is as new as this one and lacks block 2 too: it names 3 only.
    A former ancestor names 2 and 3; both are fetched, from both."""
    node = Node(Config("127.0.0.1", "127.0.0.1", 9090, 0, 1, tmp_path / "store", period=2.0))
    blocks = [Block.of(i, bytes([i]) * 100) for i in range(4)]
    for block in blocks[:2]:
        node.window.append(Stored(block, 0.0))
    other, former = Addr("127.0.0.5", 9092), Addr("127.0.0.6", 9092)
    names = {other: (blocks[1].digest, (blocks[3].digest,)),
             former: (blocks[1].digest, (blocks[2].digest, blocks[3].digest))}
    asked, jobs = [], []

    def ask(addr, probe):
        asked.append(addr)
        after, missing = names[addr]
        return Info(True, 1, 0, 0, (), after, missing)

    class Job:
        def start(self):
            pass

    def repair_job(missing, sources, rejoin):
        jobs.append((missing, sources))
        return Job()

    monkeypatch.setattr(node, "_ask", ask)
    monkeypatch.setattr(node, "_repair_job", repair_job)
    monkeypatch.setattr(node, "_listed_direct_clients", lambda: [node.me, other])
    node.parent, node._former_path = SERVER, (former,)
    node.gate.follow(SERVER, gap_check=True)
    node._server_gap()
    assert asked == [other, former]
    assert jobs == [([blocks[2].digest, blocks[3].digest], [other, former])]
