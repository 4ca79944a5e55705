"""Fan-out by measured upload, end to end: real processes on hosts of their own (network
namespaces), one of them behind an upload cap below one stream (tbf).

Needs root and iproute2, as the CI machine has; without them the test FAILS with
the reason (see tests/test_bench_netns.py): a skip would hide that it never ran.
"""

from __future__ import annotations

import json

import pytest

from bench import netns
from bench.cluster import Cluster, wait_until
from test_client_e2e import assert_continuous, counts, received_more, status

PERIOD = 1.0
#: The weak client's upload cap: half the stream (about 130 KB a block, one a second).
WEAK_MBIT = 0.5


@pytest.fixture(autouse=True)
def root_and_iproute2():
    reason = netns.unavailable()
    if reason:
        pytest.fail(f"tests/test_capacity_netns.py: {reason}", pytrace=False)


def test_a_relay_whose_uplink_cannot_carry_one_stream_feeds_nobody_and_nobody_loses_a_block(
        tmp_path, films):
    prefix = netns.prefix_of() + "k"
    with netns.Topology(prefix, upload_mbit=[WEAK_MBIT, 0, 0, 0], clients=4) as topology, \
            Cluster(tmp_path, films, prefix=topology.exec_prefix) as cluster:
        server_host = topology.add_server()
        ips = [topology.add_client(i).ip for i in range(4)]
        assert f"rate {WEAK_MBIT * 1000:g}Kbit" in topology.qdisc("c0")
        server = cluster.start_server(ip=server_host.ip, max_clients=2, period=PERIOD)
        wait_until(lambda: "listening on" in server.log_text(), 30, "the server to listen")

        def start(ip):
            proc = cluster.start_client(server, max_children=3, ip=ip, period=PERIOD)
            wait_until(lambda: status(proc).get("blocks_received", 0) >= 2, 30,
                       f"{ip} receiving")
            return proc

        # The weak client and a strong one take the two server slots; the weak one sorts
        # first among equal places (its address), so the next joiner tries it.
        weak, strong = start(ips[0]), start(ips[1])
        assert status(weak)["parent"] == status(strong)["parent"] == "server"
        others = [start(ips[2]), start(ips[3])]
        clients = [weak, strong, *others]

        def settled():
            uplink = status(weak).get("uplink") or {}
            return (uplink.get("estimate_bps") is not None and uplink.get("places") == 0
                    and not status(weak)["children"] and status(weak)["state"] == "attached"
                    and all(status(p).get("state") in ("attached", "direct") for p in others))

        # Measured, it offers nothing, and leaves its server slot for a place in the tree.
        wait_until(settled, 30, "the weak client measured, offering nothing, and placed below")
        before = counts(clients)
        wait_until(lambda: received_more(clients, before, 6), 30, "six more blocks everywhere")
        final = status(weak)
        cluster.stop_all()

    uplink = final["uplink"]
    # Its trial child was moved once the link fell behind; what it measured is below a stream.
    assert uplink["children_moved"] >= 1, uplink
    assert uplink["estimate_bps"] < uplink["stream_bps"], uplink
    assert uplink["estimate_bps"] < WEAK_MBIT * 1e6 * 1.2, uplink
    assert final["children"] == [] and final["max_children"] == 3
    assert final["parent"] != "server" and final["depth"] >= 2
    for proc in clients:
        assert_continuous(proc, films)
        stats = json.loads((Cluster.store_of(proc) / "stats.json").read_text())
        assert stats["blocks_lost"] == 0, (proc.ip, stats)
    # The strong client fed the others: it measured room for more than one.
    assert status(strong)["uplink"]["places"] >= 2
    assert netns.leftovers(prefix) == []
