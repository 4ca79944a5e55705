"""The client's multi-step errands as generators, and the runner that performs their steps.

A flow is a generator of steps, the commands of :mod:`client.placement`
(``TryJoin``, ``TryServer``, ``ProbeListed``, ``StartRound``, ``Pause``,
``Placed``) plus :class:`Ask` (one question, one answer) and
:class:`ListServer` (``11X``). :func:`client.placement.search` is one (the
join and rejoin search); this module adds the others the node performs
while it runs: a climb, taking a server slot a swap handed over, the look
for a gap, the root's look for its children's backup place, and the probe of
the server's direct clients that ``ProbeListed`` stands for.

:class:`FlowRunner` runs one flow at a time without blocking: it turns each
step into the core's commands (a connection, a server request, a timer),
waits for the input that answers it (or its deadline) and sends the answer
into the generator. A stop, a channel switch or a lost parent simply
cancels the flow. Pure: no socket, no clock (``now`` comes with each input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from client import placement
from client.peerproto import Addr, Candidate, Hello, Info, Redirect
from client.placement import Pause, Placed, ProbeListed, StartRound, TryJoin, TryServer
from client.tree import JoinSearch

__all__ = ["Ask", "ListServer", "FlowRunner", "probe_listed", "climb", "climb_to_server",
           "take_server_slot", "yield_server_slot", "look_for_gap", "ANSWER_DEADLINE", "SERVER_DEADLINE",
           "CLIMB_ATTEMPTS", "SERVER_TRIES"]

#: Seconds a peer has for its whole answer (client.links.ANSWER_DEADLINE).
ANSWER_DEADLINE = 2.0
#: Seconds the server has to answer a request (its join answer comes to the push port).
SERVER_DEADLINE = 3.0
#: Places a climbing client tries at most (the best first, then where full ones point).
CLIMB_ATTEMPTS = 4
#: How often a client that took a swap partner's server slot asks the server for it.
SERVER_TRIES = 10


@dataclass(frozen=True)
class Ask:
    """Ask ``addr`` one ``question`` (a probe, a vouch). Answer: its reply, or None."""

    addr: Addr
    question: object


@dataclass(frozen=True)
class ListServer:
    """Ask the server for its direct clients (``11X``). Answer: their IPs, or None."""


# -- the flows ---------------------------------------------------------------------

def probe_listed(me: Addr, channel: int, skip):
    """What ``ProbeListed`` stands for: each direct client the server lists, but ``skip``,
    is asked where its free places are; returns the candidates found."""
    ips = (yield ListServer()) or []
    found: list[Candidate] = []
    for ip in ips:
        addr = Addr(ip, me.port)
        if addr == me or addr in skip:
            continue
        info = yield Ask(addr, Hello("probe", me, channel))
        if isinstance(info, Info) and info.attached:
            found.append(Candidate(addr, info.depth, info.free, info.sent))
            found.extend(info.candidates)
    return found


def climb(me: Addr, depth: int, members, parent: Addr):
    """A free place at least one level shallower than our parent's, if one takes us.

    Reports are up to half a period old per level, so the best place may be
    gone: a few are tried, and the shallow enough places a full one points to.
    """
    def shallower(candidates):
        return [c for c in candidates if c.free > 0 and c.depth + 1 < depth]

    search = JoinSearch(me, exclude=(*members, parent), max_attempts=CLIMB_ATTEMPTS)
    search.add(shallower((yield ProbeListed(frozenset(members)))))
    yield from _try_places(search, "climb", shallower)


def climb_to_server():
    """A child of a direct client (or an orphan of a dead one) asks the server for a slot."""
    joined, _ = yield TryServer()
    if joined:
        yield Placed("server")


def take_server_slot(period: float, then):
    """We accepted a direct client's place: it leaves the server once it hears our answer,
    so the server is asked for a moment before the search ``then``."""
    for _ in range(SERVER_TRIES):
        joined, _ = yield TryServer()
        if joined:
            yield Placed("server")
            return
        yield Pause(period / 20)
    yield from then


def yield_server_slot(me: Addr, channel: int):
    """A direct client whose uplink feeds nobody takes a free place below the other direct
    clients, if one takes it (it then leaves the server, as any attached client does)."""
    search = JoinSearch(me, max_attempts=CLIMB_ATTEMPTS)
    search.add(c for c in (yield from probe_listed(me, channel, frozenset())) if c.free > 0)
    yield from _try_places(search, "yield")


def _try_places(search: JoinSearch, how: str, keep=lambda places: places):
    """Ask the places of ``search`` in turn until one takes us (``Placed(how)``); a redirect
    adds the places it names that ``keep`` keeps."""
    while (candidate := search.next()) is not None:
        answer = yield TryJoin(candidate.addr)
        if answer is True:
            yield Placed(how)
            return
        if isinstance(answer, Redirect):
            search.add(keep(answer.candidates))


def look_for_gap(me: Addr, probe: Hello, sources, parent, members):
    """The blocks missed that our new parent (or the server) cannot give: ``sources`` (None:
    the server's direct clients) are probed in turn with our latest blocks; returns
    ``(source, info)`` from the first that places them, or None."""
    if sources is None:
        sources = [Addr(ip, me.port) for ip in ((yield ListServer()) or [])]
    for addr in sources:
        if addr == me or addr in members or addr == parent:
            continue
        info = yield Ask(addr, probe)
        if isinstance(info, Info) and info.after is not None:
            return addr, info
    return None


# -- the runner ----------------------------------------------------------------------

@dataclass
class _Running:
    kind: str
    stack: list
    on_done: Callable
    result: object = None


class FlowRunner:
    """Runs one flow at a time through ``perform``: the core's side of each step.

    ``perform(step, key, now)`` starts a step that waits (TryJoin, TryServer,
    Ask, ListServer, Pause) and answers later through :meth:`answer` with the
    same ``key``; ``members()`` answers StartRound; ``cancel(key)`` ends a
    step in progress. ``on_done(result)`` gets the flow's Placed, its return
    value, or None.
    """

    def __init__(self, me: Addr, channel: Callable[[], int], perform, members, cancel):
        self._me, self._channel = me, channel
        self._perform, self._members, self._cancel = perform, members, cancel
        self.flow: _Running | None = None
        self._waiting: object = None
        self._keys = 0

    @property
    def busy(self) -> bool:
        return self.flow is not None

    @property
    def kind(self) -> str | None:
        return self.flow.kind if self.flow else None

    def start(self, kind: str, flow, on_done, now: float) -> None:
        """Run ``flow`` (the runner must be idle: :meth:`stop` first)."""
        assert self.flow is None, f"flow {self.flow.kind} still running"
        self.flow = _Running(kind, [flow], on_done)
        self._advance(None, now)

    def stop(self) -> None:
        """End the running flow, if any, without its on_done."""
        if self.flow is not None and self._waiting is not None:
            self._cancel(self._waiting)
        self.flow, self._waiting = None, None

    def answer(self, key, value, now: float) -> bool:
        """The answer to the step ``key``; False when no step waits for it (a late one)."""
        if self.flow is None or key != self._waiting:
            return False
        self._waiting = None
        self._advance(value, now)
        return True

    def _advance(self, value, now: float) -> None:
        flow = self.flow
        while self.flow is flow:
            try:
                step = flow.stack[-1].send(value)
            except StopIteration as stop:
                flow.stack.pop()
                if flow.stack:
                    value = stop.value
                    continue
                self._finish(flow, stop.value)
                return
            if isinstance(step, ProbeListed):
                flow.stack.append(probe_listed(self._me, self._channel(),
                                               frozenset((*step.members, *step.skip))))
                value = None
            elif isinstance(step, StartRound):
                value = self._members()
            elif isinstance(step, Placed):
                self._finish(flow, step)
                return
            else:
                self._keys += 1
                self._waiting = key = ("flow", self._keys)
                self._perform(step, key, now)
                return  # (perform may have answered at once: then the flow went on already)

    def _finish(self, flow: _Running, result) -> None:
        for generator in flow.stack:
            generator.close()
        self.flow, self._waiting = None, None
        flow.on_done(result)


#: The join and rejoin search, re-exported for the core.
search = placement.search
