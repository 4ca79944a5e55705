"""What the controller of a client is told: one frozen dataclass per kind of input, each with ``now``.

Socket threads and the user's commands post these on the node's queue; the
controller takes them one at a time (:meth:`client.node.Node._handle_input`).
``now`` is the ``time.monotonic()`` of the moment it happened, so that a
decision made later (the controller was busy) still knows how old it is.
Links are the node's own link objects: an input of a link the node has
already left is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Leave", "SwitchChannel", "GoIdle", "BlockStored", "ServerBlockHeld",
           "SubtreeChanged", "SwapAnswered", "FromParent", "ParentLost", "ParentForged",
           "Start", "ServerBlock", "Received", "LinkClosed", "ServerAnswered", "TimerFired",
           "Metered", "Progress",
           "USER_COMMANDS"]


@dataclass(frozen=True)
class Leave:
    """The user quits: leave the channel gracefully, then the controller ends."""

    now: float


@dataclass(frozen=True)
class SwitchChannel:
    """The user asked for another channel."""

    now: float
    channel: int


@dataclass(frozen=True)
class GoIdle:
    """The user left the channel, keeping the client running."""

    now: float


@dataclass(frozen=True)
class BlockStored:
    """A block was stored and relayed: a move may start right after it (client.moves)."""

    now: float
    digest: bytes


@dataclass(frozen=True)
class ServerBlockHeld:
    """The server's first block after a climb or a rejoin is held: look for the gap before it."""

    now: float


@dataclass(frozen=True)
class SubtreeChanged:
    """A child's report changed the shape of our subtree: report to our parent now."""

    now: float


@dataclass(frozen=True)
class SwapAnswered:
    """A child answered our swap offer."""

    now: float
    child: object       # its client.links.ChildLink
    accept: bool


@dataclass(frozen=True)
class FromParent:
    """A control message from our parent that the controller acts on (Swap, PathUpdate,
    Move, Drop)."""

    now: float
    link: object        # the client.links.ParentLink it came on
    message: object


@dataclass(frozen=True)
class ParentLost:
    """The parent link ended (closed, silent, a protocol violation)."""

    now: float
    link: object
    reason: str


@dataclass(frozen=True)
class ParentForged:
    """The parent relayed a block the server's feed does not name."""

    now: float
    link: object


#: The user's commands: a search for a place ends before its next step when one is queued.
USER_COMMANDS = (Leave, SwitchChannel, GoIdle)


# -- the core's inputs from its driver (client.core) ----------------------------

@dataclass(frozen=True)
class Start:
    """The driver listens on both ports: the core may begin its search."""

    now: float


@dataclass(frozen=True)
class ServerBlock:
    """A whole block came on the push port (the driver checked it starts as Matroska)."""

    now: float
    data: bytes


@dataclass(frozen=True)
class Received:
    """A frame came on ``link`` (the first one of a link the driver accepted opens it)."""

    now: float
    link: object
    message: object


@dataclass(frozen=True)
class LinkClosed:
    """``link`` ended: closed by the peer, reset, silent too long, or never connected."""

    now: float
    link: object
    reason: str


@dataclass(frozen=True)
class ServerAnswered:
    """The stock server's answer to a request of the core: True/False for a join, a list of
    IPs, a count; None when the server could not be reached."""

    now: float
    token: object
    answer: object


@dataclass(frozen=True)
class TimerFired:
    """A timer the core set is due."""

    now: float
    key: object


@dataclass(frozen=True)
class Metered:
    """A child link's sender: ``delivered`` bytes acknowledged so far, ``queued`` still in
    the kernel, ``busy`` the kernel's busy seconds and ``kernel_rate`` its bandwidth sample of
    the link when known (client.capacity)."""

    now: float
    link: object
    delivered: int
    queued: int
    writing: bool = False
    busy: float | None = None
    kernel_rate: float | None = None


@dataclass(frozen=True)
class Progress:
    """Bytes of a frame are arriving on ``link`` (a repair source is slow, not stalled)."""

    now: float
    link: object
