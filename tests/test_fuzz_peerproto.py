"""A small fuzz loop: random and mutated frames against the peer codec, the feed document
and a running client's handshake. Seeded (``RELAYTV_FUZZ_SEED`` replays a run) and
bounded in time. Issue 16.

The promise under test: bad input raises the codec's own error
(:class:`PeerProtocolError`, :class:`EOFError`, :class:`FeedError`) and nothing
else; a client fed garbage keeps its handlers healthy and still answers.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cluster import next_address, wait_until
from client.inputs import Leave
from client.links import connect_from, read_message
from client.model import Config
from client.node import Node
from client.peerproto import (MAX_CONTROL, Accept, Addr, Advice, Block, BlockAbort, BlockEnd,
                              BlockPart, BlockStart, Bye, Candidate, FetchEnd,
                              FrameDecoder, Hello, Info, Keepalive, PathUpdate, PeerProtocolError,
                              Report, Swap, SwapAnswer, TreeQuery, Vouch, VouchAnswer, DigestQuery,
                              DigestAnswer, encode)
from server.feed import FeedError, decode_document, encode_document

SEED = int(os.environ.get("RELAYTV_FUZZ_SEED", "16"))
SECONDS = 2.0   # per loop

A, B = Addr("127.0.0.2", 9092), Addr("127.0.0.3", 9092)
CORPUS = [encode(m) for m in (
    Hello("join", A, 0, 2, have=(bytes(16),), subtree=(B,), catch_up=3),
    Hello("fetch", A, 1, want=(bytes(range(16)),)), Hello("probe", B, 0),
    Accept(2, (A,), bytes(16), (bytes(16),)), Block.of(7, b"\x1a\x45\xdf\xa3" + bytes(300)),
    Keepalive(), PathUpdate(3, (A, B)), Bye(B), Report(1, 2, (Candidate(A, 1, 2, 3),), (B,)),
    Info(True, 2, 1, 0, (Candidate(B, 2, 1, 0),)), Advice(Candidate(A, 1, 1, 0)),
    FetchEnd((bytes(16),)), Swap(A, (B,), (A, B)), SwapAnswer(True), TreeQuery(0),
    Vouch(0, A), VouchAnswer(False), DigestQuery(0, (bytes(16),), 100),
    DigestAnswer((bytes(16),), True, 5000), BlockStart(7),
    BlockPart(b"\x1a\x45\xdf\xa3" + bytes(60)),
    BlockEnd(64, bytes(16)), BlockAbort("parent lost"))]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del out[at:at + rng.randint(1, 8)]
        else:
            out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"{}", b"[]"])
    return bytes(out)


def inputs(rng: random.Random):
    """Endless inputs: mutated valid frames (mostly), random bytes, frames glued together."""
    while True:
        pick = rng.random()
        if pick < 0.7:
            yield mutate(rng, rng.choice(CORPUS))
        elif pick < 0.85:
            yield rng.randbytes(rng.randint(0, 200))
        else:
            yield b"".join(rng.choice(CORPUS) for _ in range(3))


def decode_all(data: bytes, rng: random.Random, max_frame=None) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    at = 0
    while at < len(data):
        step = rng.randint(1, 64)
        decoder.feed(data[at:at + step])
        at += step
        while (message := decoder.next_message()) is not None:
            FrameDecoder().feed(encode(message))    # what decoded re-encodes
    decoder.feed(b"")
    while decoder.next_message() is not None:
        pass


def test_the_codec_raises_only_its_own_errors():
    rng = random.Random(SEED)
    deadline, runs = time.monotonic() + SECONDS, 0
    for data in inputs(rng):
        if time.monotonic() > deadline:
            break
        runs += 1
        for max_frame in (None, MAX_CONTROL):
            try:
                decode_all(data, rng, max_frame)
            except (PeerProtocolError, EOFError):
                pass
    assert runs > 100


def test_a_parent_links_blocks_in_parts_raise_only_the_codecs_errors():
    """Mutated and shuffled runs of starts, parts and ends through the parent link's table
    and the reassembly, as its reader takes them: the codec's errors, nothing else."""
    from client import roles
    from client.peerproto import Reassembly, block_digest, parts_of
    rng = random.Random(SEED)
    data = rng.randbytes(300_000)
    good = [BlockStart(3), *parts_of(data), BlockEnd(len(data), block_digest(data))]
    deadline, runs = time.monotonic() + SECONDS, 0
    while time.monotonic() < deadline:
        frames = [encode(m) for m in good]
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(frames))
            frames[at] = (mutate(rng, frames[at]) if rng.random() < 0.6
                          else rng.choice(frames + [encode(BlockAbort("x"))]))
        decoder, link, whole = FrameDecoder(), roles.Conversation(roles.PARENT), Reassembly()
        decoder.feed(b"".join(frames))
        runs += 1
        try:
            while (message := decoder.next_message()) is not None:
                link.received(message)
                if isinstance(message, BlockStart):
                    whole.start(message.seq)
                elif isinstance(message, BlockPart):
                    whole.add(message.data)
                elif isinstance(message, BlockEnd):
                    assert whole.end(message).data == data   # only the true block ends well
                elif isinstance(message, BlockAbort):
                    whole.abort()
        except PeerProtocolError:
            pass
    assert runs > 20


def test_the_feed_document_raises_only_feed_errors():
    rng = random.Random(SEED)
    signer = Ed25519PrivateKey.generate()
    key = signer.public_key().public_bytes_raw()
    valid = encode_document(signer, 0, 2.0, 5, [(s, bytes([s]) * 16) for s in range(5, 12)])
    deadline, refused = time.monotonic() + SECONDS, 0
    while time.monotonic() < deadline:
        data = mutate(rng, valid) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 300))
        try:
            decode_document(data, key)
        except FeedError:
            refused += 1
    assert refused > 100


@pytest.fixture
def node(tmp_path):
    ip = next_address()
    config = Config(ip=ip, server_host="127.0.0.1", server_port=1, channel=0, max_children=2,
                    store=tmp_path, push_port=_free_port(ip), peer_port=_free_port(ip),
                    period=0.5, player=False, feed_port=0)
    node = Node(config)
    def control_loop():          # no server, no joining: the handshake alone
        while not isinstance(node._inputs.get(), Leave):
            pass

    node._control_loop = control_loop
    node.start()
    yield node
    node.stop()


def test_a_client_survives_random_and_mutated_handshakes(node, caplog):
    rng = random.Random(SEED)
    deadline, sent = time.monotonic() + SECONDS, 0
    me = next_address()
    with caplog.at_level(logging.WARNING):
        for data in inputs(rng):
            if time.monotonic() > deadline:
                break
            try:
                with connect_from(me, node.config.ip, node.config.peer_port, 2.0) as sock:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(3.0)
                    while sock.recv(65536):
                        pass
            except OSError:
                pass      # refused or reset: a verdict, not a failure
            sent += 1
    assert sent > 20
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures[0].getMessage()
    # Still answering: a valid probe gets its Info.
    wait_until(lambda: not node._peer_gate.in_use(), 10, "every handler to end")
    with connect_from(me, node.config.ip, node.config.peer_port, 2.0) as sock:
        sock.sendall(encode(Hello("probe", Addr(me, 9092), 0)))
        assert isinstance(read_message(sock, FrameDecoder()), Info)


def _free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]
