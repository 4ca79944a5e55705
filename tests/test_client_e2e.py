"""The relay client end to end: real server and client processes on 127.0.x.y.

A server with one slot per channel, clients with two children each, a short
period. Each test awaits conditions on the clients' status.json files; the
stored blocks are compared with the film's own files.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time

from bench.cluster import Cluster, session_ports, wait_until
from client import eventlog
from client.events import FILE as EVENTS_FILE
from client.links import StockServer
from client.peerproto import VERSION, block_digest

PERIOD = 0.5
PEER_PORT = session_ports().peer   # every cluster's clients listen there


def film_index(films, name="canal0"):
    """Digest of each block of film ``name`` -> its index, and the block count."""
    blocks = sorted(films.glob(f"{name}_*.mkv"))
    return {block_digest(p.read_bytes()): i for i, p in enumerate(blocks)}, len(blocks)


def stored_indexes(proc, films):
    """Film indexes of the blocks a client stored, in its play (name) order."""
    index, _ = film_index(films)
    return [index.get(block_digest(p.read_bytes()), -1)
            for p in sorted(Cluster.store_of(proc).glob("*.mkv"))]


def assert_continuous(proc, films):
    """Every stored block is the film's, in order, without hole or duplicate."""
    _, count = film_index(films)
    got = stored_indexes(proc, films)
    assert got, f"{proc.ip} stored nothing"
    assert -1 not in got, f"{proc.ip} stored a block that is not the film's"
    breaks = [(a, b) for a, b in zip(got, got[1:]) if b != (a + 1) % count]
    assert not breaks, f"{proc.ip} stored {got}: breaks at {breaks}"


def status(proc):
    return Cluster.status_of(proc) or {}


def events(proc, name):
    """The client's events called ``name`` (its events.jsonl, client.events), oldest first."""
    return [e for e in eventlog.read(Cluster.store_of(proc) / EVENTS_FILE) if e["event"] == name]


def addr(proc):
    """A client's peer address as the events name it."""
    return f"{proc.ip}:{PEER_PORT}"


def receiving(procs, at_least):
    """True when every client has stored at least ``at_least`` blocks."""
    return all(status(p).get("blocks_received", 0) >= at_least for p in procs)


def received_more(procs, before, more):
    return all(status(p).get("blocks_received", 0) >= before[p.ip] + more for p in procs)


def counts(procs):
    return {p.ip: status(p).get("blocks_received", 0) for p in procs}


def start_tree(cluster, n, *extra, max_children=2, max_clients=1, channels=2, server_args=()):
    """A server and ``n`` clients started one after the other, each awaited in place."""
    server = cluster.start_server(*server_args, max_clients=max_clients, period=PERIOD,
                                  channels=channels)
    clients = []
    for _ in range(n):
        proc = cluster.start_client(server, *extra, max_children=max_children, period=PERIOD)
        wait_until(lambda: status(proc).get("state") in ("direct", "attached"), 20,
                   f"{proc.ip} to find a place")
        clients.append(proc)
    wait_until(lambda: receiving(clients, 2), 20, "every client to receive")
    return server, clients


def tree_of(clients):
    """ip -> status, and a check that parents and children agree and nobody loops."""
    statuses = {p.ip: status(p) for p in clients}
    for ip, s in statuses.items():
        seen, node = {ip}, s
        while isinstance(node.get("parent"), dict):
            parent_ip = node["parent"]["ip"]
            assert parent_ip not in seen, f"loop through {parent_ip}"
            seen.add(parent_ip)
            node = statuses.get(parent_ip, {})
    return statuses


def settled_tree(clients):
    """The statuses, when every client is in place and parents and children agree; else None.

    While the balance rotation moves clients, status files change one process
    at a time: a tree read then is only judged once it is whole.
    """
    statuses = tree_of(clients)
    for s in statuses.values():
        if s.get("state") not in ("direct", "attached"):
            return None
        parent = s["parent"]
        if isinstance(parent, dict):
            above = statuses.get(parent["ip"], {})
            if above.get("depth", 0) + 1 != s["depth"] or \
                    s["ip"] not in {c["ip"] for c in above.get("children", [])}:
                return None
    return statuses


def depth_histogram(statuses):
    hist = {}
    for s in statuses.values():
        hist[s["depth"]] = hist.get(s["depth"], 0) + 1
    return hist


def test_ten_clients_form_a_shallow_tree_and_store_the_film_in_order(cluster, films):
    server, clients = start_tree(cluster, 10)
    statuses = tree_of(clients)
    assert [s["parent"] for s in statuses.values()].count("server") == 1
    assert all(len(s["children"]) <= 2 for s in statuses.values())
    # One server slot, fan-out 2: depths 1, 2, 3 hold 1 + 2 + 4 = 7 < 10 <= 15.
    assert max(s["depth"] for s in statuses.values()) == 4, depth_histogram(statuses)
    before = counts(clients)
    wait_until(lambda: received_more(clients, before, 8), 30, "8 more blocks everywhere")
    for proc in clients:
        assert_continuous(proc, films)


def test_killed_relay_children_rejoin_with_their_subtree_and_lose_nothing(cluster, films):
    # 9 clients: depths 1, 2, 3 full (1 + 2 + 4), two more at depth 4. The balance
    # rotation is off so that the tree holds still while its shape is compared.
    server, clients = start_tree(cluster, 9, "--balance-margin", "0")
    statuses = tree_of(clients)

    def grandchildren_of(ip):
        return [g for c in statuses[ip]["children"] for g in statuses[c["ip"]]["children"]]

    victim = next(p for p in clients if statuses[p.ip]["depth"] == 2 and grandchildren_of(p.ip))
    orphans = [c["ip"] for c in statuses[victim.ip]["children"]]
    grandchildren = {ip: sorted(c["ip"] for c in statuses[ip]["children"]) for ip in orphans}
    survivors = [p for p in clients if p is not victim]
    before = counts(survivors)

    victim.kill()
    wait_until(lambda: received_more(survivors, before, 6), 30, "survivors to receive 6 more blocks")

    after = tree_of(survivors)
    by_ip = {p.ip: p for p in clients}
    for ip in orphans:
        assert isinstance(after[ip]["parent"], dict) or after[ip]["parent"] == "server"
        assert after[ip]["parent"] != {"ip": victim.ip, "port": PEER_PORT}
        assert after[ip]["rejoins"] >= 1
        assert addr(victim) in [e["parent"] for e in events(by_ip[ip], "parent_lost")]
        for below in grandchildren[ip]:
            # The orphan's subtree moved with it: its children never lost their parent
            # (they may climb to a shallower place later on, which is another matter).
            lost = [e for e in events(by_ip[below], "parent_lost") if e["parent"] == f"{ip}:{PEER_PORT}"]
            assert not lost, f"{below} lost its parent {ip}: {lost}"
    assert all(len(s["children"]) <= 2 for s in after.values())
    for proc in survivors:
        assert_continuous(proc, films)


def test_leaving_relay_hands_its_children_over_before_it_is_gone(cluster, films):
    server, clients = start_tree(cluster, 5)
    statuses = tree_of(clients)
    leaver = next(p for p in clients if statuses[p.ip]["depth"] == 2 and statuses[p.ip]["children"])
    orphans = [p for p in clients if p.ip in {c["ip"] for c in statuses[leaver.ip]["children"]}]
    survivors = [p for p in clients if p is not leaver]
    before = counts(survivors)

    assert leaver.stop() == 0
    wait_until(lambda: received_more(survivors, before, 4), 30, "survivors to receive 4 more blocks")
    for proc in orphans:
        moved = [e for e in events(proc, "rejoin") if e["moved_by"] == addr(leaver)]
        assert moved, f"{proc.ip} was not told that its parent was leaving"
    for proc in survivors:
        assert_continuous(proc, films)
    leaver_stats = json.loads((Cluster.store_of(leaver) / "stats.json").read_text())
    assert leaver_stats["blocks_relayed"] > 0


def test_server_restart_everyone_comes_back(cluster, films):
    server, clients = start_tree(cluster, 5)
    server.kill()
    server2 = cluster.start_server(ip=server.ip, max_clients=1, period=PERIOD, channels=2,
                                   name="server-restarted")
    asker = StockServer(server2.ip, cluster.ports.server, "127.0.0.249", timeout=2.0)

    def answers_a_count():
        try:
            return asker.count(0) is not None or not server2.alive
        except OSError:
            return False

    wait_until(answers_a_count, 10, "the restarted server to answer")
    assert server2.alive, server2.log_text()
    before = counts(clients)
    wait_until(lambda: received_more(clients, before, 4), 40, "everyone to receive again")
    statuses = tree_of(clients)
    assert [s["parent"] for s in statuses.values()].count("server") == 1
    assert all(len(s["children"]) <= 2 for s in statuses.values())


def test_hostile_peer_input_is_refused_and_the_client_keeps_receiving(cluster, films):
    server, clients = start_tree(cluster, 2)
    target = clients[0]
    attacker_ip = "127.0.0.250"

    def send(payload: bytes, close: bool = True):
        with socket.create_connection((target.ip, PEER_PORT), timeout=3,
                                      source_address=(attacker_ip, 0)) as sock:
            sock.sendall(payload)
            if close:
                sock.shutdown(socket.SHUT_WR)
            try:
                return sock.recv(4096)
            except OSError:
                return b""

    send(b"\x00" * 1000)                                   # junk
    send(struct.pack(">BI", 1, 50_000_000))                # oversized control frame
    send(struct.pack(">BI", 1, 100) + b"{")                # stops mid-frame
    send(struct.pack(">BI", 1, 2) + b"[]")                 # not an object
    hello = json.dumps({"proto": "relaytv", "version": VERSION, "kind": "join", "ip": "127.0.0.9",
                        "port": PEER_PORT, "channel": 0}).encode()
    send(struct.pack(">BI", 1, len(hello)) + hello)        # claims another address
    before = counts(clients)
    wait_until(lambda: received_more(clients, before, 3), 20, "clients to keep receiving")
    wait_until(lambda: (Cluster.status_of(target)["refusals"].get("protocol violation", 0) >= 4
                        and Cluster.status_of(target)["refusals"].get("lie", 0) >= 1), 10,
               "the hostile connections counted as refused, by blame")
    assert "Traceback" not in target.log_text()
    for proc in clients:
        assert_continuous(proc, films)


def test_menu_through_standard_input(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    proc = cluster.start_client(server, "--menu", max_children=2, period=PERIOD,
                                stdin=subprocess.PIPE)
    wait_until(lambda: status(proc).get("blocks_received", 0) >= 2, 20, "the client to receive")
    proc.popen.stdin.write(b"connections\nfiles\nstatus\nbogus\nquit\n")
    proc.popen.stdin.close()
    assert proc.popen.wait(timeout=15) == 0
    out = proc.log_text()
    assert f"receiving from: server {server.ip}:{session_ports().server}" in out
    assert f"this client:    {proc.ip}:{PEER_PORT} at depth 1" in out
    assert "sending to:     nobody" in out
    assert "file(s) waiting in" in out and ".mkv" in out
    assert "unknown command: bogus" in out
    # With the menu, log lines go to a file, not over the prompt.
    assert "INFO" not in out
    assert (Cluster.store_of(proc) / "client.log").read_text().count("direct client") >= 1


def test_menu_switches_channel_and_the_new_channel_s_film_arrives(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD, channels=2)
    proc = cluster.start_client(server, "--menu", max_children=2, period=PERIOD,
                                stdin=subprocess.PIPE)
    wait_until(lambda: status(proc).get("blocks_received", 0) >= 2, 20, "the client to receive")
    proc.popen.stdin.write(b"channel 1\n")
    proc.popen.stdin.flush()
    wait_until(lambda: status(proc).get("channel") == 1 and status(proc).get("state") == "direct",
               20, "the client to be in channel 1")
    before = status(proc)["blocks_received"]
    wait_until(lambda: status(proc).get("blocks_received", 0) >= before + 3, 20,
               "blocks of channel 1")
    proc.popen.stdin.write(b"quit\n")
    proc.popen.stdin.close()
    assert proc.popen.wait(timeout=15) == 0
    canal1, _ = film_index(films, "canal1")
    newest = sorted(Cluster.store_of(proc).glob("*.mkv"))[-3:]
    assert all(block_digest(p.read_bytes()) in canal1 for p in newest)
    assert "switching to channel 1" in proc.log_text()


def test_a_child_that_stops_reading_is_dropped_and_its_siblings_lose_nothing(cluster, films):
    server, clients = start_tree(cluster, 2, "--balance-margin", "0")
    parent = clients[0]
    stuck_ip = "127.0.0.252"
    hello = json.dumps({"proto": "relaytv", "version": VERSION, "kind": "join", "ip": stuck_ip,
                        "port": PEER_PORT, "channel": 0, "max_children": 0}).encode()
    with socket.create_connection((parent.ip, PEER_PORT), timeout=5, source_address=(stuck_ip, 0)) as stuck:
        stuck.sendall(struct.pack(">BI", 1, len(hello)) + hello)  # joins, then never reads
        wait_until(lambda: stuck_ip in {c["ip"] for c in status(parent).get("children", [])}, 10,
                   "the stuck child to be accepted")
        before = counts(clients)
        wait_until(lambda: stuck_ip not in {c["ip"] for c in status(parent).get("children", [])},
                   20, "the stuck child to be dropped")
        wait_until(lambda: received_more(clients, before, 4), 20, "the others to keep receiving")
    assert [e["child"] for e in events(parent, "child_gone")] == [f"{stuck_ip}:{PEER_PORT}"]
    for proc in clients:
        assert_continuous(proc, films)


def test_missing_max_children_is_asked_once(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    ip = "127.0.0.251"
    argv = [cluster.python, "-m", "client", "--server", f"{server.ip}:{cluster.ports.server}", "--ip", ip,
            "--push-port", str(cluster.ports.push), "--peer-port", str(PEER_PORT),
            "--store", str(cluster.workdir / "asked"), "--no-player", "--no-menu",
            "--period", str(PERIOD)]
    proc = cluster.spawn("asked", ip, argv, stdin=subprocess.PIPE)
    proc.popen.stdin.write(b"x\n3\n")
    proc.popen.stdin.close()
    wait_until(lambda: (cluster.workdir / "asked" / "status.json").exists(), 15, "the client to start")
    assert json.loads((cluster.workdir / "asked" / "status.json").read_text())["max_children"] == 3
    assert proc.log_text().count("max children") == 2  # asked, refused "x", asked again
    proc.signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=15) == 0


def test_frozen_relay_is_detected_by_silence_and_its_children_lose_nothing(cluster, films):
    server, clients = start_tree(cluster, 5)
    statuses = tree_of(clients)
    victim = next(p for p in clients if statuses[p.ip]["depth"] == 2 and statuses[p.ip]["children"])
    orphans = [p for p in clients if p.ip in {c["ip"] for c in statuses[victim.ip]["children"]}]
    survivors = [p for p in clients if p is not victim]
    before = counts(survivors)

    victim.freeze()  # SIGSTOP: its sockets stay open, it just stops talking
    try:
        wait_until(lambda: received_more(survivors, before, 6), 30, "survivors to receive 6 more blocks")
    finally:
        victim.thaw()
    for proc in orphans:
        assert {"parent": addr(victim), "reason": "silent"} in [
            {k: e[k] for k in ("parent", "reason")} for e in events(proc, "parent_lost")], \
            f"{proc.ip} did not detect the silence"
        assert status(proc)["parent"] != {"ip": victim.ip, "port": PEER_PORT}
    for proc in survivors:
        assert_continuous(proc, films)


def test_balance_rotation_lets_every_relay_capable_client_send(cluster, films):
    """Relays hand their place to their lightest child: leaves take turns relaying."""
    server, clients = start_tree(cluster, 7, "--balance-margin", "2")
    wait_until(lambda: all(status(p).get("bytes_sent", 0) > 0 for p in clients), 90,
               "every client to have relayed at some point")
    # The tree never stops rotating: a settled moment can catch a swap that is
    # still settling a level deeper. What the rotation promises is that the tree
    # keeps coming back to a shape within one level of the best: one slot,
    # fan-out 2, 7 clients fit within depth 3, so a settled tree of depth <= 4.
    seen = []

    def shallow_settled_tree():
        statuses = settled_tree(clients)
        if statuses is not None:
            seen.append(depth_histogram(statuses))
            if max(s["depth"] for s in statuses.values()) <= 4:
                return statuses
        return None

    try:
        statuses = wait_until(shallow_settled_tree, 60, "a settled tree within depth 4")
    except TimeoutError:
        raise AssertionError(f"the tree stayed deeper than 4; last depths seen: {seen[-5:]}")
    assert sum(s["swaps"] for s in statuses.values()) >= 2
    assert all(len(s["children"]) <= 2 for s in statuses.values())
    # Honest swaps, server slot included: nobody took a partner for a liar.
    assert {p.ip: status(p)["refusals"] for p in clients if status(p)["refusals"].get("lie")} == {}
    for proc in clients:
        assert_continuous(proc, films)


def test_tree_compacts_again_after_a_direct_client_dies(cluster, films):
    """A slot the server frees is taken back by a child of a direct client; the subtree follows."""
    server, clients = start_tree(cluster, 4, "--balance-margin", "0", max_children=1, max_clients=2)
    statuses = tree_of(clients)
    victim = next(p for p in clients if statuses[p.ip]["parent"] == "server" and statuses[p.ip]["children"])
    survivors = [p for p in clients if p is not victim]
    victim.kill()

    def compact_by_climbing():
        s = settled_tree(survivors)
        return s if s and max(x["depth"] for x in s.values()) == 2 and \
            [x["parent"] for x in s.values()].count("server") == 2 and \
            sum(x["climbs"] for x in s.values()) >= 1 else None

    # The orphan reattaches at once under the other direct client's subtree (its
    # backup); the server frees the dead client's slot only after two failed sends,
    # and the other direct client's child climbs into it, its subtree following.
    wait_until(compact_by_climbing, 60, "a climb to two direct clients and depth 2")
    for proc in survivors:
        assert_continuous(proc, films)


def chain_with_newcomer(cluster, *newcomer_args):
    """A chain root -> middle -> last (K = 1), repairs served at 100 kB/s, and a newcomer."""
    server, chain = start_tree(cluster, 3, "--balance-margin", "0", "--repair-rate", "100",
                               max_children=1)
    wait_until(lambda: receiving(chain, 10), 30, "the recent windows to fill")
    newcomer = cluster.start_client(server, "--balance-margin", "0", *newcomer_args,
                                    max_children=1, period=PERIOD)
    return chain, newcomer


def repair_done(proc):
    """The client's first finished repair (its ``repair_done`` event), or None."""
    done = events(proc, "repair_done")
    return done[0] if done else None


def repair_sources(done):
    """ip -> how many blocks a finished repair fetched from it."""
    return {source.rsplit(":", 1)[0]: n for source, n in done["by_source"].items()}


def test_catch_up_fills_a_newcomer_s_buffer_from_several_peers(cluster, films):
    chain, newcomer = chain_with_newcomer(cluster, "--catch-up", "3")  # 3 s = 6 blocks
    done = wait_until(lambda: repair_done(newcomer), 30, "the catch-up to finish")
    sources = repair_sources(done)
    assert sum(sources.values()) == 6 and len(sources) == 3, done
    assert done["repaired"] == 6 and done["lost"] == 0, done
    before = status(newcomer)["blocks_received"]
    wait_until(lambda: received_more([newcomer], {newcomer.ip: before}, 3), 20, "live blocks")
    assert status(newcomer)["blocks_repaired"] == 6
    assert_continuous(newcomer, films)


def test_repair_completes_from_the_others_when_a_source_dies_mid_way(cluster, films):
    chain, newcomer = chain_with_newcomer(cluster, "--catch-up", "3")
    root, middle, last = chain
    # The newcomer fetches two blocks from each of last, middle and root, at 100 kB/s
    # (a few tenths of a second per block): kill the middle one as soon as it starts.
    wait_until(lambda: [e for e in events(newcomer, "repair_started") if e["missing"] == 6], 30,
               "the repair to start")
    middle.kill()
    done = wait_until(lambda: repair_done(newcomer), 30, "the repair to finish")
    sources = repair_sources(done)
    assert addr(middle) in [e["source"] for e in events(newcomer, "repair_source_failed")]
    assert sum(sources.values()) == 6 and done["lost"] == 0, done
    assert sources.get(middle.ip, 0) < 2, "the killed source cannot have served its whole part"
    survivors = [root, last, newcomer]
    before = counts(survivors)
    wait_until(lambda: received_more(survivors, before, 3), 20, "everyone to receive again")
    for proc in survivors:
        assert_continuous(proc, films)


def test_a_frozen_direct_client_loses_its_server_slot_and_the_tree_recovers(cluster, films):
    """SIGSTOP on the only direct client: its kernel must not keep accepting the server's blocks."""
    stats = cluster.workdir / "server-stats.json"
    server, clients = start_tree(cluster, 4, "--balance-margin", "0",
                                 server_args=("--stats", str(stats)))
    root = next(p for p in clients if status(p)["parent"] == "server")
    survivors = [p for p in clients if p is not root]
    asker = StockServer(server.ip, cluster.ports.server, "127.0.0.249")
    assert asker.clients(0) == [root.ip]
    before = counts(survivors)
    root.freeze()
    try:
        # 40 periods: far more than the few it takes, far less than the 64 blocks a
        # kernel's default queue would take for the frozen client.
        wait_until(lambda: received_more(survivors, before, 6), 40 * PERIOD,
                   "the survivors to receive again")
        listed = asker.clients(0)  # (11X) what the server serves now
    finally:
        root.thaw()
    statuses = tree_of(survivors)
    direct = [ip for ip, s in statuses.items() if s["parent"] == "server"]
    assert len(direct) == 1 and listed == direct, (listed, direct)
    assert server.stop() == 0
    channel0 = json.loads(stats.read_text())["channels"][0]
    assert channel0["removals"] >= 1 and channel0["send_failures"] >= 2, channel0


def test_a_client_that_becomes_direct_fetches_what_it_missed_from_another_direct_client(
        cluster, films):
    """An orphan with nowhere to go in the tree waits for a server slot.

    The blocks the server sent meanwhile reached its other direct client
    only (which takes no children); the orphan, once direct, fetches them
    from it before it stores the next live block.
    """
    server = cluster.start_server(max_clients=2, period=PERIOD, channels=2)
    keeper = cluster.start_client(server, "--balance-margin", "0", max_children=0, period=PERIOD)
    wait_until(lambda: status(keeper).get("state") == "direct", 20, "the keeper to be direct")
    relay = cluster.start_client(server, "--balance-margin", "0", max_children=1, period=PERIOD)
    wait_until(lambda: status(relay).get("state") == "direct", 20, "the relay to be direct")
    orphan = cluster.start_client(server, "--balance-margin", "0", max_children=1, period=PERIOD)
    wait_until(lambda: (status(orphan).get("parent") or {}).get("ip") == relay.ip
               if isinstance(status(orphan).get("parent"), dict) else False,
               20, "the orphan-to-be to attach under the relay")
    wait_until(lambda: receiving([orphan], 3), 20, "the orphan-to-be to receive")
    relay.freeze()
    try:
        # Silence, then no free place anywhere until the server drops the frozen relay.
        wait_until(lambda: status(orphan).get("state") == "direct", 40 * PERIOD,
                   "the orphan to become a direct client")
        before = counts([orphan])
        wait_until(lambda: received_more([orphan], before, 4), 20, "4 more blocks")
    finally:
        relay.kill()
    assert_continuous(orphan, films)
    gaps = events(orphan, "gap")
    assert [e["kind"] for e in gaps] == ["server"] and gaps[0]["count"] >= 1, gaps
    assert addr(keeper) in gaps[0]["sources"], gaps
    assert status(orphan)["blocks_repaired"] >= 1


def test_a_rejoiner_whose_new_parent_cannot_place_it_fetches_the_gap_further_up(
        tmp_path, long_film):
    """A parent whose recent window is too short to find the rejoiner's latest block.

    The relay keeps one second of blocks (``--window 1``). Its child is
    frozen until the relay has dropped it and stored three more blocks;
    thawed, the child rejoins the relay, which can only resume it live, so
    the child asks the other direct client for what lies between. (A film
    of 30 blocks: in the short ones the child's latest blocks of the
    previous lap would match.)
    """
    with Cluster(tmp_path, long_film) as cluster:
        server = cluster.start_server(max_clients=2, period=PERIOD, channels=1)
        keeper = cluster.start_client(server, "--balance-margin", "0", max_children=0,
                                      period=PERIOD)
        wait_until(lambda: status(keeper).get("state") == "direct", 20, "the keeper to be direct")
        relay = cluster.start_client(server, "--balance-margin", "0", "--window", "1",
                                     max_children=1, period=PERIOD)
        wait_until(lambda: status(relay).get("state") == "direct", 20, "the relay to be direct")
        child = cluster.start_client(server, "--balance-margin", "0", max_children=1,
                                     period=PERIOD)
        wait_until(lambda: isinstance(status(child).get("parent"), dict), 20,
                   "the child to attach")
        assert status(child)["parent"]["ip"] == relay.ip
        wait_until(lambda: receiving([child], 3), 20, "the child to receive")
        child.freeze()
        try:
            wait_until(lambda: addr(child) in [e["child"] for e in events(relay, "child_gone")],
                       20, "the relay to drop its frozen child")
            before = counts([relay])
            wait_until(lambda: received_more([relay], before, 3), 20, "3 more blocks at the relay")
        finally:
            child.thaw()
        before = counts([child])
        wait_until(lambda: received_more([child], before, 8), 20, "8 more blocks at the child")
        assert_continuous(child, long_film)
        gaps = events(child, "gap")
        assert [e["kind"] for e in gaps] == ["window"] and gaps[0]["count"] >= 1, gaps
        assert addr(keeper) in gaps[0]["sources"], gaps


def test_the_slot_of_a_frozen_direct_client_is_taken_back_and_nobody_loses_a_block(
        tmp_path, long_film):
    """Two direct clients, each with one child; one direct client freezes.

    Its orphan rejoins under the other branch and asks the server for the
    freed slot; the tree hangs from two direct clients again, and every
    survivor stored the film without a hole. (The 30-block film: the orphan
    misses more blocks than a 6-block film has.)
    """
    with Cluster(tmp_path, long_film) as cluster:
        server, clients = start_tree(cluster, 4, "--balance-margin", "0", max_children=1,
                                     max_clients=2, channels=1)
        statuses = tree_of(clients)
        victim = next(p for p in clients
                      if statuses[p.ip]["parent"] == "server" and statuses[p.ip]["children"])
        survivors = [p for p in clients if p is not victim]
        victim.freeze()
        try:
            def two_direct_clients_again():
                s = settled_tree(survivors)
                return s and [x["parent"] for x in s.values()].count("server") == 2
            wait_until(two_direct_clients_again, 60, "two direct clients again")
            before = counts(survivors)
            wait_until(lambda: received_more(survivors, before, 4), 20, "4 more blocks everywhere")
        finally:
            victim.kill()
        for proc in survivors:
            assert_continuous(proc, long_film)


def test_a_frozen_parent_is_found_within_about_a_second_at_a_long_period(cluster, films):
    """A chain root -> relay -> leaf with a 3 s period; the relay freezes between blocks.

    Its keepalives stop: the leaf must count it lost by silence after the
    second the client reports (status.json), not after two periods (6 s)
    as before, and take its place under the root without a hole; the root,
    which no longer hears the relay either, hands the place over at once.
    """
    period = 3.0
    server = cluster.start_server(max_clients=1, period=period, channels=1)
    chain = []
    for _ in range(3):
        proc = cluster.start_client(server, "--balance-margin", "0", max_children=1,
                                    period=period)
        wait_until(lambda: status(proc).get("state") in ("direct", "attached"), 30,
                   f"{proc.ip} to find a place")
        chain.append(proc)
    root, relay, leaf = chain
    wait_until(lambda: receiving(chain, 2), 30, "the chain to receive")
    assert status(leaf)["parent"] == {"ip": relay.ip, "port": PEER_PORT}
    bound = status(leaf)["parent_silence"]
    assert bound <= 1.0, f"the leaf counts a parent lost only after {bound} s of silence"
    # Just after a block: the next one is a whole period away, only keepalives are due.
    before = counts([leaf])
    wait_until(lambda: received_more([leaf], before, 1), 3 * period, "a block at the leaf")
    frozen_at = time.time()
    relay.freeze()
    try:
        wait_until(lambda: status(leaf).get("rejoins", 0) >= 1, 6 * period,
                   "the leaf to leave its frozen parent")
        before = counts([leaf])
        wait_until(lambda: received_more([leaf], before, 2), 6 * period,
                   "the leaf to receive under its new parent")
    finally:
        relay.thaw()
    assert status(leaf)["parent"] == {"ip": root.ip, "port": PEER_PORT}
    # The root's only place was the frozen relay's: it went to the leaf on the leaf's word
    # and the root's own silence (Hello.lost), not after the root gave up on the link.
    assert status(root)["silent_children_freed"] == 1
    assert leaf.stop() == 0
    rejoin = json.loads((Cluster.store_of(leaf) / "stats.json").read_text())["rejoins"][0]
    assert rejoin["cause"].endswith("lost: silent"), rejoin
    detected = rejoin["at"] - frozen_at
    print(f"frozen parent detected after {detected:.2f} s (bound {bound} s), "
          f"receiving again {rejoin['took']} s later; depth {rejoin['depth_before']} -> "
          f"{rejoin['depth_after']}")
    # Generous (a loaded machine: 3 s over the 1 s bound), and still well short of
    # the two periods (6 s) silence used to take.
    assert detected < period + 1.0, f"detected only after {detected:.2f} s"
    assert (rejoin["depth_before"], rejoin["depth_after"]) == (3, 2), rejoin
    assert_continuous(leaf, films)
