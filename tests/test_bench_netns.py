"""The overlay benchmark on separate hosts (``--netns``): network namespaces and upload caps.

These tests need root and iproute2 (``ip``, ``tc``), as the CI machine has.
Without them they FAIL with the reason, on purpose: a skipped test would
hide that the harness's --netns was never exercised. Everything they make is
named ``rtv<pid>-...`` and checked to be gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bench import netns
from bench.cluster import REPO, wait_until
from conftest import FIGURES



@pytest.fixture(autouse=True)
def root_and_iproute2():
    reason = netns.unavailable()
    if reason:
        pytest.fail(f"tests/test_bench_netns.py: {reason}", pytrace=False)


def names_with(prefix: str) -> list[str]:
    return [n for n in netns.namespaces() if n.startswith(prefix)]


def bench_argv(tmp_path, *options: str) -> list[str]:
    """The harness on the last commit's server and client (see tests/test_bench.py)."""
    return [sys.executable, str(REPO / "bench" / "overlay.py"), "--code", "HEAD", "--netns",
            "--film-seconds", "20", "--film-size", "160x90", "--quiet",
            "--json", str(tmp_path / "bench.json"), *options]


# ----------------------------------------------------------- the module alone

SENDER_RECEIVER = r"""
import socket, sys, time
role, ip, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if role == "recv":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 7000)); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    got, first = 0, None
    while got < size:
        data = c.recv(65536)
        if not data:
            break
        first = first or time.monotonic()
        got += len(data)
    print(got, time.monotonic() - first, flush=True)
else:
    with socket.create_connection((ip, 7000)) as s:
        s.sendall(b"x" * size)
"""


def transfer(topology: netns.Topology, sender_ip: str, receiver_ip: str, size: int) -> float:
    """Send ``size`` bytes over TCP from one host to another; the rate seen, Mbit/s."""
    receiver = subprocess.Popen(topology.exec_prefix(receiver_ip) + [
        sys.executable, "-c", SENDER_RECEIVER, "recv", receiver_ip, str(size)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(topology.exec_prefix(sender_ip) + [
            sys.executable, "-c", SENDER_RECEIVER, "send", receiver_ip, str(size)],
            check=True, timeout=60)
        out, _ = receiver.communicate(timeout=60)
    finally:
        receiver.kill()
        receiver.wait()
    got, seconds = out.split()
    assert int(got) == size
    return size * 8 / float(seconds) / 1e6


def test_the_upload_cap_limits_a_client_host_and_not_the_uncapped_server():
    cap = 4.0
    prefix = netns.prefix_of() + "t"
    with netns.Topology(prefix, upload_mbit=cap) as topology:
        server = topology.add_server()
        client = topology.add_client(0)
        assert "tbf" in topology.qdisc("c0") and "4Mbit" in topology.qdisc("c0")
        assert "tbf" not in topology.qdisc("s")
        # Loopback is up inside each host; nothing of ours is in this namespace.
        lo = subprocess.run(client.exec_prefix + ["ip", "-o", "link", "show", "lo"],
                            capture_output=True, text=True, check=True).stdout
        assert "LOOPBACK,UP" in lo, lo
        assert not [link for link in netns.root_links() if link.startswith(prefix)]
        # 1 MB up from the client: about 2 s at 4 Mbit/s (loose: a token bucket, a shared machine).
        up = transfer(topology, client.ip, server.ip, 1_000_000)
        assert 0.25 * cap < up < 2 * cap, f"client upload {up:.2f} Mbit/s with a cap of {cap}"
        # The same amount down from the uncapped server is far faster.
        down = transfer(topology, server.ip, client.ip, 1_000_000)
        assert down > 4 * cap, f"server upload {down:.2f} Mbit/s, but it has no cap"
    assert names_with(prefix) == []


def test_a_list_of_caps_is_spread_over_the_client_hosts_in_order():
    prefix = netns.prefix_of() + "u"
    with netns.Topology(prefix, upload_mbit=[2, 8, 20], clients=3) as topology:
        for index in range(3):
            topology.add_client(index)
        rates = [topology.qdisc(f"c{i}") for i in range(3)]
    for rate, cap in zip(rates, ("2Mbit", "8Mbit", "20Mbit")):
        assert "tbf" in rate and f"rate {cap}" in rate, rate
    assert names_with(prefix) == []


def test_cleanup_removes_what_a_dead_run_left_behind():
    dead = subprocess.Popen(["true"])
    dead.wait()                          # its pid names the "run", and it is gone
    prefix = netns.prefix_of(dead.pid)
    leftover = netns.Topology(prefix, upload_mbit=1)
    leftover.add_server()
    leftover.add_client(0)               # ... and never closed, as after a SIGKILL
    assert len(names_with(prefix)) == 3
    listed = subprocess.run([sys.executable, "-m", "bench.netns", "--list"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert f"{prefix}br" in listed
    proc = subprocess.run([sys.executable, "-m", "bench.netns", "--cleanup"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert names_with(prefix) == []


def test_without_root_it_says_so_and_exits_non_zero(monkeypatch, capsys):
    # In-process with a pretended user id: a real unprivileged user could not run
    # this machine's Python (it lives under /root).
    from bench import overlay
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as stop:
        overlay.main(["--netns", "--clients", "2"])
    assert stop.value.code != 0
    assert "--netns requires root" in capsys.readouterr().err


# ------------------------------------------------------------- the harness

def start_bench(tmp_path, clients: int, duration: int):
    """A --netns run of the harness (one server slot, fan-out 2, 4 Mbit/s caps) and its prefix.

    Its temporary folder is tmp_path/tmp, so a test can check it is removed.
    """
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    bench = subprocess.Popen(bench_argv(tmp_path, "--clients", str(clients), "--server-slots", "1",
                                        "--max-children", "2", "--period", "0.5",
                                        "--duration", str(duration), "--upload-mbit", "4"),
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    return bench, netns.prefix_of(bench.pid)


def test_a_quick_netns_run_reports_every_figure_and_leaves_no_namespace(tmp_path):
    bench, prefix = start_bench(tmp_path, clients=4, duration=15)
    try:
        # During the run: 6 hosts (bridge, server, 4 clients), each client capped.
        wait_until(lambda: len(names_with(prefix)) == 6 or bench.poll() is not None, 120,
                   "the run's namespaces")
        qdisc = subprocess.run(["tc", "-n", f"{prefix}c0", "qdisc", "show", "dev", f"{prefix}c0"],
                               capture_output=True, text=True).stdout
        out, err = bench.communicate(timeout=180)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 0, out + err
    assert "tbf" in qdisc and "4Mbit" in qdisc, qdisc
    assert "continuity" in out and "lag s per hop" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    run = result["overlay"]
    for section, keys in FIGURES.items():
        for key in keys:
            assert key in run[section], f"{section}.{key} missing"
    assert "lag_s_per_hop" in run
    assert len(run["per_client"]) == 4 and run["survivors"] == 4
    assert all(c["ip"].startswith("10.231.") for c in run["per_client"])
    assert result["netns"]["prefix"] == prefix and result["netns"]["hosts"] == 5
    assert result["netns"]["left_behind"] == []
    assert "netns" in result["machine"]["network"]
    assert run["continuity"]["median"] >= 0.9, run["continuity"]
    assert run["continuity"]["min"] >= 0.8, run["continuity"]
    assert run["tree"]["loops"] == 0
    assert names_with(prefix) == [], "namespaces left behind"
    assert not list((tmp_path / "tmp").iterdir()), "the temporary folder was left behind"


def test_sigterm_in_the_middle_of_a_run_removes_every_namespace(tmp_path):
    bench, prefix = start_bench(tmp_path, clients=3, duration=60)
    ours = str(tmp_path / "tmp")          # in every argv of the run's server and clients
    try:
        wait_until(lambda: len(names_with(prefix)) == 5 or bench.poll() is not None, 120,
                   "the run's namespaces")
        wait_until(lambda: any(ours in c and "10.231.1.4" in c for c in cmdlines())
                   or bench.poll() is not None, 60, "the last client to run in its namespace")
        assert bench.poll() is None, bench.communicate()
        bench.send_signal(signal.SIGTERM)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, out + err
    assert "interrupted" in err
    assert names_with(prefix) == [], "namespaces left behind after SIGTERM"
    assert not [c for c in cmdlines() if ours in c], "a process of the run is still running"
    assert not list((tmp_path / "tmp").iterdir()), "the temporary folder was left behind"


def cmdlines() -> list[str]:
    """The command line of every process."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(os.path.join(entry.path, "cmdline"), "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out
