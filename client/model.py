"""The plain data of a relay client: its state, its configuration, its counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from client.peerproto import Addr
from client.store import StoreLimit

#: Seconds without a byte from the parent after which it counts as dead (any period).
PARENT_SILENCE = 1.0


class State(enum.Enum):
    """Where a client stands in the tree (the client state diagram of the report)."""

    JOINING = "joining"      # looking for a first place
    DIRECT = "direct"        # served by the channel server
    ATTACHED = "attached"    # served by a parent relay
    ORPHANED = "orphaned"    # lost its parent, looking for a new one; children stay
    LEAVING = "leaving"
    IDLE = "idle"            # left the channel on the user's request, still running
    FAILED = "failed"        # a core thread failed: the client stops with an error
    STOPPED = "stopped"




@dataclass
class Config:
    """What a client is told at start (the command line), and the bounds derived from it."""

    ip: str
    server_host: str
    server_port: int
    channel: int
    max_children: int
    store: Path
    push_port: int = 9091
    peer_port: int = 9092
    period: float = 2.0
    window_seconds: float = 30.0
    catch_up_seconds: float = 0.0
    balance_blocks: float = 8.0
    repair_rate: float = 0.0        # kB/s spent answering other clients' repairs; 0: no cap
    store_limit: StoreLimit | None = None  # bound of the blocks on disk (client.store)
    player: bool = True             # a player plays (and deletes) the stored blocks
    #: The folder of each channel's blocks (the default store/<ip>/channel<N>); None: ``store`` always.
    store_of_channel: Callable[[int], Path] | None = None
    feed_port: int = 6062           # the server's signed digest feed (client.verify); 0: none
    server_key: bytes | None = None  # --server-key: the feed's key; None: pinned on first use
    verify: bool = True             # --no-verify (benchmarks only): store blocks unchecked
    crosscheck: bool = True         # --no-crosscheck (benchmarks only): no feed, no cross-check

    @property
    def swap_cooldown(self) -> float:
        """A relay that just moved waits this long before it swaps or climbs.

        A swap changes the parent or children of everyone around it; together
        with :attr:`settle_time` this keeps neighbouring swaps from
        overlapping.
        """
        return 4 * self.period

    @property
    def settle_time(self) -> float:
        """How long a change of parent or children settles before the next move.

        A relay whose children just changed waits this long before it swaps
        (shorter than :attr:`swap_cooldown`: the relays near the root see their
        children change often, as their children swap too, and must still get
        their turn); a client that just moved waits this long before it climbs
        (a climb only ever makes it shallower, so it cannot oscillate).
        """
        return self.period

    @property
    def keepalive_interval(self) -> float:
        """A relay's idle child link carries a keepalive this often (at most a quarter period).

        Four of them fit in :attr:`parent_silence` whatever the period, so a
        late one or two are not mistaken for a dead parent.
        """
        return min(self.period / 4, PARENT_SILENCE / 4)

    @property
    def parent_silence(self) -> float:
        """Silence after which a parent counts as dead: no byte at all came in for that long.

        Bytes, not frames: a relay on a thin uplink may take longer than this
        to send one block, but the block's bytes keep arriving meanwhile (and
        a keepalive cannot overtake the block it is queued behind). A frozen
        or unplugged parent is therefore found within about a second, at any
        period.
        """
        return PARENT_SILENCE

    @property
    def link_stall(self) -> float:
        """How long a link may make no progress before its sending side gives up.

        A relay cuts a child whose socket takes no byte for this long (a
        frozen or overwhelmed child); a child that sends no report for this
        long plus a period is gone. Longer than :attr:`parent_silence`: a
        child's reports share its own, maybe saturated, uplink.
        """
        return max(2 * self.period, 1.5)

    @property
    def server_silence(self) -> float:
        """No block from the server for three periods: it dropped us or is down.

        The server sends one block per period; a round may end late by up to
        a period, so three leaves a full period of margin.
        """
        return max(3 * self.period, 2.0)


@dataclass
class Rejoin:
    """One search for a place: why, when, and how long until the next block was stored."""

    cause: str
    started: float          # monotonic
    started_at: float       # Unix time
    took: float | None = None
    resumed_after_latest: bool | None = None
    missed: int = 0
    depth_before: int = 0
    depth_after: int | None = None
    #: The parent lost to silence (frozen or unplugged), named in this search's joins.
    silent_parent: Addr | None = None
    #: Where this search was sent (a swap partner, a leaving parent's choice): never a liar.
    sent_to: Addr | None = None

    def to_json(self) -> dict:
        return {"cause": self.cause, "at": round(self.started_at, 3),
                "took": None if self.took is None else round(self.took, 3),
                "resumed_after_latest": self.resumed_after_latest, "missed": self.missed,
                "depth_before": self.depth_before, "depth_after": self.depth_after}


@dataclass
class Counters:
    """What a client counts for status.json, the menu and its exit statistics."""

    blocks_received: int = 0
    bytes_received: int = 0
    blocks_relayed: int = 0
    bytes_sent: int = 0
    bytes_sent_to: dict = field(default_factory=dict)
    bytes_served: int = 0           # repair blocks sent to peers that fetched them
    blocks_repaired: int = 0
    blocks_lost: int = 0
    blocks_discarded: int = 0       # begun in parts, never whole: cut short, aborted, corrupt
    blocks_finished: int = 0        # cut short by a parent's loss, then only their rest fetched
    swaps: int = 0
    climbs: int = 0
    children_moved: int = 0         # sent elsewhere because their links fell behind
    silent_children_freed: int = 0  # silent children whose places went to their orphans
    last_block_at: float | None = None
    cut_at_deadline: dict = field(default_factory=dict)     # peers not answering in time, by role
    incompatible_peers: dict = field(default_factory=dict)  # "ip:port": the version it speaks
