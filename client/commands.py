"""What the client's core asks its driver to do: one frozen dataclass per kind of command.

The core (:class:`client.core.ClientCore`) returns these from each input; the
driver performs them (sockets, files, timers) and reports back with the
inputs of :mod:`client.inputs`. A link is an opaque key: the core names the
links it opens, the driver names the ones that come in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Connect", "Send", "Close", "StoreBlock", "AskServer", "SetTimer", "StatusChanged",
           "Placed", "JOIN", "LIST", "LEAVE", "COUNT"]

#: The stock server's request codes (``<code><channel>``, docs/report/protocol.rst).
JOIN, LIST, LEAVE, COUNT = "10", "11", "12", "13"


@dataclass(frozen=True)
class Connect:
    """Open a connection to ``addr`` and send ``first`` (a Hello, a Vouch...) on it; what
    comes back arrives as :class:`client.inputs.Received` on ``link``, its end (or a
    failed connect) as :class:`client.inputs.LinkClosed`."""

    link: object
    addr: object
    first: object


@dataclass(frozen=True)
class Send:
    """Send ``message`` on ``link``, after what was sent on it before."""

    link: object
    message: object


@dataclass(frozen=True)
class Close:
    """Close ``link`` once what was sent on it is out; ``reset``: at once, dropping it."""

    link: object
    reset: bool = False


@dataclass(frozen=True)
class StoreBlock:
    """Write ``block`` to the store (numbered, in the order given)."""

    block: object


@dataclass(frozen=True)
class AskServer:
    """One request to the stock server: ``10X`` (the answer comes to the push port), ``11X``,
    ``12X`` (no answer) or ``13X``. The answer comes back as
    :class:`client.inputs.ServerAnswered` with ``token``."""

    token: object
    code: str
    channel: int


@dataclass(frozen=True)
class SetTimer:
    """Fire :class:`client.inputs.TimerFired` with ``key`` at ``at`` (the core ignores a
    timer it no longer waits for: none is ever cancelled)."""

    key: object
    at: float


@dataclass(frozen=True)
class StatusChanged:
    """The state the user sees changed: the driver writes status.json when it likes."""


@dataclass(frozen=True)
class Placed:
    """A search for a place ended (a structured event for logs and benchmarks)."""

    cause: str
    how: str
    depth: int
    depth_before: int
    started: float
