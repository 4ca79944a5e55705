"""The player as a real subprocess with real libvlc, headless (--vout=dummy --aout=dummy).

What the player did is read off its log: one INFO line ``playing NAME`` when a
block is handed to VLC, ``played NAME`` at its end, ``deleted NAME`` (DEBUG)
after that.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import REPO, wait_until

PLAYER_DIR = REPO / "player"


def block(i: int, channel: int = 0) -> str:
    return f"canal{channel}_{i:05d}.mkv"


class PlayerRun:
    """One player process, its log, and what the log says."""

    def __init__(self, store: Path, log_path: Path, popen: subprocess.Popen):
        self.store, self.log_path, self.popen = store, log_path, popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def names(self, verb: str) -> list[str]:
        """Block names of the ``<verb> NAME`` lines, in log order."""
        return re.findall(rf" {verb} (\S+\.mkv)", self.log())

    def has(self, text: str) -> bool:
        return text in self.log()

    def now_playing(self) -> str | None:
        """The block handed to VLC and not yet finished or skipped, per the log."""
        log = self.log()
        started = re.findall(r" playing (\S+\.mkv)", log)
        if started and not re.search(rf" (played|skipped) {re.escape(started[-1])}", log):
            return started[-1]
        return None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout=timeout)


@pytest.fixture
def player(tmp_path):
    """``player(store, *args, how=..., env=...)`` starts a player; all are stopped after the test.

    ``how``: ``script`` (``python player.py`` inside player/), ``path``
    (``python player/player.py``) or ``module`` (``python -m player``).
    """
    runs: list[PlayerRun] = []

    def start(store: Path, *args: str, how: str = "script", env: dict | None = None,
              headless: bool = True) -> PlayerRun:
        argv, cwd = {"script": ([sys.executable, "player.py"], PLAYER_DIR),
                     "path": ([sys.executable, "player/player.py"], REPO),
                     "module": ([sys.executable, "-m", "player"], REPO)}[how]
        argv = argv + [str(store), "--log-level", "DEBUG"] + list(args)
        if headless:
            argv.append("--headless")
        log_path = tmp_path / f"player-{len(runs)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     env=env if env is not None else dict(os.environ))
        run = PlayerRun(store, log_path, popen)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.popen.poll() is None:
            run.popen.send_signal(signal.SIGTERM)
            try:
                run.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                run.popen.kill()
                run.popen.wait()


@pytest.fixture
def store(tmp_path) -> Path:
    """An empty store with the non-block files a client keeps there."""
    s = tmp_path / "store"
    s.mkdir()
    (s / "status.json").write_text('{"channel": 0}')
    (s / ".canal0_09999.mkv.part").write_bytes(b"half a block")
    return s


def arrive(films: Path, store: Path, name: str, data: bytes | None = None) -> None:
    """Put a block in the store the way the client does: temporary name, then rename."""
    temp = store / f".{name}.part"
    if data is None:
        shutil.copyfile(films / name, temp)
    else:
        temp.write_bytes(data)
    os.replace(temp, store / name)


class PlayingWatch:
    """Records, each time it is called, whether the block being played is on disk."""

    def __init__(self, run: PlayerRun):
        self.run = run
        self.seen: dict[str, bool] = {}

    def __call__(self) -> None:
        name = self.run.now_playing()
        if name is None:
            return
        exists = (self.run.store / name).exists()
        if self.run.now_playing() == name:  # still playing after the check: it counts
            self.seen[name] = self.seen.get(name, True) and exists


def until(run: PlayerRun, text: str, timeout: float = 10.0, also=None) -> None:
    """Wait until the player's log contains ``text`` (calling ``also()`` at each poll)."""
    def check():
        if also:
            also()
        if run.popen.poll() is not None:
            raise AssertionError(f"player exited ({run.popen.returncode}):\n{run.log()}")
        return text in run.log()
    try:
        wait_until(check, timeout, repr(text))
    except TimeoutError as e:
        raise AssertionError(f"{e}\n--- player log ---\n{run.log()}") from None


def deletions_follow_ends(run: PlayerRun) -> None:
    lines = run.log().splitlines()
    for name in run.names("deleted"):
        played = next(i for i, l in enumerate(lines)
                      if re.search(rf" (played|skipped) {re.escape(name)}", l))
        deleted = next(i for i, l in enumerate(lines) if l.endswith(f" deleted {name}"))
        assert played < deleted, name


def gap_figures(run: PlayerRun) -> tuple[int, float, float]:
    m = re.search(r"gaps count=(\d+) median=([\d.]+) ms max=([\d.]+) ms", run.log())
    assert m, run.log()
    return int(m[1]), float(m[2]), float(m[3])


# -- playing -----------------------------------------------------------------------

def test_plays_present_and_arriving_blocks_in_order_deleting_each_after_its_end(
        films, store, player):
    arrive(films, store, block(0))
    run = player(store, "--buffer", "2")
    watch = PlayingWatch(run)

    # The start buffer: one block is not enough to start.
    until(run, "buffering: 1 of 2 blocks")
    assert not run.names("playing")
    arrive(films, store, block(1))
    until(run, f"playing {block(0)}")

    # Blocks arriving while it plays are picked up in order.
    arrive(films, store, block(2))
    until(run, f"playing {block(1)}", also=watch)
    arrive(films, store, block(3))
    until(run, f"played {block(3)}", also=watch)
    assert run.stop() == 0

    expected = [block(i) for i in range(4)]
    assert run.names("playing") == expected
    assert run.names("played") == expected
    assert run.names("deleted") == expected
    deletions_follow_ends(run)
    # The block on screen was on disk every time we looked (at least 3 blocks seen).
    assert len(watch.seen) >= 3 and all(watch.seen.values()), watch.seen
    assert sorted(p.name for p in store.iterdir()) == [".canal0_09999.mkv.part", "player.json",
                                                       "status.json"]

    count, median_ms, max_ms = gap_figures(run)
    print(f"gaps: count={count} median={median_ms} ms max={max_ms} ms")
    assert count == 3
    assert median_ms < 100 and max_ms < 500


def test_a_late_block_makes_it_wait_once_then_resume(films, store, player):
    arrive(films, store, block(0))
    run = player(store, "--buffer", "1", how="module")
    until(run, f"waiting for the block after {block(0)}")
    assert not (store / block(0)).exists()
    arrive(films, store, block(1))
    until(run, f"played {block(1)}")
    assert run.stop() == 0
    assert run.log().count("waiting for the block after") == 2  # after 0, then after 1
    assert re.search(rf"playing {block(1)} after waiting \d+\.\d\d s", run.log())
    assert run.names("played") == [block(0), block(1)]


def test_corrupt_blocks_are_skipped_and_removed_and_the_next_one_plays(films, store, player):
    arrive(films, store, block(0), os.urandom(40_000))                          # not Matroska
    arrive(films, store, block(1), b"\x1a\x45\xdf\xa3" + os.urandom(40_000))   # Matroska magic, junk
    arrive(films, store, block(2))
    run = player(store, "--buffer", "3", how="path")
    until(run, f"played {block(2)}")
    assert run.stop() == 0
    log = run.log()
    assert re.search(rf"WARNING .*skipped {block(0)}: not a Matroska file", log), log
    assert re.search(rf"WARNING .*skipped {block(1)}: ", log), log
    assert run.names("played") == [block(2)]
    assert not any((store / block(i)).exists() for i in range(3))
    deletions_follow_ends(run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_it_promptly_and_leaves_unplayed_blocks(films, store, player, sig):
    for i in range(3):
        arrive(films, store, block(i))
    run = player(store)
    until(run, f"playing {block(0)}")
    t0 = time.monotonic()
    assert run.stop(sig) == 0
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, elapsed
    # The block on screen and the ones after it stay.
    assert all((store / block(i)).exists() for i in range(3))
    assert "stopped: played 0" in run.log()
    assert "Traceback" not in run.log()


def test_keep_plays_without_deleting(films, store, player):
    arrive(films, store, block(0))
    run = player(store, "--buffer", "1", "--keep")
    until(run, f"waiting for the block after {block(0)}")
    assert run.stop() == 0
    assert run.names("played") == [block(0)] and (store / block(0)).exists()


# -- --list and the one-line errors ------------------------------------------------

def run_once(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "player", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=20)


def test_list_prints_the_waiting_blocks_oldest_first_with_sizes(films, store):
    for i in (1, 0):
        arrive(films, store, block(i))
    result = run_once(str(store), "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sizes = [(store / block(i)).stat().st_size for i in (0, 1)]
    assert lines == [f"{block(0)}  {sizes[0]}", f"{block(1)}  {sizes[1]}"]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("player: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_or_unusable_directory_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_once(str(tmp_path / "nowhere"), "--headless"), "does not exist")
    (tmp_path / "file").write_text("")
    assert_one_line_error(run_once(str(tmp_path / "file"), "--list"), "not a directory")


def test_no_display_without_headless_is_a_one_line_error(films, store):
    arrive(films, store, block(0))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    assert_one_line_error(run_once(str(store), env=env), "DISPLAY", "--headless")
    assert (store / block(0)).exists()


def test_a_missing_libvlc_is_a_one_line_error_naming_the_packages(films, store, tmp_path):
    fake = tmp_path / "fakevlc"
    fake.mkdir()
    # What python-vlc does when libvlc.so cannot be loaded.
    (fake / "vlc.py").write_text("raise OSError('libvlc.so.5: cannot open shared object file')\n")
    arrive(films, store, block(0))
    env = dict(os.environ, PYTHONPATH=str(fake))
    result = run_once(str(store), "--headless", env=env)
    assert_one_line_error(result, "libvlc5 vlc-plugin-base vlc-plugin-video-output")
    assert (store / block(0)).exists()


def test_the_launch_api_starts_and_stops_the_player(films, store, tmp_path):
    from player.launch import start_player, stop_player

    for i in range(2):
        arrive(films, store, block(i))
    log_path = tmp_path / "launched.log"
    with open(log_path, "ab") as log:
        proc = start_player(store, headless=True, log=log, log_level="DEBUG")
    try:
        wait_until(lambda: f"playing {block(0)}" in log_path.read_text(), 10, "playback")
    finally:
        rc = stop_player(proc)
    assert rc == 0, log_path.read_text()
    assert (store / block(0)).exists() and (store / block(1)).exists()
