"""Cut-through relaying end to end: a block forwarded in parts that turns out corrupt or
forged is discarded by the relay and its whole subtree, stored by nobody and repaired; one
cut short by its sender's death is finished from what came, its rest alone fetched.

Real processes on loopback: a server with its feed, a direct client A, a fake relay
(:mod:`bench.liar`, written with the project's codec) below A, a real relay B below it and
C below B. The fake relays honestly in parts until told to lie about the next block:
``cut`` sends its start and half its parts and dies, ``corrupt-end`` ends it with a
digest that is not its bytes', ``tamper`` (in parts) alters its bytes under a matching
digest, which the server's feed refutes. Issue 15.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from bench.cluster import Cluster, wait_until
from client import strangers
from client.peerproto import MAX_PART, Addr, block_digest
from conftest import _sample_films
from test_verify_liar import PERIOD, PORTS, assert_complete, start_liar, status


@pytest.fixture(scope="module")
def big_film(tmp_path_factory):
    """40 s of 640x360 (20 blocks of a few parts each): a block can be cut in its middle."""
    return _sample_films(tmp_path_factory.mktemp("filme-big"), 1, 40, "640x360")


@contextlib.contextmanager
def chain(cluster, tmp_path, lie: str):
    """server -> A -> the fake relay -> B -> C, every link relaying; the fake still honest
    (and stopped at the end, whatever happens)."""
    server = cluster.start_server("--feed-key", str(tmp_path / "feed.key"), max_clients=1,
                                  period=PERIOD)
    a = cluster.start_client(server, max_children=1, period=PERIOD)   # its one place: the fake
    wait_until(lambda: status(a).get("state") == "direct"
               and status(a).get("blocks_received", 0) >= 2, 20, "the direct client")
    liar = start_liar(a, honest_blocks=10**9, lie=lie, in_parts=True)
    try:
        yield (server, a, liar, *place_b_and_c(cluster, server, a, liar))
    finally:
        liar.stop()


def place_b_and_c(cluster, server, a, liar):
    wait_until(lambda: len(status(a).get("children", [])) == 1, 10, "the fake relay attached")
    # No balance swaps below A: B and C keep their places until the lie.
    b = cluster.start_client(server, "--balance-margin", "0", max_children=1, period=PERIOD)
    wait_until(lambda: Addr(b.ip, PORTS.peer) in liar.joins and liar.children(), 20,
               "B below the fake relay")
    liar.free = 0                                        # C is sent to B's free place
    reports = liar.reports_sent
    wait_until(lambda: liar.reports_sent >= reports + 2, 5, "the fake relay reporting itself full")
    c = cluster.start_client(server, "--balance-margin", "0", max_children=0, period=PERIOD)
    wait_until(lambda: (status(c).get("parent") or {}).get("ip") == b.ip
               and status(c).get("blocks_received", 0) >= 3, 30, "C below B, receiving")
    return b, c


def lie_once_and_recover(liar, everyone, big_film) -> bytes:
    """Let the fake lie about its next block; every client stores on; the block's digest."""
    liar.honest_blocks = liar.blocks_seen
    wait_until(lambda: liar.lied is not None, 10, "the fake relay to lie")
    lied = liar.lied
    assert len(lied.data) > 2 * MAX_PART, "a block of one part cannot be cut in its middle"
    before = {p.ip: status(p)["blocks_received"] for p in everyone}
    wait_until(lambda: all(status(p)["blocks_received"] >= before[p.ip] + 10
                           and not status(p)["repairing"] for p in everyone),
               40, "everyone to store 10 more blocks")
    for proc in everyone:
        assert_complete(proc, big_film)
    # C kept its parent: B told it to drop the block (it was not cut off with it).
    assert status(everyone[-1])["rejoins"] == 0
    return lied.digest


def events_of(proc) -> list[dict]:
    """The client's structured events (client.events), oldest first."""
    path = Cluster.store_of(proc) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def stored_digests(proc) -> set[bytes]:
    return {block_digest(p.read_bytes()) for p in Cluster.store_of(proc).glob("*.mkv")}


def test_a_block_corrupt_at_its_end_mid_forward_is_stored_by_nobody_and_repaired(
        tmp_path, big_film):
    with Cluster(tmp_path, big_film) as cluster:
        with chain(cluster, tmp_path, "corrupt-end") as (server, a, liar, b, c):
            digest = lie_once_and_recover(liar, [a, b, c], big_film)
            # B got the block's first parts and relayed them on to C before the lie showed:
            # both dropped them, and both hold the true block now, which B repaired.
            for proc in (b, c):
                assert status(proc)["blocks_discarded"] >= 1, proc.ip
                assert digest in stored_digests(proc), f"{proc.ip} never stored the block"
            assert status(b)["blocks_repaired"] >= 1
            assert status(b)["blocks_finished"] == 0


def test_a_block_cut_short_by_its_relays_death_is_finished_from_what_came(tmp_path, big_film):
    """The fake dies in the middle of a block: B keeps its beginning, and so does C below
    it; B, placed again, fetches only the rest, checks the whole at its end, and C gets
    the bytes it lacked. Nobody drops the block; everybody stores it."""
    with Cluster(tmp_path, big_film) as cluster:
        with chain(cluster, tmp_path, "cut") as (server, a, liar, b, c):
            digest = lie_once_and_recover(liar, [a, b, c], big_film)
            for proc in (b, c):
                assert status(proc)["blocks_discarded"] == 0, proc.ip
                assert digest in stored_digests(proc), f"{proc.ip} never stored the block"
            assert status(b)["blocks_repaired"] >= 1 and status(b)["blocks_finished"] == 1
            started = [e for e in events_of(b) if e["event"] == "repair_started"]
            assert started and started[0]["held"] > 0


def test_a_forged_block_in_parts_is_discarded_by_the_relay_and_its_subtree(tmp_path, big_film):
    """The fake alters every block from now on, under digests that match: B checks each one
    at its end with the feed, drops it (and C with it), blames the fake and moves away."""
    with Cluster(tmp_path, big_film) as cluster:
        with chain(cluster, tmp_path, "tamper") as (server, a, liar, b, c):
            lie_once_and_recover(liar, [a, b, c], big_film)
            assert status(b)["refusals"].get(strangers.LIE, 0) >= 1
            assert status(b)["parent"]["ip"] != liar.me.ip
            assert status(c)["blocks_discarded"] >= 1
            # C never had to catch the lie itself: B told it before it could store it.
            assert status(c)["refusals"].get(strangers.LIE, 0) == 0
