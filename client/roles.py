"""Who may send what, on each kind of peer connection: the protocol's rules as one table.

In the style of h11's ``_state.py`` (STYLE.md): pure data and a tiny checker,
no socket. A :class:`Role` is one kind of connection seen from the side that
receives: for each state, the frames that may arrive and the state each one
leads to. A frame is named by its class, a :class:`~client.peerproto.Hello`
by its kind too (``Hello(join)``). Each side of a connection keeps two
:class:`Conversation` states: what the peer may send us (our role's table)
and what we may send it (the peer's role's table, the mirror): anything
else is a violation: the peer's (:class:`ProtocolViolation`) closes the
link; ours (:class:`OwnViolation`) is a bug, logged with its traceback.

The roles (their diagrams are drawn from these tables in the report):

* ``peer``: a stranger on our peer port, from its first frame on; a
  ``Hello(join)`` that is accepted makes it a ``child`` link;
* ``join``: our join attempt, as we see the answer; an ``Accept`` makes it
  a ``parent`` link;
* ``probe``, ``vouch``, ``digest``, ``tree``: one question, one answer;
* ``fetch`` (a repair) and ``library`` (a download): blocks, then an end.

Every answer role takes a :class:`~client.peerproto.Reject` as its first
frame: the refusal of a Hello of another protocol version
(:func:`version_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass

from client import peerproto as pp

DONE = "done"  # the conversation is over: nothing more may arrive


def frame_name(message) -> str:
    """The name a table knows a frame by: its class, and a Hello's kind."""
    if isinstance(message, pp.Hello):
        return f"Hello({message.kind})"
    return type(message).__name__


#: Every name a frame can have (the tables are checked against it at import).
FRAME_NAMES = frozenset({cls.__name__ for cls in (*pp.JSON_MESSAGES.values(), pp.Block,
                                                   pp.BlockStart, pp.BlockPart, pp.BlockEnd,
                                                   pp.BlockTail)}
                        - {"Hello"} | {f"Hello({k})" for k in ("join", "probe", "fetch")})


class _Violation(Exception):
    """A frame the role's table does not allow in its state: names the role, the state, the frame."""

    blame, _who = "", ""

    def __init__(self, role: str, state: str, frame: str):
        super().__init__(f"{role} link, state {state}: {self._who} {frame}, "
                         "which is not allowed there")
        self.role, self.state, self.frame = role, state, frame


class ProtocolViolation(_Violation, pp.PeerProtocolError):
    """The peer sent it: the link is closed, as for any other peer protocol error."""

    blame, _who = "peer", "the peer sent"


class OwnViolation(_Violation, RuntimeError):
    """We were about to send it: a bug of ours (the frame is not sent, the traceback logged).

    Not a :class:`~client.peerproto.PeerProtocolError`, so that no handler
    blames the peer for it.
    """

    blame, _who = "us", "we were about to send"


@dataclass(frozen=True)
class Role:
    """One kind of connection: ``{state: {frame name: next state}}``, from ``start``."""

    name: str
    start: str
    table: dict[str, dict[str, str]]
    doc: str

    def __post_init__(self):
        for state, moves in self.table.items():
            unknown = set(moves) - FRAME_NAMES
            missing = set(moves.values()) - set(self.table) - {DONE}
            if unknown or missing:
                raise ValueError(f"role {self.name}, state {state}: unknown frames {unknown} "
                                 f"or states {missing}")

    def next(self, state: str, message, error: type = ProtocolViolation) -> str:
        """The state after ``message`` arrives in ``state``; ``error`` if it may not."""
        name = frame_name(message)
        try:
            return self.table.get(state, {})[name]
        except KeyError:
            raise error(self.name, state, name) from None


#: What a parent may send between blocks and inside a block sent in parts (``streaming``):
#: control frames anywhere, a whole Block or a BlockStart only between blocks, a part and
#: the block's end or abort only inside one. A link that ends inside a block leaves it short.
_ANYWHERE = {"Keepalive", "Advice", "PathUpdate", "Swap"}
_PARENT = {"attached": {"Block": "attached", "BlockStart": "streaming",
                        **dict.fromkeys(_ANYWHERE, "attached"), "Move": DONE, "Drop": DONE},
           "streaming": {"BlockPart": "streaming", "BlockEnd": "attached",
                         "BlockAbort": "attached", **dict.fromkeys(_ANYWHERE, "streaming"),
                         "Move": DONE, "Drop": DONE}}
_CHILD = {"child": {"Report": "child", "Keepalive": "child", "SwapAnswer": "child",
                    "Bye": DONE}}

PARENT = Role("parent", "attached", _PARENT,
              "what our parent may send us once it accepted us")
CHILD = Role("child", "child", _CHILD,
             "what a child may send us once we accepted it")
PEER = Role("peer", "hello", {
    "hello": {"Hello(join)": "child", "Hello(probe)": DONE, "Hello(fetch)": DONE,
              "LibraryFetch": DONE, "TreeQuery": DONE, "Vouch": DONE, "DigestQuery": DONE},
    **_CHILD}, "a stranger on our peer port, from its first frame (Hello(join): a child link)")
JOIN = Role("join", "asked", {
    "asked": {"Accept": "attached", "Redirect": DONE, "Reject": DONE},
    **_PARENT}, "our join attempt, from our Hello(join) (Accept: a parent link)")
PROBE = Role("probe", "asked", {"asked": {"Info": DONE, "Reject": DONE}},
             "the answer to our Hello(probe)")
VOUCH = Role("vouch", "asked", {"asked": {"VouchAnswer": DONE, "Reject": DONE}},
             "the answer to our Vouch")
DIGEST = Role("digest", "asked", {"asked": {"DigestAnswer": DONE, "Reject": DONE}},
              "the answer to our DigestQuery (the cross-check with the stock server)")
TREE = Role("tree", "asked", {"asked": {"TreeAnswer": DONE, "Reject": DONE}},
            "the answer to our TreeQuery (the web view)")
FETCH = Role("fetch", "asked", {"asked": {"Block": "asked", "BlockTail": "asked",
                                          "FetchEnd": DONE, "Reject": DONE}},
             "the answer to our Hello(fetch) (a repair)")
LIBRARY = Role("library", "asked", {"asked": {"Block": "asked", "LibraryEnd": DONE,
                                              "Reject": DONE}},
               "the answer to our LibraryFetch (a download)")

ROLES = {r.name: r for r in (PEER, CHILD, JOIN, PARENT, PROBE, VOUCH, DIGEST, TREE, FETCH,
                             LIBRARY)}

#: The role of the asker, by the first frame it sent: what we, answering, may send it.
ASKER = {"Hello(join)": JOIN, "Hello(probe)": PROBE, "Hello(fetch)": FETCH,
         "LibraryFetch": LIBRARY, "TreeQuery": TREE, "Vouch": VOUCH, "DigestQuery": DIGEST}


class Conversation:
    """Both directions of one connection: our role, and the peer's (what we may send).

    Each direction has its own state, changed by one thread only (the reader
    by :meth:`received`, the sender by :meth:`sending`), so no lock is needed.
    """

    def __init__(self, ours: Role, theirs: Role | None = None,
                 our_state: str | None = None, their_state: str | None = None):
        self.ours, self.theirs = ours, theirs
        self.state = our_state or ours.start
        self.their_state = their_state or (theirs.start if theirs else None)

    def received(self, message) -> str:
        """Check a frame that arrived; the new state. :class:`ProtocolViolation`: the peer's fault."""
        self.state = self.ours.next(self.state, message)
        return self.state

    def sending(self, message) -> None:
        """Check a frame before it goes out. :class:`OwnViolation`: a bug."""
        if self.theirs is not None:
            self.their_state = self.theirs.next(self.their_state, message, OwnViolation)

    def answering(self, first) -> None:
        """We are the peer side: after the stranger's first frame, answer as its role expects."""
        self.theirs = ASKER[frame_name(first)]
        self.their_state = self.theirs.start


def version_refusal(theirs) -> pp.Reject:
    """The answer to a first frame of another protocol version: old and new clients decode it."""
    return pp.Reject(f"protocol version {theirs!r} is not supported here: "
                     f"this client speaks version {pp.VERSION}", version=pp.VERSION)
