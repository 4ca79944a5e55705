"""What the web view serves, as plain data: the recent blocks, the HLS playlist, the events.

:class:`BlockFeed` numbers the blocks the client stores (its own count, like
the store's file names) and keeps the latest ones with their duration,
codecs and MPEG-TS start time, so that any of them can be remuxed on demand
after the player has deleted the file. :func:`status_events` turns two
successive status snapshots into the events the page is pushed. Pure code,
no sockets, no clock of its own.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field

from player.mkv import BlockInfo, read_block_info
from player.live import RATE_STEP, LiveEdge
from player.machine import PlayerMachine

#: Segments in the HLS playlist: about ten seconds of 2 s blocks.
PLAYLIST_SEGMENTS = 5


@dataclass(frozen=True)
class FeedBlock:
    number: int
    stored_at: float              # Unix time
    info: BlockInfo
    ts_offset: float              # MPEG-TS start time: continuous across blocks
    discontinuity: bool           # the format changed from the block before
    data: bytes = field(repr=False)

    @property
    def duration(self) -> float:
        return self.info.duration or 2.0

    def to_json(self) -> dict:
        """The form of ``/api/blocks`` and of the ``block`` event (docs/guide/web.rst)."""
        return {"number": self.number, "stored_at": round(self.stored_at, 3),
                "duration": round(self.duration, 3), "bytes": len(self.data),
                "mime": self.info.mime, "width": self.info.width, "height": self.info.height,
                "discontinuity": self.discontinuity}


class BlockFeed:
    """The latest ``size`` blocks, oldest first (callers hold their own lock)."""

    def __init__(self, size: int):
        self._blocks: deque[FeedBlock] = deque(maxlen=max(size, PLAYLIST_SEGMENTS))
        self._next = 0
        self._dropped_discontinuities = 0

    def add(self, data: bytes, stored_at: float) -> FeedBlock:
        info = read_block_info(data)
        last = self._blocks[-1] if self._blocks else None
        if last is None:
            offset, change = 0.0, False
        else:
            offset = last.ts_offset + last.duration
            change = info.format_key() != last.info.format_key()
        if len(self._blocks) == self._blocks.maxlen and self._blocks[0].discontinuity:
            self._dropped_discontinuities += 1
        block = FeedBlock(self._next, stored_at, info, offset, change, data)
        self._blocks.append(block)
        self._next += 1
        return block

    def get(self, number: int) -> FeedBlock | None:
        if not self._blocks or not self._blocks[0].number <= number <= self._blocks[-1].number:
            return None
        return self._blocks[number - self._blocks[0].number]

    def latest(self, count: int) -> list[FeedBlock]:
        return list(self._blocks)[-count:] if count > 0 else []

    def playlist(self) -> str:
        """The live HLS playlist of the latest blocks, as MPEG-TS segments ``/seg/N.ts``."""
        blocks = self.latest(PLAYLIST_SEGMENTS)
        target = max((round(b.duration + 0.5) for b in blocks), default=2)
        first = blocks[0].number if blocks else 0
        # Discontinuities that left the playlist: those before its first block.
        gone = self._dropped_discontinuities + sum(
            1 for b in self._blocks if b.number <= first and b.discontinuity)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", f"#EXT-X-DISCONTINUITY-SEQUENCE:{gone}"]
        for i, block in enumerate(blocks):
            if i and block.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{block.duration:.3f},", f"/seg/{block.number}.ts"]
        return "\n".join(lines) + "\n"


def live_edge_json(max_behind: float) -> dict | None:
    """The rule the page's player follows, as the VLC player does: ``live_edge`` of /api/status.

    Built from the player's own :class:`~player.live.LiveEdge` and
    :class:`~player.machine.PlayerMachine` defaults, so that the page's
    numbers come from the same place as the player's (None: ``--max-behind 0``,
    no control).
    """
    if not max_behind:
        return None
    edge, machine = LiveEdge(max_behind=max_behind), PlayerMachine()
    return {"max_behind_s": edge.max_behind, "max_rate": edge.max_rate, "slew_per_s": edge.slew,
            "rate_step": RATE_STEP, "speed_up_from_s": edge.speed_up_from,
            "full_speed_at_s": edge.full_speed_at, "skip_behind_s": edge.skip_behind,
            "resume_behind_s": edge.resume_behind, "start_blocks": machine.buffer,
            "start_timeout_s": machine.start_timeout}


def _behind(snapshot: dict) -> dict:
    player = snapshot.get("player")
    behind = snapshot.get("behind_live_s")
    return {"behind_live_s": None if behind is None else round(behind, 1),
            "play_rate": snapshot.get("play_rate"),
            "stale": None if player is None else bool(player.get("stale"))}


def _children(snapshot: dict) -> set[str]:
    return {f"{c['ip']}:{c['port']}" for c in snapshot["children"]}


def _parent(snapshot: dict) -> str | None:
    parent = snapshot["parent"]
    return f"{parent['ip']}:{parent['port']}" if isinstance(parent, dict) else parent


def status_events(old: dict | None, new: dict) -> list[tuple[str, dict]]:
    """The events between two status snapshots of the node, in a stable order."""
    if old is None:
        return []
    events = []
    if _parent(old) != _parent(new):
        events.append(("parent", {"from": _parent(old), "to": _parent(new), "depth": new["depth"]}))
    for child in sorted(_children(new) - _children(old)):
        events.append(("child_joined", {"child": child}))
    for child in sorted(_children(old) - _children(new)):
        events.append(("child_left", {"child": child}))
    # A repair shorter than the time between two looks shows only in the counters.
    quick = (not old["repairing"] and not new["repairing"]
             and new["blocks_repaired"] > old["blocks_repaired"])
    if new["repairing"] and not old["repairing"] or quick:
        events.append(("repair_started", {"blocks_repaired": old["blocks_repaired"]}))
    if old["repairing"] and not new["repairing"] or quick:
        events.append(("repair_ended", {
            "blocks_fetched": new["blocks_repaired"] - old["blocks_repaired"],
            "blocks_lost": new["blocks_lost"] - old["blocks_lost"]}))
    if new["swaps"] > old["swaps"]:
        events.append(("swap", {"swaps": new["swaps"], "parent": _parent(new)}))
    if new["state"] != old["state"]:
        events.append(("state", {"from": old["state"], "to": new["state"]}))
    if _behind(new) != _behind(old):
        events.append(("behind_live", _behind(new)))
    return events


def to_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
