"""The uplink estimate, the admission rule and the move rule (client.capacity), with a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from client import capacity, tree
from client.capacity import LinkLoad, LinkMeter, Uplink
from client.peerproto import Addr, Hello

MB = 1_000_000


class FakeLink:
    """A child link on a simulated uplink: blocks written into a kernel buffer that drains
    at ``rate`` bytes/s (its share), looked at every ``step`` seconds as the sender does."""

    def __init__(self, uplink: Uplink, key, buffer: int = 4 * MB):
        self.uplink, self.key, self.buffer = uplink, key, buffer
        self.written = self.delivered = 0

    @property
    def queued(self) -> int:
        return self.written - self.delivered

    def look(self, now: float, writing: bool = False) -> None:
        self.uplink.observe(self.key, now, self.delivered, self.queued, writing)


def push(uplink: Uplink, links: list[FakeLink], block: int, rate: float, start: float = 0.0,
         step: float = 0.02) -> float:
    """One block to every link at once over an uplink of ``rate`` bytes/s shared equally
    among the links still draining; returns the time the last one is done."""
    now = start
    for link in links:
        link.look(now, writing=True)
        link.written += block        # into the kernel's buffer at once: counts as nothing yet
        link.look(now)
    while any(link.queued for link in links):
        busy = [link for link in links if link.queued]
        share = rate * step / len(busy)
        now += step
        for link in busy:
            link.delivered += min(link.queued, int(share))
        for link in links:
            if link in busy:
                link.look(now)
    return now


def test_one_backlogged_child_measures_the_uplink_not_the_socket_buffer():
    uplink = Uplink(stale_after=300)
    link = FakeLink(uplink, "a")
    end = push(uplink, [link], block=MB, rate=1 * MB)   # 1 MB/s: 1 s for the block
    assert end == pytest.approx(1.0, abs=0.05)
    assert uplink.estimate(end) == pytest.approx(1 * MB, rel=0.1)
    assert uplink.rate_of("a") == pytest.approx(1 * MB, rel=0.1)


def test_a_block_pushed_to_several_children_measures_their_sum():
    uplink = Uplink(stale_after=300)
    links = [FakeLink(uplink, k) for k in "abc"]
    end = push(uplink, links, block=MB, rate=3 * MB)
    assert uplink.estimate(end) == pytest.approx(3 * MB, rel=0.1)
    for key in "abc":   # each link drains at its share
        assert uplink.rate_of(key) == pytest.approx(1 * MB, rel=0.15)


def test_a_link_faster_than_the_blocks_gives_a_lower_bound_that_is_plenty():
    uplink = Uplink(stale_after=300)
    link = FakeLink(uplink, "a")
    # 100 KB gone before the next look, 20 ms later: at least 100 KB per MIN_BUSY.
    link.look(0.0, writing=True)
    link.written += 100_000
    link.delivered += 100_000
    link.look(0.0)
    link.look(0.02)
    assert uplink.estimate(0.02) == pytest.approx(100_000 / capacity.MIN_BUSY)
    assert capacity.places(3, uplink.estimate(0.02), stream=1_000_000) == 1  # 2 MB/s: 1.6 streams of 1 MB/s with headroom
    assert capacity.places(3, uplink.estimate(0.02), stream=10_000) == 3


def test_an_idle_stretch_says_nothing_and_a_keepalive_alone_is_not_a_sample():
    meter = LinkMeter()
    assert meter.observe(0.0, 0, 0) is None
    assert meter.observe(5.0, 20, 0) is None     # idle before: the 20 bytes went in a moment
    assert meter.rate is None


def test_the_estimate_sums_the_window_and_goes_stale():
    uplink = Uplink(stale_after=60)
    link = FakeLink(uplink, "a")
    end = push(uplink, [link], block=MB, rate=2 * MB)                  # 0.5 s
    end = push(uplink, [link], block=MB, rate=0.5 * MB, start=end + 1)  # 2 s
    assert uplink.estimate(end) == pytest.approx(2 * MB / 2.5, rel=0.1)
    later = end + capacity.WINDOW + 1
    end = push(uplink, [link], block=MB, rate=0.5 * MB, start=later)
    assert uplink.estimate(end) == pytest.approx(0.5 * MB, rel=0.1)  # the fast one aged out
    assert uplink.estimate(end + 59) is not None
    assert uplink.estimate(end + 61) is None                          # stale: unknown again


def test_late_acknowledgements_in_one_jump_do_not_inflate_the_estimate():
    uplink = Uplink(stale_after=60)
    link = FakeLink(uplink, "a")
    link.look(0.0, writing=True)
    link.written += 2 * MB
    link.look(0.0)
    now = 0.0
    for step in range(200):          # 4 s at 0.5 MB/s, acknowledged in jumps every 0.4 s
        now += 0.02
        if step % 20 == 19:
            link.delivered += 200_000
        link.look(now)
    assert uplink.estimate(now) == pytest.approx(0.5 * MB, rel=0.05)


def test_a_frozen_child_busy_beside_a_live_one_costs_the_estimate_nothing():
    uplink = Uplink(stale_after=300)
    fast, frozen = FakeLink(uplink, "fast"), FakeLink(uplink, "frozen")
    frozen.look(0.0, writing=True)
    frozen.written += MB                 # never acknowledged
    frozen.look(0.0)
    end = push(uplink, [fast], block=MB, rate=1 * MB)
    frozen.look(end)
    assert uplink.estimate(end) == pytest.approx(1 * MB, rel=0.1)   # busy together: no loss
    assert uplink.rate_of("fast") == pytest.approx(1 * MB, rel=0.1)
    assert uplink.rate_of("frozen") == 0     # busy and stuck: the slowest of all


def test_a_link_that_stops_draining_loses_its_rate():
    meter = LinkMeter()
    meter.observe(0.0, 0, 0, writing=True)
    meter.observe(0.0, 0, 500_000)
    meter.observe(0.3, 300_000, 200_000)       # 1 MB/s
    assert meter.rate == pytest.approx(1 * MB)
    for step in range(1, 10):                  # then nothing acknowledged
        meter.observe(0.3 + 0.3 * step, 300_000, 200_000)
    assert meter.rate < 0.05 * MB


def test_places_never_exceed_k_and_a_weak_uplink_relays_to_nobody():
    stream = 100_000
    assert capacity.places(3, 10 * MB, stream) == 3               # room for far more: K
    assert capacity.places(3, 2.6 * stream, stream) == 2          # 2.6 / 1.25 = 2.08
    assert capacity.places(3, 2.4 * stream, stream) == 1
    assert capacity.places(3, 1.2 * stream, stream) == 0          # not one stream with headroom
    assert capacity.places(0, 10 * MB, stream) == 0
    assert capacity.places(3, None, stream) == capacity.TRIAL_PLACES  # never measured: a trial
    assert capacity.places(3, 10 * MB, None) == capacity.TRIAL_PLACES
    assert capacity.stream_rate([200_000, 100_000], period=2.0) == 75_000
    # What it could take over in a swap: K while unknown, never more than measured.
    assert capacity.can_take(3, None, stream) == 3
    assert capacity.can_take(3, 1.2 * stream, stream) == 0
    assert capacity.can_take(3, 10 * MB, stream) == 3
    assert capacity.stream_rate([], period=2.0) is None


def test_a_weak_uplink_is_measured_on_its_trial_child_and_then_offers_nothing():
    stream = 125_000                                   # bytes/s: 250 kB blocks every 2 s
    uplink = Uplink(stale_after=300)
    assert capacity.places(3, uplink.estimate(0.0), stream) == 1
    link = FakeLink(uplink, "trial")
    link.look(0.0, writing=True)
    link.written += 250_000
    now = 0.0
    for _ in range(30):                                # 0.6 s at 60 kB/s
        now += 0.02
        link.delivered += 1_200
        link.look(now)
    load = LinkLoad("trial", link.queued, 0, uplink.rate_of("trial"))
    assert capacity.behind(load, period=2.0)           # 214 kB at 60 kB/s: over 3 s
    assert capacity.to_move([load], period=2.0) == "trial"
    assert capacity.places(3, uplink.estimate(now), stream) == 0


def test_an_uplink_sending_a_period_below_one_stream_gives_its_child_up_at_once():
    stream, period = 125_000, 2.0
    uplink = Uplink(stale_after=300)
    link = FakeLink(uplink, "trial")
    link.look(0.0, writing=True)
    link.written += 200_000
    now = 0.0
    while now < 1.0:                                   # 1 s at 60 kB/s: not a period yet
        now += 0.02
        link.delivered += 1_200
        link.look(now)
    estimate, busy = uplink.estimate(now), uplink.busy(now)
    assert estimate == pytest.approx(60_000, rel=0.05) and busy == pytest.approx(0.75, abs=0.05)
    assert not capacity.cannot_carry(estimate, busy, stream, period)
    load = LinkLoad("trial", link.queued, 0, uplink.rate_of("trial"))
    assert capacity.to_move([load], period, overloaded=True) is None   # 140 kB: 2.3 s
    while now < 2.5:
        now += 0.02
        link.delivered += 1_200
        link.look(now)
    estimate, busy = uplink.estimate(now), uplink.busy(now)
    assert capacity.cannot_carry(estimate, busy, stream, period)
    small = dataclasses.replace(load, backlog=10_000)  # its backlog is no longer the question
    assert capacity.to_move([small], period, overloaded=True, hopeless=True) == "trial"
    # Enough for one stream, without the headroom: it keeps its child until the link lags.
    assert not capacity.cannot_carry(1.1 * stream, busy, stream, period)
    assert not capacity.cannot_carry(None, busy, stream, period)
    assert not capacity.cannot_carry(estimate, busy, None, period)


def test_an_estimate_that_feeds_nobody_is_tried_again_only_late_and_when_places_are_short():
    stream, period, k = 125_000, 2.0, 3
    late = capacity.RETRIAL_PERIODS * period
    weak = 1.2 * stream                                # below one stream with headroom
    assert capacity.retry_due(k, weak, stream, age=late, jammed=True, period=period)
    assert not capacity.retry_due(k, weak, stream, age=late - 1, jammed=True, period=period)
    assert not capacity.retry_due(k, weak, stream, age=late, jammed=False, period=period)
    assert not capacity.retry_due(k, 3 * stream, stream, age=late, jammed=True, period=period)
    assert not capacity.retry_due(k, None, stream, age=None, jammed=True, period=period)
    uplink = Uplink(stale_after=300)
    assert uplink.age(5.0) is None and uplink.busy(5.0) == 0.0
    push(uplink, [FakeLink(uplink, "a")], block=100_000, rate=1 * MB)
    assert uplink.age(10.0) == pytest.approx(9.9, abs=0.05)
    assert not uplink.retried
    uplink.forget_estimate()          # tried again: unmeasured until new samples come
    assert uplink.estimate(10.0) is None and uplink.age(10.0) is None
    assert capacity.places(k, uplink.estimate(10.0), stream) == capacity.TRIAL_PLACES
    # On trial, it reports its trial place as what it could take over, not K: a
    # rotation must not hand it a strong relay's place and all its children.
    assert uplink.retried
    assert capacity.can_take(k, uplink.estimate(10.0), stream, uplink.retried) == \
        capacity.TRIAL_PLACES
    assert capacity.can_take(k, None, stream) == k


def test_a_link_moved_away_mid_block_leaves_its_measure_behind():
    uplink = Uplink(stale_after=300)
    link = FakeLink(uplink, "trial")
    link.look(0.0, writing=True)
    link.written += 250_000
    now = 0.0
    for _ in range(10):                                # 0.2 s at 60 kB/s, then gone
        now += 0.02
        link.delivered += 1_200
        link.look(now)
    assert uplink.estimate(now) is None                # the stretch is not over yet
    uplink.forget("trial", now)
    assert uplink.estimate(now) == pytest.approx(60_000, rel=0.05)


def test_the_slowest_child_with_a_backlog_is_moved_and_only_when_one_is_behind():
    period = 2.0
    fine = LinkLoad("fine", backlog=100_000, blocks=0, rate=500_000)
    slow = LinkLoad("slow", backlog=400_000, blocks=1, rate=120_000)   # 3.3 s to drain
    idle = LinkLoad("idle", backlog=0, blocks=0, rate=None)
    assert not capacity.behind(fine, period) and capacity.behind(slow, period)
    assert capacity.to_move([fine, idle], period) is None
    assert capacity.to_move([fine, slow, idle], period) == "slow"
    piled = LinkLoad("piled", backlog=50_000, blocks=capacity.QUEUE_ALARM, rate=None)
    assert capacity.to_move([fine, piled], period) == "piled"
    # An uplink measured to feed them all: a slow start is no reason, a piled-up queue is.
    assert capacity.to_move([fine, slow], period, overloaded=False) is None
    assert capacity.to_move([fine, slow, piled], period, overloaded=False) == "piled"
    # A link just adopted: its queue alone counts for a period.
    young = LinkLoad("young", backlog=400_000, blocks=1, rate=120_000, young=True)
    assert capacity.to_move([fine, young], period) is None
    assert capacity.to_move([fine, dataclasses.replace(young, blocks=capacity.QUEUE_ALARM)],
                            period) == "young"
    # The uplink short for everyone: all behind, the slowest goes, a leaf before a relay.
    a = LinkLoad("a", backlog=900_000, blocks=1, rate=200_000)
    b = LinkLoad("b", backlog=900_000, blocks=1, rate=150_000)
    assert capacity.to_move([a, b], period) == "b"
    relay = LinkLoad("relay", backlog=900_000, blocks=1, rate=100_000, below=4)
    assert capacity.to_move([a, relay], period) == "a"
    # A relay alone behind (its own link is slow) goes all the same.
    assert capacity.to_move([fine, relay], period) == "relay"


def test_a_swap_waits_for_an_uplink_with_a_stream_to_spare():
    stream = 500_000                                   # 4 Mbit/s
    eight, sixteen = 1_000_000, 2_000_000              # 8 and 16 Mbit/s
    assert not capacity.room_for_swap(0.95 * eight, stream, children=1)  # 2 streams: 8 Mbit/s
    assert capacity.room_for_swap(sixteen, stream, children=1)
    assert capacity.room_for_swap(0.8 * sixteen, stream, children=2)     # 3 streams: 12 Mbit/s
    assert not capacity.room_for_swap(0.7 * sixteen, stream, children=2)
    assert capacity.room_for_swap(eight, stream, children=0)
    assert capacity.room_for_swap(None, stream, children=2)          # unmeasured: not weak
    assert capacity.room_for_swap(eight, None, children=2)


def test_a_moved_child_is_cut_when_its_link_holds_more_than_a_quarter_period():
    period = 2.0
    assert not capacity.cut_instead(LinkLoad("a", 40_000, 0, 100_000), period)   # 0.4 s
    assert capacity.cut_instead(LinkLoad("a", 60_000, 0, 100_000), period)       # 0.6 s
    assert capacity.cut_instead(LinkLoad("a", 1, 3, None), period)               # unmeasured
    assert not capacity.cut_instead(LinkLoad("a", 0, 0, None), period)


def test_union_length_of_overlapping_intervals():
    assert capacity.union_length([(0, 1), (0.5, 2), (3, 4)]) == pytest.approx(3.0)
    assert capacity.union_length([]) == 0.0


def relay(places, children=()):
    return tree.RelayView(me=Addr("10.0.0.1", 9092), channel=0, max_children=3, attached=True,
                          depth=1, path=(), sent=0,
                          children={a: tree.ChildView(a, free=1) for a in children},
                          places=places)


def test_the_join_decision_follows_the_places_not_k():
    joiner = Hello("join", Addr("10.0.0.9", 9092), 0, 3)
    assert relay(places=0).free == 0 and relay(places=0).offered == 0
    assert isinstance(tree.decide_join(relay(places=0), joiner), tree.RejectJoin)
    assert tree.free_places(relay(places=0)) == ()       # reported up and to probes: nothing
    child = Addr("10.0.0.2", 9092)
    assert isinstance(tree.decide_join(relay(places=1, children=[child]), joiner),
                      tree.RedirectJoin)                   # full at 1 of K = 3: points below
    assert isinstance(tree.decide_join(relay(places=2, children=[child]), joiner), tree.AcceptJoin)
    assert relay(places=7).offered == 3                    # never above K
    assert relay(places=None).offered == 3


def test_the_rotation_never_hands_a_place_to_a_child_measured_weak():
    weak, unknown = Addr("10.0.0.2", 9092), Addr("10.0.0.3", 9092)
    view = tree.RelayView(me=Addr("10.0.0.1", 9092), channel=0, max_children=3, attached=True,
                          depth=1, path=(), sent=10_000_000, places=3, children={
                              weak: tree.ChildView(weak, sent=0, reported=True, max_children=0),
                              unknown: tree.ChildView(unknown, sent=5, reported=True,
                                                      max_children=3)})
    assert tree.choose_swap(view, margin=1000) == unknown


def test_a_joiner_with_a_subtree_takes_a_leaf_s_place_when_nothing_is_free():
    me, leaf, busy = Addr("10.0.0.1", 9092), Addr("10.0.0.2", 9092), Addr("10.0.0.3", 9092)
    below = Addr("10.0.0.4", 9092)
    view = tree.RelayView(me=me, channel=0, max_children=3, attached=True, depth=1, path=(),
                          sent=0, places=2, children={
                              leaf: tree.ChildView(leaf, reported=True, max_children=0),
                              busy: tree.ChildView(busy, reported=True, max_children=1,
                                                   members=(below,), children=(below,))})
    orphan = Addr("10.0.0.9", 9092)
    with_subtree = Hello("join", orphan, 0, 1, subtree=(Addr("10.0.0.8", 9092),))
    assert tree.decide_join(view, with_subtree) == tree.DisplaceJoin(leaf)
    # A joiner alone finds room anywhere: it is sent down, no leaf moves for it.
    alone = Hello("join", orphan, 0, 1)
    assert isinstance(tree.decide_join(view, alone), tree.RedirectJoin)
    # Nothing to displace when every child relays.
    view.children.pop(leaf)
    assert not isinstance(tree.decide_join(view, with_subtree), tree.DisplaceJoin)


def parts_at_a_pace(uplink: Uplink, kernel_count: bool, rate: float, pace: float,
                    part: int = 64_000, seconds: float = 2.0) -> float:
    """Cut-through as a relay's sender sees it: a part written each ``part / pace`` seconds
    (its parent's pace), drained at ``rate`` bytes/s, looked at on each write and once
    between; ``kernel_count``: the looks carry the kernel's busy seconds. Returns the end."""
    gap, drain = part / pace, part / rate
    assert drain < gap           # the uplink is faster than the parts come
    delivered = busy = now = 0.0
    while now < seconds:
        count = busy if kernel_count else None
        uplink.observe("a", now, int(delivered), part, writing=False, busy_total=count)
        busy += drain            # gone after `drain` seconds; looked at once meanwhile
        delivered += part
        uplink.observe("a", now + gap / 2, int(delivered), 0, busy_total=busy if kernel_count else None)
        now += gap
    return now


def test_parts_coming_slower_than_the_uplink_measure_the_uplink_with_the_kernels_count():
    # 4 MB/s of uplink, parts coming at 1 MB/s: without the kernel's count each part looks
    # busy until the next look, 32 ms, and alone in its stretch counts MIN_BUSY: the
    # estimate is a bound that knows nothing of the uplink.
    paced = Uplink(stale_after=300)
    end = parts_at_a_pace(paced, kernel_count=False, rate=4 * MB, pace=1 * MB)
    assert paced.estimate(end) == pytest.approx(64_000 / capacity.MIN_BUSY)
    counted = Uplink(stale_after=300)
    end = parts_at_a_pace(counted, kernel_count=True, rate=4 * MB, pace=1 * MB)
    assert counted.estimate(end) == pytest.approx(4 * MB, rel=0.1)
    assert counted.rate_of("a") == pytest.approx(4 * MB, rel=0.1)


def test_the_kernels_count_never_stretches_a_look_beyond_its_interval():
    meter = LinkMeter()
    meter.observe(0.0, 0, 100_000, busy_total=1.0)
    busy = meter.observe(0.05, 100_000, 0, busy_total=1.2)   # a count that ran ahead
    assert (busy.start, busy.end, busy.bytes, busy.drained) == (0.0, 0.05, 100_000, True)


def test_a_look_with_no_bytes_and_no_busy_time_is_no_interval():
    meter = LinkMeter()
    meter.observe(0.0, 500, 0, busy_total=2.0)
    assert meter.observe(1.0, 500, 0, busy_total=2.0) is None


def test_bytes_gone_within_a_jiffy_give_the_lower_bound_of_a_jiffy():
    uplink = Uplink(stale_after=300)
    uplink.observe("a", 0.0, 0, 100_000, busy_total=0.0)
    uplink.observe("a", 0.02, 100_000, 0, busy_total=0.0)   # the kernel counted no time
    assert uplink.estimate(0.02) == pytest.approx(100_000 / capacity.KERNEL_TICK)
    assert uplink.rate_of("a") == pytest.approx(100_000 / capacity.KERNEL_TICK)


def starved_link(uplink: Uplink, kernel_rate: float | None, seconds: float = 3.0,
                 start: float = 0.0, key: str = "a") -> float:
    """A child whose own uplink is full: 66 KB parts every 80 ms leave at once but are
    acknowledged only as the next one comes, so the link counts busy all the time (the
    kernel's busy seconds run with the clock); the kernel's bandwidth samples see the
    path. Returns the end."""
    now, delivered = start, 0
    while now < start + seconds:
        uplink.observe(key, now, delivered, 66_000, busy_total=now, kernel_rate=kernel_rate)
        now = round(now + 0.08, 6)
        delivered += 66_000
    uplink.observe(key, now, delivered, 0, busy_total=now, kernel_rate=kernel_rate)
    return now


def test_acknowledgements_held_up_at_the_child_fool_the_busy_time_not_the_kernels_samples():
    by_busy = Uplink(stale_after=300)
    end = starved_link(by_busy, kernel_rate=None)
    assert by_busy.estimate(end) == pytest.approx(66_000 / 0.08, rel=0.05)   # the pace fed
    with_kernel = Uplink(stale_after=300)
    end = starved_link(with_kernel, kernel_rate=2.4 * MB)
    assert with_kernel.estimate(end) == pytest.approx(2.4 * MB)
    # Kernel samples below what the busy time shows change nothing: the larger figure counts.
    slow_samples = Uplink(stale_after=300)
    end = starved_link(slow_samples, kernel_rate=0.1 * MB)
    assert slow_samples.estimate(end) == pytest.approx(66_000 / 0.08, rel=0.05)


def test_a_few_kernel_samples_are_not_enough_and_their_median_resists_one_outlier():
    uplink = Uplink(stale_after=300)
    end = starved_link(uplink, kernel_rate=2.4 * MB, seconds=0.5)   # two stretches
    assert uplink.estimate(end) == pytest.approx(66_000 / 0.08, rel=0.05)
    uplink = Uplink(stale_after=300)
    end = starved_link(uplink, kernel_rate=2.4 * MB, seconds=2.0)
    end = starved_link(uplink, kernel_rate=90 * MB, seconds=0.2, start=end + 1,
                       key="b")                                      # one wild sample
    assert uplink.estimate(end) == pytest.approx(2.4 * MB)


def test_a_stretchs_kernel_figure_is_a_links_median_not_its_luckiest_sample():
    uplink = Uplink(stale_after=300)
    now, delivered, samples = 0.0, 0, [2.0 * MB, 2.1 * MB, 2.4 * MB, 1.9 * MB, 2.0 * MB]
    for step in range(60):                            # 66 KB every 80 ms, always busy
        rate = samples[step % len(samples)] if step % 7 else 9 * MB   # a bunch now and then
        uplink.observe("a", now, delivered, 66_000, busy_total=now, kernel_rate=rate)
        now = round(now + 0.08, 6)
        delivered += 66_000
    assert uplink.estimate(now) == pytest.approx(2.0 * MB, rel=0.03)
