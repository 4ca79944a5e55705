"""The whole channel's relay tree, as every client can learn it within the stock protocol.

How it flows:

* every client sums up its own place as one :class:`~client.treenode.TreeNode` (address,
  parent, depth, children used / K, bytes, upload rate, repairs, state);
* its :class:`~client.peerproto.Report` to its parent carries the nodes of
  its whole subtree (itself and what its children last reported), once a
  period, and at once when a child's report changed the subtree's shape or a
  state, so that a change climbs to the direct client within milliseconds
  and the counters within a period per level;
* a client whose web page has viewers asks the server for the channel's
  direct clients (``11X``) and each of them, over the peer port, for its
  subtree (:class:`~client.peerproto.TreeQuery` answered by
  :class:`~client.peerproto.TreeAnswer`); the union is the whole tree.

Traffic is bounded: at most :data:`~client.treenode.MAX_TREE_NODES` nodes in a report or an
answer, one report a period, and the queries only while someone watches.
The wire form of a node is a short JSON array (:meth:`~client.treenode.TreeNode.to_wire`).
"""

from __future__ import annotations

import threading
import time

from client.peerproto import Addr
from client.treenode import MAX_TREE_NODES, TreeNode, wire_size

def node_state(snapshot: dict, stalled: bool) -> str:
    """The colour of a client: what it is doing for the tree right now."""
    if snapshot["state"] in ("joining", "orphaned"):
        return "repairing" if snapshot["rejoins"] else "joining"
    if snapshot["state"] not in ("direct", "attached"):
        return "left"
    if snapshot["repairing"]:
        return "repairing"
    if stalled:
        return "stalled"
    if snapshot["max_children"] == 0:
        return "leaf"
    return "full" if len(snapshot["children"]) >= snapshot["max_children"] else "free"


def own_node(snapshot: dict, upload_rate: int, stalled: bool) -> TreeNode:
    parent = snapshot["parent"]
    return TreeNode(Addr(snapshot["ip"], snapshot["peer_port"]),
                    Addr(parent["ip"], parent["port"]) if isinstance(parent, dict) else None,
                    parent == "server", max(snapshot["depth"], 0), len(snapshot["children"]),
                    snapshot["max_children"], snapshot["bytes_sent"], snapshot["bytes_received"],
                    max(0, upload_rate), snapshot["rejoins"] + snapshot["blocks_repaired"],
                    node_state(snapshot, stalled))


class SubtreeLedger:
    """What this client knows of its subtree: its children's latest reports, and its own rate.

    Called by the node's threads (reports arrive on child readers, reports go
    out from the controller); one lock guards it.
    """

    def __init__(self, period: float, clock=time.monotonic, wall=time.time):
        self.period = period
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._reported: dict[Addr, tuple[TreeNode, ...]] = {}
        self._rate_sample: tuple[float, int] | None = None
        self._rate = 0
        self._next_report = 0.0
        self._next_push = 0.0
        self._shape: tuple = ()
        self.control_bytes = 0      # the tree's share of the reports this client sent

    def child_reported(self, child: Addr, nodes: tuple[TreeNode, ...]) -> bool:
        """Keep a child's subtree; True when its shape or a state changed and it is worth
        passing up now (at most every eighth of a period: the regular report follows anyway)."""
        with self._lock:
            before = self._reported.get(child)
            self._reported[child] = nodes
            if before is not None and _shape(before) == _shape(nodes):
                return False
            now = self._clock()
            if now < self._next_push:
                return False
            self._next_push = now + self.period / 8
            return True

    def child_gone(self, child: Addr) -> None:
        with self._lock:
            self._reported.pop(child, None)

    def _upload_rate(self, sent: int) -> int:
        now = self._clock()
        sample = self._rate_sample
        if sample is None or sent < sample[1]:
            self._rate_sample = (now, sent)
        elif now - sample[0] >= self.period:
            self._rate = int((sent - sample[1]) / (now - sample[0]))
            self._rate_sample = (now, sent)
        return self._rate

    def subtree(self, snapshot: dict) -> list[TreeNode]:
        """This client, then every node its children reported (children still linked only)."""
        stalled = (snapshot["last_block_at"] is not None
                   and self._wall() - snapshot["last_block_at"] > 1.5 * self.period)
        children = {f"{c['ip']}:{c['port']}" for c in snapshot["children"]}
        with self._lock:
            me = own_node(snapshot, self._upload_rate(snapshot["bytes_sent"]), stalled)
            nodes = [me]
            for child, reported in self._reported.items():
                if str(child) in children:
                    nodes.extend(reported)
        return nodes[:MAX_TREE_NODES]

    def for_report(self, snapshot: dict) -> tuple[TreeNode, ...]:
        """The nodes to put in this report: the subtree once a period, or sooner when its
        shape or a state changed; nothing in between."""
        now = self._clock()
        nodes = tuple(self.subtree(snapshot))
        shape = _shape(nodes)
        if now < self._next_report and shape == self._shape:
            return ()
        self._next_report, self._shape = now + self.period * 0.9, shape
        self.control_bytes += wire_size(nodes)
        return nodes


def _shape(nodes) -> tuple:
    """What the tree view draws of ``nodes``, leaving out the counters that change every block."""
    return tuple((n.addr, n.parent, n.state, n.children) for n in nodes)


def merge_tree(roots: list[list[TreeNode]]) -> list[TreeNode]:
    """The union of the direct clients' subtrees, each client once (the first answer wins)."""
    seen: dict[Addr, TreeNode] = {}
    for nodes in roots:
        for node in nodes:
            seen.setdefault(node.addr, node)
    return sorted(seen.values(), key=lambda n: (n.depth, str(n.addr)))
