"""The search for a place in the tree, as a pure machine: whom to ask next, and when to pause.

The policy reads as the straight code of :func:`search`, a generator: it
yields a command (ask this relay to take us, ask the server, probe the
server's direct clients, pause, start a round) and is sent the answer. It
does no I/O and keeps no clock: whoever drives it performs the commands (the
node's controller with sockets, a test or a simulator with a fake world),
and a stop or a channel switch is simply the driver not sending the next
answer.

Order: the place we were sent to (``insist``: a swap partner or where a
leaving parent sent us, retried for a moment since it may still be getting
ready); the backup parent our parent advised (one connection, no search);
then rounds of: the server when asked first (a new client, or one the server
served), the given seeds (ancestors), the server's direct clients probed so
the best free place is known, the server otherwise; a pause that doubles up
to a period (four while the server is unreachable). After a whole round the
excluded address (the parent we lost) is tried again: it may be alive after
all (it dropped us for a silence of ours) and the only place left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterable

from client.peerproto import Addr, Candidate, Redirect, Reject
from client.tree import JoinSearch

__all__ = ["TryJoin", "TryServer", "ProbeListed", "StartRound", "Pause", "Placed", "search",
           "INSIST_TRIES"]

#: How often the place we were sent to is asked before a search (it may be getting ready).
INSIST_TRIES = 10


@dataclass(frozen=True)
class TryJoin:
    """Ask ``addr`` to take us. Answer: True once attached, else its answer (a
    :class:`~client.peerproto.Reject` or :class:`~client.peerproto.Redirect`), or None
    (unreachable, no answer, a place that failed its checks)."""

    addr: Addr
    moved_by: Addr | None = None
    insisted: bool = False      # the place we were sent to, asked again while it gets ready


@dataclass(frozen=True)
class TryServer:
    """Ask the server for a direct slot (``10X``). Answer: ``(joined, server_reachable)``."""


@dataclass(frozen=True)
class StartRound:
    """A round of the search begins. Answer: the members of our own subtree (never tried)."""


@dataclass(frozen=True)
class ProbeListed:
    """Ask the server for its direct clients (``11X``) and each of them where its free
    places are, but those in ``members`` or ``skip`` (the parent just lost: the server
    lists a dead or frozen direct client for a few periods, and a frozen one answers
    nothing, costing a whole answer deadline). Answer: the candidates found."""

    members: frozenset
    skip: tuple = ()


@dataclass(frozen=True)
class Pause:
    """Nothing took us this round: wait ``seconds``. Answer: None."""

    seconds: float


@dataclass(frozen=True)
class Placed:
    """The search is over: we have a place (``how``: insisted, backup, server or search)."""

    how: str


Search = Generator[object, object, None]


def search(me: Addr, period: float, server_first: bool, seeds: Iterable[Candidate] = (),
           exclude: Iterable[Addr] = (), backup: Candidate | None = None,
           insist: Addr | None = None, moved_by: Addr | None = None,
           members: Iterable[Addr] = ()) -> Search:
    """The whole join and rejoin policy (see the module's docstring); ends with :class:`Placed`."""
    seeds, exclude, members = list(seeds), tuple(exclude), frozenset(members)
    if insist is not None and insist not in members:
        for attempt in range(INSIST_TRIES):
            answer = yield TryJoin(insist, moved_by, insisted=True)
            if answer is True:
                yield Placed("insisted")
                return
            if not isinstance(answer, (Reject, Redirect)) or attempt == INSIST_TRIES - 1:
                break
            yield Pause(period / 20)
    if backup is not None and backup.addr not in exclude and backup.addr not in members:
        if (yield TryJoin(backup.addr)) is True:
            yield Placed("backup")
            return
    pause, reachable = period / 4, True
    while True:
        members = frozenset((yield StartRound()))
        if server_first:
            joined, reachable = yield TryServer()
            if joined:
                yield Placed("server")
                return
        places = JoinSearch(me, exclude=(*members, *exclude))
        places.add(seeds)
        if (yield from _run(places)):
            return
        places.add((yield ProbeListed(members, exclude)))
        if (yield from _run(places)):
            return
        if not server_first:
            joined, reachable = yield TryServer()
            if joined:
                yield Placed("server")
                return
        yield Pause(pause)
        pause = min(pause * 2, period * (1 if reachable else 4))
        exclude = ()


def _run(places: JoinSearch) -> Generator[object, object, bool]:
    """Ask the best untried place until one takes us (True) or none is left."""
    while (candidate := places.next()) is not None:
        answer = yield TryJoin(candidate.addr)
        if answer is True:
            yield Placed("search")
            return True
        if isinstance(answer, Redirect):
            places.add(answer.candidates)
    return False
