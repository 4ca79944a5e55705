"""The web view of real clients: JSON API and events against their schema, HLS read by ffmpeg,
the whole tree, and hostile HTTP refused while good requests answer and relaying goes on.

One server and four clients (one server slot, two children each) serve every
test of this module; each test awaits conditions, never sleeps.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from bench.cluster import Cluster, session_ports, wait_until

HTTP_PORT = session_ports().http  # the web view of every client of this session

PERIOD = 1.0

# The documented schema (docs/guide/web.rst): field -> type(s).
STATUS = {"ip": str, "peer_port": int, "push_port": int, "channel": int, "max_children": int,
          "state": str, "parent": (str, dict, type(None)), "parent_server": str, "path": list,
          "children": list, "depth": int, "blocks_received": int, "bytes_received": int,
          "bytes_sent": int, "bytes_served": int, "blocks_repaired": int, "blocks_lost": int,
          "blocks_discarded": int, "blocks_finished": int, "repairing": bool,
          "backup": (str, type(None)),
          "rejoins": int, "swaps": int, "climbs": int, "silent_children_freed": int,
          "last_block_at": (float, type(None)), "members": list,
          "refusals": dict, "behind_live_s": (float, type(None)), "play_rate": (float, type(None)),
          "player": (dict, type(None)), "store": dict, "tree": list, "problem": (str, type(None)),
          "server_reachable": bool, "server_failures": int, "verify": dict,
          "parent_silence": (float, int), "cut_at_deadline": dict, "incompatible_peers": dict,
          "uplink": dict, "url": str,
          "live_edge": (dict, type(None))}
LIVE_EDGE = {"max_behind_s": float, "max_rate": float, "slew_per_s": float, "rate_step": float,
             "speed_up_from_s": float, "full_speed_at_s": float, "skip_behind_s": float,
             "resume_behind_s": float, "start_blocks": int, "start_timeout_s": float}
UPLINK = {"estimate_bps": (int, type(None)), "stream_bps": (int, type(None)), "places": int,
          "children_moved": int}
STATS = {"ip": str, "channel": int, "max_children": int, "blocks_received": int,
         "bytes_received": int, "bytes_sent": int, "bytes_served": int, "blocks_repaired": int,
         "blocks_lost": int, "swaps": int, "climbs": int, "blocks_relayed": int,
         "bytes_sent_to": dict, "rejoins": list, "behind_live": dict, "store": dict, "verify": dict,
         "web": dict}
WEB_STATS = {"requests": int, "refused": int, "dropped_idle": int, "dropped_slow": int,
             "evicted": int, "events_sent": int, "connections": int, "event_streams": int,
             "recent_blocks": int, "remux": dict, "tree_report_bytes": int,
             "tree_query_bytes": int, "tree_queries": int}
TREE = {"channel": int, "self": str, "updated_at": (float, type(None)), "complete": bool,
        "direct_clients": list, "nodes": list}
TREE_NODE = {"addr": str, "parent": (str, type(None)), "depth": int, "children": int,
             "max_children": int, "bytes_sent": int, "bytes_received": int, "upload_rate": int,
             "repairs": int, "state": str}
BLOCK = {"number": int, "stored_at": float, "duration": float, "bytes": int,
         "mime": (str, type(None)), "width": int, "height": int, "discontinuity": bool}
EVENTS = {"hello": {"status": dict, "tree": dict},
          "block": BLOCK,
          "parent": {"from": (str, type(None)), "to": (str, type(None)), "depth": int},
          "child_joined": {"child": str}, "child_left": {"child": str},
          "repair_started": {"blocks_repaired": int},
          "repair_ended": {"blocks_fetched": int, "blocks_lost": int},
          "swap": {"swaps": int, "parent": (str, type(None))},
          "stall": {"seconds": float}, "stall_ended": {"number": int},
          "state": {"from": str, "to": str}, "tree": TREE,
          "behind_live": {"behind_live_s": (float, type(None)), "play_rate": (float, type(None)),
                          "stale": (bool, type(None))}}


def check(schema: dict, value: dict, where: str) -> None:
    assert set(value) == set(schema), f"{where}: fields {sorted(set(value) ^ set(schema))}"
    for key, kind in schema.items():
        ok = isinstance(value[key], kind) and not (isinstance(value[key], bool) and kind is int)
        if kind is float and isinstance(value[key], int) and not isinstance(value[key], bool):
            ok = True
        assert ok, f"{where}.{key} = {value[key]!r} is not {kind}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, films):
    with Cluster(tmp_path_factory.mktemp("web"), films) as cluster:
        server = cluster.start_server(max_clients=1, period=PERIOD)
        clients = []
        for _ in range(4):
            clients.append(cluster.start_client(server, max_children=2, period=PERIOD))
            wait_until(lambda: (Cluster.status_of(clients[-1]) or {}).get("blocks_received", 0) >= 1,
                       30, "a client receiving")
        yield cluster, clients


def url(proc, path: str) -> str:
    return f"http://{proc.ip}:{HTTP_PORT}{path}"


def get_json(proc, path: str):
    with urllib.request.urlopen(url(proc, path), timeout=10) as answer:
        assert answer.headers["Content-Type"] == "application/json"
        return json.loads(answer.read())


def deepest(clients):
    return max(clients, key=lambda p: Cluster.status_of(p)["depth"])


def test_json_api_matches_its_schema(tree):
    _, clients = tree
    proc = deepest(clients)
    status = get_json(proc, "/api/status")
    check(STATUS, status, "status")
    assert status["url"] == url(proc, "/")
    check(LIVE_EDGE, status["live_edge"], "status.live_edge")
    check(UPLINK, status["uplink"], "status.uplink")
    assert 0 <= status["uplink"]["places"] <= status["max_children"]
    assert status["live_edge"]["max_behind_s"] == 8.0        # the client's --max-behind default
    assert status["behind_live_s"] is None and status["player"] is None   # --no-player
    stats = get_json(proc, "/api/stats")
    check(STATS, stats, "stats")
    check(WEB_STATS, stats["web"], "stats.web")
    blocks = wait_until(lambda: get_json(proc, "/api/blocks")["blocks"], 20, "blocks")
    for block in blocks:
        check(BLOCK, block, "block")
    assert [b["number"] for b in blocks] == list(range(blocks[0]["number"], blocks[-1]["number"] + 1))
    tree_view = get_json(proc, "/api/tree")
    check(TREE, tree_view, "tree")
    for node in tree_view["nodes"]:
        check(TREE_NODE, node, "tree node")


def test_the_tree_view_shows_every_client_with_its_parent(tree):
    _, clients = tree
    proc = deepest(clients)
    assert Cluster.status_of(proc)["depth"] >= 2

    def parents_agree():
        nodes = {n["addr"]: n["parent"] for n in get_json(proc, "/api/tree")["nodes"]}
        want = {}
        for c in clients:
            s = Cluster.status_of(c)
            p = s["parent"]
            want[f"{c.ip}:{s['peer_port']}"] = (p if p == "server" else f"{p['ip']}:{p['port']}")
        return nodes == want

    wait_until(parents_agree, 30, "the tree view agreeing with every client's status.json")


def read_events(proc, until, timeout=30.0) -> list[tuple[str, dict]]:
    """Read the event stream until ``until(events)`` holds; [(name, data)]."""
    events, buffer = [], b""
    deadline = time.monotonic() + timeout
    with socket.create_connection((proc.ip, HTTP_PORT), timeout=5) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        while not until(events):
            assert time.monotonic() < deadline, f"events so far: {[e[0] for e in events]}"
            chunk = sock.recv(65536)
            assert chunk, "the event stream closed"
            buffer += chunk
            if not events and b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                assert b"text/event-stream" in head
                events.append(("(head)", {}))
            while b"\n\n" in buffer and events:
                raw, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in raw.decode().split("\n")
                              if ": " in line)
                if "event" in fields:
                    events.append((fields["event"], json.loads(fields["data"])))
    return events[1:]


def test_event_stream_matches_its_schema_and_pushes_blocks_and_tree(tree):
    _, clients = tree
    proc = deepest(clients)
    events = read_events(proc, lambda ev: sum(1 for n, _ in ev if n == "block") >= 2
                         and any(n == "tree" for n, _ in ev))
    assert events[0][0] == "hello"
    for name, data in events:
        check(EVENTS[name], data, f"event {name}")
    numbers = [d["number"] for n, d in events if n == "block"]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_ffmpeg_reads_and_decodes_the_hls_stream(tree):
    _, clients = tree
    proc = clients[-1]
    wait_until(lambda: len(get_json(proc, "/api/blocks")["blocks"]) >= 3, 20, "three blocks")
    before = get_json(proc, "/api/stats")["web"]["remux"]["remuxed"]
    run = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", url(proc, "/live.m3u8"),
                          "-t", "6", "-f", "null", "-", "-progress", "pipe:1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    frames = [int(line.split("=")[1]) for line in run.stdout.splitlines() if line.startswith("frame=")]
    assert frames and frames[-1] >= 140, run.stdout[-500:]  # 6 s at 25 fps: three 2 s segments
    assert get_json(proc, "/api/stats")["web"]["remux"]["remuxed"] - before >= 3


def raw_request(proc, data: bytes, timeout=10.0) -> bytes:
    with socket.create_connection((proc.ip, HTTP_PORT), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def status_line(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_bad_http_is_refused_and_good_requests_still_answer(tree):
    _, clients = tree
    proc = clients[0]
    received = Cluster.status_of(proc)["blocks_received"]
    assert status_line(raw_request(proc, b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n")) == 431
    for path in (b"/../../etc/passwd", b"/static/../../etc/passwd", b"/client/web.py",
                 b"/seg/../../etc/passwd", b"/%2e%2e/etc/passwd", b"/seg/99999999.mp4"):
        answer = raw_request(proc, b"GET " + path + b" HTTP/1.1\r\n\r\n")
        assert status_line(answer) == 404, path
        assert b"root:" not in answer
    assert status_line(raw_request(proc, b"POST /api/status HTTP/1.1\r\n\r\n")) == 405
    assert status_line(raw_request(proc, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n")) == 400

    idle = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection((proc.ip, HTTP_PORT), timeout=5))
        assert status_line(raw_request(proc, b"GET /api/status HTTP/1.1\r\n\r\n")) == 200
        assert get_json(proc, "/api/stats")["web"]["evicted"] >= 200 - 64  # oldest idle made room
    finally:
        for sock in idle:
            sock.close()

    # A reader that never reads: a small receive window, a big answer, nothing taken.
    block = get_json(proc, "/api/blocks")["blocks"][-1]
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((proc.ip, HTTP_PORT))
    try:
        dropped = get_json(proc, "/api/stats")["web"]["dropped_slow"]
        for _ in range(3):   # blocks of the sample films are small: ask thrice on one connection
            stuck.sendall(f"GET /seg/{block['number']}.mp4 HTTP/1.1\r\n\r\n".encode())
        wait_until(lambda: get_json(proc, "/api/stats")["web"]["connections"] >= 1, 10, "stuck")
        assert status_line(raw_request(proc, b"GET /api/status HTTP/1.1\r\n\r\n")) == 200
        wait_until(lambda: get_json(proc, "/api/stats")["web"]["dropped_slow"] > dropped, 30,
                   "the reader that never reads dropped")
    finally:
        stuck.close()
    # Relaying went on meanwhile.
    wait_until(lambda: Cluster.status_of(proc)["blocks_received"] >= received + 3, 20, "blocks")
    assert "Traceback" not in proc.log_text()


def test_http_port_zero_turns_the_web_view_off(tree):
    cluster, clients = tree
    server = next(p for p in cluster.procs if p.name == "server")
    quiet = cluster.start_client(server, "--http-port", "0", max_children=0, period=PERIOD)
    wait_until(lambda: (Cluster.status_of(quiet) or {}).get("blocks_received", 0) >= 1, 30, "blocks")
    with pytest.raises((ConnectionRefusedError, urllib.error.URLError)):
        urllib.request.urlopen(url(quiet, "/api/status"), timeout=5)
    quiet.stop()


def test_the_url_is_printed_at_start_and_by_the_menu_s_status(tree):
    cluster, clients = tree
    server = next(p for p in cluster.procs if p.name == "server")
    proc = cluster.start_client(server, "--menu", max_children=0, period=PERIOD,
                                stdin=subprocess.PIPE)
    wait_until(lambda: (Cluster.status_of(proc) or {}).get("blocks_received", 0) >= 1, 30, "blocks")
    proc.popen.stdin.write(b"status\nquit\n")
    proc.popen.stdin.close()
    assert proc.popen.wait(timeout=15) == 0
    assert proc.log_text().count(url(proc, "/")) == 2


def test_a_new_client_shows_in_a_deep_client_s_tree_within_a_few_periods(tree):
    cluster, clients = tree
    server = next(p for p in cluster.procs if p.name == "server")
    viewer = deepest(clients)
    get_json(viewer, "/api/tree")     # someone is watching: the viewer gathers the tree
    newcomer = cluster.start_client(server, max_children=0, period=PERIOD)
    try:
        parent = wait_until(lambda: (s := Cluster.status_of(newcomer) or {}).get("state") == "attached"
                            and f"{s['parent']['ip']}:{s['parent']['port']}", 30, "the newcomer attached")
        attached_at = time.monotonic()
        wait_until(lambda: {n["addr"]: n["parent"] for n in get_json(viewer, "/api/tree")["nodes"]}
                   .get(f"{newcomer.ip}:{cluster.ports.peer}") == parent, 6 * PERIOD,
                   "the newcomer in the deep client's tree under its parent")
        print(f"\nnewcomer in the tree of {viewer.ip} {time.monotonic() - attached_at:.2f} s "
              f"after it attached (period {PERIOD} s)")
    finally:
        newcomer.stop()
