"""The web view's pure parts: Matroska headers, HTTP heads, the HLS playlist, events, tree nodes.

No sockets, no sleeps: the remuxer runs with a fake ffmpeg, the ledger with an
injected clock. The blocks are real ones cut by separa.py (the ``films`` fixture).
"""

from __future__ import annotations

import random
import subprocess
import threading

import pytest

from client import httpwire
from client.httpwire import HttpError
from player.mkv import read_block_info
from client.peerproto import Addr, PeerProtocolError
from client.remux import QUEUE_LIMIT, Remuxer, remux_command
from client.treenode import TreeNode, wire_nodes
from client.treeview import SubtreeLedger, merge_tree, node_state
from client.webfeed import BlockFeed, live_edge_json, status_events
from player.live import LiveEdge


def blocks_of(films, name="canal0"):
    return [p.read_bytes() for p in sorted(films.glob(f"{name}_*.mkv"))]


# -- Matroska headers -----------------------------------------------------------------------

def test_block_info_reads_duration_codecs_and_size(films):
    info = read_block_info(blocks_of(films)[1])
    assert 1.9 < info.duration < 2.2
    assert info.codecs[0].startswith("avc1.") and info.codecs[1] == "mp4a.40.2"
    assert (info.width, info.height) == (320, 180)
    assert info.mime == f'video/mp4; codecs="{info.codecs[0]}, mp4a.40.2"'


@pytest.mark.parametrize("garbage", [b"", b"\x1a\x45\xdf\xa3", b"\x00" * 100, b"\xff" * 5000])
def test_block_info_of_garbage_is_empty_not_an_error(garbage):
    info = read_block_info(garbage)
    assert info.duration is None and info.mime is None


def test_block_info_of_a_truncated_block_keeps_what_it_read(films):
    data = blocks_of(films)[0]
    for cut in (10, 40, 200, 1000):
        read_block_info(data[:cut])   # never raises


# -- HTTP heads --------------------------------------------------------------------------------

def test_a_plain_get_parses():
    head = b"GET /api/tree?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    assert httpwire.head_end(head) == len(head)
    request = httpwire.parse_head(head)
    assert (request.method, request.path, request.query) == ("GET", "/api/tree", "x=1")
    assert request.headers["host"] == "a"


def test_an_incomplete_head_waits_and_an_oversized_one_is_refused():
    assert httpwire.head_end(b"GET / HTTP/1.1\r\n") == -1
    with pytest.raises(HttpError) as e:
        httpwire.head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * httpwire.MAX_HEAD)
    assert e.value.status == 431


@pytest.mark.parametrize("head, status", [
    (b"POST / HTTP/1.1\r\n\r\n", 405),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
])
def test_bad_heads_are_refused_with_their_status(head, status):
    with pytest.raises(HttpError) as e:
        httpwire.parse_head(head)
    assert e.value.status == status


def test_responses_close_and_say_their_length():
    data = httpwire.response(200, b"hello", "text/plain")
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == b"hello" and b"Content-Length: 5" in head and b"Connection: close" in head
    assert httpwire.response(200, b"hello", head_only=True).endswith(b"\r\n\r\n")
    assert httpwire.sse_event("block", '{"a":1}', 7) == b'id: 7\nevent: block\ndata: {"a":1}\n\n'


# -- the block feed and the playlist ---------------------------------------------------------------

def test_playlist_has_real_durations_and_continuous_offsets(films):
    feed = BlockFeed(8)
    for i, data in enumerate(blocks_of(films)):
        feed.add(data, 1000.0 + i)
    blocks = feed.latest(5)
    for a, b in zip(blocks, blocks[1:]):
        assert b.ts_offset == pytest.approx(a.ts_offset + a.duration)
    text = feed.playlist()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert f"#EXT-X-MEDIA-SEQUENCE:{blocks[0].number}" in lines
    extinf = [float(l.split(":")[1].rstrip(",")) for l in lines if l.startswith("#EXTINF:")]
    assert extinf == [pytest.approx(b.duration, abs=0.001) for b in blocks]
    assert [l for l in lines if l.startswith("/seg/")] == [f"/seg/{b.number}.ts" for b in blocks]
    assert "#EXT-X-DISCONTINUITY" not in lines
    assert feed.get(blocks[0].number) is blocks[0] and feed.get(10_000) is None


def test_a_format_change_is_a_discontinuity_counted_after_it_leaves(films):
    a, b = blocks_of(films, "canal0"), blocks_of(films, "canal1")
    feed = BlockFeed(5)
    # canal1 is the same size: fake a format change with a block of garbage (no codecs).
    feed.add(a[0], 1.0)
    changed = feed.add(b"\x00" * 50, 2.0)
    assert changed.discontinuity
    for i in range(3):
        feed.add(a[i], 3.0 + i)
    assert feed.playlist().count("#EXT-X-DISCONTINUITY\n") == 2  # into garbage and out again
    for i in range(4):
        feed.add(b[i], 10.0 + i)
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:2" in feed.playlist()


# -- events from snapshots ------------------------------------------------------------------------

def snap(**changes):
    base = {"parent": {"ip": "127.0.0.2", "port": 9092}, "children": [], "repairing": False,
            "blocks_repaired": 0, "blocks_lost": 0, "swaps": 0, "state": "attached", "depth": 2}
    return {**base, **changes}


def test_events_between_snapshots():
    old = snap(children=[{"ip": "127.0.0.5", "port": 9092}])
    new = snap(parent={"ip": "127.0.0.3", "port": 9092}, depth=3,
               children=[{"ip": "127.0.0.6", "port": 9092}], repairing=True)
    names = [name for name, _ in status_events(old, new)]
    assert names == ["parent", "child_joined", "child_left", "repair_started"]
    ended = status_events(new, snap(blocks_repaired=3, parent=new["parent"], children=new["children"]))
    assert ended == [("repair_ended", {"blocks_fetched": 3, "blocks_lost": 0})]
    quick = status_events(snap(), snap(blocks_repaired=2, swaps=1))
    assert [n for n, _ in quick] == ["repair_started", "repair_ended", "swap"]
    assert status_events(None, new) == [] and status_events(new, new) == []


def player_snap(behind, rate, stale=False):
    return snap(behind_live_s=behind, play_rate=rate,
                player=None if behind is None else {"stale": stale})


def test_the_player_s_behind_live_is_pushed_when_it_moves_a_tenth_or_the_rate_changes():
    assert status_events(player_snap(3.21, 1.0), player_snap(3.24, 1.0)) == []
    assert status_events(player_snap(3.21, 1.0), player_snap(3.36, 1.0)) == [
        ("behind_live", {"behind_live_s": 3.4, "play_rate": 1.0, "stale": False})]
    assert [n for n, _ in status_events(player_snap(3.2, 1.0), player_snap(3.2, 1.02))] == ["behind_live"]
    assert status_events(player_snap(3.2, 1.0), player_snap(3.2, 1.0, stale=True))[0][1]["stale"]
    # A client without a player: nothing to push, ever; its first player state is pushed.
    assert status_events(player_snap(None, None), player_snap(None, None)) == []
    assert status_events(player_snap(None, None), player_snap(2.0, 1.0)) == [
        ("behind_live", {"behind_live_s": 2.0, "play_rate": 1.0, "stale": False})]


def test_the_page_s_rule_is_the_player_s_live_edge():
    rule = live_edge_json(6.0)
    edge = LiveEdge(max_behind=6.0)
    assert rule["max_behind_s"] == 6.0 and rule["max_rate"] == edge.max_rate == 1.4
    assert rule["slew_per_s"] == edge.slew == 0.1
    assert rule["speed_up_from_s"] == edge.speed_up_from == 3.0
    assert rule["full_speed_at_s"] == edge.full_speed_at == 3.75
    assert rule["skip_behind_s"] == 18.0 and rule["resume_behind_s"] == 3.0
    assert rule["start_blocks"] == 2 and rule["start_timeout_s"] == 5.0
    assert live_edge_json(0) is None   # --max-behind 0: no control, in the player or the page


# -- tree nodes -------------------------------------------------------------------------------

def node(n, parent=None, state="free", depth=1):
    return TreeNode(Addr(f"127.0.0.{n}", 9092), Addr(f"127.0.0.{parent}", 9092) if parent else None,
                    parent is None, depth, 1, 2, 100, 200, 50, 0, state)


def test_tree_nodes_round_trip_and_bad_ones_are_refused():
    nodes = (node(2), node(3, 2, "leaf", 2))
    assert wire_nodes([n.to_wire() for n in nodes]) == nodes
    good = node(2).to_wire()
    for bad in ([*good[:12]], [*good[:12], 99], ["x", *good[1:]], [*good[:5], -1, *good[6:]],
                [*good[:8], "many", *good[9:]]):
        with pytest.raises(PeerProtocolError):
            wire_nodes([bad])
    with pytest.raises(PeerProtocolError):
        wire_nodes([good] * 10_000)
    assert node(3, 2).to_json()["parent"] == "127.0.0.2:9092" and node(2).to_json()["parent"] == "server"


def test_node_state_colours():
    s = {"state": "attached", "repairing": False, "max_children": 2, "children": [], "rejoins": 0}
    assert node_state(s, False) == "free"
    assert node_state({**s, "children": [1, 2]}, False) == "full"
    assert node_state({**s, "max_children": 0}, False) == "leaf"
    assert node_state({**s, "repairing": True}, False) == "repairing"
    assert node_state(s, True) == "stalled"
    assert node_state({**s, "state": "orphaned", "rejoins": 1}, False) == "repairing"


def test_merge_keeps_the_first_answer_for_each_client():
    fresh, stale = node(3, 4, "free", 3), node(3, 2, "stalled", 2)
    merged = merge_tree([[fresh], [node(2), stale, node(4, 2, depth=2)]])
    assert [str(n.addr) for n in merged] == ["127.0.0.2:9092", "127.0.0.4:9092", "127.0.0.3:9092"]
    assert fresh in merged and stale not in merged


def test_ledger_reports_the_subtree_once_a_period_or_on_a_change():
    now = [0.0]
    ledger = SubtreeLedger(2.0, clock=lambda: now[0], wall=lambda: 100.0)
    snapshot = {"ip": "127.0.0.2", "peer_port": 9092, "parent": "server", "depth": 1,
                "children": [{"ip": "127.0.0.3", "port": 9092}], "max_children": 2,
                "bytes_sent": 0, "bytes_received": 10, "rejoins": 0, "blocks_repaired": 0,
                "state": "direct", "repairing": False, "last_block_at": 99.5}
    assert ledger.child_reported(Addr("127.0.0.3", 9092), (node(3, 2, "leaf", 2),))
    assert not ledger.child_reported(Addr("127.0.0.3", 9092), (node(3, 2, "leaf", 2),))  # same
    first = ledger.for_report(snapshot)
    assert [str(n.addr) for n in first] == ["127.0.0.2:9092", "127.0.0.3:9092"]
    now[0] = 1.0
    assert ledger.for_report(snapshot) == ()           # nothing changed, not a period yet
    assert ledger.child_reported(Addr("127.0.0.3", 9092), (node(3, 2, "repairing", 2),))
    assert not ledger.child_reported(Addr("127.0.0.3", 9092), (node(3, 2, "stalled", 2),))  # too soon
    assert ledger.for_report(snapshot)[1].state == "stalled"
    now[0] = 4.0
    assert ledger.for_report({**snapshot, "bytes_sent": 8000})[0].upload_rate == 2000
    ledger.child_gone(Addr("127.0.0.3", 9092))
    assert len(ledger.subtree(snapshot)) == 1
    assert ledger.control_bytes > 0


# -- the remuxer -------------------------------------------------------------------------------------

def test_remux_commands_copy_and_never_reencode():
    for kind in ("mp4", "ts"):
        command = remux_command(kind, 12.5)
        assert command[command.index("-c") + 1] == "copy"
    assert "12.500000" in remux_command("ts", 12.5)
    assert "frag_keyframe+empty_moov+default_base_moof" in remux_command("mp4")
    with pytest.raises(ValueError):
        remux_command("avi")


def test_each_block_is_remuxed_once_however_many_ask():
    calls, gate = [], threading.Event()

    def fake_run(command, input, capture_output, timeout):
        gate.wait(5)
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, b"segment:" + input, b"")

    remuxer = Remuxer(run=fake_run)
    remuxer.start()
    try:
        got, done = [], threading.Event()

        def answer(segment):
            got.append(segment)
            if len(got) == 3:
                done.set()

        for _ in range(3):
            remuxer.request(7, "mp4", b"abc", 0.0, answer)
        gate.set()
        assert done.wait(5)
        assert got == [b"segment:abc"] * 3 and len(calls) == 1
        cached = []
        remuxer.request(7, "mp4", b"abc", 0.0, cached.append)
        assert cached == [b"segment:abc"] and len(calls) == 1
    finally:
        remuxer.stop()


def test_a_full_remux_queue_refuses_at_once():
    gate = threading.Event()

    def slow_run(command, input, capture_output, timeout):
        gate.wait(5)
        return subprocess.CompletedProcess(command, 1, b"", b"boom")

    remuxer = Remuxer(run=slow_run)
    remuxer.start()
    try:
        for n in range(QUEUE_LIMIT):
            remuxer.request(n, "ts", b"x", 0.0, lambda s: None)
        refused = []
        remuxer.request(999, "ts", b"x", 0.0, refused.append)
        assert refused == [None]
    finally:
        gate.set()
        remuxer.stop()
    assert remuxer.stats()["failed"] == QUEUE_LIMIT


def test_block_info_never_raises_on_mangled_headers(films):
    data = bytearray(blocks_of(films)[0][:4096])
    rng = random.Random(13)
    for _ in range(500):
        mangled = bytearray(data)
        for _ in range(8):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        read_block_info(bytes(mangled))   # a header we cannot read is empty, never an error
