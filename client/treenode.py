"""One client as the tree view shows it, and its wire form: the codec part of :mod:`client.treeview`.

Pure (the peer codec parses these nodes in Reports and TreeAnswers); the
ledger that gathers them lives in :mod:`client.treeview`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from client.peerproto import Addr, PeerProtocolError, _check_int, _check_ip

MAX_TREE_NODES = 400
STATES = ("joining", "free", "full", "leaf", "repairing", "stalled", "left")


@dataclass(frozen=True)
class TreeNode:
    """One client as the tree view shows it."""

    addr: Addr
    parent: Addr | None          # None: the server (a direct client) or no parent yet
    direct: bool
    depth: int
    children: int
    max_children: int
    bytes_sent: int
    bytes_received: int
    upload_rate: int             # bytes per second over the last period
    repairs: int
    state: str

    def __post_init__(self):
        for name in ("depth", "children", "max_children", "repairs"):
            _check_int(getattr(self, name), name, 0, 100000)
        for name in ("bytes_sent", "bytes_received", "upload_rate"):
            _check_int(getattr(self, name), name, 0, 2**63)
        if self.state not in STATES:
            raise PeerProtocolError(f"bad tree state {self.state!r}")

    def to_wire(self) -> list:
        p = self.parent
        return [self.addr.ip, self.addr.port, p.ip if p else "", p.port if p else 0,
                int(self.direct), self.depth, self.children, self.max_children,
                self.bytes_sent, self.bytes_received, self.upload_rate, self.repairs,
                STATES.index(self.state)]

    @classmethod
    def from_wire(cls, value) -> "TreeNode":
        if not isinstance(value, list) or len(value) != 13:
            raise PeerProtocolError("bad tree node")
        ip, port, pip, pport, direct, *numbers, state = value
        _check_int(state, "tree state", 0, len(STATES) - 1)
        _check_int(direct, "direct flag", 0, 1)
        parent = Addr(_check_ip(pip), pport) if pip else None
        return cls(Addr(ip, port), parent, bool(direct), *numbers, STATES[state])

    def to_json(self) -> dict:
        """The form of ``/api/tree`` (docs/guide/web.rst)."""
        return {"addr": str(self.addr), "parent": ("server" if self.direct else
                                                   str(self.parent) if self.parent else None),
                "depth": self.depth, "children": self.children,
                "max_children": self.max_children, "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received, "upload_rate": self.upload_rate,
                "repairs": self.repairs, "state": self.state}


def wire_size(nodes) -> int:
    """The bytes ``nodes`` add to a frame (its ``"nodes":`` field)."""
    return len(json.dumps([n.to_wire() for n in nodes], separators=(",", ":"))) + 9


def wire_nodes(value) -> tuple[TreeNode, ...]:
    """Parse a list of wire nodes, bounded by :data:`MAX_TREE_NODES`."""
    if not isinstance(value, list) or len(value) > MAX_TREE_NODES:
        raise PeerProtocolError(f"bad tree nodes: not a list of at most {MAX_TREE_NODES}")
    return tuple(TreeNode.from_wire(v) for v in value)
