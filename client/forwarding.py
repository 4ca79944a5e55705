"""Cut-through: a block's parts go on to the children before all of it is in.

The bookkeeping of one relay's forwards, pure, shared by the node (which
calls it under its deliver lock) and the core: which block is being
forwarded in parts, from whom, under which number, to which children, and
its parts so far; and the frames each child gets when that block ends, is
aborted, or is stored whole instead. The caller decides when a block may be
forwarded as it comes (:meth:`client.delivery.Gate.streams`); ``send(child,
frame)`` queues one frame on one child's link and says whether the link took
it (a link that takes nothing more gets no more of that block).

Frames of two blocks never interleave on a link: a forward still open when
another block is stored is aborted first.

A forward whose sender was lost in the middle of its block may be kept
(:meth:`Forwarder.keep`): the children hold on to what came, and when that
block is stored after all (its rest fetched from another client), they get
the rest of it only.
"""

from __future__ import annotations

from typing import Callable

from client.peerproto import MAX_BLOCK, Block, BlockAbort, BlockEnd, BlockPart, BlockStart, parts_of

__all__ = ["Forward", "Forwarder"]


class Forward:
    """A block forwarded in parts as it comes: from whom, under which number, to which
    children, its size and parts so far (for a child that comes meanwhile)."""

    def __init__(self, source, seq: int, children: list):
        self.source, self.seq, self.children = source, seq, children
        self.size = 0
        self.parts: list[BlockPart] = []
        #: Its sender was lost in its middle: it goes on only if the block is stored.
        self.cut_short = False

    def began_with(self, block: Block) -> bool:
        """Is this forward the beginning of ``block``, which came whole another way?"""
        return (self.seq == block.seq and self.size < len(block.data)
                and block.data[:self.size] == b"".join(p.data for p in self.parts))


class Forwarder:
    """One relay's forwards in parts (see the module's docstring)."""

    def __init__(self, send: Callable[[object, object], bool]):
        self._send = send
        self.current: Forward | None = None

    def begin(self, source, number: int, children) -> Forward | None:
        """A block from ``source`` will be stored live as ``number``: its start goes to every
        child now. None while another block is being forwarded (pushes may overlap)."""
        if self.current is not None:
            return None
        start = BlockStart(number)
        self.current = Forward(source, number, [c for c in children if self._send(c, start)])
        return self.current

    def part(self, forward: Forward | None, data: bytes) -> Forward | None:
        """More bytes of ``forward``'s block: queued to its children at once; ``forward``
        when it was aborted instead, too large (the block will be refused whole too)."""
        if forward is None or forward is not self.current:
            return None
        if forward.size + len(data) > MAX_BLOCK:
            return self.abort(forward, "too large")
        forward.size += len(data)
        for part in parts_of(data):
            forward.parts.append(part)
            for child in forward.children:
                self._send(child, part)
        return None

    def join(self, child) -> None:
        """A child taken while a block is being forwarded, whose next block it is, gets what
        came of it so far and the rest as it comes (else it would get that block whole at
        its end, a block's transfer later)."""
        forward = self.current
        if forward is None or child in forward.children or not self._send(child, BlockStart(forward.seq)):
            return
        for part in forward.parts:
            self._send(child, part)
        forward.children.append(child)

    def keep(self, forward: Forward | None) -> bool:
        """``forward``'s sender is gone in the middle of its block, whose rest may come
        another way: its children keep what came. False when there is nothing to keep."""
        if forward is None or forward is not self.current or not forward.children:
            return False
        forward.cut_short = True
        return True

    def abort(self, forward: Forward | None, reason: str) -> Forward | None:
        """``forward``'s block will not be stored (now): its children discard it. Returns
        ``forward`` when children were told, None when there was nothing to tell."""
        if forward is None or forward is not self.current:
            return None
        self.current = None
        if not forward.children:
            return None
        abort = BlockAbort(reason[:200])
        for child in forward.children:
            self._send(child, abort)
        return forward

    def stored(self, block: Block, forward: Forward | None, children) -> Forward | None:
        """``block`` is stored now: the children that got its parts (``forward``, when it
        forwarded this very block under this number) get its end, those of a kept forward
        it began (:meth:`keep`) its rest and end, the others all of it, in parts, which
        they forward as they come. Any other forward still open is aborted first (and
        returned, as :meth:`abort` does)."""
        ends = (forward is not None and forward is self.current and forward.seq == block.seq
                and forward.size == len(block.data))
        kept = self.current if (not ends and self.current is not None and self.current.cut_short
                                and self.current.began_with(block)) else None
        aborted = None if ends or kept else self.abort(self.current, "another block is stored first")
        streamed = set(forward.children) if ends else set()
        self.current = None
        end = BlockEnd(len(block.data), block.digest)
        if kept is not None:
            streamed = set(kept.children) & set(children)
            rest = [child for child in kept.children if child in streamed]
            for part in parts_of(block.data[kept.size:]):
                for child in rest:
                    self._send(child, part)
        whole = []
        for child in children:
            if child in streamed:
                self._send(child, end)
            elif self._send(child, BlockStart(block.seq)):
                whole.append(child)
        # Whole here, in parts all the same: each child forwards each part as it comes (sent
        # whole, a repaired block crossed a subtree a block's transfer a level: 1.2 s a level
        # measured at 16 Mbit/s, two children a relay). Part by part to every child in turn,
        # as the children's links share the uplink.
        if whole:
            for part in parts_of(block.data):
                for child in whole:
                    self._send(child, part)
            for child in whole:
                self._send(child, end)
        return aborted
