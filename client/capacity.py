"""What this client's uplink delivers, and how many children it can feed: pure, passive.

Nothing here sends a byte of its own. The child links' sender threads tell
an :class:`Uplink` what they wrote and what the kernel still holds
(``written - queued`` is what the child has acknowledged, so bytes that only
went into a socket buffer never count as delivered) and, where the kernel
counts it, how long the link has had bytes in flight (``tcpi_busy_time``),
at each write of a block's bytes and while they drain. The kernel's count
is what tells when the bytes left: a relay forwarding in parts looks at a
link as each part comes in, and the time between two looks is the pace of
its parent, not the time its own uplink worked. From that:

* each link's **drain rate**: bytes it delivered while it had bytes waiting
  (:class:`LinkMeter`). A link that empties between two looks gives only a
  lower bound (it may have been faster), and is counted as one;
* the **uplink estimate**: all links' delivered bytes over the time at least
  one of them had bytes waiting (the union of their busy intervals), summed
  over the :data:`WINDOW` seconds before the latest stretch. A block pushed
  to several children at once thus measures their sum. A stretch
  (:data:`SEGMENT` seconds at most) busy for less than :data:`MIN_BUSY`
  counts that long (its bytes left within it: a lower bound), which is all a
  link much faster than the stream ever shows, and all it needs to. Where
  the kernel gives them, its own bandwidth samples of the links (the
  delivery rate of ``TCP_INFO``, those not limited by what we gave) form a
  second figure: in each stretch, the median of each link's samples, the
  fastest link's counting; the median of that over the window; and the
  estimate is the larger of the two figures. (The fastest of a stretch's
  single samples read up to 9.1 Mbit/s on 8 Mbit/s caps: a sample is as
  short as the acknowledgements that bound it, and they come in bunches.) Busy time alone is fooled by a
  child whose own uplink is full: the acknowledgements of what it receives
  wait in the same queue as what it sends, and the link looks busy while
  the bytes are long delivered (measured in netns: a 20 Mbit/s sender,
  64 KB parts every 80 ms to a client uploading at its 2 Mbit/s cap, read
  6.8 Mbit/s by busy time; the kernel's samples had a median of 14.6 and a
  maximum of 19.4). Sums,
  not the best stretch: a capped link loses packets, and the retransmission
  acknowledges in one jump what arrived over a second (measured under tbf:
  50 kB jumps at 0.5 Mbit/s, a 0.5 s stretch reading 0.9 Mbit/s), and the
  stretches between the jumps count as well. A frozen child's link counts
  as busy until it is cut: the estimate sinks meanwhile, on the safe side,
  and that link, draining nothing, is the first to go (:func:`to_move`);
* :func:`places`: the children the estimate can feed with :data:`HEADROOM`
  (:func:`can_take`: how many it could take over in a swap);
* :func:`to_move`: the child to send elsewhere when a link falls behind
  (:func:`cut_instead`: whether to reset its link rather than tell it), or
  at once where the uplink cannot carry one stream (:func:`cannot_carry`);
* :func:`retry_due`: when an uplink measured to feed nobody is tried again;
* :func:`room_for_swap`: whether the uplink can pay for a balance swap.

Time is passed in (``now``, monotonic seconds): no clock, no thread, no
socket. The caller serialises the calls (the sender threads share one lock).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Hashable, Iterable

#: A child costs a stream's rate times this: room for the stream's own ups and downs
#: (blocks differ in size), for repairs served and for the control frames.
HEADROOM = 1.25

#: Places offered while the uplink has never been measured (see :func:`places`).
TRIAL_PLACES = 1

#: Seconds of busy sending behind one drain-rate sample of a link.
MIN_SPAN = 0.25

#: Busy time shorter than this is not resolved: its bytes give ``bytes / MIN_BUSY``, a lower bound.
MIN_BUSY = 0.05

#: The same where the kernel counted the busy time: its resolution, a jiffy (Linux's HZ is
#: 250 here). MIN_BUSY there would cap what one part shows: a 64 KB part alone in its
#: stretch read at most 10.5 Mbit/s (measured: 16 Mbit/s uplinks estimated at 8.6-11.7).
KERNEL_TICK = 0.004

#: Seconds over which the links' busy intervals are summed into one uplink sample.
SEGMENT = 0.25

#: The uplink estimate sums the stretches of this many seconds before the latest one.
WINDOW = 20.0

#: A link is behind when its backlog takes longer than this many periods to drain.
BEHIND_PERIODS = 1.5

#: ... or when this many blocks wait in its queue (the queue's bound is larger: a block is
#: never dropped before the move).
QUEUE_ALARM = 4

#: Weight of a new sample in a link's drain rate.
SMOOTHING = 0.3

#: Stretches with a kernel bandwidth sample needed before their median counts.
KERNEL_SAMPLES = 4

#: An uplink measured to feed nobody is tried again after this many periods without a
#: sample, while joiners are turned away (:func:`retry_due`).
RETRIAL_PERIODS = 15


@dataclass(frozen=True)
class Busy:
    """``bytes`` delivered between ``start`` and ``end`` by a link with bytes waiting.

    ``drained``: the link was empty at ``end``; it emptied at some moment of
    the interval, so ``bytes / (end - start)`` is a lower bound of its rate.
    """

    start: float
    end: float
    bytes: int
    drained: bool
    counted: bool = False   # its length is the kernel's count of busy time

    @property
    def resolution(self) -> float:
        return KERNEL_TICK if self.counted else MIN_BUSY


class LinkMeter:
    """One child link: its drain rate, from what it delivered while backlogged."""

    def __init__(self):
        self._last: tuple[float, int, int, bool, float | None] | None = None
        self._span_bytes = 0
        self._span_time = 0.0
        self.rate: float | None = None  # bytes/s
        self.queued = 0                 # bytes the kernel held at the latest look
        self.writing = False            # a block's bytes are still being written

    def observe(self, now: float, delivered: int, queued: int, writing: bool = False,
                busy_total: float | None = None) -> Busy | None:
        """A look at the link: ``delivered`` (bytes acknowledged so far), ``queued`` (bytes in
        the kernel); ``writing``: more bytes of a block are about to be written;
        ``busy_total``: the kernel's count of the seconds the link had bytes in flight
        (:func:`client.links.kernel_count`), None where it is not known.

        Returns the busy interval since the previous look, or None when the link
        was idle then. Without the kernel's count, the whole time between two
        looks is busy if bytes waited at the first (an interval that starts
        idle says nothing of the rate); with it, the interval is as long as the
        kernel counted, from the first look (when the bytes were written).
        """
        last, self._last = self._last, (now, delivered, queued, writing, busy_total)
        self.queued, self.writing = queued, writing
        if last is None or now < last[0]:
            return None
        then, before, queued_before, was_writing, busy_before = last
        sent = max(0, delivered - before)
        drained = queued == 0 and not writing
        if busy_total is not None and busy_before is not None:
            length = min(max(0.0, busy_total - busy_before), now - then)
            if sent == 0 and length == 0:
                return None
            busy = Busy(then, then + length, sent, drained, counted=True)
        elif queued_before > 0 or was_writing:
            busy = Busy(then, now, sent, drained)
        else:
            return None
        self._learn(busy)
        return busy

    def _learn(self, busy: Busy) -> None:
        self._span_bytes += busy.bytes
        self._span_time += busy.end - busy.start
        if self._span_time < MIN_SPAN and not busy.drained:
            return
        # A stuck link (a frozen child) samples 0: its rate falls, and it is the slowest.
        sample = self._span_bytes / max(self._span_time, busy.resolution)
        self.rate = sample if self.rate is None else (
            SMOOTHING * sample + (1 - SMOOTHING) * self.rate)
        self._span_bytes, self._span_time = 0, 0.0

    @property
    def busy(self) -> bool:
        return self.queued > 0 or self.writing


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


class Uplink:
    """This client's uplink, as its child links see it (see the module's docstring).

    ``stale_after``: seconds after its latest sample that an estimate is
    forgotten (the uplink is unknown again, and a child is tried again).
    """

    def __init__(self, stale_after: float):
        self.stale_after = stale_after
        self._links: dict[Hashable, LinkMeter] = {}
        self._pending: list[Busy] = []
        self._segment_start: float | None = None
        self._pending_rates: dict[Hashable, list[float]] = {}  # kernel samples, by link
        # (end, bytes, busy seconds, the fastest link's median kernel sample or None)
        self._samples: deque[tuple[float, int, float, float | None]] = deque()
        #: Measured too short once and forgotten for a retry (:func:`retry_due`): a
        #: trial, not an unknown uplink (:func:`can_take`).
        self.retried = False

    def observe(self, key: Hashable, now: float, delivered: int, queued: int,
                writing: bool = False, busy_total: float | None = None,
                kernel_rate: float | None = None) -> None:
        """A look at link ``key`` (see :meth:`LinkMeter.observe`); ``kernel_rate``: the
        kernel's latest bandwidth sample of the link, bytes/s, None where it has none or
        the sample was limited by what we gave it."""
        meter = self._links.setdefault(key, LinkMeter())
        busy = meter.observe(now, delivered, queued, writing, busy_total)
        if busy is not None:
            if self._segment_start is None:
                self._segment_start = busy.start
            self._pending.append(busy)
            if kernel_rate:
                self._pending_rates.setdefault(key, []).append(kernel_rate)
        if self._segment_start is not None and (
                now - self._segment_start >= SEGMENT
                or not any(m.busy for m in self._links.values())):
            self._close_segment(now)

    def _close_segment(self, now: float) -> None:
        delivered = sum(b.bytes for b in self._pending)
        busy = union_length((b.start, b.end) for b in self._pending)
        resolution = max((b.resolution for b in self._pending), default=MIN_BUSY)
        kernel_rate = max((statistics.median(rates) for rates in self._pending_rates.values()),
                          default=None)
        self._pending_rates = {}
        self._pending, self._segment_start = [], None
        seconds = max(busy, resolution) if delivered > 0 else busy
        if seconds <= 0:
            return
        self._samples.append((now, delivered, seconds, kernel_rate))
        while self._samples and now - self._samples[0][0] > WINDOW:
            self._samples.popleft()

    def forget(self, key: Hashable, now: float) -> None:
        """Link ``key`` is gone (what it measured stays in the estimate)."""
        self._links.pop(key, None)
        if self._segment_start is not None and not any(m.busy for m in self._links.values()):
            self._close_segment(now)

    def rate_of(self, key: Hashable) -> float | None:
        """Link ``key``'s drain rate, bytes/s; None while unmeasured."""
        meter = self._links.get(key)
        return meter.rate if meter else None

    def estimate(self, now: float) -> float | None:
        """Bytes/s the uplink delivers; None while never measured or stale."""
        if not self._samples or now - self._samples[-1][0] > self.stale_after:
            return None
        by_busy = sum(s[1] for s in self._samples) / self.busy(now)
        kernel = [s[3] for s in self._samples if s[3] is not None]
        if len(kernel) < KERNEL_SAMPLES:
            return by_busy
        return max(by_busy, statistics.median(kernel))

    def busy(self, now: float) -> float:
        """Seconds of sending behind the estimate (0 while there is none)."""
        if not self._samples or now - self._samples[-1][0] > self.stale_after:
            return 0.0
        return sum(s[2] for s in self._samples)

    def age(self, now: float) -> float | None:
        """Seconds since the latest sample; None while never measured."""
        return now - self._samples[-1][0] if self._samples else None

    def forget_estimate(self) -> None:
        """Unmeasured again (:func:`retry_due`): the next samples alone make the estimate."""
        self._samples.clear()
        self.retried = True


def stream_rate(block_sizes: Iterable[int], period: float) -> float | None:
    """The stream's bytes/s: the mean of the latest blocks' sizes, one block a period."""
    sizes = list(block_sizes)
    if not sizes or period <= 0:
        return None
    return sum(sizes) / len(sizes) / period


def places(max_children: int, estimate: float | None, stream: float | None) -> int:
    """How many children this client offers to feed: never more than ``max_children`` (K).

    ``estimate // (stream * HEADROOM)``: a client whose uplink cannot carry
    one stream with headroom relays to nobody, whatever K is.

    Unmeasured (nothing was ever sent, or the estimate went stale), it
    offers :data:`TRIAL_PLACES`: an uplink is only measured by sending, and
    a client that offered nothing until measured would never be. One child
    on trial costs little: if the uplink cannot feed it, its link falls
    behind within a block or two and the child is moved (:func:`to_move`)
    long before its queue would drop a block; it rejoins elsewhere and
    repairs what it missed. Offering K on trust instead would load a weak
    uplink with K children at once, and lose blocks on every one of them.
    """
    if max_children <= 0:
        return 0
    if estimate is None or not stream:
        return min(max_children, TRIAL_PLACES)
    return max(0, min(max_children, int(estimate // (stream * HEADROOM))))


def cannot_carry(estimate: float | None, busy: float, stream: float | None,
                 period: float) -> bool:
    """The uplink, sending for a period at least, delivered less than one stream.

    Any child it holds then falls further behind with every block: waiting
    for its backlog to pass :func:`behind`'s bound costs the child seconds
    of blocks, and its parent's link with it (measured: a 2 Mbit/s relay
    kept its trial child 17 s; its own uplink full, the acknowledgements of
    what its parent sent it waited in the same queue, and the parent, a 20
    Mbit/s uplink, measured its own at 3.4 Mbit/s from that link).
    """
    return (estimate is not None and bool(stream) and busy >= period
            and estimate < stream)


def retry_due(max_children: int, estimate: float | None, stream: float | None,
              age: float | None, jammed: bool, period: float) -> bool:
    """Forget an estimate that feeds nobody (:meth:`Uplink.forget_estimate`): measured
    :data:`RETRIAL_PERIODS` periods ago or more, while joiners are turned away (``jammed``).

    An uplink is only measured by sending, and one that offers nothing is
    never measured again: a wrong estimate (a slow child's link, whose own
    uplink was full, seen as the uplink) would keep a strong uplink out of
    the tree until it went stale, while clients starve for a place (measured:
    a client found no place for 100 s beside three such uplinks). Retried
    only when places are short, a weak uplink costs a child a move now and
    then, and only when that child had no place anyway. Forgotten, not
    hidden: the jam ends as the trial child comes, and the old figure would
    condemn the uplink before the child's link had shown anything (measured:
    a trial child cut as "cannot carry one stream" 0.5 s after it came).
    """
    return (jammed and estimate is not None and age is not None
            and age >= RETRIAL_PERIODS * period
            and places(max_children, estimate, stream) == 0)


def room_for_swap(estimate: float | None, stream: float | None, children: int) -> bool:
    """Whether the uplink has a stream to spare beyond feeding its ``children`` (bare
    streams, without the headroom): the cost of a balance swap (unmeasured: yes, as
    :func:`can_take` says).

    A swap is three new links at once, each catching up on the blocks its
    child missed while it moved: on uplinks that carry their children and
    little more, the catch-up and the live stream share what is left, and
    the chain below lags and loses blocks (measured: 8 Mbit/s uplinks, one
    child each, 39 rejoins for the balance in two minutes among 20 clients,
    most of the lost blocks after them). The rotation waits for room instead;
    the bytes sent stay as even as the uplinks allow. Not the headroom of
    :func:`places` on top: 16 Mbit/s uplinks feeding two children, read at
    12-16 Mbit/s, then never rotated, and the bytes sent spread (Jain 0.59
    against 0.96).
    """
    if estimate is None or not stream:
        return True
    return estimate >= stream * (children + 1)


def can_take(max_children: int, estimate: float | None, stream: float | None,
             retried: bool = False) -> int:
    """How many children this client could take over with a place (a balance swap).

    K while unmeasured: the rotation raises light senders, which have never
    relayed, and an unknown uplink is not a weak one (if it cannot feed
    them, its links fall behind and it moves them on). Once measured, no
    more than :func:`places`: a weak uplink never takes a strong one's place.
    Unmeasured again for a retry (``retried``, :func:`retry_due`), no more
    than its trial place: it was measured weak, and taking a strong relay's
    place with all its children each time it is retried (every
    :data:`RETRIAL_PERIODS` while joiners wait) cost every one of them
    a move (measured: a 2 Mbit/s client took a 20 Mbit/s one's place six
    times in four minutes).
    """
    if estimate is None or not stream:
        return max(0, min(max_children, TRIAL_PLACES) if retried else max_children)
    return places(max_children, estimate, stream)


@dataclass(frozen=True)
class LinkLoad:
    """A child link as :func:`to_move` weighs it."""

    key: Hashable
    backlog: int            # bytes not yet delivered: queued here, and in the kernel
    blocks: int             # blocks waiting in its queue
    rate: float | None      # its drain rate, bytes/s (None: unmeasured)
    below: int = 0          # clients in the child's subtree
    young: bool = False     # adopted less than a period ago by an uplink that feeds someone


def behind(load: LinkLoad, period: float, overloaded: bool = True) -> bool:
    """Blocks pile up in the link's queue, or, on an ``overloaded`` uplink (more children
    than :func:`places`), it cannot drain what it holds within :data:`BEHIND_PERIODS`
    periods: the next blocks would only add to it.

    An uplink measured to feed all its children is judged by its queue alone:
    a new link starts slowly (TCP's slow start on a busy uplink, the blocks
    a newcomer catches up on), and a child moved for that would come back to
    the free place it left, again and again (measured: five times in a
    minute). For the same reason a ``young`` link is judged by its queue
    alone: a child that had just come, with blocks to repair from this very
    uplink, was cut within 2.5 s, and its repair with it.
    """
    if load.blocks >= QUEUE_ALARM:
        return True
    return (overloaded and not load.young and load.rate is not None
            and load.backlog > load.rate * period * BEHIND_PERIODS)


#: A moved child whose link would take longer than this many periods to drain is cut instead.
CUT_PERIODS = 0.25


def cut_instead(load: LinkLoad, period: float) -> bool:
    """Whether to reset the link of a child being moved rather than tell it after its backlog.

    A ``Move`` waits behind what the link holds, and the kernel may hold a
    whole block: on an uplink that cannot carry one stream that is seconds
    of a saturated uplink, whose own acknowledgements then wait in the same
    queue (measured: the server's pushes to such a relay failed). A reset
    frees the uplink at once; the child takes it as a lost parent, rejoins
    and repairs, and discards the frame it had half received.
    """
    if load.rate is None:
        return load.backlog > 0
    return load.backlog > load.rate * period * CUT_PERIODS


def to_move(loads: Iterable[LinkLoad], period: float, overloaded: bool = True,
            hopeless: bool = False):
    """The child to send elsewhere, or None: of the links that are behind (every link on a
    ``hopeless`` uplink, :func:`cannot_carry`), the one whose child has the smallest
    subtree, then the slowest (by drain rate; unmeasured counts as the slowest), then the
    one with the largest backlog.

    When one child's own link is slow, its link alone is behind, and that
    child goes. When the uplink itself is short, every link lags, and moving
    any child frees a share for the rest: a leaf then, which finds a place
    anywhere, rather than a relay, which cannot take one in its own subtree
    (measured: a relay moved off an uplink that a rotation had overloaded
    searched for 20 s while every free place was below it).
    """
    lagging = [load for load in loads if hopeless or behind(load, period, overloaded)]
    if not lagging:
        return None
    chosen = min(lagging, key=lambda load: (load.below,
                                            load.rate if load.rate is not None else 0.0,
                                            -load.backlog))
    return chosen.key
