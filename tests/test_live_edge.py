"""Issue 17 with real processes: near live whatever the server's timing, a bounded store, a full disk.

Each test runs a real server, real clients and (where it says so) the real
player headless, and reads what they promise: status.json, stats.json, the
player's played-blocks log (``played.jsonl``, JSON lines), the files in the
stores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import REPO, Cluster, next_address, wait_until
from player.live import RATE_STEP
from player.report import read_played_log

NAME = "{:010d}.mkv".format
MAX_BEHIND = 8.0


def _cut(out: Path, block: float, seconds: int) -> Path:
    subprocess.run([sys.executable, str(REPO / "separa.py"), "--sample", "--channels", "1",
                    "--seconds", f"{block:g}", "--seconds-long", str(seconds), "--size", "160x90",
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def blocks_of(tmp_path_factory):
    """``blocks_of(seconds)``: a one-channel sample film cut into blocks of that length."""
    made = {}

    def get(block: float) -> Path:
        if block not in made:
            made[block] = _cut(tmp_path_factory.mktemp(f"filme-{block:g}"), block,
                               max(15, int(round(block * 20))))
        return made[block]
    return get


def status(proc) -> dict:
    return Cluster.status_of(proc) or {}


def store_blocks(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.mkv") if not p.name.startswith("."))


# -- near live, whatever the server's timing -------------------------------------------

@pytest.mark.parametrize("block", [2.6, 1.6], ids=["blocks-2.6s", "blocks-1.6s"])
def test_the_screen_stays_within_its_target_of_live(tmp_path, blocks_of, block):
    with Cluster(tmp_path, blocks_of(block)) as cluster:
        server = cluster.start_server(period=2.0, max_clients=1, channels=1)
        client = cluster.start_client(server, "--player", "--max-behind", f"{MAX_BEHIND:g}",
                                      max_children=0)
        wait_until(lambda: status(client).get("behind_live_s") is not None, 60,
                   "the player's first figure")
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 65:  # sampling, not awaiting: the whole minute counts
            samples.append(status(client).get("behind_live_s"))
            time.sleep(0.5)
        last = status(client)
        assert client.stop() == 0
    store = Cluster.store_of(client)
    figures = [s for s in samples if s is not None]
    assert len(figures) >= 100 and max(figures) <= MAX_BEHIND, max(figures)

    events = read_played_log(store / "played.jsonl")
    played = [e["name"] for e in events if e["event"] == "played"]
    # Every block, in order, no skip; each one deleted once played.
    assert played == [NAME(i) for i in range(len(played))]
    assert len(played) >= 60 / max(block, 2.0) * 0.9  # one block arrives per period
    assert not [e for e in events if e["event"] in ("skipped", "skipped_ahead")]
    assert not any((store / name).exists() for name in played)
    # The rate moved in small steps only, within its bound.
    rates = [1.0] + [e["rate"] for e in events if e["event"] == "rate"]
    assert all(abs(b - a) <= RATE_STEP + 1e-9 for a, b in zip(rates, rates[1:]))
    assert max(rates) <= 1.4
    stats = json.loads((store / "stats.json").read_text())
    assert stats["behind_live"]["samples"] >= 20
    assert stats["behind_live"]["max_s"] <= MAX_BEHIND
    if block > 2.0:
        assert max(rates) >= 1.2  # content came faster than it plays: it had to speed up
    else:
        # Content comes slower than it plays: it waits at the start buffer, not at every block.
        assert last["player"]["waits"] <= len(played) / 3, last["player"]


def test_a_player_hopelessly_behind_skips_ahead_once_deleting_what_it_skipped(long_film,
                                                                               tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    films = sorted(long_film.glob("*.mkv"))
    for i, film in enumerate(films):  # 60 s waiting: more than 3 x 8 s
        (store / NAME(i)).write_bytes(film.read_bytes())
    log = tmp_path / "player.log"
    with open(log, "wb") as out:
        player = subprocess.Popen([sys.executable, "-m", "player", str(store), "--headless",
                                   "--played-log", str(tmp_path / "played.jsonl")],
                                  cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        def played_two():
            events = read_played_log(tmp_path / "played.jsonl")
            return len([e for e in events if e["event"] == "played"]) >= 2 and events
        events = wait_until(played_two, 30, "two blocks played after the skip")
    finally:
        player.send_signal(signal.SIGTERM)
        assert player.wait(timeout=10) == 0
    skips = [e for e in events if e["event"] == "skipped_ahead"]
    assert len(skips) == 1 and skips[0]["names"] == [NAME(i) for i in range(len(films) - 2)]
    assert not any((store / n).exists() for n in skips[0]["names"])
    assert [e["name"] for e in events if e["event"] == "played"] == [NAME(len(films) - 2),
                                                                    NAME(len(films) - 1)]
    state = json.loads((store / "player.json").read_text())
    assert state["skipped_ahead"] == len(films) - 2 and state["state"] == "stopped"


def test_the_players_log_stays_small_over_many_blocks_without_a_sound_card(blocks_of, tmp_path):
    """No --headless and no --aout: without a sound device libvlc would try ALSA per block."""
    store = tmp_path / "store"
    store.mkdir()
    films = sorted(blocks_of(0.5).glob("*.mkv"))
    for i, film in enumerate(films):
        (store / NAME(i)).write_bytes(film.read_bytes())
    log = tmp_path / "player.log"
    with open(log, "wb") as out:
        player = subprocess.Popen([sys.executable, "-m", "player", str(store), "--vout", "dummy",
                                   "--played-log", str(tmp_path / "played.jsonl")],
                                  cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  env={k: v for k, v in os.environ.items() if k != "DISPLAY"})
    try:
        wait_until(lambda: not store_blocks(store)[1:], 60, "every block played")
    finally:
        player.send_signal(signal.SIGTERM)
        assert player.wait(timeout=10) == 0
    played = [e for e in read_played_log(tmp_path / "played.jsonl") if e["event"] == "played"]
    assert len(played) >= len(films) - 1
    lines = log.read_text(errors="replace").splitlines()
    # One line per block at most, and a handful more, whatever the libraries print.
    assert len(lines) <= len(played) + 15, "\n".join(lines[:40])
    assert log.stat().st_size <= 100 * (len(played) + 15)


# -- a bounded store -----------------------------------------------------------------------

def test_a_client_without_a_player_keeps_only_its_recent_window_on_disk(cluster):
    server = cluster.start_server(period=1.0, max_clients=1)
    client = cluster.start_client(server, "--window", "6", period=1.0, max_children=0,
                                  keep_store=False)  # the default bound of --no-player
    bound = int(6 / 1.0) + 1
    seen = []

    def twenty_blocks():
        seen.append(len(store_blocks(Cluster.store_of(client))))
        return status(client).get("blocks_received", 0) >= 20
    wait_until(twenty_blocks, 60, "20 blocks", interval=0.1)
    assert max(seen) <= bound, seen
    assert len(store_blocks(Cluster.store_of(client))) == bound
    assert status(client)["store"]["evicted"] >= 20 - bound - 1


def test_a_frozen_player_never_lets_the_store_grow_past_its_limit(cluster):
    server = cluster.start_server(period=2.0, max_clients=1)
    client = cluster.start_client(server, "--player", "--store-limit", "0.1min", max_children=0)
    limit = 3  # 0.1 min = 6 s = 3 blocks of the period
    pid = wait_until(lambda: (status(client).get("player") or {}).get("pid"), 60, "the player")
    os.kill(pid, signal.SIGSTOP)
    try:
        before = status(client)["blocks_received"]
        seen = []

        def six_more():
            seen.append(len(store_blocks(Cluster.store_of(client))))
            return status(client).get("blocks_received", 0) >= before + 6
        wait_until(six_more, 40, "six blocks while the player is frozen", interval=0.1)
        assert max(seen) <= limit, seen
        assert status(client)["store"]["evicted"] >= 3
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: not status(client)["player"]["stale"], 20, "the player speaking again")


# -- a full disk ------------------------------------------------------------------------------

def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_a_full_disk_is_said_once_relaying_goes_on_and_storing_resumes(cluster):
    server = cluster.start_server(period=1.0, max_clients=1)
    ip = next_address()
    disk = cluster.workdir / "stores" / ip
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        parent = cluster.start_client(server, "--store-limit", "0.1min", ip=ip, period=1.0,
                                      max_children=1)
        wait_until(lambda: status(parent).get("state") == "direct", 30, "the parent direct")
        child = cluster.start_client(server, period=1.0, max_children=0)
        wait_until(lambda: status(child).get("state") == "attached"
                   and status(child).get("blocks_received", 0) >= 2, 30, "the child fed")
        filler = _fill(disk)
        log_lines = len(parent.log_text().splitlines())
        child_before = status(child)["blocks_received"]
        wait_until(lambda: status(child).get("blocks_received", 0) >= child_before + 8, 30,
                   "eight blocks relayed while the disk is full")
        during = parent.log_text().splitlines()[log_lines:]
        filler.unlink()
        wait_until(lambda: (status(parent).get("store") or {}).get("blocks_not_stored", 0) >= 6
                   and status(parent)["store"]["disk_refusing"] is None, 30,
                   "the parent storing again")
        stored_again = store_blocks(disk)
        wait_until(lambda: store_blocks(disk)[-1:] != stored_again[-1:], 10, "a new block stored")
        assert child.stop() == 0 and parent.stop() == 0  # the child first: no rejoin at the end
        stats = json.loads((disk / "stats.json").read_text())
    finally:
        cluster.stop_all()
        subprocess.run(["umount", "-l", str(disk)], check=False)
    child_stats = json.loads((Cluster.store_of(child) / "stats.json").read_text())
    # The child lost nothing and never had to look for another parent.
    assert child_stats["blocks_lost"] == 0 and child_stats["rejoins"] == []
    assert child_stats["blocks_received"] >= child_before + 8
    # Said once: a couple of lines at most while it refused one block a second.
    refusals = [line for line in during if " ERROR " in line]
    assert len(refusals) <= 2 and len(during) <= 6, during
    # stats.json says which blocks were not stored.
    ranges = stats["store"]["not_stored_seqs"]
    assert sum(b - a + 1 for a, b in ranges) == stats["store"]["blocks_not_stored"] >= 6


def test_the_menus_status_says_how_far_behind_live_the_player_is(cluster):
    server = cluster.start_server(period=2.0, max_clients=1)
    client = cluster.start_client(server, "--menu", "--player", max_children=0,
                                  stdin=subprocess.PIPE)
    wait_until(lambda: status(client).get("behind_live_s") is not None, 60, "a player figure")
    client.popen.stdin.write(b"status\n")
    client.popen.stdin.flush()
    line = wait_until(lambda: next((l for l in client.log_text().splitlines()
                                    if "behind live:" in l), None), 10, "the status line")
    seconds = float(line.split("behind live:")[1].split()[0])
    assert 0 <= seconds <= MAX_BEHIND
    client.popen.stdin.write(b"quit\n")
    client.popen.stdin.close()
    assert client.popen.wait(timeout=20) == 0


def test_the_behind_live_benchmark_runs_and_plots(tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    result = subprocess.run([sys.executable, "-m", "bench.behind", "--block", "2.6",
                             "--duration", "6", "--json", str(out), "--plot", str(png)],
                            cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads(out.read_text())
    assert run["control"] and len(run["samples"]) >= 5
    assert all(s["behind_live_s"] is not None for s in run["samples"])
    assert png.stat().st_size > 1000
