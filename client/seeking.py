"""The core's side of its errands: finding a place, joining, the look for a gap.

A part of :class:`client.core.ClientCore` (it owns one :class:`Seeker`): it
starts the search of :mod:`client.placement` and the other flows of
:mod:`client.flows`, performs each of their steps as the core's commands (a
join attempt is a link with a ``Hello(join)``, a question a link with its
first frame, a server request an ``AskServer``, a pause a timer), and acts on
the answers: an ``Accept`` makes the link our parent link and resumes us
after our latest block (a repair for what the parent names, a look for the
gap when it cannot place our latest), a server slot makes us a direct client.
Pure, like the core.
"""

from __future__ import annotations

from dataclasses import dataclass

from client import flows, placement, roles, tree
from client.commands import JOIN, LIST, AskServer, Connect, Placed, SetTimer
from client.delivery import SERVER
from client.peerproto import Accept, Addr, Hello

__all__ = ["Seeker", "Search", "HAVE_COUNT"]

#: How many of its latest block identities a joiner sends (``Hello.have``).
HAVE_COUNT = 8


@dataclass
class Search:
    """One search for a place: why, since when, from which depth (client.model.Rejoin)."""

    cause: str
    started: float
    depth_before: int
    took: float | None = None


class Seeker:
    """Searches and errands of one core (see the module's docstring)."""

    def __init__(self, core):
        self.core = core

    def find_place(self, cause: str, server_first: bool, seeds=(), exclude=(), backup=None,
                    insist=None, moved_by=None, wrap=None) -> None:
        core = self.core
        core.flows.stop()
        core.searches.append(Search(cause, core.now, core.depth))
        search = placement.search(core.me, core.config.period, server_first, seeds, exclude,
                                  backup, insist, moved_by, core.relay.members(core.now))
        core.flows.start("search", wrap(search) if wrap else search, self.placed, core.now)

    def placed(self, result) -> None:
        core = self.core
        if isinstance(result, placement.Placed) and core.searches:
            search = core.searches[-1]
            core.out(Placed(search.cause, result.how, core.depth, search.depth_before, search.started))
        self.start_next_flow()

    def start_next_flow(self) -> None:
        core = self.core
        if core.next_flow is not None and not core.flows.busy:
            kind, flow, done = core.next_flow
            core.next_flow = None
            core.flows.start(kind, flow, done, core.now)

    def perform_step(self, step, key, now: float) -> None:
        core = self.core
        if isinstance(step, placement.TryJoin):
            self.connect(key, step.addr, self.join_hello(step.moved_by), roles.JOIN, "join")
        elif isinstance(step, flows.Ask):
            role = roles.ASKER[roles.frame_name(step.question)]
            self.connect(key, step.addr, step.question, role, "ask")
        elif isinstance(step, placement.TryServer):
            core.steps[key] = ("server",)
            if core.shedding.off_server(now):   # gave its slot up for one that can relay
                core.out(SetTimer(key, now))     # (answered as a full server, at once)
                return
            core.out(AskServer(key, JOIN, core.channel))
            core.out(SetTimer(key, now + flows.SERVER_DEADLINE))
        elif isinstance(step, flows.ListServer):
            core.steps[key] = ("list",)
            core.out(AskServer(key, LIST, core.channel))
            core.out(SetTimer(key, now + flows.SERVER_DEADLINE))
        else:  # Pause
            core.steps[key] = ("pause",)
            core.out(SetTimer(key, now + step.seconds))

    def connect(self, key, addr: Addr, first, role: roles.Role, kind: str) -> None:
        core = self.core
        link = core.new_link()
        talk = roles.Conversation(role, roles.PEER)
        talk.sending(first)
        core.links[link] = [kind, talk, addr, key]
        core.steps[key] = (kind, link)
        core.out(Connect(link, addr, first))
        core.out(SetTimer(key, core.now + flows.ANSWER_DEADLINE))

    def join_hello(self, moved_by) -> Hello:
        core = self.core
        have = core.window.latest_digests(HAVE_COUNT)
        catch_up = 0 if have else min(core.config.catch_up_blocks, core.window.capacity)
        return Hello("join", core.me, core.channel, core.relay.can_take(core.now), have=have,
                     have_seq=max(core.gate.seq, 0), subtree=core.relay.members(core.now),
                     catch_up=catch_up, moved_by=moved_by)

    def cancel_step(self, key) -> None:
        core = self.core
        step = core.steps.pop(key, None)
        if step is not None and len(step) == 2:
            core.close(step[1], reset=True)

    def step_timed_out(self, key) -> None:
        core = self.core
        step = core.steps.pop(key)
        if len(step) == 2:
            core.close(step[1], reset=True)
        answer = {"server": (False, True)}.get(step[0])
        core.flows.answer(key, answer, core.now)

    def answer_step(self, link, entry, message) -> None:
        """The answer on one of our join or ask links."""
        core = self.core
        key = entry[3]
        core.steps.pop(key, None)
        if isinstance(message, Accept) and entry[0] == "join":
            answer = self.attach(link, entry[2], message)
        else:
            core.close(link)
            answer = message
        core.flows.answer(key, answer, core.now)

    def attach(self, link, addr: Addr, accept: Accept):
        """``addr`` accepted us: it is our parent now; resume after our latest block."""
        core = self.core
        if core.me in accept.path:
            core.close(link)
            return None  # it would put us under ourselves
        core.leave_server()
        core.parent_gone()
        core.links[link][0] = "parent"
        now = core.now
        core.parent, core.parent_link, core.state = addr, link, "attached"
        core.moves.moved(now)
        core.path, core.depth = accept.path + (addr,), accept.depth + 1
        core.backup = core.advice = None  # the new parent will advise
        latest = core.window.latest_digests(1)
        gap_check = bool(latest) and not accept.after  # a parent that cannot place our latest
        if accept.after:
            skip = core.window.since(accept.after)
            missing = [d for d in accept.missing if d not in set(skip)]
        else:
            skip = list(core.window.latest_digests(3))
            missing = [] if latest else list(accept.missing)
        # Our next block's beginning, if our lost parent was sending it: when it is the
        # first we miss, its rest only is fetched.
        held, core.cut_short = core.cut_short, b""
        resumed = bool(latest) and accept.after == latest[0]
        core.repairs.cancel()
        core.gate.follow(link, skip, gap_check=gap_check)
        if missing:
            core.repairs.start(missing, [addr, *reversed(accept.path)], held if resumed else b"")
        if gap_check:
            probe = self.probe_hello()
            core.next_flow = ("gap", flows.look_for_gap(
                core.me, probe, list(reversed(accept.path)) or None, addr,
                frozenset(core.relay.members(now))), lambda found: self.gap_looked(found, addr))
        core.relay.tell_path()
        core.report_to_parent()
        core.status()
        return True

    def probe_hello(self) -> Hello:
        core = self.core
        return Hello("probe", core.me, core.channel, have=core.window.latest_digests(HAVE_COUNT),
                     have_seq=max(core.gate.seq, 0))

    def gap_looked(self, found, parent) -> None:
        """The look for the gap ended: fetch what the source found we lack, or go live."""
        core = self.core
        missing = []
        if found is not None:
            source, info = found
            ours = set(core.window.latest_digests(core.window.capacity))
            missing = [d for d in info.missing if d not in ours]
        if missing and core.parent == parent:
            job = core.repairs.new(missing, [source])
            core.gate.gap_checked(core.now, job, missing)
            core.repairs.run(job)
        else:
            core.perform(core.gate.gap_checked(core.now))
        self.start_next_flow()

    def server_gap(self) -> None:
        """The server's first block is held: look for what was missed on the way to it."""
        core = self.core
        if core.parent != SERVER or not core.gate.gap_check:
            return
        flow = ("gap", flows.look_for_gap(core.me, self.probe_hello(), None, SERVER,
                                          frozenset(core.relay.members(core.now))),
                lambda found: self.gap_looked(found, SERVER))
        if core.flows.busy:
            core.next_flow = flow
        else:
            core.flows.start(*flow, core.now)

    def orphaned(self, lost: Addr | None, cause: str, seeds=None, server_first=False,
                  insist: Addr | None = None, moved_by: Addr | None = None) -> None:
        core = self.core
        core.repairs.cancel()
        core.parent_gone()
        link, core.parent_link = core.parent_link, None
        was_direct = core.parent == SERVER
        core.parent, core.state = None, "orphaned"
        if link is not None:
            core.close(link)
        if seeds is None:
            seeds = tree.rejoin_seeds(core.path, lost)
        core.status()
        core.seeker.find_place(cause, server_first=server_first or was_direct, seeds=seeds,
                         exclude=(lost,) if lost else (), backup=core.backup, insist=insist,
                         moved_by=moved_by)
