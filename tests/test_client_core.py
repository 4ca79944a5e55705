"""Several real client cores (client.core) wired through a simulated network and stock server.

Each test runs seconds of simulated time in milliseconds (bench.simnet: a
discrete-event clock, per-client latency and upload, the stock server's
rules from server.channel) and asserts the exact outcome: who is whose
parent, at which depth, and the sequence of film blocks each client stored.
"""

import random

import pytest

from bench.metrics import Epoch, slot_of
from bench.simnet import Film, World
from client import inputs
from client.commands import Send
from client.core import SERVER, CoreConfig
from client.peerproto import Swap, SwapAnswer

FILM = 30


def world_of(n, k=2, slots=1, latency=0.01, balance=0.0, channels=1, spacing=0.5, films=1):
    """``n`` clients of fan-out ``k`` joining ``spacing`` s apart; no balance swaps unless asked."""
    world = World([Film.synthetic(FILM, 2000, seed=f) for f in range(films)], slots=slots,
                  channels=channels)
    clients = []
    for i in range(n):
        config = CoreConfig(0, k, balance_blocks=balance)
        clients.append(world.add_client(f"10.0.0.{i + 1}", config, latency=latency, seed=i))
        world.run_until(world.now + spacing)
    return world, clients


def parent_of(client):
    parent = client.core.parent
    return parent if parent in (SERVER, None) else parent.ip


def tree_of(clients):
    """{ip: (parent ip or "server", depth)} of the clients still running."""
    return {c.ip: (parent_of(c), c.core.depth) for c in clients if c.alive}


def holes_and_duplicates(client):
    """Film blocks missing or repeated in what the client stored (the film loops)."""
    seq = [i for i, _ in client.stored]
    return [(a, b) for a, b in zip(seq, seq[1:]) if b != (a + 1) % FILM]


def slots_of(client):
    """The server rounds of the blocks a client stored, in store order (bench.metrics)."""
    return [slot_of(i, t, FILM, 2.0, [Epoch(0.0)]) for i, t in client.stored]


def channel_holes(client, clients):
    """Rounds some client stored that ``client`` lacks between its first and last block, and
    rounds it stored twice or out of order. A round no client stored (the server pushed it
    to a direct client that was dead or frozen, and to no one else) is no client's hole."""
    everyone = {s for c in clients for s in slots_of(c)}
    mine = slots_of(client)
    if not mine:
        return [], []
    missing = sorted(s for s in everyone if mine[0] < s < mine[-1] and s not in set(mine))
    disorder = [(a, b) for a, b in zip(mine, mine[1:]) if b <= a]
    return missing, disorder


def check_tree(clients):
    """No loop, nobody over its K, every survivor without a hole or a duplicate (the channel's)."""
    check_invariants(clients, holes=False)
    for c in clients:
        if c.alive:
            assert channel_holes(c, clients.values() if isinstance(clients, dict) else clients) \
                == ([], []), c.ip


def check_invariants(clients, holes=True):
    """No loop, nobody over its K, no hole and no duplicate in what each survivor stored."""
    by_ip = {c.ip: c for c in clients if c.alive}
    for c in by_ip.values():
        seen, node = {c.ip}, c
        while isinstance(node.core.parent, tuple) or hasattr(node.core.parent, "ip"):
            up = node.core.parent.ip
            assert up not in seen, f"loop through {c.ip}"
            seen.add(up)
            if up not in by_ip:
                break
            node = by_ip[up]
        assert len(c.core.relay.children) <= c.config.max_children, c.ip
        if holes:
            assert holes_and_duplicates(c) == [], c.ip


def test_join_under_a_full_server_fills_the_tree_level_by_level():
    world, clients = world_of(7)
    world.run_until(30)
    assert tree_of(clients) == {
        "10.0.0.1": ("server", 1),
        "10.0.0.2": ("10.0.0.1", 2), "10.0.0.5": ("10.0.0.1", 2),
        "10.0.0.3": ("10.0.0.2", 3), "10.0.0.7": ("10.0.0.2", 3),
        "10.0.0.4": ("10.0.0.5", 3), "10.0.0.6": ("10.0.0.5", 3)}
    # Unmeasured relays offer one place on trial (client.capacity): 10.0.0.4 came below
    # 10.0.0.3, then climbed once 10.0.0.5's uplink was measured.
    assert [c.core.counters["climbs"] for c in clients] == [0, 0, 0, 1, 0, 0, 0]
    check_invariants(clients)
    # The server was full for all but the first: each of the others asked it once.
    joins = [ip for _, ip, code in world.server.requests if code == "10"]
    assert joins.count("10.0.0.1") == 1


def subtree_rejoin(fate):
    world, clients = world_of(7)
    world.run_until(30)
    victim = next(c for c in clients if c.ip == "10.0.0.2")
    getattr(victim, fate)()
    world.run_until(50)
    return world, clients


def test_the_orphans_of_a_killed_relay_rejoin_and_repair_every_block():
    world, clients = subtree_rejoin("kill")
    assert tree_of(clients) == {
        "10.0.0.1": ("server", 1),
        "10.0.0.5": ("10.0.0.1", 2), "10.0.0.7": ("10.0.0.1", 2),
        "10.0.0.4": ("10.0.0.5", 3), "10.0.0.6": ("10.0.0.5", 3),
        "10.0.0.3": ("10.0.0.7", 3)}
    check_invariants(clients)
    for ip in ("10.0.0.3", "10.0.0.7"):
        client = world.clients[ip]
        assert world.now - client.stored[-1][1] < 2.5 and len(client.stored) >= 22
        assert client.core.counters["blocks_lost"] == 0


@pytest.mark.parametrize("fate", ["kill", "freeze"])
def test_an_orphan_rejoins_with_its_subtree(fate):
    world, clients = world_of(15)
    world.run_until(40)
    victim = next(c for c in clients if c.core.depth == 2)
    orphans = [world.clients[a.ip] for a in victim.core.relay.children]
    below = {o.ip: [world.clients[a.ip] for a in o.core.relay.children] for o in orphans}
    assert all(below.values())  # each orphan has children of its own
    searches = {g.ip: len(g.core.searches) for kids in below.values() for g in kids}
    getattr(victim, fate)()
    world.run_until(60)
    for orphan in orphans:
        assert orphan.core.state == "attached" and len(orphan.core.searches) == 2
        for grandchild in below[orphan.ip]:
            # Its parent took it along: it never searched (it may have climbed since).
            assert len(grandchild.core.searches) == searches[grandchild.ip]
            assert grandchild.stored[-1][1] > 58
    check_invariants(clients)


def test_the_orphans_of_a_frozen_relay_find_out_by_its_silence_and_rejoin():
    world, clients = subtree_rejoin("freeze")
    # 10.0.0.6 climbed into the slot the frozen relay had at 10.0.0.1; 10.0.0.3 took the
    # backup place its parent had advised, 10.0.0.7 searched.
    assert tree_of(clients) == {
        "10.0.0.1": ("server", 1),
        "10.0.0.5": ("10.0.0.1", 2), "10.0.0.6": ("10.0.0.1", 2),
        "10.0.0.4": ("10.0.0.5", 3), "10.0.0.7": ("10.0.0.6", 3),
        "10.0.0.3": ("10.0.0.4", 4)}
    check_invariants(clients)
    assert [(p.cause, p.how) for p in world.clients["10.0.0.3"].placed[1:]] == [
        ("parent 10.0.0.2:9092 lost: silent", "backup")]
    assert [(p.cause, p.how) for p in world.clients["10.0.0.7"].placed[1:]] == [
        ("parent 10.0.0.2:9092 lost: silent", "search")]


def test_a_relay_that_leaves_sends_its_children_to_its_own_parent():
    world, clients = subtree_rejoin("leave")
    assert tree_of(clients) == {
        "10.0.0.1": ("server", 1),
        "10.0.0.5": ("10.0.0.1", 2), "10.0.0.3": ("10.0.0.1", 2),
        "10.0.0.4": ("10.0.0.5", 3), "10.0.0.6": ("10.0.0.5", 3),
        "10.0.0.7": ("10.0.0.3", 3)}
    # Move named the leaver's parent: the first child insisted there and got the place.
    assert [(p.cause, p.how) for p in world.clients["10.0.0.3"].placed[1:]] == [
        ("parent 10.0.0.2:9092 is leaving", "insisted")]
    check_invariants(clients)
    # It was not a direct client: it sent the server no 12X.
    assert "12" not in [code for _, ip, code in world.server.requests if ip == "10.0.0.2"]


def test_the_balance_swap_moves_upload_around_and_keeps_every_block():
    world, clients = world_of(3, balance=8.0)
    world.run_until(120)
    swaps = sum(c.core.counters["swaps"] for c in clients)
    assert swaps >= 2
    check_invariants(clients)
    sent = sorted(c.core.relay.bytes_sent for c in clients)
    assert sent[0] > 0  # every client relayed for a while


def test_a_stronger_uplink_takes_a_weaker_ones_place_and_keeps_its_children():
    # Blocks of 1 MB every 2 s (4 Mbit/s): an 8 Mbit/s uplink feeds one child, a 20 Mbit/s
    # one three, a 2 Mbit/s one nobody. The 8 Mbit/s client comes first and takes the only
    # server slot; the tree is deep until a stronger uplink swaps its way up (client.tree).
    world = World([Film.synthetic(FILM, 1_000_000, seed=0)], slots=1)
    uplinks = [8, 20, 20, 2, 2, 8, 20, 2]
    clients = []
    for i, mbit in enumerate(uplinks):
        clients.append(world.add_client(f"10.0.0.{i + 1}", CoreConfig(0, 3, balance_blocks=8.0),
                                        upload_mbit=mbit, seed=i))
        world.run_until(world.now + 0.5)
    world.run_until(120)
    mbit_of = {c.ip: m for c, m in zip(clients, uplinks)}
    tree = tree_of(clients)
    root = next(ip for ip, (parent, _) in tree.items() if parent == "server")
    assert mbit_of[root] == 20
    # The best these uplinks allow: the root's three places, then 3 + 3 + 1 below them.
    assert max(depth for _, depth in tree.values()) == 3
    for c in clients:
        assert len(c.core.relay.children) <= {2: 0, 8: 1, 20: 3}[mbit_of[c.ip]], c.ip
    check_invariants(clients)


def test_a_child_busy_repairing_declines_a_swap_offer():
    world, clients = world_of(2)
    world.run_until(10)
    late = world.add_client("10.0.0.9", CoreConfig(0, 2, catch_up_blocks=4), latency=0.01)
    assert world.run_until_true(lambda: late.core.repair is not None, world.now + 5)
    link = late.core.parent_link
    offer = Swap(None, (), (late.core.parent,), server=True)
    commands = late.core.handle(inputs.Received(world.now, link, offer))
    assert [c.message for c in commands if isinstance(c, Send)] == [SwapAnswer(False)]
    assert late.core.parent_link == link


def test_an_orphan_of_a_dead_direct_client_takes_its_server_slot_back():
    world, clients = world_of(3, slots=2)
    world.run_until(20)
    assert tree_of(clients) == {"10.0.0.1": ("server", 1), "10.0.0.2": ("server", 1),
                                "10.0.0.3": ("10.0.0.1", 2)}
    world.clients["10.0.0.1"].kill()
    orphan = world.clients["10.0.0.3"]
    # The server drops the dead client after its pushes of 22 s and 24 s fail; the orphan,
    # watching for the slot (client.moves), asks right after the next block, not at its
    # next climb (which would be at 30 s).
    assert world.run_until_true(lambda: orphan.core.state == "direct", 50)
    assert round(world.now, 3) == 26.042
    world.run_until(50)
    assert tree_of(clients) == {"10.0.0.2": ("server", 1), "10.0.0.3": ("server", 1)}
    check_invariants(clients)


def test_after_a_server_restart_the_direct_client_joins_again_and_the_tree_stays():
    world, clients = world_of(3)
    world.run_until(20)
    before = tree_of(clients)
    world.server.start()
    world.run_until(40)
    assert tree_of(clients) == before
    # The new server starts its film again; the direct client finds out after the server's
    # silence (6 s) and is back for block 4: one jump, the same for all.
    for c in clients:
        seq = [i for i, _ in c.stored]
        assert [(a, b) for a, b in zip(seq, seq[1:]) if b != (a + 1) % FILM] == [(10, 4)]


def test_a_channel_switch_hands_the_children_over_and_stores_the_other_film():
    world, clients = world_of(3, channels=2, films=2)
    world.run_until(20)
    switcher = world.clients["10.0.0.1"]
    switcher.handle(inputs.SwitchChannel(world.now, 1))
    world.run_until(40)
    assert tree_of(clients) == {"10.0.0.1": ("server", 1), "10.0.0.2": ("server", 1),
                                "10.0.0.3": ("10.0.0.2", 2)}
    # (stored blocks are named by the film of the channel stored in: None is another film's)
    after = [i for i, t in switcher.stored if t > 20]
    assert switcher.core.channel == 1 and len(after) >= 9 and None not in after
    assert [b for a, b in zip(after, after[1:]) if b != (a + 1) % FILM] == []


def test_a_repair_whose_source_dies_takes_its_blocks_from_another():
    world, clients = world_of(7)
    world.run_until(30)
    late = world.add_client("10.0.0.9", CoreConfig(0, 2, catch_up_blocks=6), latency=0.01)
    assert world.run_until_true(lambda: late.core.repair is not None, world.now + 5)
    # Six blocks to catch up on, in three parts: the parent and its two ancestors.
    parts = {v[0].ip: len(v[1]) for v in late.core.repair.links.values()}
    assert parts == {"10.0.0.4": 2, "10.0.0.5": 2, "10.0.0.1": 2}
    killed_at = world.now
    world.clients["10.0.0.5"].kill()  # the grandparent: the parent stays, and rejoins below
    world.run_until(50)
    # Its part went to the others as soon as its link ended (not after a stall of 2 s).
    assert [round(t - killed_at, 3) for _, t in late.stored[:6]] == [
        0.032, 0.034, 0.042, 0.042, 0.042, 0.042]
    seq = [i for i, _ in late.stored]
    assert seq == list(range(10, 25)) and holes_and_duplicates(late) == []
    assert late.core.counters["blocks_repaired"] == 6 and late.core.counters["blocks_lost"] == 0


@pytest.mark.parametrize("seed", range(200))
def test_random_churn_keeps_the_tree_a_tree_and_every_survivor_whole(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 10)
    world = World([Film.synthetic(FILM, 2000, seed=seed)], slots=rng.randint(1, 2))
    clients = []
    for i in range(n):
        config = CoreConfig(0, rng.randint(1, 3), balance_blocks=rng.choice([0.0, 8.0]))
        clients.append(world.add_client(f"10.0.{seed}.{i + 1}", config,
                                        latency=rng.uniform(0.001, 0.05), seed=seed * 100 + i))
        world.run_until(world.now + rng.uniform(0, 1))
    for _ in range(rng.randint(1, 3)):
        world.run_until(world.now + rng.uniform(5, 15))
        victim = rng.choice([c for c in clients if c.alive])
        getattr(victim, rng.choice(["kill", "freeze", "leave"]))()
        if not any(c.alive for c in clients):
            return
    world.run_until(world.now + 30)
    check_tree(clients)
    for c in clients:  # (a swap may be under way at the end: a moment without a parent)
        if c.alive:
            assert c.stored and world.now - c.stored[-1][1] < 3 * 2.0, c.ip


def chain_of_three(block_bytes, length=3):
    """server -> A -> B -> C (one child each), 16 Mbit/s uplinks, blocks of ``block_bytes``;
    ``length`` clients in all."""
    world = World([Film.synthetic(FILM, block_bytes, seed=0)], slots=1)
    clients = []
    for i in range(length):
        config = CoreConfig(0, 1, balance_blocks=0.0)
        clients.append(world.add_client(f"10.0.0.{i + 1}", config, upload_mbit=16.0,
                                        latency=0.005, seed=i))
        world.run_until(world.now + 3.0)
    return world, clients


def test_a_relay_forwards_each_part_of_a_block_as_it_comes():
    """1 MB blocks take 0.5 s on a 16 Mbit/s uplink: a relay that waited for a whole block
    would put C half a second behind B; with the parts forwarded as they come, C has each
    block a part's transfer after B."""
    world, (a, b, c) = chain_of_three(1_000_000)
    world.run_until(40)
    assert tree_of([a, b, c]) == {"10.0.0.1": ("server", 1), "10.0.0.2": ("10.0.0.1", 2),
                                  "10.0.0.3": ("10.0.0.2", 3)}
    at_b = {i: t for i, t in b.stored}
    behind = [t - at_b[i] for i, t in c.stored[-10:]]
    assert len(behind) == 10 and max(behind) < 0.1, behind
    check_invariants([a, b, c])


def test_a_block_cut_short_by_its_relays_death_is_discarded_below_and_repaired():
    world, (a, b, c) = chain_of_three(1_000_000)
    world.run_until(19.9)                     # the server pushes a block every 2 s from 0
    stored = len(c.stored)
    world.run_until(20.3)
    assert len(c.stored) == stored and c.core.incoming.open       # parts of it in, not all
    b.kill()
    world.run_until(40)
    assert tree_of([a, b, c]) == {"10.0.0.1": ("server", 1), "10.0.0.3": ("10.0.0.1", 2)}
    check_invariants([a, c])
    assert c.core.counters["blocks_lost"] == 0


def test_a_block_cut_short_by_its_relays_death_is_finished_below_from_what_came():
    """B dies in the middle of a block: C keeps what came of it and so does D below C; C,
    placed under A, fetches the rest only, and D gets the bytes it lacked, no repair."""
    world, (a, b, c, d) = chain_of_three(1_000_000, length=4)
    world.run_until(19.9)
    stored = len(c.stored)
    world.run_until(20.3)
    assert len(c.stored) == stored and c.core.incoming.open and d.core.incoming.open
    b.kill()
    world.run_until(40)
    assert tree_of([a, c, d]) == {"10.0.0.1": ("server", 1), "10.0.0.3": ("10.0.0.1", 2),
                                  "10.0.0.4": ("10.0.0.3", 3)}
    check_invariants([a, c, d])
    assert c.core.counters["blocks_finished"] == 1 and c.core.counters["blocks_lost"] == 0
    assert d.core.counters["blocks_repaired"] == 0 and d.core.counters["blocks_lost"] == 0
    at_c = {i: t for i, t in c.stored}
    cut = next(i for i, t in c.stored if t > 20.3)
    assert 0 <= dict(d.stored)[cut] - at_c[cut] < 0.3      # its rest, not all of it again


def test_an_uplink_that_cannot_carry_the_stream_gives_its_child_and_its_server_slot_up():
    """W (2 Mbit/s) took the one server slot; the stream is 4 Mbit/s (1 MB blocks every
    2 s). Its child S (20 Mbit/s, on trial) is given up at once, and W, which then feeds
    nobody and had to turn S away, gives the slot up: S takes it, W hangs below S."""
    world = World([Film.synthetic(FILM, 1_000_000, seed=0)], slots=1)
    w = world.add_client("10.0.0.1", CoreConfig(0, 2, balance_blocks=0.0), upload_mbit=2.0,
                         latency=0.005, seed=1)
    world.run_until(3.0)
    s = world.add_client("10.0.0.2", CoreConfig(0, 2, balance_blocks=0.0), upload_mbit=20.0,
                         latency=0.005, seed=2)
    world.run_until(60)
    assert tree_of([w, s]) == {"10.0.0.2": ("server", 1), "10.0.0.1": ("10.0.0.2", 2)}
    assert w.core.counters["children_moved"] == 1
    assert [p.how for p in w.placed] == ["server", "search"]      # left the slot, then below S
    assert [p.how for p in s.placed] == ["search", "server"]
    for client in (w, s):                     # from its place on: every block, in order
        since = next(p.started for p in reversed(client.placed)) + 6.0
        late = [i for i, t in client.stored if t > since]
        assert len(late) >= 20 and late == [(late[0] + n) % FILM for n in range(len(late))]
    assert {i for i, t in w.stored if t > 20} <= {i for i, _ in s.stored}
