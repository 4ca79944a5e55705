"""Ctrl-C and SIGTERM, as a terminal and a supervisor send them, to every entry point.

Each program runs in a session of its own, so that a signal can go to its
whole process group, children included, as Ctrl-C in a terminal does. It must
end within a deadline with its exit code, leave no process of its group, and
survive repeated signals (twice quickly, and a storm of mixed ones: a handler
that takes a lock deadlocks or dies under those). The unit tests drive
:class:`stopsignals.StopSignals` in this process with real signals.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.cluster import REPO, next_address, wait_until
from stopsignals import StopSignals

#: Generous: the machine is shared; a hang lasts forever, not 20 s.
DEADLINE = 20.0

#: What is sent, as (signal, pause after it in seconds). The storm goes on for
#: a second, through the whole stop: a handler that takes a lock, raises in
#: the middle of the clean-up or is put back to the default too early shows.
PATTERNS = {
    "SIGINT": [(signal.SIGINT, 0)],
    "SIGTERM": [(signal.SIGTERM, 0)],
    "SIGINT-twice": [(signal.SIGINT, 0.005), (signal.SIGINT, 0)],
    "storm": [(signal.SIGINT, 0.001), (signal.SIGTERM, 0.001)] * 500,
}


# ------------------------------------------------------------------ helpers

def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def start_in_own_group(argv, log: Path, stdin=subprocess.DEVNULL, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, **kwargs)


def signal_group_and_wait(popen: subprocess.Popen, signals, log: Path) -> int:
    """Send ``signals`` to the group back to back; the exit code, and the group is gone."""
    pgid = popen.pid
    try:
        for sig, pause in signals:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            time.sleep(pause)
        try:
            code = popen.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {DEADLINE:.0f} s after {len(signals)} signal(s):\n"
                        + log.read_text(errors="replace")[-3000:])
        wait_until(lambda: not group_alive(pgid), 10, "every process of the group to end")
        return code
    finally:
        kill_group(pgid)


def listening(ip: str, port: int = 6060) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def status_state(store: Path) -> str | None:
    import json
    try:
        return json.loads((store / "status.json").read_text()).get("state")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def has_output(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


# ------------------------------------------------------ StopSignals itself

@pytest.fixture(autouse=True)
def pytest_keeps_its_handlers():
    """A StopSignals that saw a stop ignores the signals from then on, by design: undo that."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGALRM)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(wakeup)


def test_a_signal_sets_the_flag_and_wakes_a_waiter():
    with StopSignals([signal.SIGUSR1]) as stop:
        assert not stop.is_set() and not stop.wait(0.01)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert stop.wait(DEADLINE)
        assert (stop.count, stop.first) == (1, signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: stop.count == 3, DEADLINE, "both repeats counted")
        assert stop.wait(0) and stop.first == signal.SIGUSR1


def test_a_signal_that_lands_on_another_thread_still_wakes_the_waiting_main_thread():
    """The kernel may hand a process's signal to any thread; the main thread's
    blocking wait is then not interrupted, and only the wake-up fd wakes it."""
    with StopSignals([signal.SIGUSR1]) as stop:
        ready = threading.Event()
        other = threading.Thread(target=lambda: (ready.set(), time.sleep(1.0)))
        other.start()
        ready.wait()
        threading.Timer(0.2, signal.pthread_kill, (other.ident, signal.SIGUSR1)).start()
        t0 = time.monotonic()
        assert stop.wait(DEADLINE)
        assert time.monotonic() - t0 < DEADLINE / 2
        other.join()


def test_handlers_are_restored_unless_a_stop_came():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals([signal.SIGUSR1]):
        assert signal.getsignal(signal.SIGUSR1) is not before
    assert signal.getsignal(signal.SIGUSR1) is before
    stop = StopSignals([signal.SIGUSR1]).install()
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_until(lambda: stop.count == 1, DEADLINE, "the signal")
    stop.close()
    # Asked to stop: from then on ignored, never the default action (which kills).
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGUSR1)


def test_set_from_another_thread_wakes_the_file_descriptor():
    with StopSignals([signal.SIGUSR1]) as stop:
        threading.Timer(0.1, stop.set).start()
        readable, _, _ = select.select([stop.fileno()], [], [], DEADLINE)
        assert readable and stop.is_set() and stop.count == 0


def test_interrupt_is_raised_only_where_the_point_says_so():
    """The main thread is poked (SIGALRM) until the point says it is safe to raise."""
    asked = []
    safe = threading.Event()

    def point(frame):
        asked.append(frame.f_code.co_name if frame else None)
        return safe.is_set()

    with StopSignals([signal.SIGUSR1], interrupt=point) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)       # handled here, where it is not safe
        wait_until(lambda: asked, DEADLINE, "the handler to ask")
        assert stop.is_set()
        threading.Timer(0.3, safe.set).start()
        with pytest.raises(KeyboardInterrupt):
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                time.sleep(1.0)                    # interrupted here, by a poke
        assert len(asked) >= 2


# ----------------------------------------------------------------- programs

@pytest.mark.parametrize("pattern", PATTERNS, ids=list(PATTERNS))
def test_server_ends_on_stop_signals(films, tmp_path, pattern):
    ip = next_address()
    log = tmp_path / "server.log"
    server = start_in_own_group([sys.executable, "-m", "server", "--host", ip, "--films",
                                 str(films), "--period", "0.5"], log)
    try:
        wait_until(lambda: listening(ip) or server.poll() is not None, DEADLINE, "the server")
        assert server.poll() is None, log.read_text()
    finally:
        code = signal_group_and_wait(server, PATTERNS[pattern], log)
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


@pytest.fixture
def server(films, tmp_path):
    ip = next_address()
    log = tmp_path / "server.log"
    proc = start_in_own_group([sys.executable, "-m", "server", "--host", ip, "--films",
                               str(films), "--period", "0.5", "--max-clients", "1"], log)
    wait_until(lambda: listening(ip) or proc.poll() is not None, DEADLINE, "the server")
    yield ip
    kill_group(proc.pid)
    proc.wait()


@pytest.mark.parametrize("menu", [False, True], ids=["no-menu", "menu"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=list(PATTERNS))
def test_client_and_its_player_end_on_stop_signals(server, tmp_path, pattern, menu):
    ip = next_address()
    store = tmp_path / "store"
    log = tmp_path / "client.log"
    argv = [sys.executable, "-m", "client", "--max-children", "1", "--server", f"{server}:6060",
            "--ip", ip, "--store", str(store), "--period", "0.5"]
    if not menu:
        argv.append("--no-menu")
    # The menu waits at its prompt on a pipe that stays open.
    client = start_in_own_group(argv, log, stdin=subprocess.PIPE if menu else subprocess.DEVNULL)
    try:
        wait_until(lambda: status_state(store) in ("direct", "attached") or client.poll() is not None,
                   DEADLINE, "the client to join")
        wait_until(lambda: has_output(store / "player.log") or client.poll() is not None,
                   DEADLINE, "the player to start")
        assert client.poll() is None, log.read_text()
    finally:
        code = signal_group_and_wait(client, PATTERNS[pattern], log)
        if client.stdin:
            client.stdin.close()
    logs = log.read_text(errors="replace")
    if menu:                                   # the menu sends the client's log to a file
        logs += (store / "client.log").read_text(errors="replace")
    assert code == 0, logs[-3000:]
    assert (store / "stats.json").exists()
    assert "Traceback" not in logs


@pytest.mark.parametrize("pattern", PATTERNS, ids=list(PATTERNS))
def test_player_ends_on_stop_signals(tmp_path, pattern):
    store = tmp_path / "store"
    store.mkdir()
    log = tmp_path / "player.log"
    player = start_in_own_group([sys.executable, "player/player.py", str(store), "--headless"], log)
    try:
        wait_until(lambda: has_output(log) or player.poll() is not None, DEADLINE, "the player")
        assert player.poll() is None, log.read_text()
    finally:
        code = signal_group_and_wait(player, PATTERNS[pattern], log)
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------- demo

#: Stands for the terminal's shell: runs ``ARGV 2>&1 | cat > OUT`` in its own
#: process group, lives through the signals, prints the demo's exit code.
PIPELINE = """
import signal, subprocess, sys
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)         # reset to the default in the children
demo = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
with open(sys.argv[1], "wb") as out:
    cat = subprocess.Popen(["cat"], stdin=demo.stdout, stdout=out)
demo.stdout.close()
code = demo.wait()
cat.wait()
print(code)
"""


@pytest.mark.parametrize("pattern", ["SIGINT", "SIGINT-twice", "storm"])
def test_demo_through_a_pipe_stops_everything_and_removes_its_folder(films, tmp_path, pattern):
    """``python -m bench.demo 2>&1 | cat``, Ctrl-C in the terminal: the whole group gets SIGINT.

    The reader of the pipe dies at once; the demo must still stop all its
    processes (the player, a grandchild, included), remove its temporary
    folder and exit 0.
    """
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    out = tmp_path / "out.txt"
    shell = subprocess.Popen([sys.executable, "-c", PIPELINE, str(out), sys.executable, "-m",
                              "bench.demo", "--clients", "2", "--period", "0.5",
                              "--films", str(films)],
                             cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             start_new_session=True)

    def all_joined():
        states = [status_state(s.parent) for s in tmp.glob("relaytv-demo-*/stores/*/status.json")]
        return len(states) == 2 and all(s in ("direct", "attached") for s in states)

    try:
        wait_until(lambda: all_joined() or shell.poll() is not None, 60, "the demo's clients")
        wait_until(lambda: any(has_output(p) for p in tmp.glob("relaytv-demo-*/stores/*/player.log"))
                   or shell.poll() is not None, DEADLINE, "the player to start")
        assert shell.poll() is None, out.read_text()
    finally:
        signal_group_and_wait(shell, PATTERNS[pattern], out)
    assert shell.stdout.read().strip() == b"0", out.read_text()[-3000:]
    assert not list(tmp.iterdir()), "the temporary folder was left behind"
