"""The player's decisions as a pure state machine: no libvlc, no files, no clock.

The driver (:mod:`player.loop`) feeds it what it observes, each with the time
it happened:

- :meth:`PlayerMachine.on_listing`: the block names now in the store;
- :meth:`PlayerMachine.on_started`, :meth:`PlayerMachine.on_progress`,
  :meth:`PlayerMachine.on_ended`, :meth:`PlayerMachine.on_error`: what VLC
  reported about the block it was told to play;
- :meth:`PlayerMachine.on_tick`: time passing, with VLC's play position (to
  notice a stalled block, and to steer the play rate towards live);
- :meth:`PlayerMachine.learn_durations`: the real durations of blocks (no
  actions: they only feed :meth:`PlayerMachine.behind_live`).

Each returns the list of actions the driver must carry out, in order:
:class:`Play`, :class:`Delete`, :class:`SetRate`, and notices to log
(:class:`Finished`, :class:`Skip`, :class:`SkipAhead`, :class:`Wait`,
:class:`Buffering`, :class:`Stale`).

With a :class:`player.live.LiveEdge` (``live``) the machine stays near live:
it plays faster when the blocks waiting add up to too much, skips ahead
(deleting the blocks it skips) when it is hopelessly behind, and, when it
runs dry, waits until the start buffer is full again instead of stalling
on every block. Without one (``--keep``, films on demand) it plays every
block at 1.0x and resumes as soon as the next block is there.

States::

    BUFFERING --(enough blocks, or the oldest waited start_timeout)--> STARTING
    STARTING  --(started)--> PLAYING
    STARTING, PLAYING --(error, or no progress for stall_timeout)--> skip it, next
    PLAYING   --(ended)--> finished it, next
    next: a block is pending --> STARTING, else WAITING
    WAITING   --(a block arrives; live: the start buffer is full again)--> STARTING
    next, live and hopelessly behind: skip ahead (delete the oldest waiting blocks) first

Rules it guarantees:

- blocks play in name order; a block whose name sorts before the one already
  handed to VLC is never played (it came too late) and never deleted;
- a block is deleted only after VLC has finished it (ended, or failed on it),
  never before, and never one that was not played except by a skip ahead
  (live and hopelessly behind, said by :class:`SkipAhead`); with ``keep`` never;
- the block being played when the player stops is not deleted (there is no
  stop input: the driver simply stops feeding the machine).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Union

from player.live import LiveEdge
from player.queue import is_block_name

#: A block's duration when its file does not say (the channel's nominal one).
NOMINAL_DURATION = 2.0


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


@dataclass(frozen=True)
class SetRate:
    """Play at ``rate`` from now on; ``behind``: seconds behind live that called for it."""

    rate: float
    behind: float


@dataclass(frozen=True)
class SkipAhead:
    """Hopelessly behind (``behind`` s): ``names`` are skipped (and deleted), ``seconds`` of them."""

    names: tuple[str, ...]
    seconds: float
    behind: float


Action = Union[Play, Finished, Skip, Delete, Wait, Buffering, Stale, SetRate, SkipAhead]


@dataclass
class PlayerMachine:
    """Which block to play next, when to start, what to delete.

    ``buffer``: blocks present before the first one is played (at least 1).
    ``start_timeout``: start anyway once the oldest block has waited that long.
    ``stall_timeout``: a block that shows no progress for that long counts as
    undecodable. ``keep``: never delete anything. ``live``: the rate control
    towards live (None: none, as with ``keep``).
    """

    buffer: int = 2
    keep: bool = False
    stall_timeout: float = 5.0
    start_timeout: float = 5.0
    live: LiveEdge | None = None

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
    _durations: dict[str, float] = field(default_factory=dict, init=False)
    _played_ms: int = field(default=0, init=False)  # VLC's position in the current block
    _started_at: float = field(default=0.0, init=False)

    def __post_init__(self):
        if self.buffer < 1:
            raise ValueError(f"buffer must be at least 1 block, not {self.buffer}")
        if self.stall_timeout <= 0 or self.start_timeout < 0:
            raise ValueError("timeouts must be positive")
        if self.keep and self.live is not None:
            raise ValueError("a player that keeps its blocks is not live")

    @property
    def rate(self) -> float:
        """The play rate VLC was last told (1.0 without a live edge)."""
        return self.live.rate if self.live is not None else 1.0

    def behind_live(self) -> float:
        """Seconds of content between the picture and the newest block.

        The rest of the block being played plus the real durations of the
        blocks waiting after it (a block whose duration is unknown counts as
        the mean of the known ones, or :data:`NOMINAL_DURATION`).
        """
        total = sum(self._duration(n) for n in self._pending)
        if self.state in (State.STARTING, State.PLAYING) and self.current is not None:
            total += max(0.0, self._duration(self.current) - max(0, self._played_ms) / 1000)
        return total

    def _duration(self, name: str) -> float:
        known = self._durations.get(name)
        if known is not None:
            return known
        if self._durations:
            return sum(self._durations.values()) / len(self._durations)
        return NOMINAL_DURATION

    @property
    def pending(self) -> list[str]:
        """Blocks known to be waiting after the current one, in play order."""
        return list(self._pending)

    # -- inputs ---------------------------------------------------------------

    def learn_durations(self, durations: dict[str, float | None]) -> None:
        """The real durations in seconds of blocks in the store (None: unknown)."""
        for name, seconds in durations.items():
            if seconds is not None and seconds > 0:
                self._durations[name] = seconds

    def on_listing(self, names: Iterable[str], now: float) -> list[Action]:
        """The store now holds ``names`` (any order; non-block names are ignored)."""
        present = sorted({n for n in names if is_block_name(n)})
        cursor = self._cursor
        self._pending = [n for n in present if cursor is None or n > cursor]
        # Forget names that left the store, so these sets stay bounded.
        present_set = set(present)
        self._handled &= present_set
        self._stale_reported &= present_set
        keep = present_set | {self.current}
        self._durations = {n: d for n, d in self._durations.items() if n in keep}

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
            if self.live is None:
                actions.append(self._play(self._pending[0], now, waited=now - self._wait_since))
            elif self._refilled(now):
                actions += self._skip_ahead()
                actions.append(self._play(self._pending[0], now, waited=now - self._wait_since))
        return actions

    def _refilled(self, now: float) -> bool:
        """Live and ran dry: the start buffer is full again (or its oldest block waited enough)."""
        if self._first_seen is None:
            self._first_seen = now
        return (len(self._pending) >= self.buffer
                or now - self._first_seen >= self.start_timeout)

    def on_started(self, now: float) -> list[Action]:
        """VLC started playing the current block."""
        if self.state is State.STARTING:
            self.state = State.PLAYING
            self._last_progress = self._started_at = now
        return []

    def on_progress(self, now: float) -> list[Action]:
        """VLC's play position of the current block moved."""
        if self.state in (State.STARTING, State.PLAYING):
            self._last_progress = now
        return []

    def on_ended(self, now: float, played_ms: int) -> list[Action]:
        """VLC reached the end of the current block, at position ``played_ms``.

        An end before any picture or sound (see :meth:`_decoded`) means that
        nothing in the block could be decoded: it is skipped. An end that is
        not preceded by a start belongs to an earlier block and is ignored.
        """
        if self.state is not State.PLAYING:
            return []
        if not self._decoded(now, played_ms):
            return self._fail(now, "nothing in it could be decoded")
        name = self.current
        actions: list[Action] = [Finished(name)]
        if not self.keep:
            actions.append(Delete(name))
        return actions + self._next(now)

    def _decoded(self, now: float, played_ms: int) -> bool:
        """Whether VLC showed anything of the block that just ended.

        VLC reports its position only every quarter second or so: a short
        block played fast may end with no position ever reported (and 0 at
        the end). A block that played for half its duration counts as shown.
        """
        if played_ms > 0 or self._played_ms > 0:
            return True
        return now - self._started_at >= 0.5 * self._duration(self.current) / self.rate

    def on_error(self, now: float, reason: str) -> list[Action]:
        """VLC (or the driver's own check) cannot play the current block."""
        if self.state not in (State.STARTING, State.PLAYING):
            return []
        return self._fail(now, reason)

    def on_tick(self, now: float, played_ms: int | None = None) -> list[Action]:
        """Time passes, VLC is at ``played_ms`` in the current block.

        A current block without progress for too long is skipped; with a
        live edge the play rate follows the distance to live.
        """
        actions: list[Action] = []
        if self.state in (State.STARTING, State.PLAYING):
            if played_ms is not None and self.state is State.PLAYING:
                self._played_ms = played_ms
            idle = now - self._last_progress
            if idle >= self.stall_timeout:
                actions += self._fail(now, f"no progress for {idle:.1f} s")
        if self.live is not None:
            before = self.live.rate
            behind = self.behind_live()
            if self.live.update(behind, now) != before:
                actions.append(SetRate(self.live.rate, behind))
        return actions

    # -- transitions ----------------------------------------------------------

    def _buffering(self, now: float) -> list[Action]:
        have = len(self._pending)
        if have == 0:
            self._first_seen = None
        elif self._first_seen is None:
            self._first_seen = now
        if have >= self.buffer or (have and now - self._first_seen >= self.start_timeout):
            return self._skip_ahead() + [self._play(self._pending[0], now)]
        if have != self._buffer_reported:
            self._buffer_reported = have
            return [Buffering(have, self.buffer)]
        return []

    def _play(self, name: str, now: float, waited: float | None = None) -> Play:
        self.state = State.STARTING
        self.current = self._cursor = name
        self._pending.remove(name)
        self._last_progress = now
        self._played_ms = 0
        self._first_seen = None
        return Play(name, waited)

    def _skip_ahead(self) -> list[Action]:
        """Live and hopelessly behind: drop the oldest waiting blocks, keep the newest.

        What is kept is the start buffer, or more blocks when they add up to
        at most :attr:`LiveEdge.resume_behind` seconds; the dropped blocks are
        deleted.
        """
        behind = sum(self._duration(n) for n in self._pending)
        if self.live is None or not self.live.hopeless(behind):
            return []
        kept, total = [], 0.0
        for name in reversed(self._pending):
            if len(kept) >= self.buffer and total + self._duration(name) > self.live.resume_behind:
                break
            kept.append(name)
            total += self._duration(name)
        skipped = self._pending[:len(self._pending) - len(kept)]
        self._pending = kept[::-1]
        self._handled.update(skipped)
        return [SkipAhead(tuple(skipped), behind - total, behind)] + [Delete(n) for n in skipped]

    def _fail(self, now: float, reason: str) -> list[Action]:
        name = self.current
        actions: list[Action] = [Skip(name, reason)]
        if not self.keep:
            actions.append(Delete(name))
        return actions + self._next(now)

    def _next(self, now: float) -> list[Action]:
        self._handled.add(self.current)
        if self._pending:
            return self._skip_ahead() + [self._play(self._pending[0], now)]
        self.state = State.WAITING
        self._wait_since = now
        self._first_seen = None
        after, self.current = self.current, None
        return [Wait(after)]
