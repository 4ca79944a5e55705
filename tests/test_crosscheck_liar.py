"""A lying relay against a real tree and a server without a feed: the cross-check, end to end.

The server runs with ``--feed-port 0``: it sends bytes only, as the stock
server does. The liar (:mod:`bench.liar`) attaches below a direct client and
rewrites 64 bytes in every block it relays; the direct clients vouch for what
the server sent them (:mod:`client.crosscheck`). Issue 16.
"""

from __future__ import annotations

from bench.cluster import Cluster, wait_until
from client import strangers
from client.peerproto import Addr
from tests.test_verify_liar import (PERIOD, PORTS, assert_caught_and_avoided, assert_complete,
                                    start_liar, status, stored)

#: The clients' recent window (s): a witness refutes once it has listened this long (and 2 periods).
WINDOW = "5"


def start_stock_server(cluster, *flags):
    server = cluster.start_server("--feed-port", "0", max_clients=1, period=PERIOD)
    direct = cluster.start_client(server, "--window", WINDOW, *flags, max_children=2,
                                  period=PERIOD)
    wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
    # The witness must have listened over a window (and two periods) before it can refute.
    wait_until(lambda: status(direct).get("blocks_received", 0) >= 2 * float(WINDOW) / PERIOD,
               30, "the direct client's first window of blocks")
    return server, direct


def client(cluster, server, *flags):
    return cluster.start_client(server, "--window", WINDOW, *flags, max_children=2, period=PERIOD)


def test_with_a_feedless_server_the_liars_blocks_are_stored_by_nobody(tmp_path, long_film):
    with Cluster(tmp_path, long_film) as cluster:
        server, direct = start_stock_server(cluster)
        liar = start_liar(direct, honest_blocks=4)
        try:
            wait_until(lambda: len(status(direct).get("children", [])) == 1, 10, "the liar attached")
            honest = client(cluster, server)
            wait_until(lambda: status(honest).get("parent", {}) == {"ip": direct.ip,
                                                                    "port": PORTS.peer},
                       20, "the second client under the direct one (its free place)")
            victims = [client(cluster, server)]
            wait_until(lambda: status(victims[0]).get("state") == "attached"
                       and status(victims[0]).get("blocks_received", 0) >= 4, 20,
                       "the first victim placed")
            wait_until(lambda: liar.bytes_sent > 0 or any(
                c["bytes_sent"] > 0 for c in status(honest).get("children", [])), 10,
                "the first victim's parent relaying to it (its next report says so)")
            victims.append(client(cluster, server))
            everyone = [direct, honest, *victims]
            wait_until(lambda: liar.joins, 20, "a client to join the liar")
            fooled = [p for p in victims if Addr(p.ip, PORTS.peer) in liar.joins]
            assert fooled                      # the precondition: else this test proves nothing
            assert_caught_and_avoided(liar, fooled, everyone)
            assert liar.blocks_relayed >= 1           # it did send altered blocks
            for proc in fooled:
                check = status(proc)["verify"]["crosscheck"]
                assert status(proc)["verify"]["mode"] == "stock"      # no feed: the cross-check
                assert check["refuted"] >= 1 and check["confirmed"] >= 1
            assert status(direct)["verify"]["crosscheck"]["answered"] >= 1   # the witness
            for proc in everyone:
                assert_complete(proc, long_film)
        finally:
            liar.stop()


def test_the_witness_is_a_direct_client_of_another_branch_when_there_is_one(tmp_path, long_film):
    """Two direct clients: the liar's victim asks the one that is not its own ancestor."""
    still = ("--balance-margin", "0")           # no balance swap: the places stay as set here
    with Cluster(tmp_path, long_film) as cluster:
        server = cluster.start_server("--feed-port", "0", max_clients=2, period=PERIOD)
        mine = cluster.start_client(server, "--window", WINDOW, *still, max_children=1,
                                    period=PERIOD)
        wait_until(lambda: status(mine).get("state") == "direct", 20, "the first direct client")
        other = cluster.start_client(server, "--window", WINDOW, *still, max_children=2,
                                     period=PERIOD)
        wait_until(lambda: status(other).get("state") == "direct", 20, "the second direct client")
        wait_until(lambda: status(other).get("blocks_received", 0) >= 2 * float(WINDOW) / PERIOD,
                   30, "the second direct client's first window of blocks")
        liar = start_liar(mine)                   # it takes the first one's only place
        try:
            fillers = [cluster.start_client(server, "--window", WINDOW, *still, max_children=0,
                                            period=PERIOD) for _ in range(2)]
            wait_until(lambda: all((status(f).get("parent") or {}).get("ip") == other.ip
                                   for f in fillers), 20, "the second one's places taken")
            victim = client(cluster, server, *still)
            wait_until(lambda: Addr(victim.ip, PORTS.peer) in liar.joins, 20,
                       "the victim under the liar (the only free place)")
            fillers[1].stop()                     # a place for the victim to go to
            wait_until(lambda: status(victim).get("refusals", {}).get(strangers.LIE, 0) >= 1
                       and (status(victim).get("parent") or {}).get("ip") == other.ip
                       and status(victim).get("blocks_received", 0) >= 6, 30,
                       "the victim to catch the liar and move under the other direct client")
            assert status(victim)["verify"]["crosscheck"]["refuted"] >= 1
            # Only the victim asks the second one (the fillers' sender is the second one: they
            # ask the first), so these answers are the victim's, from outside its branch.
            assert status(other)["verify"]["crosscheck"]["answered"] >= 1
            assert liar.blocks_relayed >= 1 and not liar.children()
            for proc in (mine, other, fillers[0], victim):
                assert_complete(proc, long_film)
        finally:
            liar.stop()


def test_without_the_crosscheck_a_feedless_servers_tree_stores_the_liars_blocks(tmp_path,
                                                                                long_film):
    """The control experiment (shows the test above can fail): the cross-check off."""
    with Cluster(tmp_path, long_film) as cluster:
        server = cluster.start_server("--feed-port", "0", max_clients=1, period=PERIOD)
        direct = cluster.start_client(server, "--no-crosscheck", max_children=1, period=PERIOD)
        wait_until(lambda: status(direct).get("state") == "direct", 20, "the direct client")
        liar = start_liar(direct)
        try:
            victim = client(cluster, server, "--no-crosscheck")
            wait_until(lambda: status(victim).get("blocks_received", 0) >= 3, 20,
                       "the victim under the liar to store blocks")
            assert -1 in stored(victim, long_film)
        finally:
            liar.stop()
