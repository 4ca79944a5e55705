"""The peer protocol between relaytv clients, as pure data transformations.

Nothing here touches a socket: :func:`encode` turns a message into bytes and
:class:`FrameDecoder` turns received bytes back into messages (the h11 style,
see STYLE.md). The node's socket threads are thin adapters around it.

Wire format (version 2)::

    frame       = type:u8  length:u32-be  payload[length]
    BLOCK       payload = seq:u64-be  digest[16]  data     (binary: a whole block)
    BLOCK_START payload = seq:u64-be                       (binary: a block in parts begins)
    BLOCK_PART  payload = data[1..MAX_PART]                (binary: its next bytes)
    BLOCK_END   payload = size:u32-be  digest[16]          (binary: all of it is in)
    others      payload = UTF-8 JSON object with the fields of the message class

Every frame length is bounded (:data:`MAX_CONTROL` for JSON frames,
:data:`MAX_BLOCK` for blocks, :data:`MAX_PART` for a part, the fixed sizes of
a start and an end); a frame over its bound, an unknown type, malformed JSON
or a field of the wrong type is a :class:`PeerProtocolError`, raised as soon
as the header or payload shows it, never after buffering without limit.

A relay forwards a block's bytes while they arrive (cut-through): a
:class:`BlockStart`, :class:`BlockPart` frames, then a :class:`BlockEnd`
whose size and digest the receiver checks against what came
(:class:`Reassembly`), or a :class:`BlockAbort`: the block is not to be
stored (the sender's copy turned out short, corrupt or forged, or the
sender does not store it now). A client whose parent was lost in the
middle of a block fetches the rest of it only (:class:`BlockTail`).

Every connection opens with a :class:`Hello` from the connecting side, which
names the protocol, its version and what the connection is for (``kind``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from server import protocol as stock

PROTOCOL = "relaytv"
#: 2: blocks relayed in parts (BlockStart, BlockPart, BlockEnd, BlockAbort), which a
#: version 1 client cannot decode.
VERSION = 2
HEADER = struct.Struct(">BI")
BLOCK_HEADER = struct.Struct(">Q16s")
START_FORMAT = struct.Struct(">Q")
END_FORMAT = struct.Struct(">I16s")
TAIL_HEADER = struct.Struct(">Q16sI")
#: The most bytes one BlockPart carries: a hop costs about this much transfer.
MAX_PART = 64 * 1024
MAX_CONTROL = 64 * 1024
MAX_BLOCK = stock.MAX_BLOCK    # one bound for a block, pushed or relayed
MAX_LIST = 64
MAX_MEMBERS = 1024
MAX_WANT = 256
MAX_LIBRARY_WANT = 10_000
MAX_LIBRARY_INDEX = 9_999
DIGEST_SIZE = 16
#: The most children a client may take: what a Report's ``children`` and a
#: Redirect's candidate list can carry (``--max-children`` is refused above it).
MAX_CHILDREN = MAX_LIST


class PeerProtocolError(ValueError):
    """The peer sent something this protocol does not allow."""


class VersionMismatch(PeerProtocolError):
    """A first frame of another version of this protocol: answered, not just closed.

    ``theirs`` is the version the peer named.
    """

    def __init__(self, theirs):
        super().__init__(f"unsupported protocol version {theirs!r}")
        self.theirs = theirs


def block_digest(data: bytes) -> bytes:
    """The channel-wide identity of a block: a hash of its bytes.

    Every direct client receives the same bytes from the server, so every
    client in the channel derives the same identity without any coordination.
    """
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


# -- field validation ---------------------------------------------------------

def _check_ip(value) -> str:
    if not isinstance(value, str) or len(value) > 15:
        raise PeerProtocolError(f"bad IP address {value!r}")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise PeerProtocolError(f"bad IP address {value!r}") from None
    return value


def _check_int(value, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PeerProtocolError(f"bad {name} {value!r}")
    return value


def _check_str(value, name: str, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise PeerProtocolError(f"bad {name} {value!r}")
    return value


def _check_list(value, name: str, limit: int = MAX_LIST) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise PeerProtocolError(f"bad {name}: not a list of at most {limit}")
    return value


@dataclass(frozen=True, order=True)
class Addr:
    """A client's peer endpoint: its IP address and peer port."""

    ip: str
    port: int

    def __post_init__(self):
        _check_ip(self.ip)
        _check_int(self.port, "port", 1, 65535)

    @classmethod
    def parse(cls, value) -> "Addr":
        if not isinstance(value, dict):
            raise PeerProtocolError(f"bad address {value!r}")
        return cls(value.get("ip"), value.get("port"))

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class Candidate:
    """A place a joiner may try: a relay, how deep it is, its free slots, its load."""

    addr: Addr
    depth: int
    free: int
    sent: int

    def __post_init__(self):
        _check_int(self.depth, "depth", 1, 1000)
        _check_int(self.free, "free", 0, MAX_CHILDREN)
        _check_int(self.sent, "sent", 0, 2**63)

    def to_json(self) -> dict:
        return {"ip": self.addr.ip, "port": self.addr.port, "depth": self.depth,
                "free": self.free, "sent": self.sent}

    @classmethod
    def parse(cls, value) -> "Candidate":
        if not isinstance(value, dict):
            raise PeerProtocolError(f"bad candidate {value!r}")
        return cls(Addr.parse(value), value.get("depth"), value.get("free"), value.get("sent"))


def _addrs(value, name: str, limit: int = MAX_LIST) -> tuple[Addr, ...]:
    return tuple(Addr.parse(v) for v in _check_list(value, name, limit))


def _candidates(value) -> tuple[Candidate, ...]:
    return tuple(Candidate.parse(v) for v in _check_list(value, "candidates"))


def _digests(value, name: str = "have", limit: int = 16) -> tuple[bytes, ...]:
    out = []
    for v in _check_list(value, name, limit):
        if not isinstance(v, str) or len(v) != 2 * DIGEST_SIZE:
            raise PeerProtocolError(f"bad digest {v!r}")
        try:
            out.append(bytes.fromhex(v))
        except ValueError:
            raise PeerProtocolError(f"bad digest {v!r}") from None
    return tuple(out)


def _check_version(obj: dict) -> None:
    """Before any other field: a peer of another version may have other fields too."""
    theirs = obj.get("proto"), obj.get("version")
    if theirs[0] == PROTOCOL and theirs[1] != VERSION:
        _check_int(theirs[1], "version", 0, 2**31)
        raise VersionMismatch(theirs[1])


# -- messages -----------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    """First frame of every connection: who I am and what I want.

    ``kind`` is ``join`` (become the receiver's child), ``probe`` (ask for an
    :class:`Info`) or ``fetch`` (ask for the blocks listed in ``want``).
    ``have`` lists the identities of the joiner's latest blocks, newest last,
    so that the new parent resumes right after them, and ``have_seq`` the
    position of the newest of them in the joiner's numbering (a film repeats,
    so an identity can occur twice in a window: the parent takes the
    occurrence whose position is nearest); ``moved_by`` names the relay that
    sent the joiner here (a swap partner the receiver expects); ``catch_up`` asks a new
    joiner's parent for that many recent blocks to start behind live;
    ``subtree`` lists the joiner's own descendants, which the receiver must
    not be; ``lost`` names the joiner's parent that went silent (if that is
    the receiver's child and silent there too, its place is the joiner's);
    ``held`` (a fetch) says how many bytes of its first wanted block the asker
    holds: that block comes as a :class:`BlockTail` with the rest.
    """

    TYPE: ClassVar[int] = 1
    kind: str
    addr: Addr
    channel: int
    max_children: int = 0
    have: tuple[bytes, ...] = ()
    subtree: tuple[Addr, ...] = ()
    catch_up: int = 0
    want: tuple[bytes, ...] = ()
    have_seq: int = 0
    moved_by: Addr | None = None
    lost: Addr | None = None
    held: int = 0
    proto: str = PROTOCOL
    version: int = VERSION

    def __post_init__(self):
        if self.proto != PROTOCOL:
            raise PeerProtocolError(f"not a {PROTOCOL} peer: {self.proto!r}")
        if self.version != VERSION:
            raise VersionMismatch(self.version)
        if self.kind not in ("join", "probe", "fetch"):
            raise PeerProtocolError(f"unknown hello kind {self.kind!r}")
        _check_int(self.channel, "channel", 0, 9)
        _check_int(self.max_children, "max_children", 0, MAX_CHILDREN)
        _check_int(self.catch_up, "catch_up", 0, MAX_WANT)
        _check_int(self.have_seq, "have_seq", 0, 2**64 - 1)
        _check_int(self.held, "held", 0, MAX_BLOCK)

    def to_json(self) -> dict:
        return {"proto": self.proto, "version": self.version, "kind": self.kind,
                "ip": self.addr.ip, "port": self.addr.port, "channel": self.channel,
                "max_children": self.max_children,
                "have": [d.hex() for d in self.have],
                "subtree": [asdict(a) for a in self.subtree],
                "catch_up": self.catch_up, "want": [d.hex() for d in self.want],
                "have_seq": self.have_seq,
                "moved_by": asdict(self.moved_by) if self.moved_by else None,
                **({"lost": asdict(self.lost)} if self.lost else {}),
                **({"held": self.held} if self.held else {})}

    @classmethod
    def from_json(cls, obj: dict) -> "Hello":
        _check_version(obj)
        return cls(kind=obj.get("kind"), addr=Addr.parse(obj), channel=obj.get("channel"),
                   max_children=obj.get("max_children", 0),
                   have=_digests(obj.get("have", [])),
                   subtree=_addrs(obj.get("subtree", []), "subtree", MAX_MEMBERS),
                   catch_up=obj.get("catch_up", 0),
                   want=_digests(obj.get("want", []), "want", MAX_WANT),
                   have_seq=obj.get("have_seq", 0),
                   moved_by=None if obj.get("moved_by") is None else Addr.parse(obj["moved_by"]),
                   lost=None if obj.get("lost") is None else Addr.parse(obj["lost"]),
                   held=obj.get("held", 0),
                   proto=obj.get("proto"), version=obj.get("version"))


@dataclass(frozen=True)
class Accept:
    """The receiver takes the joiner as a child.

    ``path`` is the receiver's own chain of relays from the root down to its
    parent; ``after`` is the identity of the joiner's block that the receiver
    found in its window (None: none found); ``missing`` lists the blocks the
    receiver holds after that point (or the catch-up asked for), oldest
    first: the joiner fetches them, from several peers at once, while the
    receiver streams on from its next live block.
    """

    TYPE: ClassVar[int] = 2
    depth: int
    path: tuple[Addr, ...] = ()
    after: bytes | None = None
    missing: tuple[bytes, ...] = ()

    def __post_init__(self):
        _check_int(self.depth, "depth", 1, 1000)

    def to_json(self) -> dict:
        return {"depth": self.depth, "path": [asdict(a) for a in self.path],
                "after": self.after.hex() if self.after else None,
                "missing": [d.hex() for d in self.missing]}

    @classmethod
    def from_json(cls, obj: dict) -> "Accept":
        after = obj.get("after")
        return cls(obj.get("depth"), _addrs(obj.get("path", []), "path"),
                   _digests([after])[0] if after is not None else None,
                   _digests(obj.get("missing", []), "missing", MAX_WANT))


@dataclass(frozen=True)
class Redirect:
    """The receiver is full: try these places further down, best first."""

    TYPE: ClassVar[int] = 3
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict:
        return {"candidates": [c.to_json() for c in self.candidates]}

    @classmethod
    def from_json(cls, obj: dict) -> "Redirect":
        return cls(_candidates(obj.get("candidates")))


@dataclass(frozen=True)
class _Refusal:
    """A message that only says why (a refusal of some kind)."""

    reason: str

    def __post_init__(self):
        _check_str(self.reason, "reason")

    def to_json(self) -> dict:
        return {"reason": self.reason}

    @classmethod
    def from_json(cls, obj: dict):
        return cls(obj.get("reason"))


@dataclass(frozen=True)
class Reject(_Refusal):
    """The receiver will not take the joiner (not attached, loop, wrong channel...).

    ``version``: set when the refusal is of a first frame of another protocol
    version, to the version the receiver speaks (absent from the frame
    otherwise; a client that does not know the field ignores it).
    """

    TYPE: ClassVar[int] = 4
    version: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.version is not None:
            _check_int(self.version, "version", 0, 2**31)

    def to_json(self) -> dict:
        return {"reason": self.reason, **({"version": self.version} if self.version is not None else {})}

    @classmethod
    def from_json(cls, obj: dict) -> "Reject":
        return cls(obj.get("reason"), obj.get("version"))


@dataclass(frozen=True)
class Block:
    """One block of the channel: its position in the sender's numbering, its identity, its bytes."""

    TYPE: ClassVar[int] = 5
    seq: int
    digest: bytes
    data: bytes = field(repr=False)

    def __post_init__(self):
        _check_int(self.seq, "seq", 0, 2**64 - 1)
        if len(self.digest) != DIGEST_SIZE:
            raise PeerProtocolError("bad block digest length")
        if len(self.data) > MAX_BLOCK:
            raise PeerProtocolError("block too large")

    @classmethod
    def of(cls, seq: int, data: bytes) -> "Block":
        return cls(seq, block_digest(data), data)


@dataclass(frozen=True)
class BlockTail:
    """The rest of a wanted block, from byte ``offset`` on: a fetch's answer when the asker
    holds the block's beginning (``Hello.held``: a block cut short by its parent's loss).

    Only the asker can check it, against the bytes it held and these together.
    """

    TYPE: ClassVar[int] = 54
    seq: int
    digest: bytes
    offset: int
    data: bytes = field(repr=False)

    def __post_init__(self):
        _check_int(self.seq, "seq", 0, 2**64 - 1)
        _check_int(self.offset, "offset", 1, MAX_BLOCK)
        if len(self.digest) != DIGEST_SIZE:
            raise PeerProtocolError("bad block digest length")
        if self.offset + len(self.data) > MAX_BLOCK:
            raise PeerProtocolError("block too large")

    def completes(self, held: bytes) -> Block | None:
        """The whole block, if ``held`` is its beginning (None: it is not)."""
        if len(held) != self.offset:
            return None
        data = held + self.data
        return Block(self.seq, self.digest, data) if block_digest(data) == self.digest else None


@dataclass(frozen=True)
class BlockStart:
    """A block begins, sent in parts: ``seq`` is its position in the sender's numbering."""

    TYPE: ClassVar[int] = 50
    seq: int

    def __post_init__(self):
        _check_int(self.seq, "seq", 0, 2**64 - 1)


@dataclass(frozen=True)
class BlockPart:
    """The next bytes of the block begun (at least one, at most :data:`MAX_PART`)."""

    TYPE: ClassVar[int] = 51
    data: bytes = field(repr=False)

    def __post_init__(self):
        if not 1 <= len(self.data) <= MAX_PART:
            raise PeerProtocolError(f"block part of {len(self.data)} bytes is out of bounds")


@dataclass(frozen=True)
class BlockEnd:
    """The block begun is whole: its size and identity, which the receiver checks."""

    TYPE: ClassVar[int] = 52
    size: int
    digest: bytes

    def __post_init__(self):
        _check_int(self.size, "size", 0, MAX_BLOCK)
        if len(self.digest) != DIGEST_SIZE:
            raise PeerProtocolError("bad block digest length")


@dataclass(frozen=True)
class BlockAbort(_Refusal):
    """The block begun is not to be stored: discard its parts (``reason`` says why)."""

    TYPE: ClassVar[int] = 53


class Reassembly:
    """The block arriving in parts on one link: bounded, hashed as it comes, checked at its end.

    Pure bookkeeping for the receiver (and for a direct client reading the
    server's push, with :meth:`add` and :meth:`finish`). Every misuse is the
    peer's :class:`PeerProtocolError`: a part or an end with no start, a start
    inside a block, more than :data:`MAX_BLOCK` bytes, an end whose size or
    digest is not that of the bytes that came.
    """

    def __init__(self):
        self.seq: int | None = None
        self._parts: list[bytes] = []
        self._hash = None
        self.size = 0

    @property
    def open(self) -> bool:
        return self.seq is not None

    def start(self, seq: int) -> None:
        if self.open:
            raise PeerProtocolError(f"a block start inside block {self.seq}")
        self.seq, self._parts, self.size = seq, [], 0
        self._hash = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def add(self, data: bytes) -> None:
        if not self.open:
            raise PeerProtocolError("a block part with no block started")
        if self.size + len(data) > MAX_BLOCK:
            raise PeerProtocolError(f"block {self.seq} grows past {MAX_BLOCK} bytes")
        self._parts.append(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> Block:
        """The whole block as it came (the server's push: its end is the connection's)."""
        if not self.open:
            raise PeerProtocolError("a block end with no block started")
        block = Block(self.seq, self._hash.digest(), b"".join(self._parts))
        self.abort()
        return block

    def end(self, end: BlockEnd) -> Block:
        """The block, once its end's size and digest match what came."""
        if not self.open:
            raise PeerProtocolError("a block end with no block started")
        if end.size != self.size:
            raise PeerProtocolError(f"block {self.seq} ends at {end.size} bytes, "
                                    f"{self.size} came")
        block = self.finish()
        if block.digest != end.digest:
            raise PeerProtocolError(f"block {block.seq}: digest does not match its bytes")
        return block

    def held(self) -> bytes:
        """The bytes of the block begun that came so far."""
        return b"".join(self._parts)

    def abort(self) -> None:
        """Forget the block begun (aborted, or its link ended)."""
        self.seq, self._parts, self._hash, self.size = None, [], None, 0


def parts_of(data: bytes) -> list[BlockPart]:
    """``data`` cut into parts of at most :data:`MAX_PART` bytes."""
    return [BlockPart(data[at:at + MAX_PART]) for at in range(0, len(data), MAX_PART)]


@dataclass(frozen=True)
class Keepalive:
    """Sent on a parent link, either way, when nothing else went that way for a while."""

    TYPE: ClassVar[int] = 6

    def to_json(self) -> dict:
        return {}

    @classmethod
    def from_json(cls, obj: dict) -> "Keepalive":
        return cls()


@dataclass(frozen=True)
class PathUpdate:
    """Parent to child: my chain of relays changed (I moved); here is the new one."""

    TYPE: ClassVar[int] = 7
    depth: int
    path: tuple[Addr, ...]

    def __post_init__(self):
        _check_int(self.depth, "depth", 1, 1000)

    def to_json(self) -> dict:
        return {"depth": self.depth, "path": [asdict(a) for a in self.path]}

    @classmethod
    def from_json(cls, obj: dict) -> "PathUpdate":
        return cls(obj.get("depth"), _addrs(obj.get("path", []), "path"))


@dataclass(frozen=True)
class Move:
    """Parent to child: I am leaving; go to these places (``server``: try the server first)."""

    TYPE: ClassVar[int] = 8
    candidates: tuple[Addr, ...]
    server: bool = False

    def to_json(self) -> dict:
        return {"candidates": [asdict(a) for a in self.candidates], "server": self.server}

    @classmethod
    def from_json(cls, obj: dict) -> "Move":
        server = obj.get("server", False)
        if not isinstance(server, bool):
            raise PeerProtocolError(f"bad server flag {server!r}")
        return cls(_addrs(obj.get("candidates"), "candidates"), server)


@dataclass(frozen=True)
class Drop(_Refusal):
    """Parent to child: I no longer serve you (you could not keep up, or a loop)."""

    TYPE: ClassVar[int] = 9


@dataclass(frozen=True)
class Bye:
    """Child to parent: I am leaving on purpose; free my slot now.

    ``successor``: the client the slot is for (a swap partner on its way);
    the parent keeps the slot for it for a moment instead of giving it to
    whoever asks first.
    """

    TYPE: ClassVar[int] = 10
    successor: Addr | None = None

    def to_json(self) -> dict:
        return {"successor": asdict(self.successor)} if self.successor else {}

    @classmethod
    def from_json(cls, obj: dict) -> "Bye":
        successor = obj.get("successor")
        return cls(None if successor is None else Addr.parse(successor))


@dataclass(frozen=True)
class Report:
    """Child to parent, every half period: my free slots, my upload and my subtree.

    ``subtree`` holds the free places known below the child, best first, so
    that a full relay can redirect a joiner straight to a free slot;
    ``members`` lists every descendant (for loop checks and the ``tree`` view);
    ``parents`` gives, for each member, the index of its parent among the
    members (-1: the reporting child itself), so the whole subtree can be drawn;
    ``nodes``, once a period, the web view's summary of the child's whole
    subtree (:mod:`client.treenode`; absent from the other reports).
    """

    TYPE: ClassVar[int] = 11
    free: int
    sent: int
    subtree: tuple[Candidate, ...] = ()
    members: tuple[Addr, ...] = ()
    max_children: int = 0
    children: tuple[Addr, ...] = ()
    parents: tuple[int, ...] = ()
    nodes: tuple = ()

    def __post_init__(self):
        _check_int(self.free, "free", 0, MAX_CHILDREN)
        _check_int(self.sent, "sent", 0, 2**63)
        _check_int(self.max_children, "max_children", 0, MAX_CHILDREN)
        if self.parents and len(self.parents) != len(self.members):
            raise PeerProtocolError("bad parents: not one per member")
        for index in self.parents:
            _check_int(index, "parent index", -1, len(self.members) - 1)

    def to_json(self) -> dict:
        return {"free": self.free, "sent": self.sent,
                "subtree": [c.to_json() for c in self.subtree],
                "members": [asdict(a) for a in self.members],
                "max_children": self.max_children,
                "children": [asdict(a) for a in self.children],
                "parents": list(self.parents),
                **({"nodes": [n.to_wire() for n in self.nodes]} if self.nodes else {})}

    @classmethod
    def from_json(cls, obj: dict) -> "Report":
        from client.treenode import wire_nodes  # (here: client.treenode imports this module)
        return cls(obj.get("free"), obj.get("sent"), _candidates(obj.get("subtree", [])),
                   _addrs(obj.get("members", []), "members", MAX_MEMBERS),
                   obj.get("max_children", 0), _addrs(obj.get("children", []), "children"),
                   tuple(_check_list(obj.get("parents", []), "parents", MAX_MEMBERS)),
                   wire_nodes(obj.get("nodes", [])))


@dataclass(frozen=True)
class Info:
    """Answer to a probe: where I stand and the free places I know of below me.

    When the probe carried ``have``, ``after`` and ``missing`` say, as in
    :class:`Accept`, which of the prober's blocks the receiver found in its
    window and the blocks it holds after that one: a client that has just
    become a direct client learns what it missed on the way.
    """

    TYPE: ClassVar[int] = 12
    attached: bool
    depth: int
    free: int
    sent: int
    candidates: tuple[Candidate, ...] = ()
    after: bytes | None = None
    missing: tuple[bytes, ...] = ()

    def __post_init__(self):
        if not isinstance(self.attached, bool):
            raise PeerProtocolError("bad attached flag")
        _check_int(self.depth, "depth", 1, 1000)
        _check_int(self.free, "free", 0, MAX_CHILDREN)
        _check_int(self.sent, "sent", 0, 2**63)

    def to_json(self) -> dict:
        return {"attached": self.attached, "depth": self.depth, "free": self.free,
                "sent": self.sent, "candidates": [c.to_json() for c in self.candidates],
                "after": self.after.hex() if self.after else None,
                "missing": [d.hex() for d in self.missing]}

    @classmethod
    def from_json(cls, obj: dict) -> "Info":
        after = obj.get("after")
        return cls(obj.get("attached"), obj.get("depth"), obj.get("free"), obj.get("sent"),
                   _candidates(obj.get("candidates", [])),
                   _digests([after])[0] if after is not None else None,
                   _digests(obj.get("missing", []), "missing", MAX_WANT))


def _optional_candidate(value) -> Candidate | None:
    return None if value is None else Candidate.parse(value)


@dataclass(frozen=True)
class Advice:
    """Parent to child, kept fresh: where to go if a relay dies, known in advance.

    ``backup`` is the child's own backup parent (a free place outside its
    parent's subtree, for when its parent dies); ``advice`` is a free place
    outside the child's subtree, which the child passes to its own children
    as their backup (for when the child dies).
    """

    TYPE: ClassVar[int] = 13
    backup: Candidate | None = None
    advice: Candidate | None = None

    def to_json(self) -> dict:
        return {"backup": self.backup.to_json() if self.backup else None,
                "advice": self.advice.to_json() if self.advice else None}

    @classmethod
    def from_json(cls, obj: dict) -> "Advice":
        return cls(_optional_candidate(obj.get("backup")), _optional_candidate(obj.get("advice")))


@dataclass(frozen=True)
class FetchEnd:
    """Closes an answer to a fetch: the wanted blocks this peer did not have."""

    TYPE: ClassVar[int] = 14
    missing: tuple[bytes, ...] = ()

    def to_json(self) -> dict:
        return {"missing": [d.hex() for d in self.missing]}

    @classmethod
    def from_json(cls, obj: dict) -> "FetchEnd":
        return cls(_digests(obj.get("missing", []), "missing", MAX_WANT))


@dataclass(frozen=True)
class Swap:
    """Parent to child: take my place (the balance rotation), I become your child.

    An offer: nothing changes until the child answers with a
    :class:`SwapAnswer`. Once it accepts, it joins ``parent`` (or the server when ``server``), where the
    sender has just freed its slot, with ``path`` as its chain of relays until
    it is accepted there; meanwhile it accepts the ``expected`` clients (the
    sender and its other children) even before it is attached, and sends its
    own children to the sender.
    """

    TYPE: ClassVar[int] = 15
    parent: Addr | None
    path: tuple[Addr, ...]
    expected: tuple[Addr, ...]
    server: bool = False

    def __post_init__(self):
        if not isinstance(self.server, bool):
            raise PeerProtocolError(f"bad server flag {self.server!r}")
        if (self.parent is None) != self.server:
            raise PeerProtocolError("a swap names either a parent relay or the server")

    def to_json(self) -> dict:
        return {"parent": asdict(self.parent) if self.parent else None,
                "path": [asdict(a) for a in self.path],
                "expected": [asdict(a) for a in self.expected], "server": self.server}

    @classmethod
    def from_json(cls, obj: dict) -> "Swap":
        parent = obj.get("parent")
        return cls(None if parent is None else Addr.parse(parent),
                   _addrs(obj.get("path", []), "path"), _addrs(obj.get("expected", []), "expected"),
                   obj.get("server", False))


@dataclass(frozen=True)
class SwapAnswer:
    """Child to parent: whether it takes the place a :class:`Swap` offered.

    A child that is itself moving, repairing or swapping declines; the parent
    changes nothing until the answer comes, so two swaps never interleave.
    """

    TYPE: ClassVar[int] = 16
    accept: bool

    def __post_init__(self):
        if not isinstance(self.accept, bool):
            raise PeerProtocolError(f"bad accept flag {self.accept!r}")

    def to_json(self) -> dict:
        return {"accept": self.accept}

    @classmethod
    def from_json(cls, obj: dict) -> "SwapAnswer":
        return cls(obj.get("accept"))


@dataclass(frozen=True)
class TreeQuery:
    """First (and only) frame of a connection that asks a client for its subtree (the web view)."""

    TYPE: ClassVar[int] = 20
    channel: int

    def __post_init__(self):
        _check_int(self.channel, "channel", 0, 9)

    def to_json(self) -> dict:
        return {"channel": self.channel}

    @classmethod
    def from_json(cls, obj: dict) -> "TreeQuery":
        return cls(obj.get("channel"))


@dataclass(frozen=True)
class TreeAnswer:
    """Answer to a :class:`TreeQuery`: the nodes of the receiver's subtree, itself first."""

    TYPE: ClassVar[int] = 21
    nodes: tuple = ()

    def to_json(self) -> dict:
        return {"nodes": [n.to_wire() for n in self.nodes]}

    @classmethod
    def from_json(cls, obj: dict) -> "TreeAnswer":
        from client.treenode import wire_nodes  # (here: client.treenode imports this module)
        return cls(wire_nodes(obj.get("nodes", [])))



@dataclass(frozen=True)
class LibraryFetch:
    """First frame of a library download connection: send me these blocks of a film.

    ``film`` is the version (manifest hash) the tracker gave; ``blocks``
    the indices wanted, in the order wanted. The answer is one
    :class:`Block` per block held (``seq`` the index), then a
    :class:`LibraryEnd`, or a :class:`Reject` when the film is not offered
    or an index is out of range.
    """

    TYPE: ClassVar[int] = 30
    addr: Addr
    film: str
    blocks: tuple[int, ...]
    proto: str = PROTOCOL
    version: int = VERSION

    def __post_init__(self):
        if self.proto != PROTOCOL:
            raise PeerProtocolError(f"not a {PROTOCOL} peer: {self.proto!r}")
        if self.version != VERSION:
            raise VersionMismatch(self.version)
        if (not isinstance(self.film, str) or len(self.film) != 16
                or any(c not in "0123456789abcdef" for c in self.film)):
            raise PeerProtocolError(f"bad film version {self.film!r}")
        for index in _check_list(list(self.blocks), "blocks", MAX_LIBRARY_WANT):
            _check_int(index, "block index", 0, MAX_LIBRARY_INDEX)

    def to_json(self) -> dict:
        return {"proto": self.proto, "version": self.version, "ip": self.addr.ip,
                "port": self.addr.port, "film": self.film, "blocks": list(self.blocks)}

    @classmethod
    def from_json(cls, obj: dict) -> "LibraryFetch":
        _check_version(obj)
        blocks = _check_list(obj.get("blocks"), "blocks", MAX_LIBRARY_WANT)
        return cls(Addr.parse(obj), obj.get("film"), tuple(blocks), obj.get("proto"),
                   obj.get("version"))


@dataclass(frozen=True)
class LibraryEnd:
    """Closes an answer to a :class:`LibraryFetch`: the wanted blocks this peer lacks."""

    TYPE: ClassVar[int] = 31
    missing: tuple[int, ...] = ()

    def __post_init__(self):
        for index in _check_list(list(self.missing), "missing", MAX_LIBRARY_WANT):
            _check_int(index, "block index", 0, MAX_LIBRARY_INDEX)

    def to_json(self) -> dict:
        return {"missing": list(self.missing)}

    @classmethod
    def from_json(cls, obj: dict) -> "LibraryEnd":
        return cls(tuple(_check_list(obj.get("missing", []), "missing", MAX_LIBRARY_WANT)))


@dataclass(frozen=True)
class Vouch:
    """First (and only) frame of a connection that asks a client: is ``child`` your child?

    A joiner asks each ancestor its new parent names (:mod:`client.places`)
    before it takes the place.
    """

    TYPE: ClassVar[int] = 45
    channel: int
    child: Addr

    def __post_init__(self):
        _check_int(self.channel, "channel", 0, 9)

    def to_json(self) -> dict:
        return {"channel": self.channel, "ip": self.child.ip, "port": self.child.port}

    @classmethod
    def from_json(cls, obj: dict) -> "Vouch":
        return cls(obj.get("channel"), Addr.parse(obj))


@dataclass(frozen=True)
class VouchAnswer:
    """Answer to a :class:`Vouch`: whether the asked client is the receiver's child now."""

    TYPE: ClassVar[int] = 46
    yes: bool

    def __post_init__(self):
        if not isinstance(self.yes, bool):
            raise PeerProtocolError(f"bad vouch answer {self.yes!r}")

    def to_json(self) -> dict:
        return {"yes": self.yes}

    @classmethod
    def from_json(cls, obj: dict) -> "VouchAnswer":
        return cls(obj.get("yes"))


#: Digests one :class:`DigestQuery` may ask about (a live block, or a few repaired ones).
MAX_CHECK = 16
#: Milliseconds a :class:`DigestQuery` may ask its witness to wait for the server's block.
MAX_CHECK_WAIT_MS = 5000


def _check_digests(digests, name: str) -> None:
    if not isinstance(digests, tuple) or len(digests) > MAX_CHECK or not all(
            isinstance(d, bytes) and len(d) == DIGEST_SIZE for d in digests):
        raise PeerProtocolError(f"bad {name}: not a tuple of at most {MAX_CHECK} digests")


@dataclass(frozen=True)
class DigestQuery:
    """First (and only) frame of a connection that asks a direct client: did the server
    send you these blocks? (the cross-check with the stock server, :mod:`client.crosscheck`).

    The asked client may wait up to ``wait_ms`` for the server's next block
    before it answers, so that a block it is about to get is confirmed, not
    refuted.
    """

    TYPE: ClassVar[int] = 47
    channel: int
    want: tuple[bytes, ...]
    wait_ms: int = 0

    def __post_init__(self):
        _check_int(self.channel, "channel", 0, 9)
        _check_digests(self.want, "want")
        _check_int(self.wait_ms, "wait_ms", 0, MAX_CHECK_WAIT_MS)

    def to_json(self) -> dict:
        return {"channel": self.channel, "want": [d.hex() for d in self.want],
                "wait_ms": self.wait_ms}

    @classmethod
    def from_json(cls, obj: dict) -> "DigestQuery":
        return cls(obj.get("channel"), _digests(obj.get("want", []), "want", MAX_CHECK),
                   obj.get("wait_ms", 0))


@dataclass(frozen=True)
class DigestAnswer:
    """Answer to a :class:`DigestQuery`: which of the asked blocks the server sent the
    receiver (``got``); whether a block of the server came after the question (``fresh``:
    it is listening now); how long its unbroken memory of the server's blocks reaches back
    (``covered_ms``). A refutation needs the last two (:mod:`client.crosscheck`)."""

    TYPE: ClassVar[int] = 48
    got: tuple[bytes, ...] = ()
    fresh: bool = False
    covered_ms: int = 0

    def __post_init__(self):
        _check_digests(self.got, "got")
        if not isinstance(self.fresh, bool):
            raise PeerProtocolError(f"bad fresh {self.fresh!r}")
        _check_int(self.covered_ms, "covered_ms", 0, 2**31)

    def to_json(self) -> dict:
        return {"got": [d.hex() for d in self.got], "fresh": self.fresh,
                "covered_ms": self.covered_ms}

    @classmethod
    def from_json(cls, obj: dict) -> "DigestAnswer":
        return cls(_digests(obj.get("got", []), "got", MAX_CHECK), obj.get("fresh", False),
                   obj.get("covered_ms", 0))


Message = (Hello | Accept | Redirect | Reject | Block | BlockStart | BlockPart | BlockEnd
           | BlockAbort | BlockTail | Keepalive | PathUpdate | Move | Drop | Bye | Report | Info | Advice
           | FetchEnd | Swap | SwapAnswer | TreeQuery | TreeAnswer
           | LibraryFetch | LibraryEnd | Vouch | VouchAnswer | DigestQuery | DigestAnswer)
JSON_MESSAGES = {cls.TYPE: cls for cls in (Hello, Accept, Redirect, Reject, Keepalive, PathUpdate,
                                            Move, Drop, Bye, Report, Info, Advice, FetchEnd, Swap,
                                            SwapAnswer, TreeQuery, TreeAnswer, LibraryFetch,
                                            LibraryEnd, Vouch, VouchAnswer, DigestQuery,
                                            DigestAnswer, BlockAbort)}
#: The binary frames of a block in parts: their payload's bounds, (least, most) bytes.
PART_BOUNDS = {BlockStart.TYPE: (START_FORMAT.size, START_FORMAT.size),
               BlockPart.TYPE: (1, MAX_PART), BlockEnd.TYPE: (END_FORMAT.size, END_FORMAT.size),
               BlockTail.TYPE: (TAIL_HEADER.size, TAIL_HEADER.size + MAX_BLOCK)}


def encode(message: Message) -> bytes:
    """The bytes of one frame carrying ``message``."""
    if isinstance(message, Block):
        payload = BLOCK_HEADER.pack(message.seq, message.digest) + message.data
    elif isinstance(message, BlockStart):
        payload = START_FORMAT.pack(message.seq)
    elif isinstance(message, BlockPart):
        payload = message.data
    elif isinstance(message, BlockEnd):
        payload = END_FORMAT.pack(message.size, message.digest)
    elif isinstance(message, BlockTail):
        payload = TAIL_HEADER.pack(message.seq, message.digest, message.offset) + message.data
    else:
        payload = json.dumps(message.to_json(), separators=(",", ":")).encode()
        if len(payload) > MAX_CONTROL:
            raise PeerProtocolError(f"{type(message).__name__} frame too large to send")
    return HEADER.pack(message.TYPE, len(payload)) + payload


def _decode_payload(kind: int, payload: bytes) -> Message:
    if kind == Block.TYPE:
        seq, digest = BLOCK_HEADER.unpack_from(payload)
        data = payload[BLOCK_HEADER.size:]
        if block_digest(data) != digest:
            raise PeerProtocolError("block digest does not match its bytes")
        return Block(seq, digest, data)
    if kind == BlockStart.TYPE:
        return BlockStart(*START_FORMAT.unpack(payload))
    if kind == BlockPart.TYPE:
        return BlockPart(payload)
    if kind == BlockEnd.TYPE:
        return BlockEnd(*END_FORMAT.unpack(payload))
    if kind == BlockTail.TYPE:
        seq, digest, offset = TAIL_HEADER.unpack_from(payload)
        return BlockTail(seq, digest, offset, payload[TAIL_HEADER.size:])
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers over Python's digit limit;
        # RecursionError, nesting deeper than the parser's stack.
        raise PeerProtocolError(f"malformed JSON payload: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise PeerProtocolError("JSON payload is not an object")
    try:
        return JSON_MESSAGES[kind].from_json(obj)
    except (TypeError, AttributeError) as exc:
        raise PeerProtocolError(f"malformed {JSON_MESSAGES[kind].__name__}: {exc}") from None


class FrameDecoder:
    """Buffers received bytes and yields whole messages, one at a time.

    ``feed(b"")`` means the peer closed; a close in the middle of a frame is
    an error. The buffer never holds more than one frame's bound plus one
    received chunk.
    """

    def __init__(self, max_frame: int | None = None):
        """``max_frame``: refuse any frame whose payload is longer, e.g.
        :data:`MAX_CONTROL` on a connection whose peer may not send blocks (a
        stranger before and after its Hello), so that no block is buffered for it."""
        self._buffer = bytearray()
        self._closed = False
        self._max_frame = max_frame

    def feed(self, data: bytes) -> None:
        if not data:
            self._closed = True
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next whole message, or None when more bytes are needed.

        Raises :class:`PeerProtocolError` on bad input, and :class:`EOFError`
        when the peer closed (cleanly between frames or not).
        """
        if len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if self._max_frame is not None and length > self._max_frame:
                raise PeerProtocolError(f"frame of {length} bytes where at most "
                                        f"{self._max_frame} are allowed")
            if kind == Block.TYPE:
                if not BLOCK_HEADER.size <= length <= BLOCK_HEADER.size + MAX_BLOCK:
                    raise PeerProtocolError(f"block frame of {length} bytes is out of bounds")
            elif kind in PART_BOUNDS:
                least, most = PART_BOUNDS[kind]
                if not least <= length <= most:
                    raise PeerProtocolError(f"frame of type {kind} and {length} bytes is out "
                                            "of bounds")
            elif kind in JSON_MESSAGES:
                if length > MAX_CONTROL:
                    raise PeerProtocolError(f"control frame of {length} bytes exceeds {MAX_CONTROL}")
            else:
                raise PeerProtocolError(f"unknown frame type {kind}")
            end = HEADER.size + length
            if len(self._buffer) >= end:
                payload = bytes(self._buffer[HEADER.size:end])
                del self._buffer[:end]
                return _decode_payload(kind, payload)
        if self._closed:
            if self._buffer:
                raise EOFError("peer closed in the middle of a frame")
            raise EOFError("peer closed")
        return None
