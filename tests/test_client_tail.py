"""A block cut short by a parent's loss: the rest of it only is fetched (issue 15).

The pure answer of a source (:func:`client.repair.fetch_answer`) first, then
:class:`client.fetcher.RepairJob` over loopback sockets against sources
that answer a real ``Hello(fetch)`` with it.
"""

from __future__ import annotations

import socket
import threading
import time

from bench.cluster import next_address, session_ports
from client.fetcher import RepairJob
from client.peerproto import Addr, Block, BlockTail, FetchEnd, FrameDecoder, Hello, encode
from client.repair import RepairPlan, fetch_answer

BLOCK = Block.of(7, bytes(range(256)) * 400)        # 102 kB
OTHER = Block.of(8, b"o" * 5000)
ASKER = Addr("127.0.0.1", 1)


def test_a_source_sends_the_rest_of_the_first_block_when_the_asker_holds_its_beginning():
    held = {BLOCK.digest: BLOCK, OTHER.digest: OTHER}
    hello = Hello("fetch", ASKER, 0, want=(BLOCK.digest, OTHER.digest, b"m" * 16), held=1000)
    assert fetch_answer(hello, held) == [BlockTail(7, BLOCK.digest, 1000, BLOCK.data[1000:]),
                                         OTHER, FetchEnd((b"m" * 16,))]


def test_a_source_sends_a_block_whole_when_nothing_or_too_much_is_held():
    held = {BLOCK.digest: BLOCK}
    for count in (0, len(BLOCK.data), len(BLOCK.data) + 1):
        hello = Hello("fetch", ASKER, 0, want=(BLOCK.digest,), held=count)
        assert fetch_answer(hello, held) == [BLOCK, FetchEnd()]
    # Only the first wanted block can be the one cut short.
    hello = Hello("fetch", ASKER, 0, want=(OTHER.digest, BLOCK.digest), held=1000)
    assert fetch_answer(hello, held) == [BLOCK, FetchEnd((OTHER.digest,))]


class FetchSource:
    """A loopback listener answering each ``Hello(fetch)`` as a relay's window would."""

    def __init__(self, blocks: list[Block]):
        self.addr = Addr(next_address(), session_ports().peer)
        self.blocks = {b.digest: b for b in blocks}
        self.hellos: list[Hello] = []
        self.sock = socket.create_server((self.addr.ip, self.addr.port))
        self.sock.settimeout(10)   # (a source nobody asks ends its thread)
        self.thread = threading.Thread(target=self._serve, name="fetch-source")
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            decoder = FrameDecoder()
            while (hello := decoder.next_message()) is None:
                decoder.feed(conn.recv(65536))
            self.hellos.append(hello)
            for frame in fetch_answer(hello, self.blocks):
                conn.sendall(encode(frame))

    def close(self):
        self.thread.join(10)
        self.sock.close()


def repair(sources: list[FetchSource], held: bytes) -> list:
    plan = RepairPlan([BLOCK.digest], [s.addr for s in sources], time.monotonic(), stall_after=2.0)
    got, done = [], threading.Event()
    job = RepairJob(plan, ASKER, 0, lambda digest, block: got.append(block),
                    lambda j: done.set(), deadline=10.0, held=held)
    job.start()
    assert done.wait(15)
    job.join()
    return got


def test_a_job_holding_a_blocks_beginning_fetches_its_rest_and_stores_it_whole():
    source = FetchSource([BLOCK])
    try:
        got = repair([source], BLOCK.data[:40_000])
    finally:
        source.close()
    assert source.hellos[0].held == 40_000
    assert got == [BLOCK]


def test_a_beginning_that_was_another_blocks_is_dropped_and_the_block_fetched_whole():
    wrong, right = FetchSource([BLOCK]), FetchSource([BLOCK])
    try:
        # The lost parent had sent bytes of something else (a liar, or another block).
        got = repair([wrong, right], b"\xff" * 40_000)
    finally:
        wrong.close()
        right.close()
    assert [h.held for h in wrong.hellos + right.hellos] == [40_000, 0]
    assert got == [BLOCK]
