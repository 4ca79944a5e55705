"""A user's relaytv on the stock ports cannot take a test cluster's traffic.

Another server may listen on all addresses at 6060 and other clients at 9091
and 9092 on the machine that runs the tests. Every cluster of a session has
ports of its own (:func:`bench.cluster.session_ports`), so such a listener
gets no connection from the cluster and the cluster's binds do not clash
with it.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading

from bench.cluster import STOCK_PORTS, Cluster, session_ports, wait_until

PERIOD = 0.5


class Squatter:
    """Listens on all addresses at ``ports`` and records every connection it gets.

    A port that something on the machine already listens on is left to it:
    the condition the test wants (a listener there) holds already.
    """

    def __init__(self, ports):
        self.connections: list[tuple[int, str]] = []
        self.taken: list[int] = []
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listeners = []
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
                sock.listen(16)
            except OSError as exc:
                sock.close()
                assert exc.errno == errno.EADDRINUSE, exc
                self.taken.append(port)
                continue
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, port)
            self._listeners.append(sock)
        self._thread = threading.Thread(target=self._run, name="squatter")
        self._thread.start()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    return
                try:
                    conn, peer = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.close()
                with self._lock:
                    self.connections.append((key.data, peer[0]))

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in self._listeners + [self._wake_r, self._wake_w]:
            sock.close()
        self._selector.close()


def test_a_server_and_clients_on_the_stock_ports_get_nothing(tmp_path, films):
    ports = session_ports()
    assert not {ports.server, ports.push, ports.peer} & {6060, 9091, 9092}
    squatter = Squatter((STOCK_PORTS.server, STOCK_PORTS.push, STOCK_PORTS.peer))
    try:
        with Cluster(tmp_path, films) as cluster:
            server = cluster.start_server(max_clients=1, period=PERIOD)
            wait_until(lambda: "listening on" in server.log_text() or not server.alive, 15,
                       "the server to listen")
            assert server.alive, server.log_text()
            direct = cluster.start_client(server, max_children=1, period=PERIOD)
            wait_until(lambda: (Cluster.status_of(direct) or {}).get("state") == "direct", 20,
                       "the first client to be served by the server")
            child = cluster.start_client(server, max_children=1, period=PERIOD)

            def both_receive():
                first, second = Cluster.status_of(direct) or {}, Cluster.status_of(child) or {}
                return (second.get("state") == "attached" and second.get("blocks_received", 0) >= 3
                        and first.get("blocks_received", 0) >= 3)

            wait_until(both_receive, 30, "both clients to receive blocks, one through the other")
            assert Cluster.status_of(child)["parent"] == {"ip": direct.ip, "port": ports.peer}
    finally:
        squatter.close()
    assert squatter.connections == [], (
        f"the cluster connected to the stock ports (already taken here: {squatter.taken})")
