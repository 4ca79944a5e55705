"""The driver: polls the store, relays VLC's events to the machine, carries out its actions.

Everything runs on the thread that calls :meth:`PlayerLoop.run`: every libvlc
call and every deletion. It blocks on the output's event queue with a timeout
of at most one poll interval, so a VLC event is handled as soon as it arrives
and a stop request is noticed within one poll interval (at once when it comes
through :meth:`PlayerLoop.request_stop`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Protocol

from player import vlc_output as out
from player.machine import (Action, Buffering, Delete, Finished, Play, PlayerMachine, SetRate,
                            Skip, SkipAhead, Stale, Wait)
from player.mkv import block_duration
from player.queue import block_names, looks_like_matroska
from player.report import PlayedLog, StateFile
from player.stats import GapMeter

log = logging.getLogger(__name__)


class Output(Protocol):
    """What the loop needs of a video output (:class:`player.vlc_output.VlcOutput`)."""

    events: queue.Queue

    def play(self, path: Path) -> bool: ...

    def position_ms(self) -> int: ...

    def wake(self) -> None: ...

    def set_rate(self, rate: float) -> None: ...


class PlayerLoop:
    """Plays the blocks of ``store`` through ``output`` as ``machine`` decides."""

    def __init__(self, store: Path, machine: PlayerMachine, output: Output, *,
                 stop: threading.Event | None = None, poll_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 played_log: PlayedLog | None = None, state_every: float = 0.5,
                 wall_clock: Callable[[], float] = time.time):
        self.store = Path(store)
        self.machine = machine
        self.output = output
        self.stop = stop or threading.Event()
        self.poll_interval = poll_interval
        self.clock = clock
        self.gaps = GapMeter()
        self.played = self.skipped = self.waits = self.skipped_ahead = 0
        self.played_log = played_log
        self.state_file = StateFile(self.store)
        self.state_every = state_every
        self.wall_clock = wall_clock
        self._next_state = 0.0
        self._known_durations: set[str] = set()
        self._block_rates: tuple[float, float] | None = None  # min, max rate during the block
        self._store_unreadable = False

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (from any thread, not from a signal handler).

        For signals, make :attr:`stop` a :class:`stopsignals.StopSignals` (an
        ``Event.set()`` in a handler can deadlock): its flag is seen within one
        poll interval.
        """
        self.stop.set()
        self.output.wake()

    def run(self) -> None:
        """Play until :attr:`stop` is set. The block being played stays on disk."""
        next_poll = self.clock()
        try:
            while not self.stop.is_set():
                now = self.clock()
                if now >= next_poll:
                    self._poll(now)
                    next_poll = now + self.poll_interval
                try:
                    kind, t = self.output.events.get(timeout=max(0.0, next_poll - self.clock()))
                except queue.Empty:
                    continue
                if not self.stop.is_set():
                    self._on_event(kind, t)
        finally:
            self._write_state(self.clock(), stopped=True)
            log.info("stopped: played %d, skipped %d, skipped ahead %d, waited %d times; gaps %s",
                     self.played, self.skipped, self.skipped_ahead, self.waits,
                     self.gaps.stats.summary())

    def _poll(self, now: float) -> None:
        try:
            names = block_names(self.store)
        except OSError as e:
            if not self._store_unreadable:
                log.warning("cannot read the store %s: %s", self.store, e.strerror or e)
                self._store_unreadable = True
            names = []
        else:
            if self._store_unreadable:
                log.info("the store %s is readable again", self.store)
                self._store_unreadable = False
        self._learn_durations(names)
        self._apply(self.machine.on_listing(names, now), now)
        self._apply(self.machine.on_tick(now, self.output.position_ms()), now)
        if now >= self._next_state:
            self._write_state(now)

    def _learn_durations(self, names: list[str]) -> None:
        """Read the real duration of each block the first time it is seen."""
        present = set(names)
        self._known_durations &= present
        new = [n for n in names if n not in self._known_durations]
        if new:
            self.machine.learn_durations({n: block_duration(self.store / n) for n in new})
            self._known_durations.update(new)

    def state(self, stopped: bool = False) -> dict:
        """What ``player.json`` says: distance to live, rate, counters."""
        m = self.machine
        return {"pid": os.getpid(), "state": "stopped" if stopped else m.state.value,
                "current": m.current, "behind_live_s": round(m.behind_live(), 3),
                "rate": m.rate, "live_edge": m.live is not None,
                "max_behind_s": m.live.max_behind if m.live else None,
                "waiting": len(m.pending), "played": self.played, "skipped": self.skipped,
                "skipped_ahead": self.skipped_ahead, "waits": self.waits,
                "updated_at": round(self.wall_clock(), 3)}

    def _write_state(self, now: float, stopped: bool = False) -> None:
        self._next_state = now + self.state_every
        self.state_file.write(self.state(stopped))

    def _record(self, event: str, **fields) -> None:
        if self.played_log is not None:
            self.played_log.add({"event": event, "t": round(self.wall_clock(), 3),
                                 "behind_live_s": round(self.machine.behind_live(), 3), **fields})

    def _rates_seen(self) -> dict:
        low, high = self._block_rates or (self.machine.rate, self.machine.rate)
        return {"rate_min": low, "rate_max": high}

    def _on_event(self, kind: str, t: float) -> None:
        if kind == out.STARTED:
            gap = self.gaps.started(t)
            if gap is not None:
                log.debug("gap before %s: %.1f ms", self.machine.current, gap * 1000)
            self._apply(self.machine.on_started(t), t)
        elif kind == out.PROGRESS:
            self._apply(self.machine.on_progress(t), t)
        elif kind == out.ENDED:
            self._apply(self.machine.on_ended(t, self.output.position_ms()), t)
        elif kind == out.ERROR:
            self._apply(self.machine.on_error(t, "VLC cannot decode it"), t)

    def _apply(self, actions: list[Action], t: float) -> None:
        work = deque(actions)
        while work:
            action = work.popleft()
            if isinstance(action, Play):
                work.extend(self._play(action, t))
            elif isinstance(action, Finished):
                self.played += 1
                self.gaps.ended(t)
                log.info("played %s", action.name)
                self._record("played", name=action.name, **self._rates_seen())
            elif isinstance(action, Skip):
                self.skipped += 1
                log.warning("skipped %s: %s", action.name, action.reason)
                self._record("skipped", name=action.name, reason=action.reason)
            elif isinstance(action, SkipAhead):
                self.skipped_ahead += len(action.names)
                log.warning("%.1f s behind live: skipped ahead over %d block(s) (%.1f s), "
                            "deleting them", action.behind, len(action.names), action.seconds)
                self._record("skipped_ahead", names=list(action.names),
                             seconds=round(action.seconds, 3))
            elif isinstance(action, SetRate):
                self.output.set_rate(action.rate)
                low, high = self._block_rates or (action.rate, action.rate)
                self._block_rates = (min(low, action.rate), max(high, action.rate))
                log.debug("rate %.2fx (%.1f s behind live)", action.rate, action.behind)
                self._record("rate", rate=action.rate)
            elif isinstance(action, Delete):
                self._delete(action.name)
            elif isinstance(action, Wait):
                self.waits += 1
                self.gaps.cancel()
                log.info("waiting for the block after %s", action.after)
            elif isinstance(action, Buffering):
                log.info("buffering: %d of %d blocks", action.have, action.need)
            elif isinstance(action, Stale):
                log.warning("ignoring %s: it arrived after %s was played", action.name,
                            action.played)
            else:  # pragma: no cover - a new action nobody handles is a bug
                raise TypeError(f"unknown action {action!r}")

    def _play(self, action: Play, t: float) -> list[Action]:
        path = self.store / action.name
        if not path.exists():
            return self.machine.on_error(t, "it vanished before it could be played")
        if not looks_like_matroska(path):
            return self.machine.on_error(t, "not a Matroska file")
        if not self.output.play(path):
            return self.machine.on_error(t, "VLC cannot open it")
        self._block_rates = None
        if action.waited is None:
            log.debug("playing %s", action.name)
        else:
            log.info("playing %s after waiting %.2f s", action.name, action.waited)
        return []

    def _delete(self, name: str) -> None:
        try:
            (self.store / name).unlink()
        except FileNotFoundError:
            log.debug("%s was already gone", name)
        except OSError as e:
            log.warning("cannot delete %s: %s", name, e.strerror or e)
        else:
            log.debug("deleted %s", name)
