"""The overlay benchmark: pure metrics, and two small runs of the harness as a subprocess.

The runs check that every figure is in the JSON and that a broken scenario
shows up as continuity 0, not as a crash. No figure is asserted against a
wall-clock limit: the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import metrics, overlay
from bench.cluster import REPO
from bench.tail import FileTail
from conftest import FIGURES


# ------------------------------------------------------------------ metrics

def test_jain_index_is_one_for_equal_shares_and_one_over_n_for_a_single_sender():
    assert metrics.jain_index([5, 5, 5, 5]) == 1
    assert metrics.jain_index([8, 0, 0, 0]) == 0.25
    assert metrics.jain_index([0, 0]) is None


def test_best_depths_follow_the_capacity_formula():
    # S=2, K=3: 2 at depth 1, 6 at depth 2, 18 at depth 3 -> 26 within depth 3.
    assert metrics.best_depths([3] * 10, 2) == {1: 2, 2: 6, 3: 2}
    assert metrics.capacity_within(2, 3, 3) == 26
    # Leaves cannot carry anyone: with only K=0 clients past the server, the rest do not fit.
    assert metrics.best_depths([0, 0, 0], 1) == {1: 1, 0: 2}
    # A mix puts the big fan-outs first.
    assert metrics.best_depths([0, 2, 0, 3], 1) == {1: 1, 2: 3}


def test_slot_of_unwraps_a_looping_film_by_store_time():
    epochs = [metrics.Epoch(1000.0, 0)]
    # Film of 4 blocks, period 1: slot 6 carries block 2, stored at t0 + 6.1.
    assert metrics.slot_of(2, 1006.1, 4, 1.0, epochs) == 6
    assert metrics.slot_of(2, 1002.1, 4, 1.0, epochs) == 2
    restarted = epochs + [metrics.Epoch(1100.0, 1)]
    assert metrics.slot_of(0, 1100.2, 4, 1.0, restarted) == metrics.EPOCH_STRIDE


def test_continuity_counts_holes_duplicates_and_lateness():
    channel = list(range(10))
    blocks = [(0, 0.0), (1, 1.0), (1, 1.1), (3, 3.0), (4, 9.0), (None, 9.5), (5, 9.6)]
    c = metrics.continuity(blocks, channel, end_slot=5, period=1.0, buffer_blocks=2)
    assert (c["expected"], c["good"], c["holes"], c["duplicates"], c["not_film"]) == (6, 5, 1, 1, 1)
    assert c["continuity"] == 5 / 6
    # Deadlines: first + (2 + rank): slot 4 due 6.0 (stored 9.0), slot 5 due 7.0 (9.6): late.
    assert c["on_time"] == 3
    assert metrics.continuity([], channel, 5, 1.0)["continuity"] == 0


def test_the_block_still_on_its_way_down_when_the_run_ends_is_not_a_hole():
    """Period 2; the direct clients store slot k at 2k. The run stops at 20.9."""
    ref = {k: 2.0 * k for k in range(11)}
    deep = [(k, 2.0 * k + 3.3) for k in range(8)]          # 3.3 s behind the direct clients
    assert metrics.last_slot_before(ref, 20.9 - 2.0) == 9   # one period only: slots 8 and 9 "lost"
    # Slot 8 would reach it at 19.3, slot 9 at 21.3: with a period for jitter, neither counts.
    assert metrics.last_expected_slot(ref, deep, 20.9, 2.0) == 7
    # A client that stopped receiving early keeps its small lag: its missing tail counts.
    stalled = [(k, 2.0 * k + 0.1) for k in range(5)]
    assert metrics.last_expected_slot(ref, stalled, 20.9, 2.0) == 9
    assert metrics.last_expected_slot(ref, [], 20.9, 2.0) == 9

def test_tree_check_finds_loops_and_over_full_clients():
    statuses = {"a": {"parent": {"ip": "b"}, "children": [{"ip": "b"}], "max_children": 1},
                "b": {"parent": {"ip": "a"}, "children": [{"ip": "a"}, {"ip": "c"}], "max_children": 1},
                "c": {"parent": "server", "children": [], "max_children": 2}}
    check = metrics.tree_check(statuses)
    assert check["loops"] == 2
    assert check["over_limit"] == ["b"]


def test_repair_after_a_failure():
    blocks = [(0, 0.0), (1, 1.0), (4, 4.5), (5, 5.0)]
    assert metrics.repair_after(blocks, 1.5, list(range(6))) == {"took": 3.0, "missed": 2,
                                                                  "late": None}
    assert metrics.repair_after(blocks, 6.0, list(range(6))) == {"took": None, "missed": None,
                                                                  "late": None}


def test_a_repair_is_late_by_the_first_blocks_lag_over_the_usual_one():
    """Slots due every 2 s, stored by the earliest client at 2s + 0.1; this one usually
    0.5 s after that. Its relay dies at 9.0: slot 4 comes 1.2 s later than usual, the wait
    for a block due anyway (took) is more."""
    ref = {s: 2 * s + 0.1 for s in range(10)}
    blocks = [(s, 2 * s + 0.6) for s in range(4)] + [(4, 8.1 + 0.5 + 1.2), (5, 10.6)]
    rep = metrics.repair_after(blocks, 7.0, list(range(6)), ref)
    assert rep["missed"] == 0 and abs(rep["late"] - 1.2) < 1e-9 and abs(rep["took"] - 2.8) < 1e-9
    on_time = metrics.repair_after(blocks[:4] + [(4, 8.6)], 7.0, list(range(6)), ref)
    assert on_time["late"] == 0.0 and abs(on_time["took"] - 1.6) < 1e-9


# -------------------------------------------------------------- the harness

def run_bench(tmp_path, *options: str) -> dict:
    """Run the harness on the last commit's server and client (``--code HEAD``).

    These tests check the harness, not the relay client: the committed code
    keeps them independent of uncommitted work in client/ and server/.
    """
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(REPO / "bench" / "overlay.py"), "--code", "HEAD", "--period", "0.5",
            "--film-seconds", "20", "--film-size", "160x90", "--quiet",
            "--json", str(out), *options]
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "continuity" in proc.stdout           # the table for people
    return json.loads(out.read_text())




def test_small_run_with_one_kill_reports_every_figure(tmp_path):
    result = run_bench(tmp_path, "--clients", "5", "--server-slots", "1", "--max-children", "2",
                       "--duration", "14", "--kill-rate", "0.5", "--victims", "parents",
                       "--plot", str(tmp_path / "bench.png"))
    run = result["overlay"]
    for section, keys in FIGURES.items():
        for key in keys:
            assert key in run[section], f"{section}.{key} missing"
    assert "all_receiving_after_s" in run and "lag_s_by_depth" in run
    assert len(run["per_client"]) == 5
    assert run["survivors"] == 4
    [kill] = run["repair"]["failures"]
    assert kill["action"] == "kill" and kill["affected"], kill
    assert run["tree"]["loops"] == 0
    assert run["continuity"]["max"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert not list((tmp_path / "tmp").iterdir()), "the temporary folder was left behind"


def test_clients_pointed_at_a_wrong_port_show_zero_continuity(tmp_path):
    result = run_bench(tmp_path, "--clients", "2", "--server-slots", "1", "--max-children", "1",
                       "--duration", "4", "--client-server-port", "6999")
    run = result["overlay"]
    assert run["continuity"]["max"] == 0
    assert all(c["continuity"] == 0 for c in run["per_client"])
    assert run["startup_s"]["n"] == 0


# ------------------------------------------------------------ the demo's tail

def test_the_tail_reader_hands_back_only_new_complete_lines(tmp_path):
    log = tmp_path / "player.log"
    tail = FileTail(log)
    assert tail.new_lines() == []                        # no file yet
    log.write_bytes(b"played 0000000001.mkv\nplayed 00000")
    assert tail.new_lines() == ["played 0000000001.mkv"]
    assert tail.new_lines() == []
    # What was read is never read again: rewriting it changes nothing.
    with open(log, "r+b") as f:
        f.write(b"XXXXXXXXXXXXXXXXXXXXX")
    with open(log, "ab") as f:
        f.write(b"00002.mkv\nvdpau noise\n")
    assert tail.new_lines() == ["played 0000000002.mkv", "vdpau noise"]
    assert tail.offset == log.stat().st_size
    # A file that shrank (rotated, truncated) is read from its start.
    log.write_bytes(b"played 0000000009.mkv\n")
    assert tail.new_lines() == ["played 0000000009.mkv"]


def test_the_tail_reader_reads_at_most_max_read_per_call(tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"line\n" * 1000)                    # 5,000 bytes
    tail = FileTail(log, max_read=1024)
    first = tail.new_lines()
    assert tail.offset == 1024 and len(first) == 204
    rest = []
    while tail.offset < 5000:
        rest += tail.new_lines()
    assert len(first) + len(rest) == 1000


# ------------------------------------------------------------ the output

def summary(*values):
    return {"min": min(values), "median": sorted(values)[len(values) // 2],
            "mean": sum(values) / len(values), "p99": max(values), "max": max(values), "n": len(values)}


def fake_results() -> dict:
    """Results as the harness writes them (JSON keys are strings), for the output code."""
    run = {
        "kind": "overlay", "clients": 5, "survivors": 5, "server_slots": 1,
        "continuity": summary(1.0, 0.9), "on_time_fraction": summary(1.0),
        "startup_s": summary(2.0, 3.0), "all_receiving_after_s": 3.0,
        "lag_s": summary(0.01, 0.02), "lag_s_by_depth": {"1": summary(0.0), "2": summary(0.01)},
        "repair": {"failures": [], "time_to_next_block_s": summary(0.5),
                   "blocks_missed": summary(0)},
        "tree": {"depth_histogram": {"2": 2, "1": 1, "3": 2},
                 "best_depth_histogram": {"1": 1, "2": 2, "3": 2}, "loops": 0, "over_limit": []},
        "load": {"jain_index_relays": 0.93, "server_bytes_sent": 2e6},
        "cost": {"client_cpu_s": summary(1.0), "client_peak_rss_mib": summary(30.0),
                 "server_cpu_s": 1.0, "server_peak_rss_mib": 16.0},
        "per_client": [{"continuity": 1.0, "fate": "alive", "bytes_sent": 1e6 * i,
                        "max_children": 2} for i in range(5)],
    }
    return {"title": "N=5", "overlay": run}


def test_the_table_prints_depths_readably_and_explains_jain():
    lines = overlay.table(fake_results()).splitlines()
    [depths] = [line for line in lines if line.startswith("clients by depth")]
    assert depths.split(None, 4)[-1].strip() == "1:1 2:2 3:2 (best 1:1 2:2 3:2)"
    assert "{" not in "\n".join(lines)
    [note] = [line for line in lines if line.startswith("Jain:")]
    assert "Jain's fairness index" in note and "1 = " in note


def test_the_plot_counts_clients_in_whole_numbers_and_explains_jain():
    fig = overlay.figure(fake_results())
    histogram = fig.axes[1]
    ticks = [t for t in histogram.get_yticks() if histogram.get_ylim()[0] <= t <= histogram.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert "Jain's fairness index" in fig.axes[3].get_title()


@pytest.mark.parametrize("argv, usage", [
    (["-m", "bench"], "python -m bench"),
    (["-m", "bench.overlay"], "python -m bench.overlay"),
    (["bench/overlay.py"], "python bench/overlay.py"),
])
def test_usage_names_the_command_as_it_was_typed(argv, usage):
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {usage} "), done.stdout[:200]


def test_the_best_tree_of_capped_uplinks_counts_the_children_each_can_feed():
    """The 720p film's 3.9 Mbit/s stream: a 2 Mbit/s uplink feeds nobody, 8 one, 20 all of K = 3."""
    stream = 3.9e6 / 8
    assert [metrics.fanout_by_capacity(3, cap, stream) for cap in (2, 8, 20, None)] == [0, 1, 3, 3]
    assert metrics.fanout_by_capacity(3, 8, None) == 3
    # 30 clients in thirds, two server slots: the 20 Mbit/s ones first, then the 8s in chains.
    fanouts = [metrics.fanout_by_capacity(3, cap, stream) for cap in [2] * 10 + [8] * 10 + [20] * 10]
    assert metrics.best_depths(fanouts, 2) == {1: 2, 2: 6, 3: 18, 4: 4}
    assert metrics.best_depths([3] * 30, 2) == {1: 2, 2: 6, 3: 18, 4: 4}
