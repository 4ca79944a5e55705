"""Pure computations of the overlay benchmark: no processes, no files, no clock.

Every function takes plain data (times are Unix seconds, as file mtimes) and
returns plain data, so that each is testable with a handful of numbers.

Slots. The server sends slot ``s`` of its absolute schedule at
``t0 + s * period``; slot ``s`` carries film block ``s mod L`` (the film
loops). A stored block is identified by its film index (from its digest); the
slot it belongs to is the one congruent to that index that is nearest to its
store time (:func:`slot_of`). This is unambiguous while a block is stored
less than ``L * period / 2`` after it was sent. A server restart starts a new
*epoch* with its own ``t0``; slots of epoch ``e`` are offset by
``e * EPOCH_STRIDE`` so that epochs never mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, median

from client import capacity

EPOCH_STRIDE = 10_000_000


# ----------------------------------------------------------------- numbers

def percentile(values, q: float):
    """The ``q`` quantile (0..1) by linear interpolation; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values) -> dict:
    """min / median / mean / p99 / max / n of ``values`` (Nones when empty)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"n": 0, "min": None, "median": None, "mean": None, "p99": None, "max": None}
    return {"n": len(xs), "min": min(xs), "median": median(xs), "mean": mean(xs),
            "p99": percentile(xs, 0.99), "max": max(xs)}


def jain_index(values) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one does all."""
    xs = list(values)
    square_sum = sum(x * x for x in xs)
    if not xs or square_sum == 0:
        return None
    return sum(xs) ** 2 / (len(xs) * square_sum)


# ------------------------------------------------------------------- slots

@dataclass(frozen=True)
class Epoch:
    """One server life: its schedule starts at ``t0`` (Unix time)."""

    t0: float
    number: int = 0


def epoch_of(t: float, epochs: list[Epoch]) -> Epoch:
    """The last epoch started at or before ``t`` (the first one for earlier times)."""
    current = epochs[0]
    for epoch in epochs:
        if epoch.t0 <= t:
            current = epoch
    return current


def slot_of(film_index: int, t: float, film_length: int, period: float,
            epochs: list[Epoch]) -> int:
    """The global slot of film block ``film_index`` stored at time ``t``.

    The slot congruent to ``film_index`` modulo ``film_length`` nearest to
    ``(t - t0) / period - 0.5`` (a block is stored shortly after it is due).
    """
    epoch = epoch_of(t, epochs)
    estimate = (t - epoch.t0) / period - 0.5
    loops = round((estimate - film_index) / film_length)
    return epoch.number * EPOCH_STRIDE + max(0, film_index + loops * film_length)


def channel_slots(slot_lists) -> list[int]:
    """The slots the channel sent: every slot from the first to the last seen, per epoch.

    The server's schedule sends every slot; a slot that no client stored is a
    loss for every client, not a slot that did not exist.
    """
    by_epoch: dict[int, list[int]] = {}
    for slots in slot_lists:
        for s in slots:
            by_epoch.setdefault(s // EPOCH_STRIDE, []).append(s)
    out = []
    for _, slots in sorted(by_epoch.items()):
        out.extend(range(min(slots), max(slots) + 1))
    return out


def reference_times(blocks_by_client) -> dict[int, float]:
    """slot -> earliest store time over all clients.

    A relay stores a block before relaying it, so the earliest store of a
    block is a direct client's: the reference for live lag (the server does
    not log send times).
    """
    ref: dict[int, float] = {}
    for blocks in blocks_by_client:
        for slot, t in blocks:
            if slot is not None and (slot not in ref or t < ref[slot]):
                ref[slot] = t
    return ref


# -------------------------------------------------------------- continuity

def continuity(blocks, channel: list[int], end_slot: int, period: float,
               buffer_blocks: int = 2) -> dict:
    """Continuity of one client's stored blocks.

    ``blocks``: (slot or None when not the film's, store time) in play order.
    ``channel``: the channel's slots, ascending; ``end_slot``: the last slot
    that counts (the channel's last block before the client stopped).

    Expected blocks: the channel's slots from the client's first block to
    ``end_slot``. A stored block is *good* when it is in that range and after
    every block stored before it (in film order: no duplicate, no going
    back). Continuity = good / expected. *On time*: good and stored before
    its playback deadline: first block's store time + (buffer + rank) *
    period, rank being its place among the expected slots.
    """
    film_blocks = [(s, t) for s, t in blocks if s is not None]
    out = {"expected": 0, "good": 0, "on_time": 0, "duplicates": 0, "not_film": len(blocks) - len(film_blocks),
           "holes": 0, "continuity": 0.0, "on_time_fraction": 0.0, "first_slot": None}
    if not film_blocks:
        return out
    first, first_t = film_blocks[0]
    expected = [s for s in channel if first <= s <= end_slot]
    rank = {s: i for i, s in enumerate(expected)}
    latest = None
    for s, t in film_blocks:
        if latest is not None and s <= latest:
            out["duplicates"] += 1
            continue
        latest = s
        if s in rank:
            out["good"] += 1
            if t <= first_t + (buffer_blocks + rank[s]) * period:
                out["on_time"] += 1
    out["expected"] = len(expected)
    out["first_slot"] = first
    out["holes"] = len(expected) - out["good"]
    if expected:
        out["continuity"] = out["good"] / len(expected)
        out["on_time_fraction"] = out["on_time"] / len(expected)
    return out


def last_slot_before(ref: dict[int, float], t: float) -> int | None:
    """The last slot whose reference store time is at or before ``t``."""
    slots = [s for s, rt in ref.items() if rt <= t]
    return max(slots) if slots else None


def last_expected_slot(ref: dict[int, float], blocks, stopped: float, period: float) -> int | None:
    """The last slot one client could have stored before it stopped at ``stopped``.

    A block counts from its first store anywhere (a direct client's), plus
    one period, plus this client's own median lag: a client four hops deep
    on thin links stores a block seconds after the direct clients, and the
    block still on its way down when the run ends is not a loss. A client
    that stops receiving before the end keeps its small lag, so its missing
    tail still counts.
    """
    lags = sorted(t - ref[s] for s, t in blocks if s is not None and s in ref)
    allowance = max(0.0, lags[len(lags) // 2]) if lags else 0.0
    return last_slot_before(ref, stopped - period - allowance)


# ------------------------------------------------------------------- lag

def depth_at(timeline, t: float):
    """The depth from ``timeline`` [(time, depth), ...] (ascending) at time ``t``."""
    depth = None
    for when, d in timeline:
        if when > t:
            break
        depth = d
    if depth is None and timeline:
        depth = timeline[0][1]
    return depth


def lag_by_depth(samples) -> dict:
    """{depth: summary of lags} from (depth, lag) pairs; depth None is 'unknown'."""
    groups: dict = {}
    for depth, lag in samples:
        groups.setdefault("unknown" if depth is None else depth, []).append(lag)
    return {str(d): summary(v) for d, v in sorted(groups.items(), key=lambda kv: str(kv[0]).zfill(9))}


def lag_per_hop(by_depth: dict) -> float | None:
    """The median of the differences between the median lags of consecutive depths.

    What one more relay costs a viewer. ``by_depth`` as :func:`lag_by_depth`
    gives it; depths without samples (or 'unknown') are left out, and a
    missing depth breaks the chain there (no difference across a gap).
    None with fewer than two consecutive depths.
    """
    medians = {int(d): s["median"] for d, s in by_depth.items()
               if d != "unknown" and s.get("median") is not None}
    steps = [medians[d + 1] - medians[d] for d in sorted(medians) if d + 1 in medians]
    return median(steps) if steps else None


# ------------------------------------------------------------------- tree

def best_depths(max_children: list[int], slots: int) -> dict[int, int]:
    """The shallowest depth histogram these fan-outs and ``slots`` server places allow.

    Greedy: the clients that accept most children go nearest the server.
    With one fan-out K, S(K^d - 1)/(K - 1) clients fit within depth d.
    Clients that cannot be placed at all (every place taken by leaves) are
    counted at depth 0.
    """
    ks = sorted(max_children, reverse=True)
    hist: dict[int, int] = {}
    places, depth, i = slots, 1, 0
    while i < len(ks) and places > 0:
        level = ks[i:i + places]
        hist[depth] = len(level)
        i += len(level)
        places, depth = sum(level), depth + 1
    if i < len(ks):
        hist[0] = len(ks) - i
    return hist


def fanout_by_capacity(max_children: int, upload_mbit: float | None, stream: float | None) -> int:
    """The children an uplink of ``upload_mbit`` can feed a stream of ``stream`` bytes/s:
    the client's own rule (:func:`client.capacity.places`, with its headroom), given the
    cap it will measure. No cap or no stream: ``max_children``."""
    if not upload_mbit or not stream:
        return max_children
    return capacity.places(max_children, upload_mbit * 1e6 / 8, stream)


def capacity_within(slots: int, fanout: int, depth: int) -> int:
    """S(K^d - 1)/(K - 1): clients that fit within ``depth`` with ``slots`` and fan-out K."""
    if fanout == 1:
        return slots * depth
    return slots * (fanout ** depth - 1) // (fanout - 1)


def histogram(values) -> dict:
    hist: dict = {}
    for v in values:
        hist[v] = hist.get(v, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def tree_check(statuses: dict[str, dict]) -> dict:
    """Loops, over-full clients and parent/child disagreements in ``ip -> status.json``."""
    loops, over, disagree = 0, [], 0
    for ip, status in statuses.items():
        seen, node = {ip}, status
        while isinstance(node.get("parent"), dict):
            parent_ip = node["parent"]["ip"]
            if parent_ip in seen:
                loops += 1
                break
            seen.add(parent_ip)
            node = statuses.get(parent_ip, {})
        children = status.get("children", [])
        if len(children) > status.get("max_children", 0):
            over.append(ip)
        parent = status.get("parent")
        if isinstance(parent, dict) and parent["ip"] in statuses:
            if ip not in {c["ip"] for c in statuses[parent["ip"]].get("children", [])}:
                disagree += 1
    return {"loops": loops, "over_limit": over, "parent_child_disagreements": disagree}


# ----------------------------------------------------------------- repair

#: A client's usual lag, before a failure, is the median of its lags on this many blocks.
USUAL_LAG_BLOCKS = 5


def repair_after(blocks, failure_time: float, channel: list[int], ref: dict | None = None) -> dict:
    """One affected client's repair.

    ``took``: time from ``failure_time`` to its next stored block; ``missed``:
    the channel's slots it lacks between its last block before and its first
    after; ``late`` (with ``ref``, each slot's earliest store time anywhere):
    how much later than usual that first block came, its lag minus the
    client's usual lag (the median over its :data:`USUAL_LAG_BLOCKS` blocks
    before the failure), at least 0. ``took`` includes the wait for the next
    block that would have come anyway (up to a period); ``late`` is what
    the failure cost the viewer: a buffer that long hides it.
    """
    before = [(s, t) for s, t in blocks if t <= failure_time and s is not None]
    after = [(s, t) for s, t in blocks if t > failure_time and s is not None]
    if not after:
        return {"took": None, "missed": None, "late": None}
    last = max(s for s, _ in before) if before else None
    next_slot, next_t = after[0]
    missed = 0
    if last is not None:
        missed = sum(1 for s in channel if last < s < next_slot)
    late = None
    if ref is not None and next_slot in ref:
        usual = [t - ref[s] for s, t in before[-USUAL_LAG_BLOCKS:] if s in ref]
        if usual:
            late = max(0.0, next_t - ref[next_slot] - median(usual))
    return {"took": next_t - failure_time, "missed": missed, "late": late}
