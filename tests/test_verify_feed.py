"""The digest feed over real sockets, and the client's modes against real servers.

Issue 16 "authenticated blocks": the feed's HTTP edge; a client pinned to the
server's key; a wrong key (fails closed); the stock server, without a feed
(blocks pass unauthenticated, said in status.json).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cluster import Cluster, next_address, wait_until
from client.verify import Verdict, Verifier, http_fetcher
from server.feed import MAX_REQUESTS, FeedBook, FeedServer, decode_document

PERIOD = 0.5


class Film:
    def __init__(self, n):
        self.blocks = [b"\x1a\x45\xdf\xa3" + bytes([i]) * 64 for i in range(n)]

    def __len__(self):
        return len(self.blocks)

    def read_block(self, i):
        return self.blocks[i % len(self.blocks)]


def get(address, path):
    conn = http.client.HTTPConnection(*address, timeout=3)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_the_feed_serves_signed_documents_and_stops_with_its_threads():
    signer = Ed25519PrivateKey.generate()
    book = FeedBook(signer, PERIOD)
    server = FeedServer(book, next_address(), 0)
    server.start()
    try:
        assert get(server.address, "/feed/0")[0] == 404          # nothing sent yet
        book.publish_round(0, 5, Film(8))
        status, body = get(server.address, "/feed/0?since=10")
        assert status == 200
        doc = decode_document(body, signer.public_key().public_bytes_raw())
        assert [s for s, _ in doc.blocks] == list(range(10, 22))
        for bad in ("/feed/x", "/feed/0?since=ab", "/feed/12", "/other"):
            assert get(server.address, bad)[0] == 404
        fetch = http_fetcher(server.address[0], *server.address)
        verifier = Verifier(fetch, None)
        assert verifier.check(0, doc.blocks[0][1]) is Verdict.GENUINE     # pinned on first use
        assert verifier.pinned == signer.public_key().public_bytes_raw()
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "feed"]


def status(proc) -> dict:
    return Cluster.status_of(proc) or {}


def server_key(server) -> str:
    found = wait_until(lambda: re.search(r"server key ([0-9a-f]{64})", server.log_text()), 10,
                       "the server to print its key")
    return found.group(1)


def test_a_pinned_client_stores_checked_blocks_and_a_wrong_key_fails_closed(cluster, tmp_path):
    server = cluster.start_server("--feed-key", str(tmp_path / "feed.key"), max_clients=1,
                                  period=PERIOD)
    key = server_key(server)
    direct = cluster.start_client(server, "--server-key", key, max_children=2, period=PERIOD)
    wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
    pinned = cluster.start_client(server, "--server-key", key, max_children=2, period=PERIOD)
    wrong = cluster.start_client(server, "--server-key", "ab" * 32, max_children=0, period=PERIOD)
    wait_until(lambda: status(pinned).get("verify", {}).get("genuine", 0) >= 3, 20,
               "the pinned child to store checked blocks")
    assert status(pinned)["verify"]["mode"] == "feed" and status(pinned)["verify"]["key"] == key
    wait_until(lambda: status(wrong).get("verify", {}).get("unchecked", 0) >= 3, 20,
               "the wrongly keyed client to refuse blocks")
    assert status(wrong)["blocks_received"] == 0              # fails closed: nothing stored
    assert status(wrong).get("refusals", {}).get("lie", 0) == 0   # and nobody is blamed


def test_with_the_stock_server_blocks_pass_unauthenticated_and_it_is_said(cluster, tmp_path):
    server = cluster.start_server("--feed-port", "0", max_clients=1, period=PERIOD)
    direct = cluster.start_client(server, max_children=2, period=PERIOD)
    wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
    child = cluster.start_client(server, max_children=2, period=PERIOD)
    wait_until(lambda: status(child).get("blocks_received", 0) >= 3, 20, "the child to store")
    assert status(child)["verify"]["mode"] == "stock"
    assert status(child)["verify"]["stock"] >= 3


def test_the_feed_refuses_past_its_bound_at_once():
    book = FeedBook(Ed25519PrivateKey.generate(), PERIOD)
    book.publish_round(0, 0, Film(4))
    server = FeedServer(book, next_address(), 0)
    server.start()
    held = []
    try:
        for _ in range(MAX_REQUESTS):
            held.append(socket.create_connection(server.address, timeout=3))
        wait_until(lambda: server.requests_in_progress() == MAX_REQUESTS, 10,
                   "every slot held by a slow request")
        extra = socket.create_connection(server.address, timeout=3)
        assert extra.recv(100) == b""                         # closed at once, nothing read
        extra.close()
    finally:
        for sock in held:
            sock.close()
        server.stop()
