"""The live edge without libvlc: rate control, skip ahead, rebuffering, block durations, noise.

A small simulation stands in for the server and VLC: blocks of a given
duration arrive every period, and "VLC" advances the current block by
``rate * dt`` per step. Time is the simulation's own; nothing sleeps.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from player.live import RATE_STEP, LiveEdge
from player.machine import (Delete, Finished, Play, PlayerMachine, SetRate, Skip, SkipAhead,
                            State, Wait)
from player.mkv import block_duration, duration_from_head
from player.noise import RepeatCounter, shape
from player.vlc_output import sound_device_present, vlc_options

NAME = "{:010d}.mkv".format


class Simulation:
    """A server sending ``block_s`` blocks every ``period`` s to a machine played by a fake VLC."""

    def __init__(self, machine: PlayerMachine, block_s: float, period: float, dt: float = 0.1):
        self.m, self.block_s, self.period, self.dt = machine, block_s, period, dt
        self.now = 0.0
        self.store: list[str] = []
        self.arrived = 0
        self.position = 0.0  # seconds into the current block
        self.played: list[str] = []
        self.deleted: list[str] = []
        self.actions: list = []
        self.behind: list[float] = []
        self.rates: list[float] = []

    def _do(self, actions) -> None:
        for a in actions:
            self.actions.append(a)
            if isinstance(a, Play):
                self.position = 0.0
                self.m.on_started(self.now)
            elif isinstance(a, Finished):
                self.played.append(a.name)
            elif isinstance(a, Delete):
                self.deleted.append(a.name)
                self.store.remove(a.name)

    def run(self, seconds: float) -> "Simulation":
        next_arrival = 0.0
        while self.now < seconds:
            if self.now >= next_arrival:
                name = NAME(self.arrived)
                self.arrived += 1
                self.store.append(name)
                self.m.learn_durations({name: self.block_s})
                next_arrival += self.period
            self._do(self.m.on_listing(list(self.store), self.now))
            if self.m.state is State.PLAYING:
                self.position += self.m.rate * self.dt
                if self.position >= self.block_s:
                    self._do(self.m.on_ended(self.now, int(self.block_s * 1000)))
            self._do(self.m.on_tick(self.now, int(self.position * 1000)))
            if self.m.state is not State.BUFFERING:
                self.behind.append(self.m.behind_live())
            self.rates.append(self.m.rate)
            self.now = round(self.now + self.dt, 6)
        return self

    def of(self, kind) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def live_machine(**kw) -> PlayerMachine:
    return PlayerMachine(buffer=2, live=LiveEdge(max_behind=8.0, max_rate=1.4))


# -- the rate control ----------------------------------------------------------

def test_the_wanted_rate_rises_from_half_the_target_to_the_bound():
    edge = LiveEdge(max_behind=8.0, max_rate=1.4)
    assert edge.wanted(0.0) == edge.wanted(4.0) == 1.0
    assert edge.wanted(4.5) == pytest.approx(1.2)
    assert edge.wanted(5.0) == edge.wanted(50.0) == pytest.approx(1.4)
    assert not edge.hopeless(24.0) and edge.hopeless(24.1)


def test_the_rate_moves_by_at_most_the_slew_and_in_steps():
    edge = LiveEdge(max_behind=8.0, max_rate=1.4, slew=0.1)
    rates = [edge.update(20.0, t / 10) for t in range(60)]
    assert rates[0] == 1.0 and rates[-1] == 1.4
    steps = [round(b - a, 6) for a, b in zip(rates, rates[1:])]
    assert all(0 <= s <= RATE_STEP + 1e-9 for s in steps)
    assert rates.index(1.4) >= 39  # 0.4 at 0.1 per second: 4 s
    down = [edge.update(0.0, 6 + t / 10) for t in range(60)]
    assert down[-1] == 1.0 and all(b <= a for a, b in zip(down, down[1:]))


def test_a_late_update_moves_the_rate_by_one_step_only():
    """A player loop held up for seconds (a busy machine) must not make the rate jump."""
    edge = LiveEdge(max_behind=8.0, max_rate=1.4, slew=0.1)
    edge.update(20.0, 0.0)
    rates = [edge.update(20.0, t) for t in (3.0, 6.0, 9.0)]  # each 3 s late: 0.3 of slew
    assert rates == [1.02, 1.04, 1.06]
    down = [edge.update(0.0, t) for t in (20.0, 30.0)]
    assert down == [1.04, 1.02]


def test_bad_bounds_are_refused():
    for kw in ({"max_behind": 0}, {"max_rate": 0.5}, {"max_behind": 8, "skip_behind": 6}):
        with pytest.raises(ValueError):
            LiveEdge(**kw)
    with pytest.raises(ValueError):
        PlayerMachine(keep=True, live=LiveEdge())


# -- whole runs --------------------------------------------------------------------

def test_blocks_longer_than_the_period_stay_within_the_target():
    sim = Simulation(live_machine(), block_s=2.6, period=2.0).run(600)
    assert max(sim.behind) <= 8.0
    assert max(sim.rates) <= 1.4 and max(sim.rates) >= 1.3  # it had to play faster
    assert not sim.of(SkipAhead) and not sim.of(Skip)
    assert sim.played == sim.deleted == [NAME(i) for i in range(len(sim.played))]
    assert len(sim.played) >= 290
    changes = [round(b - a, 6) for a, b in zip(sim.rates, sim.rates[1:])]
    assert max(abs(c) for c in changes) <= RATE_STEP + 1e-9  # never a jump


def test_without_the_live_edge_the_same_server_leaves_it_ever_further_behind():
    sim = Simulation(PlayerMachine(buffer=2), block_s=2.6, period=2.0).run(600)
    assert max(sim.behind) > 100 and set(sim.rates) == {1.0}


def test_blocks_shorter_than_the_period_wait_at_the_start_buffer_not_at_every_block():
    sim = Simulation(live_machine(), block_s=1.6, period=2.0).run(300)
    waits = len(sim.of(Wait))
    assert len(sim.played) >= 140 and not sim.of(SkipAhead)
    assert waits <= len(sim.played) / 3
    assert sim.played == sim.deleted == [NAME(i) for i in range(len(sim.played))]
    # Without the live edge, the same run stalls after nearly every block.
    old = Simulation(PlayerMachine(buffer=2), block_s=1.6, period=2.0).run(300)
    assert len(old.of(Wait)) >= len(old.played) - 5


def test_blocks_of_the_period_play_at_one_and_stay_within_the_target():
    sim = Simulation(live_machine(), block_s=2.0, period=2.0).run(300)
    assert max(sim.behind) <= 4.5 and set(sim.rates) == {1.0}
    assert sim.played == sim.deleted and len(sim.played) >= 145


def test_a_player_hopelessly_behind_skips_ahead_and_deletes_what_it_skipped():
    m = live_machine()
    names = [NAME(i) for i in range(20)]
    m.learn_durations({n: 2.0 for n in names})
    actions = m.on_listing(names, 0.0)  # 40 s waiting at the start: more than 3 x 8 s
    skip = next(a for a in actions if isinstance(a, SkipAhead))
    assert skip.names == tuple(names[:18]) and skip.seconds == pytest.approx(36.0)
    assert [a.name for a in actions if isinstance(a, Delete)] == names[:18]
    assert actions[-1] == Play(names[18])
    assert m.behind_live() == pytest.approx(4.0)
    assert m.on_listing(names[18:], 0.1) == []  # the skipped ones are not "stale"


def test_a_pause_of_the_machine_ends_in_one_skip_then_normal_play():
    sim = Simulation(live_machine(), block_s=2.0, period=2.0)
    sim.run(30)
    m = sim.m
    for i in range(30):  # 60 s of blocks arrive while the player is frozen
        name = NAME(sim.arrived)
        sim.arrived += 1
        sim.store.append(name)
        m.learn_durations({name: 2.0})
    sim.run(120)
    assert len(sim.of(SkipAhead)) == 1
    assert max(sim.behind[-200:]) <= 8.0
    assert sim.played == sorted(sim.played)


def test_set_rate_is_said_only_when_the_rate_changes():
    m = live_machine()
    m.learn_durations({NAME(i): 2.0 for i in range(4)})
    m.on_listing([NAME(i) for i in range(4)], 0.0)
    m.on_started(0.0)
    said = [a for t in range(1, 30) for a in m.on_tick(t / 10, 0) if isinstance(a, SetRate)]
    assert said and len({a.rate for a in said}) == len(said)


def test_behind_live_counts_the_rest_of_the_current_block_and_unknown_durations():
    m = PlayerMachine(buffer=1)
    m.learn_durations({NAME(0): 2.5, NAME(1): 3.5, NAME(2): None})
    m.on_listing([NAME(0), NAME(1), NAME(2)], 0.0)
    m.on_started(0.0)
    m.on_tick(0.5, 1000)
    assert m.behind_live() == pytest.approx(1.5 + 3.5 + 3.0)  # unknown: the mean


# -- durations from the Matroska header ------------------------------------------

def _ebml(ident: int, payload: bytes) -> bytes:
    width = (ident.bit_length() + 7) // 8
    return ident.to_bytes(width, "big") + bytes([0x80 | len(payload)]) + payload \
        if len(payload) < 127 else ident.to_bytes(width, "big") + \
        (0x4000 | len(payload)).to_bytes(2, "big") + payload


def test_the_duration_comes_from_segment_info():
    info = _ebml(0x2AD7B1, (1_000_000).to_bytes(3, "big")) + _ebml(0x4489, struct.pack(">d", 2613.0))
    head = _ebml(0x1A45DFA3, b"\x42\x86\x81\x01") + b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff" \
        + _ebml(0x114D9B74, b"\xec\x80") + _ebml(0x1549A966, info)
    assert duration_from_head(head) == pytest.approx(2.613)
    assert duration_from_head(head[:20]) is None
    assert duration_from_head(b"not a film at all") is None


def test_the_duration_of_real_blocks(films, tmp_path):
    assert block_duration(films / "canal0_00000.mkv") == pytest.approx(2.0, abs=0.1)
    assert block_duration(tmp_path / "missing.mkv") is None


# -- no sound card, noisy libraries ------------------------------------------------

def test_without_a_sound_device_the_audio_goes_to_the_null_output(tmp_path):
    assert not sound_device_present({}, tmp_path / "no-snd")
    (tmp_path / "snd").mkdir()
    (tmp_path / "snd" / "pcmC0D0p").touch()
    assert sound_device_present({}, tmp_path / "snd")
    assert sound_device_present({"PULSE_SERVER": "unix:/x"}, tmp_path / "no-snd")
    assert "--aout=dummy" in vlc_options(headless=False, vout="dummy", sound=False)
    assert "--aout=alsa" in vlc_options(headless=False, vout="dummy", aout="alsa", sound=False)
    assert not any(o.startswith("--aout") for o in vlc_options(headless=False, vout="dummy"))


def test_repeated_lines_pass_once_and_the_distinct_ones_are_bounded():
    counter = RepeatCounter(max_distinct=3)
    line = "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default"
    assert counter.admit(line) and not counter.admit(line)
    assert shape("[00007f3a5c001234] avcodec decoder: frame 12") == shape(
        "[00007f3a5c00abcd] avcodec decoder: frame 13")
    assert counter.admit("b 1") and not counter.admit("b 2") and counter.admit("c")
    assert not counter.admit("d")  # a fourth shape: over the bound
    assert (counter.repeats, counter.dropped) == (2, 1)


def test_the_filter_logs_a_library_line_once_and_keeps_the_players_own_lines(tmp_path):
    script = (
        "import logging, os, sys\n"
        "logging.basicConfig(level='INFO', stream=sys.stderr, format='%(name)s: %(message)s')\n"
        "from player.noise import StderrFilter\n"
        "f = StderrFilter(); f.start()\n"
        "for i in range(5000): os.write(2, b'ALSA lib conf.c:%d: cannot find card 0\\n' % i)\n"
        "logging.getLogger('player').info('own line')\n"
        "f.stop()\n"
        "os.write(2, b'after stop\\n')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, cwd=Path(__file__).resolve().parent.parent,
                            env=dict(os.environ))
    lines = result.stderr.splitlines()
    assert result.returncode == 0, result.stderr
    assert len(lines) <= 5, lines
    assert "player: own line" in lines and lines[-1] == "after stop"


def test_a_short_block_played_fast_counts_as_shown_even_with_no_position_reported():
    # VLC reports its position only every quarter second or so.
    m = PlayerMachine(buffer=1)
    m.learn_durations({NAME(0): 0.5, NAME(1): 0.5})
    m.on_listing([NAME(0), NAME(1)], 0.0)
    m.on_started(0.0)
    assert isinstance(m.on_ended(0.33, 0)[0], Finished)
    m.on_started(0.34)
    assert isinstance(m.on_ended(0.35, 0)[0], Skip)  # ended at once: nothing was decodable
