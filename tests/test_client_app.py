"""The client program as a user starts it: its options, its start-up checks, its exit status.

Real client processes (and a real server where one is needed) on 127.0.x.y;
assertions on exit codes, status.json and what is created on disk.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from bench.cluster import REPO, Cluster, next_address, wait_until
from client import app
from client.peerproto import MAX_CHILDREN, Addr, FrameDecoder, Hello, block_digest, encode
from client.supervise import FAULT_ENV

PERIOD = 0.5


def status(proc):
    return Cluster.status_of(proc) or {}


def run_client(*args: str, stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess:
    """The client run to its end from the repository, as a user types it."""
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def warnings_and_errors(log_text: str) -> list[str]:
    """The log records of level WARNING or above (the client's logging format)."""
    return [line for line in log_text.splitlines()
            if re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) ", line)]


# -- item 1: the children limit is the peer protocol's ------------------------

def test_the_children_limit_is_what_the_protocol_carries():
    assert app._children_limit(str(MAX_CHILDREN)) == MAX_CHILDREN
    for bad in (str(MAX_CHILDREN + 1), "99999", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            app._children_limit(bad)
    hello = Hello("join", Addr("127.0.0.2", 9092), 0, max_children=MAX_CHILDREN)
    decoder = FrameDecoder()
    decoder.feed(encode(hello))
    assert decoder.next_message() == hello


def test_max_children_past_the_limit_is_refused_with_the_limit_in_help(tmp_path):
    help_text = run_client("--help").stdout
    assert f"at most {MAX_CHILDREN}" in help_text
    ip = next_address()
    done = run_client("--max-children", "99999", "--ip", ip, "--store", str(tmp_path / "s"),
                      "--no-player", "--no-menu")
    assert done.returncode == 2
    assert str(MAX_CHILDREN) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists()


def test_the_start_up_prompt_refuses_past_the_limit_and_asks_again(cluster):
    ip = next_address()
    store = cluster.workdir / "asked"
    argv = [cluster.python, "-m", "client", "--server", f"{next_address()}:{cluster.ports.server}",
            "--push-port", str(cluster.ports.push), "--peer-port", str(cluster.ports.peer),
            "--ip", ip, "--store", str(store), "--no-player", "--no-menu", "--period", str(PERIOD)]
    proc = cluster.spawn("asked", ip, argv, stdin=subprocess.PIPE)
    proc.popen.stdin.write(f"99999\n{MAX_CHILDREN + 1}\n3\n".encode())
    proc.popen.stdin.close()
    wait_until(lambda: (store / "status.json").exists(), 15, "the client to start")
    assert json.loads((store / "status.json").read_text())["max_children"] == 3
    proc.signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=15) == 0
    assert "Traceback" not in proc.log_text()


# -- item 4: an --ip the client cannot use ----------------------------------

@pytest.mark.parametrize("ip", ["notanip", "localhost", "192.0.2.1", "0.0.0.0"])
def test_an_unusable_ip_is_one_line_a_non_zero_exit_and_nothing_created(ip):
    """192.0.2.1 (a documentation address, RFC 5737) is on no interface of this machine."""
    store = REPO / "store" / ip
    assert not store.exists(), f"{store} is left from an earlier run: remove it"
    done = run_client("--ip", ip, "--max-children", "2", "--server", "127.0.0.1:1",
                      "--no-player", "--no-menu")
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ip in done.stderr and "Traceback" not in done.stderr
    assert not store.exists()


# -- item 13: a server that is not there ---------------------------------------

def test_an_absent_server_is_reported_once_then_retried_quietly_until_it_comes(cluster, films):
    server_ip, ip = next_address(), next_address()
    argv = [cluster.python, "-m", "client", "--max-children", "2",
            "--server", f"{server_ip}:{cluster.ports.server}",
            "--push-port", str(cluster.ports.push), "--peer-port", str(cluster.ports.peer),
            "--ip", ip, "--store", str(cluster.workdir / "stores" / ip),
            "--period", str(PERIOD), "--no-player", "--no-menu"]
    proc = cluster.spawn(f"client-{ip}", ip, argv)
    wait_until(lambda: status(proc).get("server_failures", 0) >= 6, 30,
               "six failed requests to the absent server")
    assert status(proc)["server_reachable"] is False
    assert status(proc)["state"] == "joining"
    assert len(warnings_and_errors(proc.log_text())) == 1, proc.log_text()

    cluster.start_server(ip=server_ip, max_clients=1, period=PERIOD)
    wait_until(lambda: status(proc).get("state") == "direct", 30, "the client to join the server")
    assert status(proc)["server_reachable"] is True and status(proc)["server_failures"] == 0
    assert len(warnings_and_errors(proc.log_text())) == 1, proc.log_text()


# -- item 5: no thread dies unnoticed -----------------------------------------

def test_a_failing_controller_stops_the_client_with_a_message_and_status_1(cluster, monkeypatch):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    monkeypatch.setenv(FAULT_ENV, "controller")
    proc = cluster.start_client(server, period=PERIOD)
    assert proc.popen.wait(timeout=30) == 1
    final = status(proc)
    assert final["state"] == "failed" and "controller" in final["problem"]
    assert "Traceback" in proc.log_text()  # logged with its traceback, not lost


def test_a_failing_menu_client_core_ends_the_menu_too(cluster, monkeypatch):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    monkeypatch.setenv(FAULT_ENV, "controller")
    proc = cluster.start_client(server, "--menu", period=PERIOD, stdin=subprocess.PIPE)
    assert proc.popen.wait(timeout=30) == 1  # the menu, blocked reading stdin, ends as well
    assert status(proc)["state"] == "failed"


def test_a_failing_parent_link_reader_becomes_a_rejoin(cluster, monkeypatch):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    relay = cluster.start_client(server, "--balance-margin", "0", period=PERIOD)
    wait_until(lambda: status(relay).get("state") == "direct", 20, "the first client to be direct")
    monkeypatch.setenv(FAULT_ENV, "parent-link")
    child = cluster.start_client(server, "--balance-margin", "0", period=PERIOD)
    monkeypatch.delenv(FAULT_ENV)
    wait_until(lambda: status(child).get("rejoins", 0) >= 1, 20, "the child to rejoin")
    before = status(child)["blocks_received"]
    wait_until(lambda: status(child).get("blocks_received", 0) >= before + 4
               and status(child).get("state") == "attached", 20, "the child to receive again")
    assert child.stop() == 0
    rejoins = json.loads((Cluster.store_of(child) / "stats.json").read_text())["rejoins"]
    assert any("internal error" in r["cause"] for r in rejoins), rejoins


# -- item 7: each channel's blocks in its own folder --------------------------

def test_after_a_switch_the_blocks_go_to_the_new_channel_s_folder(tmp_path, films):
    """Without --store the client writes to store/<ip>/channel<N> of its code: run a copy."""
    code = tmp_path / "code"
    for package in ("client", "server", "player"):
        shutil.copytree(REPO / package, code / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "stopsignals.py", code / "stopsignals.py")
    with Cluster(tmp_path / "run", films, code=code) as cluster:
        server = cluster.start_server(max_clients=1, period=PERIOD, channels=2)
        ip = next_address()
        argv = [cluster.python, "-m", "client", "--max-children", "2", "--server",
                f"{server.ip}:{cluster.ports.server}", "--push-port", str(cluster.ports.push),
                "--peer-port", str(cluster.ports.peer), "--ip", ip, "--period", str(PERIOD),
                "--no-player"]
        proc = cluster.spawn("menu", ip, argv, stdin=subprocess.PIPE)
        folder = {n: code / "store" / ip / f"channel{n}" for n in (0, 1)}

        def folder_status(n):
            try:
                return json.loads((folder[n] / "status.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return {}

        wait_until(lambda: folder_status(0).get("blocks_received", 0) >= 2, 20, "channel 0 blocks")
        proc.popen.stdin.write(b"channel 1\n")
        proc.popen.stdin.flush()
        wait_until(lambda: folder_status(1).get("state") == "direct"
                   and folder_status(1).get("channel") == 1, 20, "the client in channel 1")
        received = folder_status(1)["blocks_received"]
        wait_until(lambda: folder_status(1).get("blocks_received", 0) >= received + 3, 20,
                   "channel 1 blocks")
        proc.popen.stdin.write(b"quit\n")
        proc.popen.stdin.close()
        assert proc.popen.wait(timeout=15) == 0
    canal0, canal1 = ({block_digest(p.read_bytes()) for p in films.glob(f"{name}_*.mkv")}
                      for name in ("canal0", "canal1"))
    in0 = [block_digest(p.read_bytes()) for p in folder[0].glob("*.mkv")]
    in1 = [block_digest(p.read_bytes()) for p in folder[1].glob("*.mkv")]
    assert in1 and all(d in canal1 for d in in1)
    assert all(d in canal0 for d in in0)
