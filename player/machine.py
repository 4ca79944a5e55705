"""The player's decisions as a pure state machine: no libvlc, no files, no clock.

The driver (:mod:`player.loop`) feeds it what it observes, each with the time
it happened:

- :meth:`PlayerMachine.on_listing`: the block names now in the store;
- :meth:`PlayerMachine.on_started`, :meth:`PlayerMachine.on_progress`,
  :meth:`PlayerMachine.on_ended`, :meth:`PlayerMachine.on_error`: what VLC
  reported about the block it was told to play;
- :meth:`PlayerMachine.on_tick`: time passing (to notice a stalled block).

Each returns the list of actions the driver must carry out, in order:
:class:`Play`, :class:`Delete`, and notices to log (:class:`Finished`,
:class:`Skip`, :class:`Wait`, :class:`Buffering`, :class:`Stale`).

States::

    BUFFERING --(enough blocks, or the oldest waited start_timeout)--> STARTING
    STARTING  --(started)--> PLAYING
    STARTING, PLAYING --(error, or no progress for stall_timeout)--> skip it, next
    PLAYING   --(ended)--> finished it, next
    next: a block is pending --> STARTING, else WAITING
    WAITING   --(a block arrives)--> STARTING

Rules it guarantees:

- blocks play in name order; a block whose name sorts before the one already
  handed to VLC is never played (it came too late) and never deleted;
- a block is deleted only after VLC has finished it (ended, or failed on it),
  never before and never one that was not played; with ``keep`` never;
- the block being played when the player stops is not deleted (there is no
  stop input: the driver simply stops feeding the machine).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Union

from player.queue import is_block_name


class State(enum.Enum):
    BUFFERING = "buffering"  # not started yet: collecting the start buffer
    STARTING = "starting"    # VLC was told to play ``current``, not started yet
    PLAYING = "playing"      # VLC is showing ``current``
    WAITING = "waiting"      # ``current`` ended, the next block is not there yet


@dataclass(frozen=True)
class Play:
    """Hand block ``name`` to VLC. ``waited``: seconds the screen waited for it."""

    name: str
    waited: float | None = None


@dataclass(frozen=True)
class Finished:
    """Block ``name`` was played to its end."""

    name: str


@dataclass(frozen=True)
class Skip:
    """Block ``name`` could not be played (``reason``); playback goes on."""

    name: str
    reason: str


@dataclass(frozen=True)
class Delete:
    """Remove block ``name`` from the store: VLC is done with it."""

    name: str


@dataclass(frozen=True)
class Wait:
    """The block after ``after`` is not there yet: the picture waits."""

    after: str


@dataclass(frozen=True)
class Buffering:
    """Not started yet: ``have`` of the ``need`` blocks of the start buffer."""

    have: int
    need: int


@dataclass(frozen=True)
class Stale:
    """Block ``name`` arrived after a later block (``played``) was played: left alone."""

    name: str
    played: str


Action = Union[Play, Finished, Skip, Delete, Wait, Buffering, Stale]


@dataclass
class PlayerMachine:
    """Which block to play next, when to start, what to delete.

    ``buffer``: blocks present before the first one is played (at least 1).
    ``start_timeout``: start anyway once the oldest block has waited that long.
    ``stall_timeout``: a block that shows no progress for that long counts as
    undecodable. ``keep``: never delete anything.
    """

    buffer: int = 2
    keep: bool = False
    stall_timeout: float = 5.0
    start_timeout: float = 5.0

    state: State = field(default=State.BUFFERING, init=False)
    current: str | None = field(default=None, init=False)
    _pending: list[str] = field(default_factory=list, init=False)
    _cursor: str | None = field(default=None, init=False)     # last block handed to VLC
    _handled: set[str] = field(default_factory=set, init=False)  # played or skipped
    _stale_reported: set[str] = field(default_factory=set, init=False)
    _first_seen: float | None = field(default=None, init=False)
    _buffer_reported: int | None = field(default=None, init=False)
    _last_progress: float = field(default=0.0, init=False)
    _wait_since: float = field(default=0.0, init=False)

    def __post_init__(self):
        if self.buffer < 1:
            raise ValueError(f"buffer must be at least 1 block, not {self.buffer}")
        if self.stall_timeout <= 0 or self.start_timeout < 0:
            raise ValueError("timeouts must be positive")

    @property
    def pending(self) -> list[str]:
        """Blocks known to be waiting after the current one, in play order."""
        return list(self._pending)

    # -- inputs ---------------------------------------------------------------

    def on_listing(self, names: Iterable[str], now: float) -> list[Action]:
        """The store now holds ``names`` (any order; non-block names are ignored)."""
        present = sorted({n for n in names if is_block_name(n)})
        cursor = self._cursor
        self._pending = [n for n in present if cursor is None or n > cursor]
        # Forget names that left the store, so these sets stay bounded.
        present_set = set(present)
        self._handled &= present_set
        self._stale_reported &= present_set

        actions: list[Action] = []
        if cursor is not None:
            for name in present:
                if name >= cursor:
                    break
                if name not in self._handled and name not in self._stale_reported:
                    self._stale_reported.add(name)
                    actions.append(Stale(name, cursor))

        if self.state is State.BUFFERING:
            actions += self._buffering(now)
        elif self.state is State.WAITING and self._pending:
            actions.append(self._play(self._pending[0], now, waited=now - self._wait_since))
        return actions

    def on_started(self, now: float) -> list[Action]:
        """VLC started playing the current block."""
        if self.state is State.STARTING:
            self.state = State.PLAYING
            self._last_progress = now
        return []

    def on_progress(self, now: float) -> list[Action]:
        """VLC's play position of the current block moved."""
        if self.state in (State.STARTING, State.PLAYING):
            self._last_progress = now
        return []

    def on_ended(self, now: float, played_ms: int) -> list[Action]:
        """VLC reached the end of the current block, at position ``played_ms``.

        An end before any picture or sound (``played_ms <= 0``) means that
        nothing in the block could be decoded: it is skipped. An end that is
        not preceded by a start belongs to an earlier block and is ignored.
        """
        if self.state is not State.PLAYING:
            return []
        if played_ms <= 0:
            return self._fail(now, "nothing in it could be decoded")
        name = self.current
        actions: list[Action] = [Finished(name)]
        if not self.keep:
            actions.append(Delete(name))
        return actions + self._next(now)

    def on_error(self, now: float, reason: str) -> list[Action]:
        """VLC (or the driver's own check) cannot play the current block."""
        if self.state not in (State.STARTING, State.PLAYING):
            return []
        return self._fail(now, reason)

    def on_tick(self, now: float) -> list[Action]:
        """Time passes: a current block without progress for too long is skipped."""
        if self.state not in (State.STARTING, State.PLAYING):
            return []
        idle = now - self._last_progress
        if idle >= self.stall_timeout:
            return self._fail(now, f"no progress for {idle:.1f} s")
        return []

    # -- transitions ----------------------------------------------------------

    def _buffering(self, now: float) -> list[Action]:
        have = len(self._pending)
        if have == 0:
            self._first_seen = None
        elif self._first_seen is None:
            self._first_seen = now
        if have >= self.buffer or (have and now - self._first_seen >= self.start_timeout):
            return [self._play(self._pending[0], now)]
        if have != self._buffer_reported:
            self._buffer_reported = have
            return [Buffering(have, self.buffer)]
        return []

    def _play(self, name: str, now: float, waited: float | None = None) -> Play:
        self.state = State.STARTING
        self.current = self._cursor = name
        self._pending.remove(name)
        self._last_progress = now
        return Play(name, waited)

    def _fail(self, now: float, reason: str) -> list[Action]:
        name = self.current
        actions: list[Action] = [Skip(name, reason)]
        if not self.keep:
            actions.append(Delete(name))
        return actions + self._next(now)

    def _next(self, now: float) -> list[Action]:
        self._handled.add(self.current)
        if self._pending:
            return [self._play(self._pending[0], now)]
        self.state = State.WAITING
        self._wait_since = now
        after, self.current = self.current, None
        return [Wait(after)]
