"""The tracker as a real process: register, heartbeat, search, events, persistence, bad input.

Every test runs on SQLite and on a throwaway PostgreSQL cluster (the
``catalogue`` fixture).
"""

from __future__ import annotations

import json
import socket

from bench.cluster import wait_until
from tests.library_helpers import (TRACKER_PORT, EventRecorder, Peer, catalogue, file_manifest,
                                   postgres, random_bytes, start_tracker)

__all__ = ["catalogue", "postgres"]  # the fixtures, imported


def test_register_search_versions_and_events(cluster, catalogue):
    tracker = start_tracker(cluster, catalogue)
    recorder = EventRecorder(tracker.ip)
    recorder.connected.wait(10)
    a, b = Peer(tracker.ip), Peer(tracker.ip)
    first = file_manifest("Night Train.bin", random_bytes(2500))
    second = file_manifest("Night Train.bin", random_bytes(2500))  # same name, other bytes

    status, answer = a.register(first)
    assert status == 200 and answer["drop_after"] == 3 * answer["heartbeat"]
    status, answer_b = b.register(second, file_manifest("other.dat", random_bytes(10)))
    assert status == 200
    versions = {answer["films"][0]["version"], answer_b["films"][0]["version"]}
    assert len(versions) == 2  # two versions, never a mix

    found = a.api.search("nIGHT")
    assert {f["version"] for f in found} == versions
    for film in found:
        assert film["blocks"] == 3 and film["size"] == 2500 and film["replication"] == [1, 1, 1]
        assert len(film["holders"]) == 1
    assert [f["name"] for f in a.api.search("other")] == ["other.dat"]
    assert a.api.search("nothing like it") == []
    assert {f["version"] for f in a.api.versions("Night Train.bin")} == versions
    detail = a.api.film(answer["films"][0]["version"])
    assert detail["manifest"] == first and detail["holders"][0]["ip"] == a.ip

    wait_until(lambda: len(recorder.of("film_registered")) == 3, 10, "three film_registered events")
    assert len(recorder.of("holder_joined", peer=b.key)) == 2

    # b falls silent; a keeps beating. b is dropped within drop_after + half a heartbeat.
    def b_dropped():
        assert a.heartbeat()[0] == 200
        return recorder.of("holder_left", peer=b.key)
    left = wait_until(b_dropped, 15, "the silent peer to be dropped", interval=0.5)
    assert {e["reason"] for e in left} == {"silent"}
    assert b.heartbeat()[0] == 404  # "register again"
    assert [len(f["holders"]) for f in a.api.search("other")] == [0]  # the film stays, no holder
    tracker.stop()
    recorder.join()


def test_kill_9_and_restart_lose_no_film(cluster, catalogue):
    tracker = start_tracker(cluster, catalogue)
    peer = Peer(tracker.ip)
    manifests = [file_manifest(f"film-{i}.bin", random_bytes(1500)) for i in range(5)]
    assert peer.register(*manifests)[0] == 200
    before = peer.api.search("film-")
    tracker.kill()

    tracker = start_tracker(cluster, catalogue, ip=tracker.ip, name="tracker-again")
    after = peer.api.search("film-")
    assert [(f["name"], f["version"]) for f in after] == [(f["name"], f["version"]) for f in before]
    assert all(f["holders"] == [] for f in after)  # holdings are soft state
    assert peer.heartbeat()[0] == 404
    status, answer = peer.register(*manifests)
    assert status == 200 and not any(f["new"] for f in answer["films"])
    assert all(len(f["holders"]) == 1 for f in peer.api.search("film-"))


def _raw_post(ip: str, path: str, body: bytes, source: str | None = None,
              headers: dict | None = None) -> int:
    """POST raw bytes; the status (a body over the bound is announced, not sent)."""
    with socket.create_connection((ip, TRACKER_PORT), timeout=10,
                                  source_address=(source, 0) if source else None) as sock:
        head = {"Host": ip, "Content-Type": "application/json", "Content-Length": str(len(body)),
                **(headers or {})}
        sock.sendall(f"POST {path} HTTP/1.1\r\n".encode()
                     + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n"
                     + (body if int(head["Content-Length"]) == len(body) else b""))
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split()[1])


def _view(peer: Peer) -> list[dict]:
    """The whole catalogue with its holders, without the clock-dependent fields."""
    return [{**f, "holders": [(h["ip"], h["port"], h["blocks"]) for h in f["holders"]]}
            for f in peer.api.search("")]


def test_bad_input_gets_a_clear_error_and_changes_nothing(cluster, catalogue):
    tracker = start_tracker(cluster, catalogue)
    peer = Peer(tracker.ip)
    good = file_manifest("kept.bin", random_bytes(1200))
    assert peer.register(good)[0] == 200
    before = _view(peer)

    def register(**change):
        return peer.api.request("POST", "/register", {"ip": peer.ip, "port": peer.port,
                                                      "films": [{"manifest": good}], **change})

    assert _raw_post(tracker.ip, "/register", b'{"ip": "', source=peer.ip) == 400
    assert _raw_post(tracker.ip, "/register", b"{}", source=peer.ip,
                     headers={"Content-Length": str(5 * 1024 * 1024)}) == 413
    assert _raw_post(tracker.ip, "/register", b"[1, 2]", source=peer.ip) == 400
    status, answer = peer.register(dict(good, name="../../etc/passwd"))
    assert status == 400 and "bad name" in answer["error"]
    status, answer = peer.register(dict(good, name="a/b"))
    assert status == 400
    status, answer = register(colour="blue")
    assert status == 400 and "colour" in answer["error"]
    status, answer = peer.register(dict(good, extra=1))
    assert status == 400 and "extra" in answer["error"]
    bad_sum = dict(good, size=good["size"] + 1)
    assert peer.register(bad_sum)[0] == 400
    assert register(ip="127.0.0.1")[0] == 403  # an address that is not the sender's
    assert peer.api.request("POST", "/register", {"ip": peer.ip, "port": peer.port, "films": [
        {"manifest": good, "have": [[0, 99]]}]})[0] == 400  # blocks out of range
    assert peer.api.request("GET", "/films/../../x")[0] in (400, 404)
    assert peer.api.request("GET", "/films?name=..%2Fx")[0] == 400
    assert peer.api.request("GET", "/nowhere")[0] == 404
    assert peer.api.request("GET", "/register")[0] == 405
    assert _view(peer) == before

    # A flood from one address: the bucket empties, what is refused changes nothing.
    flooder = Peer(tracker.ip)
    statuses = [flooder.register(file_manifest(f"flood-{i}.bin", str(i).encode() * 10))[0]
                for i in range(300)]
    assert 429 in statuses and set(statuses) <= {200, 429}
    assert len(peer.api.search("flood-")) == statuses.count(200)
    assert peer.heartbeat()[0] == 200  # other addresses are not throttled


def test_tracker_beside_the_channel_server(cluster):
    """``python -m server`` starts a tracker on --tracker-port (6061 by default; 0: none)."""
    server = cluster.start_server("--tracker-port", str(TRACKER_PORT),
                                  "--tracker-db", str(cluster.workdir / "t.db"))
    peer = Peer(server.ip)
    wait_until(lambda: _answers(peer), 20, "the server's tracker")
    assert peer.register(file_manifest("beside.bin", b"x" * 10))[0] == 200
    quiet = cluster.start_server("--tracker-port", "0", name="quiet")  # as by default in Cluster
    wait_until(lambda: "listening" in quiet.log_text(), 20, "the second server")
    assert not _answers(Peer(quiet.ip))


def _answers(peer: Peer) -> bool:
    try:
        peer.api.get("/")
        return True
    except Exception:
        return False


def test_events_resume_after_last_event_id(cluster, catalogue):
    tracker = start_tracker(cluster, catalogue)
    peer = Peer(tracker.ip)
    for i in range(3):
        peer.register(file_manifest(f"e{i}.bin", bytes([i]) * 5))
    stream = peer.api.events(after=1, timeout=10)
    events = iter(stream)
    seen = [next(events) for _ in range(2)]
    stream.close()
    assert [e["id"] for e in seen] == [2, 3]
    assert json.dumps(seen)  # plain JSON objects


def test_two_trackers_serve_one_postgresql_catalogue(cluster, postgres):
    url = postgres()
    one, two = start_tracker(cluster, url), start_tracker(cluster, url, name="tracker-two")
    peer = Peer(one.ip)
    manifest = file_manifest("shared catalogue.bin", random_bytes(3000))
    assert peer.register(manifest)[0] == 200
    found = Peer(two.ip).api.search("catalogue")
    assert [f["name"] for f in found] == ["shared catalogue.bin"]
    assert Peer(two.ip).api.film(found[0]["version"])["manifest"] == manifest
