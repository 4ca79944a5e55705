"""A repair as commands: the :class:`~client.repair.RepairPlan` driven through fetch links.

What :class:`client.fetcher.RepairJob` does with threads, without them: each
assignment of the plan becomes a link with a ``Hello(fetch)``; the blocks
and the ``FetchEnd`` that come back, a link's end and the ticks of a timer
(stalls, the whole repair's deadline) are fed to the plan, and the blocks it
releases go to the caller in play order. Pure: the core owns it and passes
``now``.
"""

from __future__ import annotations

from client import roles
from client.commands import Connect, SetTimer
from client.peerproto import Addr, Block, BlockTail, Hello, Reject
from client.repair import RepairPlan

__all__ = ["Repairer"]


class Repairer:
    """One multi-source repair; ``new_link()`` names a link, ``out`` takes commands,
    ``close(link, reset)`` ends a link.

    ``released(block_or_None, digest)`` gets each block in play order (None: lost);
    ``held``: the beginning of the first missing block (cut short when the parent was
    lost): a source is asked for the rest of it only.
    """

    def __init__(self, me: Addr, channel: int, missing, sources, now: float, period: float,
                 new_link, out, close, released, held: bytes = b""):
        self.plan = RepairPlan(missing, sources, now, stall_after=max(period, 1.0))
        self._held = held
        #: Blocks completed from their beginning held and a source's rest (0 or 1).
        self.finished = 0
        self.deadline = now + max(4 * period, 5.0)
        self.tick = max(0.05, self.plan.stall_after / 4)
        self._me, self._channel = me, channel
        self._new_link, self._out, self._close, self._released = new_link, out, close, released
        self.links: dict[object, tuple[Addr, set, roles.Conversation]] = {}
        self.fetched = 0
        self.lost = 0

    def start(self, now: float) -> None:
        self._launch(self.plan.start())
        self._release()

    def _launch(self, work: dict) -> None:
        for source, digests in work.items():
            link = self._new_link()
            talk = roles.Conversation(roles.FETCH, roles.PEER)
            held = self._held if digests[0] == self.plan.missing[0] else b""
            hello = Hello("fetch", self._me, self._channel, want=tuple(digests), held=len(held))
            talk.sending(hello)
            self.links[link] = (source, set(digests), talk)
            self._out(Connect(link, source, hello))

    def received(self, link, message, now: float) -> None:
        """A frame on one of our fetch links."""
        source, wanted, talk = self.links[link]
        try:
            talk.received(message)
        except roles.ProtocolViolation:
            self._failed(link, now)
            return
        if isinstance(message, BlockTail):
            message = self._completed(message)
            if message is None:
                self._failed(link, now)   # (the others are asked for all of it)
                return
        if isinstance(message, Block):
            if message.digest not in wanted:
                self._failed(link, now)  # not asked for: the source's part goes to the others
                return
            self.plan.received(source, message.digest, message, now)
            self.fetched += 1
        else:
            missing = list(wanted) if isinstance(message, Reject) else list(message.missing)
            del self.links[link]
            self._close(link, False)
            self._launch(self.plan.lacked(source, missing, now))
        self._release()

    def _completed(self, tail: BlockTail) -> Block | None:
        """The block a :class:`BlockTail` ends, with the beginning held; None when it was not
        asked for or does not complete it (what the lost parent sent was not this block's
        beginning, or the source lies): the beginning is dropped."""
        block = tail.completes(self._held) if tail.digest == self.plan.missing[0] else None
        if block is None:
            self._held = b""
        else:
            self.finished = 1
        return block

    def progressed(self, link, now: float) -> None:
        """Bytes are arriving on one of our fetch links."""
        if link in self.links:
            self.plan.progressed(self.links[link][0], now)

    def closed(self, link, now: float) -> None:
        """A fetch link ended before its FetchEnd (the source died, or never answered)."""
        if link in self.links:
            self._failed(link, now)
            self._release()

    def _failed(self, link, now: float) -> None:
        source = self.links.pop(link)[0]
        self._close(link, True)
        self._launch(self.plan.failed(source, now))

    def ticked(self, now: float) -> None:
        """Stalled sources hand their parts over; past the deadline the rest is lost."""
        for source in self.plan.stalled(now):
            for link in [k for k, v in self.links.items() if v[0] == source]:
                del self.links[link]
                self._close(link, True)
            self._launch(self.plan.failed(source, now))
        if now >= self.deadline:
            self.plan.give_up()
        self._release()

    def _release(self) -> None:
        for digest, block in self.plan.release():
            if block is None:
                self.lost += 1
            self._released(block, digest)

    @property
    def done(self) -> bool:
        return self.plan.done

    def cancel(self) -> None:
        """Close every fetch link (the client moved on)."""
        for link in list(self.links):
            self._close(link, True)
        self.links.clear()


class Repairs:
    """The core's repairs: one at a time, started when a parent or a source names missed
    blocks, fed to the delivery gate as they come, cancelled when the client moves on."""

    def __init__(self, core):
        self.core = core

    def new(self, missing, sources, held: bytes = b"") -> Repairer:
        core = self.core
        job = Repairer(core.me, core.channel, missing, sources, core.now, core.config.period,
                       self.fetch_link, core.out, core.close,
                       lambda block, digest: self.repaired(job, block), held)
        return job

    def fetch_link(self) -> int:
        core = self.core
        link = core.new_link()
        core.links[link] = ["fetch", None, None, None]
        return link

    def start(self, missing, sources, held: bytes = b"") -> None:
        core = self.core
        job = self.new(missing, sources, held)
        core.gate.start_repair(job)
        self.run(job)

    def run(self, job: Repairer) -> None:
        core = self.core
        core.repair = job
        core.repair_serial += 1
        job.start(core.now)
        core.out(SetTimer(("repair", core.repair_serial), core.now + job.tick))
        self.progressed()

    def repaired(self, job: Repairer, block: Block | None) -> None:
        core = self.core
        if block is None:
            core.counters["blocks_lost"] += 1
            return
        step = core.gate.repaired(job, block)
        if step.passes:
            core.counters["blocks_repaired"] += 1
        core.perform(step)

    def progressed(self) -> None:
        core = self.core
        job = core.repair
        if job is not None and job.done:
            core.repair = None
            core.counters["blocks_finished"] += job.finished
            job.cancel()
            core.perform(core.gate.repair_done(job, core.now))
            core.status()

    def cancel(self) -> None:
        core = self.core
        job = core.gate.unfollow()
        if job is not None:
            job.cancel()
        core.repair = None
