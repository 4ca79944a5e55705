"""The player's loop on a real store directory with a fake video output (no libvlc)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from bench.cluster import wait_until
from player import vlc_output as out
from player.loop import PlayerLoop
from player.machine import PlayerMachine

MKV = b"\x1a\x45\xdf\xa3" + b"\0" * 100  # enough of Matroska for the loop's own check
B = [f"{i:010d}.mkv" for i in range(5)]


class CountingMachine(PlayerMachine):
    """A PlayerMachine that counts the store listings it was given (the loop's polls)."""

    listings = 0

    def on_listing(self, names, now):
        self.listings += 1
        return super().on_listing(names, now)


class FakeOutput:
    """Records what it was told to play; the test plays libvlc's part with :meth:`emit`."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.played: list[str] = []
        self.position = 1990

    def play(self, path: Path) -> bool:
        self.played.append(path.name)
        return True

    def position_ms(self) -> int:
        return self.position

    def wake(self) -> None:
        self.emit(out.WAKE)

    def emit(self, kind: str) -> None:
        self.events.put((kind, time.monotonic()))


@pytest.fixture
def running(tmp_path):
    """``running(buffer)`` -> (loop, output, thread): the loop runs on its own thread.

    Every loop is stopped and joined after the test.
    """
    started = []

    def start(buffer: int = 1):
        output = FakeOutput()
        loop = PlayerLoop(tmp_path, CountingMachine(buffer=buffer), output, poll_interval=0.02)
        thread = threading.Thread(target=loop.run, name="player-loop")
        thread.start()
        started.append((loop, thread))
        return loop, output, thread

    yield start
    for loop, thread in started:
        loop.request_stop()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_deletes_each_block_only_on_its_end_and_skips_non_matroska(tmp_path, running):
    for name in B[:2]:
        (tmp_path / name).write_bytes(MKV)
    (tmp_path / B[2]).write_bytes(b"not a film")
    (tmp_path / "status.json").write_text("{}")
    loop, output, thread = running(buffer=2)

    wait_until(lambda: output.played == B[:1], 2, "the first block")
    output.emit(out.STARTED)
    output.emit(out.PROGRESS)
    polls = loop.machine.listings
    wait_until(lambda: loop.machine.listings >= polls + 5, 2, "5 more polls")
    assert (tmp_path / B[0]).exists()

    output.emit(out.ENDED)
    wait_until(lambda: output.played == B[:2], 2, "the second block")
    assert not (tmp_path / B[0]).exists() and (tmp_path / B[1]).exists()

    output.emit(out.STARTED)
    output.emit(out.ENDED)  # B[2] is no film: skipped and removed, then it waits
    wait_until(lambda: not (tmp_path / B[2]).exists(), 2, "the junk block removed")
    assert output.played == B[:2]
    (tmp_path / B[3]).write_bytes(MKV)
    wait_until(lambda: output.played == [B[0], B[1], B[3]], 2, "the late block")

    loop.request_stop()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert (tmp_path / B[3]).exists() and (tmp_path / "status.json").exists()
    assert (loop.played, loop.skipped, loop.waits) == (2, 1, 1)
    assert loop.gaps.stats.count == 1  # B0 -> B1; the wait before B3 is not a gap


def test_a_stop_flag_alone_is_seen_within_a_poll_interval(tmp_path):
    output = FakeOutput()
    loop = PlayerLoop(tmp_path, PlayerMachine(), output, poll_interval=0.05)
    thread = threading.Thread(target=loop.run)
    thread.start()
    t0 = time.monotonic()
    loop.stop.set()  # what the signal handler does: no wake-up event
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 0.5


class RatedOutput(FakeOutput):
    """A FakeOutput that records the rates it was told."""

    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def set_rate(self, rate: float) -> None:
        self.rates.append(rate)


def test_a_live_loop_speeds_up_and_says_so_in_player_json_and_the_played_log(tmp_path):
    import json

    from player.live import LiveEdge
    from player.report import PlayedLog, read_played_log

    names = [f"{i:010d}.mkv" for i in range(9)]  # no duration in the stub: 2 s each, 18 s
    for name in names:
        (tmp_path / name).write_bytes(MKV)
    output = RatedOutput()
    loop = PlayerLoop(tmp_path, PlayerMachine(buffer=2, live=LiveEdge(max_behind=8.0)), output,
                      poll_interval=0.02, state_every=0.05,
                      played_log=PlayedLog(tmp_path / "played.jsonl"))
    thread = threading.Thread(target=loop.run, name="player-loop")
    thread.start()
    try:
        wait_until(lambda: output.played == names[:1], 2, "the first block")
        output.emit(out.STARTED)
        wait_until(lambda: len(output.rates) >= 3, 5, "the rate rising")
        state = wait_until(lambda: json.loads((tmp_path / "player.json").read_text())
                           if (tmp_path / "player.json").exists() else None, 2, "player.json")
        assert state["live_edge"] and state["behind_live_s"] > 10 and state["rate"] > 1.0
        output.emit(out.ENDED)
        wait_until(lambda: output.played == names[:2], 2, "the second block")
    finally:
        loop.request_stop()
        thread.join(timeout=5)
    assert output.rates == sorted(output.rates) and output.rates[0] == 1.02
    events = read_played_log(tmp_path / "played.jsonl")
    assert [e["rate"] for e in events if e["event"] == "rate"] == output.rates
    assert [e["name"] for e in events if e["event"] == "played"] == names[:1]
    assert json.loads((tmp_path / "player.json").read_text())["state"] == "stopped"


def test_the_played_log_stays_under_its_bound(tmp_path):
    from player.report import PlayedLog, read_played_log

    played = PlayedLog(tmp_path / "p.jsonl", limit=300)
    for i in range(50):
        played.add({"event": "played", "name": f"{i:010d}.mkv"})
    assert (tmp_path / "p.jsonl").stat().st_size <= 300
    assert (tmp_path / "p.jsonl.1").stat().st_size <= 300
    names = [e["name"] for e in read_played_log(tmp_path / "p.jsonl")]
    assert names[-1] == f"{49:010d}.mkv" and names == sorted(names) and len(names) < 50
