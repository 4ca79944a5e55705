"""client.httpask: one deadline for a whole HTTP request, against real listeners on loopback."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from client import httpask
from client.library import TrackerClient, TrackerError
from client.verify import http_fetcher


class Peer:
    """A listener on 127.0.0.1 that answers each connection with ``script(conn)``."""

    def __init__(self, script):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._script = script
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5.0)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                head, _, rest = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += conn.recv(4096)
                self.requests.append(head + b"\r\n\r\n" + rest)
                try:
                    self._script(conn, self)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture
def peer():
    made = []

    def make(script):
        made.append(Peer(script))
        return made[-1]
    yield make
    for one in made:
        one.close()


def _answer(body: bytes, status: str = "200 OK", chunked: bool = False):
    def script(conn, _):
        if chunked:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:]))
            conn.sendall(b"HTTP/1.1 " + status.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunks + b"0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 " + status.encode()
                         + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return script


def _dribble(conn, peer):
    """A status line, then one byte of header every 0.1 s for 4 s, then a proper end."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(40):
        if peer.stop.wait(0.1):
            return
        conn.sendall(b"X")
    conn.sendall(b"-Slow: 1\r\nContent-Length: 2\r\n\r\n{}")


def test_an_answer_is_read_whole_with_its_status_and_the_request_carries_its_body(peer):
    listener = peer(_answer(b'{"ok": true}', "201 Created"))
    status, reason, body = httpask.ask("127.0.0.1", "127.0.0.1", listener.port, "POST", "/films",
                                       body=b'{"a":1}', content_type="application/json",
                                       limit=1024, within=5.0)
    assert (status, reason, body) == (201, "Created", b'{"ok": true}')
    request = listener.requests[0]
    assert request.startswith(b"POST /films HTTP/1.1\r\n")
    assert b"Connection: close" in request and request.endswith(b'{"a":1}')


def test_a_chunked_answer_is_decoded(peer):
    listener = peer(_answer(b"abcdefgh", chunked=True))
    assert httpask.ask(None, "127.0.0.1", listener.port, "GET", "/", limit=64, within=5.0)[2] == b"abcdefgh"


def test_an_answer_over_the_bound_is_refused(peer):
    listener = peer(_answer(b"x" * 2000))
    with pytest.raises(http.client.HTTPException):
        httpask.ask(None, "127.0.0.1", listener.port, "GET", "/", limit=1000, within=5.0)


def test_a_peer_that_sends_a_byte_at_a_time_is_cut_at_the_deadline_of_the_whole_request(peer):
    """Every recv gets a byte well within any per-recv timeout; only a whole-request bound ends it."""
    listener = peer(_dribble)
    with pytest.raises(socket.timeout):
        httpask.ask(None, "127.0.0.1", listener.port, "GET", "/", limit=1024, within=1.0)


def test_the_tracker_client_and_the_feed_fetcher_keep_one_deadline(peer):
    listener = peer(_dribble)
    with pytest.raises(TrackerError):
        TrackerClient("127.0.0.1", listener.port, "127.0.0.1", timeout=1.0).get("/search?q=x")
    with pytest.raises(OSError):
        http_fetcher("127.0.0.1", "127.0.0.1", listener.port)(0, None)   # FEED_WAIT = 1 s
