"""Cut-through bookkeeping (client.forwarding), pure: which frames each child gets."""

from __future__ import annotations

from client.forwarding import Forwarder
from client.peerproto import (MAX_BLOCK, MAX_PART, Block, BlockAbort, BlockEnd, BlockPart,
                              BlockStart)

DATA = bytes(range(256)) * (MAX_PART * 3 // 256 + 1)     # a little over three parts


class Links:
    """Children as names; what each was sent; the ones whose link takes nothing."""

    def __init__(self, *refusing):
        self.sent: dict[str, list] = {}
        self.refusing = set(refusing)

    def send(self, child, frame) -> bool:
        if child in self.refusing:
            return False
        self.sent.setdefault(child, []).append(frame)
        return True

    def kinds(self, child) -> list[str]:
        return [type(f).__name__ for f in self.sent.get(child, [])]

    def bytes_of(self, child) -> bytes:
        return b"".join(f.data for f in self.sent.get(child, []) if isinstance(f, BlockPart))


def well_formed(frames) -> bool:
    """Start, parts, then an end or an abort, block after block: never two interleaved."""
    open_ = False
    for frame in frames:
        if isinstance(frame, BlockStart):
            if open_:
                return False
            open_ = True
        elif isinstance(frame, (BlockPart, BlockEnd, BlockAbort)):
            if not open_:
                return False
            open_ = not isinstance(frame, (BlockEnd, BlockAbort))
    return not open_


def test_parts_go_on_as_they_come_and_the_end_follows_the_store():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 7, ["a", "b"])
    forwarder.part(forward, DATA[:100_000])
    assert links.kinds("a") == ["BlockStart", "BlockPart", "BlockPart"]
    forwarder.part(forward, DATA[100_000:])
    block = Block.of(7, DATA)
    assert forwarder.stored(block, forward, ["a", "b"]) is None
    for child in "ab":
        assert links.sent[child][0] == BlockStart(7)
        assert links.sent[child][-1] == BlockEnd(len(DATA), block.digest)
        assert links.bytes_of(child) == DATA and well_formed(links.sent[child])
    assert forwarder.current is None


def test_a_child_not_in_the_forward_gets_the_block_whole_in_parts_at_the_store():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 1, ["a"])
    forwarder.part(forward, DATA)
    forwarder.stored(Block.of(1, DATA), forward, ["a", "new"])
    assert links.kinds("new")[0] == "BlockStart" and links.kinds("new")[-1] == "BlockEnd"
    assert links.bytes_of("new") == DATA and len(links.sent["new"]) == 2 + -(-len(DATA) // MAX_PART)


def test_one_forward_at_a_time():
    forwarder = Forwarder(Links().send)
    assert forwarder.begin("server", 1, ["a"]) is not None
    assert forwarder.begin("server", 2, ["a"]) is None


def test_a_child_that_comes_midway_gets_the_parts_so_far_then_the_rest():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 3, ["a"])
    forwarder.part(forward, DATA[:MAX_PART * 2])
    forwarder.join("late")
    forwarder.join("late")                                   # (once only)
    forwarder.part(forward, DATA[MAX_PART * 2:])
    forwarder.stored(Block.of(3, DATA), forward, ["a", "late"])
    assert links.sent["late"] == links.sent["a"] and well_formed(links.sent["late"])


def test_an_abort_reaches_the_forwards_children_only():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 4, ["a", "b"])
    forwarder.part(forward, DATA[:10])
    assert forwarder.abort(forward, "forged") is forward
    assert forwarder.current is None and forwarder.abort(forward, "again") is None
    assert links.sent["a"][-1] == BlockAbort("forged") and well_formed(links.sent["a"])
    assert forwarder.abort(forwarder.begin("parent", 5, []), "nobody to tell") is None


def test_another_block_stored_first_aborts_the_open_forward_before_its_own_frames():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("old parent", 8, ["a"])
    forwarder.part(forward, DATA[:MAX_PART])
    repaired = Block.of(6, b"x" * 1000)
    assert forwarder.stored(repaired, None, ["a", "b"]) is forward
    assert links.kinds("a") == ["BlockStart", "BlockPart", "BlockAbort",
                                "BlockStart", "BlockPart", "BlockEnd"]
    assert well_formed(links.sent["a"]) and well_formed(links.sent["b"])
    forwarder.part(forward, DATA[MAX_PART:])                 # a stale forward: nothing more
    assert links.kinds("a")[-1] == "BlockEnd"


def test_a_block_growing_past_the_bound_is_aborted():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 9, ["a"])
    for _ in range(MAX_BLOCK // len(DATA)):
        assert forwarder.part(forward, DATA) is None
    assert forwarder.part(forward, DATA) is forward
    assert links.kinds("a")[-1] == "BlockAbort" and well_formed(links.sent["a"])


def test_a_link_that_refuses_the_start_gets_nothing_of_that_block():
    links = Links("full")
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("parent", 2, ["a", "full"])
    forwarder.part(forward, DATA)
    links.refusing.clear()
    forwarder.stored(Block.of(2, DATA), forward, ["a", "full"])
    assert links.kinds("full")[0] == "BlockStart" and links.bytes_of("full") == DATA
    assert well_formed(links.sent["full"]) and well_formed(links.sent["a"])


def test_a_kept_forward_whose_sender_was_lost_gets_only_its_rest_when_the_block_is_stored():
    links = Links()
    forwarder = Forwarder(links.send)
    forward = forwarder.begin("lost parent", 7, ["a", "b"])
    forwarder.part(forward, DATA[:100_000])
    assert forwarder.keep(forward)
    sent_before = {child: len(links.sent[child]) for child in "ab"}
    block = Block.of(7, DATA)         # its rest fetched from another client, stored whole
    assert forwarder.stored(block, None, ["a", "b", "c"]) is None
    for child in "ab":
        rest = links.sent[child][sent_before[child]:]
        assert b"".join(f.data for f in rest if isinstance(f, BlockPart)) == DATA[100_000:]
        assert links.bytes_of(child) == DATA and well_formed(links.sent[child])
        assert links.sent[child][-1] == BlockEnd(len(DATA), block.digest)
    assert links.bytes_of("c") == DATA and links.sent["c"][0] == BlockStart(7)   # whole
    assert forwarder.current is None


def test_a_kept_forward_is_aborted_when_another_block_is_stored_instead():
    for other in (Block.of(7, b"x" + DATA[1:]), Block.of(8, DATA), Block.of(7, DATA[:50_000])):
        links = Links()
        forwarder = Forwarder(links.send)
        forward = forwarder.begin("lost parent", 7, ["a"])
        forwarder.part(forward, DATA[:100_000])
        forwarder.keep(forward)
        assert forwarder.stored(other, None, ["a"]) is forward
        assert "BlockAbort" in links.kinds("a") and well_formed(links.sent["a"])
        assert links.bytes_of("a")[-len(other.data):] == other.data     # then all of it


def test_nothing_is_kept_of_a_forward_no_child_got():
    forwarder = Forwarder(Links("a").send)
    assert not forwarder.keep(forwarder.begin("lost parent", 7, ["a"]))
    assert not forwarder.keep(None)
