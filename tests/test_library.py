"""The film library end to end: a tracker, peers sharing a 30-block film, downloads with takeover.

Real processes on loopback addresses: the tracker (alone, so that it can be
killed without the channel), a channel server without a tracker, clients
with ``--share`` and one-shot ``python -m client --get``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from bench.cluster import REPO, next_address, wait_until
from client.library import TrackerClient
from client.peerproto import Addr, FrameDecoder, LibraryEnd, LibraryFetch, Reject, encode
from tests.library_helpers import (PEER_PORT, TRACKER_PORT, EventRecorder, random_bytes,
                                   start_tracker)

FILM = "canal0"


class Library:
    """A tracker, a channel server and the peers of one test."""

    def __init__(self, cluster, tmp_path):
        self.cluster, self.tmp = cluster, tmp_path
        self.tracker = start_tracker(cluster, tmp_path / "catalogue.db")
        self.server = cluster.start_server("--tracker-port", "0")
        self.api = TrackerClient(self.tracker.ip, TRACKER_PORT)

    def peer(self, *extra: str, share=None, name=None, ip=None):
        args = ["--tracker", f"{self.tracker.ip}:{TRACKER_PORT}", *extra]
        if share is not None:
            args += ["--share", str(share)]
        return self.cluster.start_client(self.server, *args, ip=ip, name=name)

    def holders_of(self, name: str, count: int, timeout: float = 120) -> dict:
        def enough():
            found = [f for f in self.api.search(name) if f["name"] == name]
            return found[0] if found and len(found[0]["holders"]) >= count else None
        return wait_until(enough, timeout, f"{count} holders of {name}", interval=0.2)

    def get(self, wanted: str, dest, *extra: str, ip: str | None = None) -> subprocess.Popen:
        ip = ip or next_address()
        stats = self.tmp / f"get-{ip}.json"
        argv = [sys.executable, "-m", "client", "--get", wanted, "--to", str(dest), "--ip", ip,
                "--tracker", f"{self.tracker.ip}:{TRACKER_PORT}", "--stats", str(stats), *extra]
        log = open(self.tmp / f"get-{ip}.log", "wb")
        popen = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        popen.stats_path, popen.log_path = stats, self.tmp / f"get-{ip}.log"
        return popen


def _finish(popen: subprocess.Popen, timeout: float = 120) -> tuple[int, dict]:
    code = popen.wait(timeout=timeout)
    try:
        stats = json.loads(popen.stats_path.read_text())
    except FileNotFoundError:
        stats = {}
    return code, stats


def _same_blocks(one, two) -> bool:
    names = sorted(p.name for p in one.glob(f"{FILM}_*.mkv"))
    return names == sorted(p.name for p in two.glob(f"{FILM}_*.mkv")) and all(
        (one / n).read_bytes() == (two / n).read_bytes() for n in names)


def _copy(film, dest):
    shutil.copytree(film, dest)
    return dest


def _bytes_served(proc) -> int:
    from bench.cluster import Cluster
    status = Cluster.status_of(proc) or {}
    return status.get("bytes_served", 0)


def test_download_from_three_holders_a_third_each(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    holders = [lib.peer(share=_copy(long_film, tmp_path / f"share{i}")) for i in range(3)]
    others = [lib.peer() for _ in range(2)]
    film = lib.holders_of(FILM, 3)
    assert film["blocks"] == 30 and film["kind"] == "film" and film["replication"] == [3] * 30
    assert others[0].alive and others[1].alive

    code, stats = _finish(lib.get(FILM, tmp_path / "got"))
    assert code == 0, stats
    assert _same_blocks(long_film, tmp_path / "got")
    assert stats["complete"] and stats["fetched"] == 30 and stats["missing"] == []
    # Heartbeats keep the holders: known without a break for longer than the drop bound (3 s).
    def kept_alive():
        listed = lib.api.search(FILM)[0]["holders"]
        return len(listed) == 3 and all(h["since"] > 4 and h["seen"] < 2 for h in listed)
    wait_until(kept_alive, 30, "holders kept alive by their heartbeats", interval=0.2)
    recorder = EventRecorder(lib.tracker.ip)  # replays the events so far
    wait_until(lambda: len(recorder.of("holder_joined")) >= 3, 10, "the events so far")
    assert recorder.of("holder_left") == []  # never dropped, not even right after joining
    lib.tracker.stop()
    recorder.join()
    assert sorted(stats["served_by"]) == sorted(f"{h.ip}:{PEER_PORT}" for h in holders)
    assert all(8 <= n <= 12 for n in stats["served_by"].values()), stats["served_by"]


def test_takeover_after_a_kill_a_freeze_and_a_corrupt_block(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    ips = sorted((next_address() for _ in range(5)), key=lambda ip: Addr(ip, PEER_PORT))
    shares = [_copy(long_film, tmp_path / f"share{i}") for i in range(5)]
    corrupt = shares[0] / f"{FILM}_00002.mkv"
    # The first three holders in the download's order: paced, so that they are caught mid-part.
    holders = [lib.peer("--repair-rate", "60" if i < 3 else "0", share=shares[i], ip=ip)
               for i, ip in enumerate(ips)]
    lib.holders_of(FILM, 5)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))  # after registration: the manifest still has the good sha256

    popen = lib.get(FILM, tmp_path / "got", "--stall", "2")
    wait_until(lambda: _bytes_served(holders[1]) > 0 and _bytes_served(holders[2]) > 0, 60,
               "the second and third holders to be serving")
    holders[1].kill()
    holders[2].freeze()
    code, stats = _finish(popen)
    holders[2].thaw()
    assert code == 0, (stats, popen.log_path.read_text())
    assert _same_blocks(long_film, tmp_path / "got")
    key = [f"{ip}:{PEER_PORT}" for ip in ips]
    assert "sha256" in stats["failures"][key[0]]
    assert key[1] in stats["failures"] and "stalled" in stats["failures"][key[2]]
    assert sum(stats["served_by"].values()) == 30
    assert stats["served_by"].get(key[3], 0) + stats["served_by"].get(key[4], 0) > 0
    # The corrupt holder is dropped from the film by the tracker.
    wait_until(lambda: key[0] not in {f"{h['ip']}:{h['port']}" for h in
                                      lib.api.search(FILM)[0]["holders"]}, 10, "the drop")


def test_any_file_type_shared_found_and_downloaded(cluster, tmp_path):
    lib = Library(cluster, tmp_path)
    share = tmp_path / "share"
    share.mkdir()
    payload = random_bytes(300_000) + b"\x00\xff" * 1000
    (share / "archive.tar.xz").write_bytes(payload)
    lib.peer("--fragment-size", "64", share=share)
    found = lib.holders_of("archive.tar.xz", 1)
    assert found["kind"] == "file" and found["size"] == len(payload) and found["blocks"] == 5
    assert [f["name"] for f in lib.api.search("TAR")] == ["archive.tar.xz"]
    code, stats = _finish(lib.get("archive.tar.xz", tmp_path / "got"))
    assert code == 0, stats
    assert (tmp_path / "got" / "archive.tar.xz").read_bytes() == payload
    assert [p.name for p in (tmp_path / "got").iterdir() if not p.name.startswith(".")] == [
        "archive.tar.xz"]


def test_unknown_name_and_a_missing_block_exit_non_zero(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    share = _copy(long_film, tmp_path / "share")
    lib.peer(share=share)
    lib.holders_of(FILM, 1)
    code, _ = _finish(lib.get("no-such-film", tmp_path / "got"))
    assert code == 1
    (share / f"{FILM}_00007.mkv").unlink()  # the holder can no longer serve block 7
    code, stats = _finish(lib.get(FILM, tmp_path / "got"))
    assert code == 3 and stats["missing"] == [7] and stats["fetched"] == 29
    # Resume: with the block back, only it is fetched.
    shutil.copy(long_film / f"{FILM}_00007.mkv", share / f"{FILM}_00007.mkv")
    code, stats = _finish(lib.get(FILM, tmp_path / "got"))
    assert code == 0 and stats["resumed"] == 29 and stats["fetched"] == 1
    assert _same_blocks(long_film, tmp_path / "got")


def _ask(holder, request: LibraryFetch, source: str):
    with socket.create_connection((holder.ip, PEER_PORT), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(encode(request))
        decoder = FrameDecoder()
        messages = []
        while True:
            message = decoder.next_message()
            if message is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return messages
                decoder.feed(chunk)
                continue
            messages.append(message)
            if isinstance(message, (Reject, LibraryEnd)):
                return messages


def test_a_peer_refuses_blocks_it_should_not_give(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    holder = lib.peer(share=_copy(long_film, tmp_path / "share"))
    version = lib.holders_of(FILM, 1)["version"]
    me = next_address()
    out_of_range = _ask(holder, LibraryFetch(Addr(me, PEER_PORT), version, (3, 30)), me)
    assert [type(m) for m in out_of_range] == [Reject] and "out of range" in out_of_range[0].reason
    other = _ask(holder, LibraryFetch(Addr(me, PEER_PORT), "0" * 16, (0,)), me)
    assert [type(m) for m in other] == [Reject] and "not offered" in other[0].reason
    good = _ask(holder, LibraryFetch(Addr(me, PEER_PORT), version, (4,)), me)
    assert [m.seq for m in good[:-1]] == [4] and good[-1] == LibraryEnd(())
    assert good[0].data == (long_film / f"{FILM}_00004.mkv").read_bytes()
    # A request whose claimed address is not its sender's gets no answer at all.
    assert _ask(holder, LibraryFetch(Addr("127.0.0.1", PEER_PORT), version, (4,)), me) == []


def test_tracker_kill_9_during_a_download(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    holders = [lib.peer("--repair-rate", "100", share=_copy(long_film, tmp_path / f"s{i}"))
               for i in range(3)]
    before = lib.holders_of(FILM, 3)
    popen = lib.get(FILM, tmp_path / "got")
    wait_until(lambda: all(_bytes_served(h) > 0 for h in holders), 60, "the download to run")
    lib.tracker.kill()
    lib.tracker = start_tracker(cluster, tmp_path / "catalogue.db", ip=lib.tracker.ip,
                                name="tracker-again")
    assert [f["version"] for f in lib.api.search(FILM)] == [before["version"]]
    # Holders come back by themselves (heartbeat 1 s: within two heartbeats of the restart).
    lib.holders_of(FILM, 3, timeout=30)
    code, stats = _finish(popen)
    assert code == 0, stats
    assert _same_blocks(long_film, tmp_path / "got")


@pytest.mark.parametrize("replicas", [3])
def test_replication_brings_a_film_back_to_r_holders(cluster, tmp_path, long_film, replicas):
    lib = Library(cluster, tmp_path)
    holders = [lib.peer(share=_copy(long_film, tmp_path / f"share{i}")) for i in range(3)]
    spares = [lib.peer("--library-space", "50") for _ in range(2)]
    lib.holders_of(FILM, 3)
    holders[0].kill()

    def back_to_r():
        film = lib.api.search(FILM)[0]
        live = {f"{h['ip']}:{h['port']}" for h in film["holders"]}
        return min(film["replication"]) >= replicas and f"{holders[0].ip}:{PEER_PORT}" not in live
    wait_until(back_to_r, 60, "the film back on 3 holders", interval=0.5)
    film = lib.api.search(FILM)[0]
    spare_keys = {f"{s.ip}:{PEER_PORT}" for s in spares}
    assert spare_keys & {f"{h['ip']}:{h['port']}" for h in film["holders"]}
    for spare in spares:
        got = cluster.store_of(spare) / "library"
        if (got / f"{FILM}_00000.mkv").exists():
            assert _same_blocks(long_film, got)


def test_menu_search_get_library_and_the_downloader_becomes_a_holder(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    lib.peer(share=_copy(long_film, tmp_path / "share"))
    lib.holders_of(FILM, 1)
    viewer = lib.cluster.start_client(lib.server, "--menu", "--tracker",
                                      f"{lib.tracker.ip}:{TRACKER_PORT}", stdin=subprocess.PIPE)
    viewer.popen.stdin.write(b"search CANAL\nget canal0\n")
    viewer.popen.stdin.flush()
    film = lib.holders_of(FILM, 2)
    assert f"{viewer.ip}:{PEER_PORT}" in {f"{h['ip']}:{h['port']}" for h in film["holders"]}
    assert _same_blocks(long_film, cluster.store_of(viewer) / "library" / FILM)
    viewer.popen.stdin.write(b"library\nquit\n")
    viewer.popen.stdin.close()
    assert viewer.popen.wait(timeout=30) == 0
    out = viewer.log_text()
    assert f"{FILM}@{film['version']}  film, 30 blocks" in out and "1 found" in out
    assert f"{FILM}@{film['version']}  film, 30/30 blocks (download)" in out
    assert f"download {FILM}: complete in" in out


def test_record_offers_the_channel_s_film_after_a_whole_lap(cluster, tmp_path, films):
    tracker = start_tracker(cluster, tmp_path / "catalogue.db")
    server = cluster.start_server("--tracker-port", "0", period=0.5, max_clients=2)
    where = f"{tracker.ip}:{TRACKER_PORT}"
    api = TrackerClient(tracker.ip, TRACKER_PORT)
    share = tmp_path / "share"
    share.mkdir()
    for block in sorted(films.glob("canal0_*.mkv")):
        shutil.copy(block, share / block.name)
    cluster.start_client(server, "--tracker", where, "--share", str(share), period=0.5)
    recorder = cluster.start_client(server, "--tracker", where, "--record", period=0.5)

    def two_holders():
        found = [f for f in api.search("canal0") if f["name"] == "canal0"]
        return found if found and len(found[0]["holders"]) == 2 else None
    found = wait_until(two_holders, 60, "the recorder to hold canal0 too", interval=0.2)
    assert len(found) == 1  # the same version, not a second one
    assert f"{recorder.ip}:{PEER_PORT}" in {f"{h['ip']}:{h['port']}" for h in found[0]["holders"]}
    assert found[0]["replication"] == [2] * 6
    got = cluster.store_of(recorder) / "library" / "canal0"
    for block in sorted(films.glob("canal0_*.mkv")):
        assert (got / block.name).read_bytes() == block.read_bytes()


def test_the_library_benchmark_prints_its_figures(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.library", "--size-mb", "2",
                             "--upload-mbit", "4", "--peers", "20", "--seconds", "1",
                             "--workdir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    downloads = figures["downloads"]
    for count in (1, 2, 3):
        assert len(downloads[f"holders_{count}"]["served_by"]) == count
    assert downloads["takeover"]["complete"] and downloads["takeover"]["kill_to_takeover_s"] is not None
    assert figures["tracker"]["holders_seen"] == 20 and figures["tracker"]["heartbeats"] > 0


def test_a_holder_that_appears_mid_download_takes_over_part_of_it(cluster, tmp_path, long_film):
    lib = Library(cluster, tmp_path)
    slow = lib.peer("--repair-rate", "80", share=_copy(long_film, tmp_path / "slow"))
    lib.holders_of(FILM, 1)
    popen = lib.get(FILM, tmp_path / "got")
    wait_until(lambda: _bytes_served(slow) > 0, 60, "the only holder to be serving")
    late = lib.peer(share=_copy(long_film, tmp_path / "late"))
    code, stats = _finish(popen)
    assert code == 0, stats
    assert _same_blocks(long_film, tmp_path / "got")
    assert stats["served_by"].get(f"{late.ip}:{PEER_PORT}", 0) > 0, stats["served_by"]
