"""A lying relay against a real tree: authenticated blocks and verified places, end to end.

The liar (:mod:`bench.liar`, written with the project's codec) attaches as a
child of a direct client, advertises free places, declines swaps and rewrites
64 bytes in every block it relays (recomputing the frame's digest). Issue 16.
"""

from __future__ import annotations

import random

import pytest

from bench.cluster import Cluster, session_ports, wait_until
from bench.liar import FREE, LyingRelay
from client import strangers
from client.links import connect_from, read_message
from client.peerproto import Addr, FrameDecoder, Hello, Info, block_digest, encode

PERIOD = 0.5
PORTS = session_ports()


def status(proc) -> dict:
    """The client's status; a client just started is waited for (its first status.json)."""
    wait_until(lambda: Cluster.status_of(proc) is not None, 20, f"{proc.ip}'s first status")
    return Cluster.status_of(proc) or {}


def stored(proc, film_dir) -> list[int]:
    """Film indexes of a client's stored blocks in play order (-1: not a block of the film)."""
    blocks = sorted(film_dir.glob("*.mkv"))
    index = {block_digest(p.read_bytes()): i for i, p in enumerate(blocks)}
    return [index.get(block_digest(p.read_bytes()), -1)
            for p in sorted(Cluster.store_of(proc).glob("*.mkv"))]


def assert_complete(proc, film_dir) -> list[int]:
    """Every stored block byte-identical to a block of the film, in order, without a hole."""
    count = len(list(film_dir.glob("*.mkv")))
    got = stored(proc, film_dir)
    assert got and -1 not in got, f"{proc.ip} stored {got} (-1: an altered block)"
    breaks = [(a, b) for a, b in zip(got, got[1:]) if b != (a + 1) % count]
    assert not breaks, f"{proc.ip} stored {got}: holes at {breaks}"
    return got


def assert_caught_and_avoided(liar, fooled, everyone) -> None:
    """The fooled clients blame the liar and move away, everyone stores on, and no client
    that caught the liar chooses it again (one that never met it may still try it, and
    would catch it in turn: nothing is shared)."""
    wait_until(lambda: all(status(p).get("refusals", {}).get(strangers.LIE, 0) >= 1
                           and status(p).get("state") == "attached"
                           and status(p)["parent"]["ip"] != liar.me.ip for p in fooled),
               30, "the fooled clients to catch the liar and move away")
    wait_until(lambda: not liar.children(), 10, "the liar dropped by every child")
    joins = len(liar.joins)
    before = {p.ip: status(p)["blocks_received"] for p in everyone}
    wait_until(lambda: all(status(p)["blocks_received"] >= before[p.ip] + 12
                           for p in everyone) and all(not status(p)["repairing"]
                                                      for p in everyone),
               40, "everyone to store 12 more blocks")
    again = liar.joins[joins:]
    assert not [p.ip for p in fooled if Addr(p.ip, PORTS.peer) in again], \
        "a client that caught the liar chose it again"


def start_liar(parent, **kwargs) -> LyingRelay:
    """A liar on a free address of 127.0.2.0/24 (below every cluster address).

    Its address decides nothing (addresses compare as strings: 127.0.141.x
    sorts before 127.0.2.x): the tests make the liar's place the best by the
    placement's own rules (the shallowest free place that has sent the
    fewest bytes), as a real relay's would be.
    """
    for _ in range(50):
        ip = f"127.0.2.{random.randrange(2, 250)}"
        try:
            liar = LyingRelay(ip, PORTS.peer, period=PERIOD, **kwargs)
        except OSError:
            continue
        liar.start(Addr(parent.ip, PORTS.peer))
        # Until its uplink is measured (on the liar's link), the parent offers one place
        # on trial (client.capacity): the next client would be sent below the liar.
        wait_until(lambda: (status(parent).get("uplink") or {}).get("estimate_bps") is not None,
                   20, "the parent's uplink measured")
        return liar
    raise OSError("no free address for the liar")


def best_place(proc) -> Addr | None:
    """The first free place ``proc`` offers a newcomer now, as a probe answers it."""
    me = Addr("127.0.2.1", PORTS.peer)  # below every cluster address, never a client's
    with connect_from(me.ip, proc.ip, PORTS.peer, timeout=3.0) as sock:
        sock.sendall(encode(Hello("probe", me, channel=0)))
        info = read_message(sock, FrameDecoder())
    assert isinstance(info, Info), info
    return info.candidates[0].addr if info.candidates else None


class ParentWatch:
    """Every parent each client had, sampled whenever a condition is awaited."""

    def __init__(self, procs):
        self.procs, self.seen = procs, {p.ip: set() for p in procs}

    def sample(self) -> None:
        for proc in self.procs:
            parent = status(proc).get("parent")
            if isinstance(parent, dict):
                self.seen[proc.ip].add(parent["ip"])

    def had(self, ip: str) -> list[str]:
        self.sample()
        return [client for client, parents in self.seen.items() if ip in parents]


def start_server(cluster, tmp_path):
    server = cluster.start_server("--feed-key", str(tmp_path / "feed.key"), max_clients=1,
                                  period=PERIOD)
    direct = cluster.start_client(server, max_children=2, period=PERIOD)
    wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
    wait_until(lambda: status(direct).get("blocks_received", 0) >= 2, 20, "its first blocks")
    return server, direct


def test_a_lying_relays_altered_blocks_are_stored_by_nobody(tmp_path, long_film):
    with Cluster(tmp_path, long_film) as cluster:
        server, direct = start_server(cluster, tmp_path)
        liar = start_liar(direct, honest_blocks=4)
        try:
            wait_until(lambda: len(status(direct).get("children", [])) == 1, 10, "the liar attached")
            honest = cluster.start_client(server, max_children=2, period=PERIOD)
            wait_until(lambda: status(honest).get("parent", {}) == {"ip": direct.ip,
                                                                    "port": PORTS.peer},
                       20, "the second client under the direct one (its free place)")
            # One at a time: once the first relays blocks, whichever of the two depth-2
            # places it took has sent more than the other, which the second victim prefers.
            victims = [cluster.start_client(server, max_children=2, period=PERIOD)]
            wait_until(lambda: status(victims[0]).get("state") == "attached"
                       and status(victims[0]).get("blocks_received", 0) >= 4, 20,
                       "the first victim placed")
            # The direct client ranks its children's places by what their reports say:
            # the second victim is started once the liar's place comes first there (a
            # newcomer probes it), not merely once the honest child has sent (its report
            # may not have arrived: at equal bytes, 127.0.1xx.x sorts before 127.0.2.x).
            wait_until(lambda: liar.joins or best_place(direct) == liar.me, 10,
                       "the liar's place the best the direct client offers")
            victims.append(cluster.start_client(server, max_children=2, period=PERIOD))
            everyone = [direct, honest, *victims]
            # The precondition: the liar's place is taken (else this test proves nothing).
            wait_until(lambda: liar.joins, 20, "a client to join the liar")
            fooled = [p for p in victims if Addr(p.ip, PORTS.peer) in liar.joins]
            assert fooled
            assert_caught_and_avoided(liar, fooled, everyone)
            assert liar.blocks_relayed >= 1           # it did send altered blocks
            for proc in fooled:
                assert status(proc)["verify"]["forged"] >= 1
                assert status(proc)["verify"]["mode"] == "feed"
            for proc in everyone:
                assert_complete(proc, long_film)
        finally:
            liar.stop()


def test_a_false_depth_one_place_attracts_nobody(tmp_path, long_film):
    with Cluster(tmp_path, long_film) as cluster:
        server, direct = start_server(cluster, tmp_path)
        liar = start_liar(direct, claim_depth_one=True)
        try:
            wait_until(lambda: len(status(direct).get("children", [])) == 1, 10, "the liar attached")
            joiners = []
            for _ in range(3):
                joiners.append(cluster.start_client(server, max_children=2, period=PERIOD))
            watch = ParentWatch(joiners)
            wait_until(lambda: (watch.sample() or True) and all(
                status(p).get("state") == "attached" and status(p).get("blocks_received", 0) >= 4
                for p in joiners), 40, "every joiner placed and receiving")
            assert liar.joins, "nobody even asked the liar (the test would prove nothing)"
            before = {p.ip: status(p)["blocks_received"] for p in joiners}
            wait_until(lambda: (watch.sample() or True) and all(
                status(p)["blocks_received"] >= before[p.ip] + 8 for p in joiners),
                30, "8 more blocks (climbers have had their turns)")
            assert watch.had(liar.me.ip) == []
            assert not liar.children()
            assert sum(status(p).get("refusals", {}).get(strangers.LIE, 0) for p in joiners) >= 1
            for proc in [direct, *joiners]:
                assert_complete(proc, long_film)
        finally:
            liar.stop()


@pytest.mark.parametrize("flag", ["--no-verify"])
def test_without_verification_the_liar_fools_its_children(tmp_path, long_film, flag):
    """The control experiment: the same liar, verification off: altered blocks get stored.

    (Shows the two tests above can fail.)
    """
    with Cluster(tmp_path, long_film) as cluster:
        server = cluster.start_server("--feed-key", str(tmp_path / "feed.key"), max_clients=1,
                                      period=PERIOD)
        direct = cluster.start_client(server, flag, max_children=1, period=PERIOD)
        wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
        liar = start_liar(direct)
        try:
            victim = cluster.start_client(server, flag, max_children=2, period=PERIOD)
            wait_until(lambda: status(victim).get("blocks_received", 0) >= 3, 20,
                       "the victim under the liar to store blocks")
            assert -1 in stored(victim, long_film)
        finally:
            liar.stop()


def test_a_child_that_declines_every_swap_stops_drawing_newcomers(tmp_path, long_film):
    """The liar relays true blocks but never takes a swap: after a few declined offers its
    parent no longer advertises its free places, and a newcomer goes elsewhere."""
    with Cluster(tmp_path, long_film) as cluster:
        server = cluster.start_server("--feed-key", str(tmp_path / "feed.key"), max_clients=1,
                                      period=PERIOD)
        # A small balance margin: the direct client offers its place soon and often.
        direct = cluster.start_client(server, "--balance-margin", "0.5", max_children=2,
                                      period=PERIOD)
        wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
        liar = start_liar(direct, honest_blocks=10**9)
        try:
            # The honest child takes one child of its own (K = 1): it cannot take over the
            # direct client's two children, so the liar is the only child the direct client
            # offers its place to (before the honest one has sent a byte, the two would tie),
            # and the shallowest free place a newcomer would take if it were still advertised.
            # No balance below: the honest child and its child keep their places.
            honest = cluster.start_client(server, "--balance-margin", "0", max_children=1,
                                          period=PERIOD)
            wait_until(lambda: (status(honest).get("parent") or {}).get("ip") == direct.ip, 20,
                       "the second client under the direct one")
            liar.free = 0              # full for a moment: the third client goes to the honest one
            reports = liar.reports_sent
            wait_until(lambda: liar.reports_sent >= reports + 2, 5, "the liar reporting itself full")
            below = cluster.start_client(server, "--balance-margin", "0", max_children=2,
                                         period=PERIOD)
            wait_until(lambda: (status(below).get("parent") or {}).get("ip") == honest.ip
                       and status(below).get("blocks_received", 0) >= 2, 20,
                       "a third client under the honest one")
            liar.free = FREE
            wait_until(lambda: liar.swaps_declined >= 3, 40, "three swap offers declined")
            newcomer = cluster.start_client(server, max_children=2, period=PERIOD)
            wait_until(lambda: status(newcomer).get("state") == "attached"
                       and status(newcomer).get("blocks_received", 0) >= 3, 20,
                       "the newcomer placed")
            # The honest child is full: the free place left is below it, a level deeper
            # than the liar's.
            assert status(newcomer)["parent"]["ip"] == below.ip
            assert Addr(newcomer.ip, PORTS.peer) not in liar.joins
        finally:
            liar.stop()
