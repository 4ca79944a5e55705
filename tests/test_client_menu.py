"""The client's menu, typed into a real client process's standard input.

Each test writes commands to the menu and awaits what they promise in the
client's status.json; the menu's own answers are read from its output (the
process log) only where the answer is what the command is for.
"""

from __future__ import annotations

import re
import signal
import subprocess

from bench.cluster import Cluster, wait_until

PERIOD = 0.5


def status(proc):
    return Cluster.status_of(proc) or {}


def placed(proc, channel):
    s = status(proc)
    return s.get("channel") == channel and s.get("state") in ("direct", "attached")


def menu_client(cluster, server, *extra, **kwargs):
    proc = cluster.start_client(server, "--menu", *extra, period=PERIOD, stdin=subprocess.PIPE,
                                **kwargs)
    return proc


def type_in(proc, *lines: str) -> None:
    proc.popen.stdin.write("".join(f"{line}\n" for line in lines).encode())
    proc.popen.stdin.flush()


def answered(proc, count: int) -> str:
    """The menu's output once ``count`` prompts have been printed (each command ends with one)."""
    wait_until(lambda: proc.log_text().count("relaytv> ") >= count, 20, f"{count} prompts")
    return proc.log_text()


def quit_menu(proc) -> None:
    type_in(proc, "quit")
    proc.popen.stdin.close()
    assert proc.popen.wait(timeout=15) == 0


# -- item 2: a channel the server does not have -----------------------------------

def test_a_channel_the_server_lacks_is_refused_and_the_client_stays_usable(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD, channels=2)
    proc = menu_client(cluster, server)
    wait_until(lambda: status(proc).get("blocks_received", 0) >= 2, 20, "the client to receive")
    type_in(proc, "channel 5", "channel x")
    out = answered(proc, 3)
    # The range comes from the server (13X), not from a fixed 0-9.
    assert re.search(r"channel N \(.*0-1\)", out), out
    assert placed(proc, 0)
    type_in(proc, "channel 1")
    wait_until(lambda: placed(proc, 1), 20, "the client in channel 1")
    type_in(proc, "leave")
    wait_until(lambda: status(proc).get("state") == "idle", 20, "the client to leave")
    quit_menu(proc)


def test_started_on_a_channel_the_server_lacks_the_client_goes_idle_and_can_join_another(
        cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD, channels=2)
    proc = menu_client(cluster, server, channel=5)
    wait_until(lambda: status(proc).get("state") == "idle", 20, "the client to give channel 5 up")
    assert "no channel 5" in status(proc)["problem"]
    type_in(proc, "channel 1")
    wait_until(lambda: placed(proc, 1), 20, "the client in channel 1")
    assert status(proc)["problem"] is None
    quit_menu(proc)


# -- item 8: the details ---------------------------------------------------------------

def test_the_current_channel_is_not_rejoined_and_a_second_leave_does_nothing(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD, channels=2)
    proc = menu_client(cluster, server)
    wait_until(lambda: placed(proc, 0), 20, "the client in channel 0")
    type_in(proc, "channel 0", "channel 1")
    wait_until(lambda: placed(proc, 1), 20, "the client in channel 1")
    assert status(proc)["rejoins"] == 1  # the switch to 1, no leave-and-rejoin of 0
    type_in(proc, "leave", "leave", "status")
    wait_until(lambda: status(proc).get("state") == "idle", 20, "the client to leave")
    out = answered(proc, 6)
    assert out.count("leaving the channel") == 1
    assert status(proc)["depth"] == 0 and status(proc)["parent"] is None
    quit_menu(proc)


def test_bad_arguments_are_refused_and_help_has_a_line_per_command(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    proc = menu_client(cluster, server)
    wait_until(lambda: placed(proc, 0), 20, "the client in place")
    type_in(proc, "log abc", "files extra", "status now", "help")
    out = answered(proc, 5)
    for command in ("log", "files", "status"):
        assert f"usage: {command}" in out
    help_lines = out.split("relaytv> ")[4].splitlines()
    commands = ("channel", "connections", "files", "help", "leave", "log", "quit", "status", "tree")
    for command in commands:
        line = next((l for l in help_lines if l.split() and l.split()[0] == command), None)
        assert line is not None and len(line.split()) >= 3, (command, help_lines)
    assert "EOF" not in out
    quit_menu(proc)


# -- item 9: the whole subtree -----------------------------------------------------

def test_tree_draws_the_whole_subtree_indented(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    root = menu_client(cluster, server, "--balance-margin", "0", max_children=1)
    wait_until(lambda: placed(root, 0), 20, "the first client in place")
    chain = [root]
    for _ in range(2):  # one child each: a chain root -> a -> b
        proc = cluster.start_client(server, "--balance-margin", "0", max_children=1, period=PERIOD)
        wait_until(lambda: placed(proc, 0), 20, f"{proc.ip} in place")
        chain.append(proc)
    a, b = (f"{p.ip}:{cluster.ports.peer}" for p in chain[1:])
    wait_until(lambda: status(root).get("tree") == [
        {"addr": a, "children": [{"addr": b, "children": []}]}], 20, "the root to know its subtree")
    type_in(root, "tree")
    out = answered(root, 2).split("relaytv> ")[1]
    lines = out.splitlines()
    assert lines[0].startswith(f"{root.ip}:{cluster.ports.peer}")
    indent = {line.strip().split()[0]: len(line) - len(line.lstrip()) for line in lines[1:3]}
    assert 0 < indent[a] < indent[b], lines
    quit_menu(root)


# -- item 14: Ctrl-C at the prompt ----------------------------------------------

def test_ctrl_c_at_the_menu_ends_on_a_fresh_line(cluster, films):
    server = cluster.start_server(max_clients=1, period=PERIOD)
    proc = menu_client(cluster, server)
    answered(proc, 1)
    proc.signal(signal.SIGINT)
    assert proc.popen.wait(timeout=15) == 0
    out = proc.log_text()
    assert out.endswith("relaytv> \n"), repr(out[-40:])
