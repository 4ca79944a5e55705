"""Which channels the server has (``13X``), against our server's and the stock server's ways.

The decisions run on a fake server object (no socket); ``StockServer.count``
runs against one-connection listeners on loopback that answer as each
server does: a count, a close without a word (our server, and the stock
server's crashed handler), or silence.
"""

from __future__ import annotations

import socket
import threading

import pytest

from bench.cluster import next_address, session_ports
from client import channels
from client.links import StockServer
from server import protocol as stock


class FakeServer:
    """Has channels 0 to ``count - 1``; ``down`` makes every request fail to connect."""

    host, port = "127.0.0.1", 6060

    def __init__(self, count: int, down: bool = False):
        self.channels, self.down = count, down

    def count(self, channel: int) -> int | None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return 0 if channel < self.channels else None


def test_the_channel_count_is_the_first_channel_without_an_answer():
    assert channels.channel_count(FakeServer(2)) == 2
    assert channels.channel_count(FakeServer(stock.MAX_CHANNELS)) == stock.MAX_CHANNELS
    assert channels.channel_count(FakeServer(2, down=True)) is None


def test_a_missing_channel_is_named_with_the_range_the_server_has():
    assert channels.missing_channel(FakeServer(2), 1) is None
    assert "0-1" in channels.missing_channel(FakeServer(2), 5)
    with pytest.raises(OSError):
        channels.missing_channel(FakeServer(2, down=True), 5)
    assert channels.why_not_join(FakeServer(2), 1) is None
    assert "not reachable" in channels.why_not_join(FakeServer(2, down=True), 1)


def one_connection_server(ip: str, answer: bytes | None, hold: bool = False):
    """Accept one request; send ``answer`` (None: nothing) then close, or hold it open."""
    listener = socket.socket()
    listener.bind((ip, 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(16)
        if answer:
            conn.sendall(answer)
        if hold:
            conn.recv(16)  # until the client gives up and closes
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize("answer, hold, expected", [
    (b"2", False, 2),          # a channel the server has
    (None, False, None),       # ours, and the stock server's crashed handler: closed, no word
    (None, True, None),        # a handler that hangs: silence until the timeout
])
def test_the_count_request_tells_a_missing_channel_from_a_count(answer, hold, expected):
    ip = next_address()
    port, thread = one_connection_server(ip, answer, hold)
    server = StockServer(ip, port, ip, timeout=0.5)
    assert server.count(7) == expected
    thread.join(timeout=5)


def test_a_server_that_is_not_there_is_an_os_error():
    ip = next_address()
    with pytest.raises(OSError):
        StockServer(ip, session_ports().server, ip, timeout=0.5).count(0)
