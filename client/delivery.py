"""Which block is stored next, with which number: the delivery gate of a relay client.

Blocks reach a client from its current parent (or the server's pushes),
from a repair fetch, and from links it has already left. For each, the gate
says whether it is stored now, held until a repair or a gap check ends,
skipped (stored already, before the new parent resumed us), or ignored
(a stale link); it numbers the server's blocks, and releases what it held
in arrival order. It is pure: no socket, no thread, no clock of its own
(the caller passes the wall time that numbers the server's first block), so
that every order of arrivals can be tried in a unit test.

Storing and relaying are the caller's: each call returns the blocks to store,
in order, as :class:`Pass` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.peerproto import Block

__all__ = ["Gate", "Pass", "Step", "SERVER"]

#: Two pushes of the server more than this many periods apart: one between them was missed
#: (its send to us failed, e.g. behind our own saturated uplink), and is looked for.
MISSED_PUSH_PERIODS = 1.5

#: The source of the server's pushes, and the parent of a direct client (a parent
#: link is any other object).
SERVER = "server"


@dataclass(frozen=True)
class Pass:
    """A block to store and relay now, numbered; ``source`` is where it came from."""

    block: Block
    source: object


@dataclass(frozen=True)
class Step:
    """What one input asks of the caller: blocks to store, in order, and whether the
    server's first block is in, so that the gap before it can be looked for."""

    passes: tuple[Pass, ...] = ()
    check_gap: bool = False


class Gate:
    """The order and numbering of stored blocks, for one client in one channel.

    ``hold_limit`` bounds the blocks held while a repair or a gap check runs
    (the recent window's size: more would be older than anyone can name).
    """

    def __init__(self, period: float, hold_limit: int):
        self._period = period
        self._hold_limit = hold_limit
        self.source: object | None = None     # whose blocks are live: SERVER or a parent link
        self.seq = -1                         # the number of the latest stored block
        self.repair: object | None = None     # the running repair job, if any
        self.gap_check = False                # live blocks wait for a look at the gap too
        self._gap_waits_for_server = False    # ... once the server's first block is in
        self._skip: list[bytes] = []
        self._held: list[tuple[Block, object]] = []
        self._last_push: float | None = None  # wall time of the server's latest push

    # -- the live source ---------------------------------------------------

    def follow(self, source: object, skip=(), gap_check: bool = False,
               gap_waits_for_server: bool = False) -> None:
        """``source`` is the new parent (or :data:`SERVER`): its blocks are the live ones.

        ``skip``: identities it will send again that are stored already
        (those after the one it resumes us after). ``gap_check``: live
        blocks wait until :meth:`gap_checked`; with ``gap_waits_for_server``
        the look for the gap starts once the server's first block is in.
        """
        self.source = source
        self._last_push = None
        self._held = []  # (what the old source sent would be dropped at release anyway)
        self._skip = list(skip)
        self.gap_check = gap_check
        self._gap_waits_for_server = gap_check and gap_waits_for_server

    def unfollow(self) -> object | None:
        """No live source any more (orphaned, leaving): drop what was held; the repair job
        that was running (the caller cancels it) is returned."""
        job, self.repair = self.repair, None
        self.source = None
        self._held = []
        return job

    def new_channel(self) -> None:
        """Another channel: its blocks are numbered anew."""
        self.seq = -1
        self._skip = []

    # -- arrivals ----------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self.repair is not None or self.gap_check

    def arrived(self, block: Block, source: object, wall: float) -> Step:
        """A block came from ``source`` (verified by the caller when it is not the server)."""
        if source is None or source != self.source:
            return Step()  # a link we left, or the server still pushing to a client that moved
        if source == SERVER:
            missed = (self._last_push is not None
                      and wall - self._last_push > MISSED_PUSH_PERIODS * self._period)
            self._last_push = wall
            if missed and not self.holding and self.seq >= 0:
                # The server sends nothing old: look for the missed block as after
                # joining the server (held, then fetched from another direct client).
                self.gap_check = self._gap_waits_for_server = True
        if self.holding:
            if len(self._held) < self._hold_limit:
                self._held.append((block, source))
            check_gap = source == SERVER and self._gap_waits_for_server
            if check_gap:
                self._gap_waits_for_server = False
            return Step(check_gap=check_gap)
        return Step(self._live(block, source, wall))

    def streams(self, source: object, seq: int, wall: float) -> int | None:
        """The number a block from ``source`` beginning now would be stored under, if
        it came whole now and were stored at once; None when that is not sure (a stale
        source, live blocks held, a missed push about to be looked for, identities to
        skip: a block's identity is known only at its end).

        ``seq`` is the sender's number (a parent's); the server's blocks are numbered
        here. A relay forwards a block's parts to its children before it has all of it
        only then (cut-through), and ends the forward with the block if :meth:`arrived`
        passes it under that number; a block the gate holds, skips or numbers
        otherwise goes to them whole, when and if it is stored. Nothing changes here.
        """
        if source is None or source != self.source or self.holding or self._skip:
            return None
        if source != SERVER:
            return seq
        if (self._last_push is not None and self.seq >= 0
                and wall - self._last_push > MISSED_PUSH_PERIODS * self._period):
            return None
        return self.seq + 1 if self.seq >= 0 else int(wall / self._period)

    def _live(self, block: Block, source: object, wall: float) -> tuple[Pass, ...]:
        if block.digest in self._skip:
            # Stored before this parent resumed us: skip it and what preceded it.
            del self._skip[:self._skip.index(block.digest) + 1]
            return ()
        self._skip = []
        if source == SERVER:
            self.seq = self.seq + 1 if self.seq >= 0 else int(wall / self._period)
            block = Block(self.seq, block.digest, block.data)
        else:
            self.seq = block.seq
        return (Pass(block, source),)

    # -- repairs and gap checks ----------------------------------------------

    def start_repair(self, job: object, also_skip=()) -> None:
        """``job`` fetches missed blocks; live blocks wait until :meth:`repair_done`.

        ``also_skip``: the repaired identities, which the parent may still send live.
        """
        self.repair = job
        self._skip = [*self._skip, *also_skip]

    def repaired(self, job: object, block: Block) -> Step:
        """A missed block came in from ``job``: stored now, before the held live ones.

        Its number is the latest stored one's, so that the server's held blocks
        are numbered after it (not again with the numbers of the blocks it fills).
        """
        if job is None or job is not self.repair:
            return Step()  # a cancelled repair's late block
        self.seq = block.seq
        return Step((Pass(block, job),))

    def repair_done(self, job: object, wall: float) -> Step:
        """``job`` ended: the held live blocks are stored, in order."""
        if job is None or job is not self.repair:
            return Step()
        self.repair = None
        return self._release(wall)

    def gap_checked(self, wall: float, repair: object | None = None, missing=()) -> Step:
        """The look for the gap ended: ``repair`` fetches ``missing`` (None: nothing to fetch)."""
        self.gap_check = self._gap_waits_for_server = False
        if repair is not None:
            self.start_repair(repair, missing)
            return Step()
        return self._release(wall)

    def _release(self, wall: float) -> Step:
        if self.holding:
            return Step()
        held, self._held = self._held, []
        passes: list[Pass] = []
        for block, source in held:
            if source == self.source:
                passes.extend(self._live(block, source, wall))
        return Step(tuple(passes))
