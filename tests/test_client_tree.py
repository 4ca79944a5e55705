"""The relay tree's decisions, as pure code: views in, answers out.

Ends with an in-memory tree: relays join one after another through
``JoinSearch`` and ``decide_join``, reports travel up as plain function calls,
and the shape of the result is checked (fan-out bound, no loops, depth).
"""

from __future__ import annotations

import dataclasses

import pytest

from client.peerproto import (Addr, Candidate, FrameDecoder, Hello, Redirect, Report, encode)
from client import tree as tree_module
from client.tree import (MAX_CANDIDATES, AcceptJoin, ChildView, JoinSearch,
                         RedirectJoin, RejectJoin, RelayView, decide_join, free_places,
                         members_below, rejoin_seeds)

CHANNEL = 3


def A(n: int) -> Addr:
    return Addr(f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}", 9000)


def C(n: int, depth: int = 2, free: int = 1, sent: int = 0) -> Candidate:
    return Candidate(A(n), depth, free, sent)


ME = A(0)


def view(children=(), *, max_children=2, attached=True, depth=2, path=(A(100),), sent=0,
         channel=CHANNEL, me=ME) -> RelayView:
    kids = {}
    for child in children:
        if isinstance(child, Addr):
            child = ChildView(child)
        kids[child.addr] = child
    return RelayView(me, channel, max_children, attached, depth, tuple(path), sent, kids)


def join(n: int, *, subtree=(), channel=CHANNEL, kind="join") -> Hello:
    return Hello(kind, A(n), channel, 2, subtree=tuple(subtree))


def addrs(candidates) -> list[Addr]:
    return [c.addr for c in candidates]


# -- decide_join: accept ----------------------------------------------------------------------


def test_accepts_with_no_children():
    assert decide_join(view(), join(1)) == AcceptJoin()


def test_accepts_while_below_max_children():
    assert decide_join(view([A(1)], max_children=2), join(2)) == AcceptJoin()
    assert decide_join(view([A(1), A(2)], max_children=3), join(3)) == AcceptJoin()


def test_accepts_a_reconnecting_child_even_when_full():
    full = view([A(1), A(2)], max_children=2)
    assert decide_join(full, join(1)) == AcceptJoin()
    assert decide_join(full, join(2)) == AcceptJoin()
    assert not isinstance(decide_join(full, join(3)), AcceptJoin)


def test_accepts_a_reconnecting_child_when_over_max():
    # max_children lowered after the fact: a child already there may still reconnect.
    assert decide_join(view([A(1), A(2)], max_children=1), join(2)) == AcceptJoin()


def test_accepts_a_descendant_that_is_not_an_ancestor():
    # A grandchild whose parent died comes back to its grandparent: no loop.
    child = ChildView(A(1), members=(A(5),))
    assert decide_join(view([child], max_children=2), join(5)) == AcceptJoin()


# -- decide_join: reject ----------------------------------------------------------------------


def test_rejects_itself():
    answer = decide_join(view(), Hello("join", ME, CHANNEL))
    assert isinstance(answer, RejectJoin) and "loop" in answer.reason


@pytest.mark.parametrize("index", [0, 1, 2])
def test_rejects_an_ancestor(index):
    path = (A(100), A(101), A(102))
    answer = decide_join(view(path=path, depth=4), join(100 + index))
    assert isinstance(answer, RejectJoin) and "loop" in answer.reason


def test_rejects_a_joiner_whose_subtree_holds_the_relay():
    answer = decide_join(view(), join(7, subtree=(A(8), ME, A(9))))
    assert isinstance(answer, RejectJoin) and "loop" in answer.reason


def test_loop_refused_even_for_a_known_child():
    # A child that claims the relay is below it closes a loop, reconnecting or not.
    answer = decide_join(view([A(1)]), join(1, subtree=(ME,)))
    assert isinstance(answer, RejectJoin) and "loop" in answer.reason


def test_rejects_when_not_attached():
    answer = decide_join(view(attached=False), join(1))
    assert isinstance(answer, RejectJoin) and "not attached" in answer.reason


def test_not_attached_rejects_even_a_reconnecting_child():
    answer = decide_join(view([A(1)], attached=False), join(1))
    assert isinstance(answer, RejectJoin)


@pytest.mark.parametrize("channel", [0, 2, 4, 9])
def test_rejects_wrong_channel(channel):
    answer = decide_join(view(), join(1, channel=channel))
    assert isinstance(answer, RejectJoin) and "wrong channel" in answer.reason


def test_wrong_channel_rejects_even_when_full():
    answer = decide_join(view([A(1), A(2)]), join(3, channel=CHANNEL + 1))
    assert isinstance(answer, RejectJoin) and "wrong channel" in answer.reason


def test_max_children_zero_and_no_children_rejects():
    answer = decide_join(view(max_children=0), join(1))
    assert isinstance(answer, RejectJoin) and "no free slot" in answer.reason


def test_full_and_every_child_is_the_joiners_rejects():
    # The only way down is through the joiner's own subtree: nothing to offer.
    full = view([A(1)], max_children=1)
    answer = decide_join(full, join(2, subtree=(A(1),)))
    assert isinstance(answer, RejectJoin)


# -- decide_join: redirect --------------------------------------------------------------------


def test_full_redirects_to_the_best_free_places_below():
    c1 = ChildView(A(1), free=0, sent=50, places=(C(11, depth=4, free=1, sent=0),
                                                   C(12, depth=3, free=2, sent=900)))
    c2 = ChildView(A(2), free=1, sent=70, places=(C(2, depth=3, free=1, sent=100),
                                                   C(21, depth=4, free=1, sent=5)))
    answer = decide_join(view([c1, c2], max_children=2, depth=2), join(9))
    assert isinstance(answer, RedirectJoin)
    # shallowest first, then fewest bytes sent
    assert addrs(answer.candidates) == [A(2), A(12), A(11), A(21)]


def test_redirect_ties_broken_by_address():
    c1 = ChildView(A(1), places=(C(13, depth=3), C(11, depth=3)))
    c2 = ChildView(A(2), places=(C(12, depth=3),))
    answer = decide_join(view([c1, c2]), join(9))
    assert addrs(answer.candidates) == [A(11), A(12), A(13)]


def test_redirect_skips_places_reported_full():
    c1 = ChildView(A(1), places=(C(11, depth=3, free=0), C(12, depth=4, free=1)))
    answer = decide_join(view([c1], max_children=1), join(9))
    assert addrs(answer.candidates) == [A(12)]


def test_redirect_never_to_the_joiner_or_its_subtree():
    c1 = ChildView(A(1), places=(C(9, depth=3), C(91, depth=3), C(11, depth=4)))
    c2 = ChildView(A(2), places=(C(92, depth=3), C(21, depth=5)))
    answer = decide_join(view([c1, c2]), join(9, subtree=(A(91), A(92))))
    assert isinstance(answer, RedirectJoin)
    assert addrs(answer.candidates) == [A(11), A(21)]


def test_redirect_is_bounded():
    places = tuple(C(1000 + n, depth=3 + n % 4, sent=n) for n in range(30))
    answer = decide_join(view([ChildView(A(1), places=places)], max_children=1), join(9))
    assert len(answer.candidates) == MAX_CANDIDATES
    keys = [(c.depth, c.sent) for c in answer.candidates]
    assert keys == sorted(keys)
    assert all(c.depth == 3 for c in answer.candidates)


def test_full_with_nothing_free_known_descends_through_children():
    kids = [ChildView(A(1), free=0, sent=300), ChildView(A(2), free=0, sent=100),
            ChildView(A(3), free=0, sent=200)]
    answer = decide_join(view(kids, max_children=3, depth=4), join(9))
    assert isinstance(answer, RedirectJoin)
    assert answer.candidates == (Candidate(A(2), 5, 0, 100), Candidate(A(3), 5, 0, 200),
                                 Candidate(A(1), 5, 0, 300))


def test_descend_prefers_a_child_reporting_free_slots():
    # Its places list may be stale or empty; its own free count still ranks it first.
    kids = [ChildView(A(1), free=0, sent=0), ChildView(A(2), free=1, sent=999)]
    answer = decide_join(view(kids), join(9))
    assert addrs(answer.candidates) == [A(2), A(1)]


def test_descend_never_to_the_joiners_subtree():
    kids = [ChildView(A(1)), ChildView(A(2))]
    answer = decide_join(view(kids), join(9, subtree=(A(1),)))
    assert addrs(answer.candidates) == [A(2)]


def test_descend_is_bounded():
    kids = [ChildView(A(n), sent=n) for n in range(1, 21)]
    answer = decide_join(view(kids, max_children=20), join(99))
    assert addrs(answer.candidates) == [A(n) for n in range(1, MAX_CANDIDATES + 1)]


def test_redirect_answer_is_sendable():
    places = tuple(C(1000 + n, depth=3, sent=n) for n in range(30))
    answer = decide_join(view([ChildView(A(1), places=places)], max_children=1), join(9))
    decoder = FrameDecoder()
    decoder.feed(encode(Redirect(answer.candidates)))
    assert decoder.next_message() == Redirect(answer.candidates)


# -- free_places ------------------------------------------------------------------------------


def test_free_places_includes_the_relay_with_a_free_slot():
    places = free_places(view([A(1)], max_children=3, depth=2, sent=77))
    assert places == (Candidate(ME, 2, 2, 77),)


def test_free_places_leaves_out_a_full_relay():
    assert free_places(view([A(1), A(2)], max_children=2)) == ()
    assert free_places(view(max_children=0)) == ()


def test_free_places_leaves_out_an_excluded_relay():
    assert free_places(view(), exclude=[ME]) == ()


def test_free_places_orders_by_depth_then_sent_then_address():
    c1 = ChildView(A(1), places=(C(11, depth=3, sent=5), C(12, depth=4, sent=0)))
    c2 = ChildView(A(2), places=(C(22, depth=3, sent=5), C(21, depth=3, sent=1)))
    places = free_places(view([c1, c2], max_children=3, depth=2, sent=1000))
    assert addrs(places) == [ME, A(21), A(11), A(22), A(12)]


def test_free_places_excludes_and_filters_full():
    c1 = ChildView(A(1), places=(C(11, depth=3), C(12, depth=3, free=0), C(13, depth=3)))
    places = free_places(view([c1]), exclude={A(11)})
    assert addrs(places) == [ME, A(13)]


def test_free_places_is_bounded():
    c1 = ChildView(A(1), places=tuple(C(100 + n, depth=3 + n % 5, sent=n) for n in range(40)))
    c2 = ChildView(A(2), places=tuple(C(200 + n, depth=3 + n % 3, sent=n) for n in range(40)))
    places = free_places(view([c1, c2], max_children=2))
    assert len(places) == MAX_CANDIDATES
    assert all(c.depth == 3 for c in places)
    assert [c.sent for c in places] == sorted(c.sent for c in places)


def test_free_places_bounded_keeps_the_relay_itself_first():
    c1 = ChildView(A(1), places=tuple(C(100 + n, depth=3) for n in range(40)))
    places = free_places(view([c1], max_children=5, depth=2))
    assert len(places) == MAX_CANDIDATES and places[0].addr == ME


def test_free_places_fit_a_report():
    c1 = ChildView(A(1), places=tuple(C(100 + n, depth=3) for n in range(40)))
    v = view([c1], max_children=5)
    report = Report(v.free, v.sent, free_places(v), members_below(v))
    decoder = FrameDecoder()
    decoder.feed(encode(report))
    assert decoder.next_message() == report


# -- members_below ----------------------------------------------------------------------------


def test_members_below_children_first():
    c1 = ChildView(A(1), members=(A(11), A(12)))
    c2 = ChildView(A(2), members=(A(21),))
    assert members_below(view([c1, c2])) == (A(1), A(2), A(11), A(12), A(21))


def test_members_below_empty():
    assert members_below(view()) == ()


def test_members_below_is_bounded():
    c1 = ChildView(A(1), members=tuple(A(1000 + n) for n in range(700)))
    c2 = ChildView(A(2), members=tuple(A(2000 + n) for n in range(700)))
    members = members_below(view([c1, c2]))
    assert len(members) == tree_module.MAX_MEMBERS
    assert members[:3] == (A(1), A(2), A(1000))


# -- what the node sends, built from these views, must decode at the other end ----------------

def _roundtrip(message):
    decoder = FrameDecoder()
    decoder.feed(encode(message))
    return decoder.next_message()


def _big_subtree_view(descendants: int) -> RelayView:
    grandchildren = tuple(A(1000 + n) for n in range(descendants - 1))
    return view([ChildView(A(1), members=grandchildren)], max_children=2)


def test_report_of_a_relay_with_100_descendants_decodes():
    # client/node.py sends exactly this Report to its parent every period.
    v = _big_subtree_view(100)
    report = Report(v.free, v.sent, free_places(v), members_below(v))
    assert _roundtrip(report) == report


def test_join_hello_of_a_relay_with_100_descendants_decodes():
    # client/node.py sends exactly this Hello when it (re)joins with its subtree.
    v = _big_subtree_view(100)
    hello = Hello("join", v.me, CHANNEL, v.max_children, subtree=members_below(v))
    assert _roundtrip(hello) == hello


# -- JoinSearch -------------------------------------------------------------------------------


def drain(search: JoinSearch) -> list[Candidate]:
    out = []
    while (c := search.next()) is not None:
        out.append(c)
    return out


def test_search_order_depth_free_sent():
    search = JoinSearch(A(99))
    search.add([C(1, depth=3, free=1, sent=0), C(2, depth=2, free=0, sent=0),
                C(3, depth=2, free=1, sent=50), C(4, depth=2, free=1, sent=10),
                C(5, depth=1, free=0, sent=999)])
    assert addrs(drain(search)) == [A(5), A(4), A(3), A(2), A(1)]


def test_search_empty_returns_none():
    search = JoinSearch(A(99))
    assert search.next() is None
    search.add([])
    assert search.next() is None


def test_search_never_returns_the_joiner_or_excluded():
    search = JoinSearch(A(99), exclude=[A(1), A(2)])
    search.add([C(99, depth=1), C(1, depth=1), C(2, depth=1), C(3, depth=5)])
    assert addrs(drain(search)) == [A(3)]


def test_search_returns_each_address_once():
    search = JoinSearch(A(99))
    search.add([C(1), C(2)])
    first = search.next()
    search.add([C(1, depth=1), C(2, depth=1), first])  # re-heard, even better: still tried once
    rest = drain(search)
    assert sorted(addrs([first, *rest])) == [A(1), A(2)]


def test_search_redirect_adds_candidates():
    search = JoinSearch(A(99))
    search.add([C(1, depth=1, free=0)])
    assert search.next().addr == A(1)
    assert search.next() is None
    search.add([C(11, depth=2), C(12, depth=3)])  # A(1) was full and redirected
    assert addrs(drain(search)) == [A(11), A(12)]


def test_search_redirect_candidate_better_than_a_pending_one_goes_first():
    search = JoinSearch(A(99))
    search.add([C(1, depth=1), C(2, depth=4)])
    assert search.next().addr == A(1)
    search.add([C(3, depth=2)])
    assert addrs(drain(search)) == [A(3), A(2)]


def test_search_better_report_replaces_worse():
    search = JoinSearch(A(99))
    search.add([C(1, depth=4, free=0, sent=100), C(2, depth=3)])
    search.add([C(1, depth=2, free=1, sent=5)])
    first = search.next()
    assert first == C(1, depth=2, free=1, sent=5)


@pytest.mark.parametrize("better", [dict(depth=2), dict(free=3), dict(sent=1)])
def test_search_each_kind_of_better_report_replaces(better):
    worse = dict(depth=3, free=0, sent=10)
    search = JoinSearch(A(99))
    search.add([C(1, **worse), C(2, depth=3, free=0, sent=5)])  # A(2) beats the worse A(1)
    improved = C(1, **{**worse, **better})
    search.add([improved])
    assert search.next() == improved


def test_search_worse_report_does_not_replace_better():
    search = JoinSearch(A(99))
    search.add([C(1, depth=2, free=1, sent=5)])
    search.add([C(1, depth=5, free=0, sent=999)])
    assert search.next() == C(1, depth=2, free=1, sent=5)


def test_search_attempts_are_bounded():
    search = JoinSearch(A(999), max_attempts=5)
    search.add([C(n, depth=2, sent=n) for n in range(20)])
    tried = addrs(drain(search))
    assert len(tried) == len(set(tried)) == 5 and set(tried) <= {A(n) for n in range(20)}
    search.add([C(500, depth=1)])
    assert search.next() is None


def test_search_tries_full_places_in_order_and_draws_nothing():
    search = JoinSearch(A(999))
    search.add([C(n, depth=2, free=0, sent=10 - n) for n in range(5)])
    assert addrs(drain(search)) == [A(4), A(3), A(2), A(1), A(0)]


def test_a_crowd_that_missed_a_free_place_spreads_over_the_shallowest():
    """Told of the same ten free places, a crowd whose first try missed draws the next ones
    among them all (never a deeper one while one is left), each joiner the same way each time."""
    places = [C(n, depth=3, free=1, sent=n) for n in range(10)] + [C(50, depth=4, free=3)]
    second = {}
    for joiner in range(200):
        search = JoinSearch(A(1000 + joiner))
        search.add(places)
        first = search.next()
        assert first.addr == A(0)                      # the least loaded, while nothing missed
        rest = addrs(drain(search))
        assert rest[:9] and set(rest[:9]) == {A(n) for n in range(1, 10)} and rest[9] == A(50)
        second[rest[0]] = second.get(rest[0], 0) + 1
    assert len(second) == 9 and max(second.values()) < 200 / 9 * 2
    assert _tries(A(1000), places) == _tries(A(1000), places)


def _tries(joiner: Addr, places) -> list[Addr]:
    search = JoinSearch(joiner)
    search.add(places)
    return addrs(drain(search))


def test_a_crowded_draw_weighs_each_place_by_its_free_slots():
    counts = {A(1): 0, A(2): 0}
    for joiner in range(400):
        search = JoinSearch(A(2000 + joiner))
        search.add([C(0, depth=2, free=1), C(1, depth=3, free=3), C(2, depth=3, free=1)])
        search.next()                                   # A(0), which took someone else
        counts[search.next().addr] += 1
    assert 2 * counts[A(2)] < counts[A(1)] < 5 * counts[A(2)]


def test_search_default_bound_ends_an_endless_redirect_chain():
    search = JoinSearch(A(99_999))
    search.add([C(10_000, depth=2)])
    tried = 0
    while search.next() is not None:
        tried += 1
        search.add([C(10_000 + tried, depth=2)])  # every place redirects to a new one
    assert tried == 32


def test_search_zero_attempts():
    search = JoinSearch(A(99), max_attempts=0)
    search.add([C(1)])
    assert search.next() is None


# -- rejoin_seeds -----------------------------------------------------------------------------


def test_rejoin_seeds_surviving_ancestors_with_depth():
    path = (A(1), A(2), A(3), A(4))  # root .. lost parent
    seeds = rejoin_seeds(path, A(4))
    assert sorted((c.depth, c.addr) for c in seeds) == [(1, A(1)), (2, A(2)), (3, A(3))]
    assert all(c.free == 1 and c.sent == 0 for c in seeds)
    assert A(4) not in addrs(seeds)


def test_rejoin_seeds_grandparent_first():
    assert addrs(rejoin_seeds((A(1), A(2), A(3)), A(3))) == [A(2), A(1)]


def test_rejoin_seeds_without_a_lost_parent():
    seeds = rejoin_seeds((A(1), A(2)), None)
    assert seeds == [Candidate(A(2), 2, 1, 0), Candidate(A(1), 1, 1, 0)]


def test_rejoin_seeds_lost_root():
    assert rejoin_seeds((A(1),), A(1)) == []
    assert rejoin_seeds((), None) == []


def test_rejoin_seeds_feed_a_search_that_tries_the_root_first():
    search = JoinSearch(A(99), exclude=[A(3)])
    search.add(rejoin_seeds((A(1), A(2), A(3)), A(3)))
    assert addrs(drain(search)) == [A(1), A(2)]


# -- an in-memory tree ------------------------------------------------------------------------


class Tree:
    """Relays in memory: joins run JoinSearch + decide_join, reports are function calls."""

    def __init__(self, fanout: int, fresh_reports: bool = True):
        self.fanout = fanout
        self.fresh = fresh_reports
        self.root = A(0)
        self.views: dict[Addr, RelayView] = {
            self.root: RelayView(self.root, CHANNEL, fanout, True, 1, (), 0)}
        self.parent: dict[Addr, Addr] = {}
        self.tries: list[tuple[Addr, Addr]] = []

    def report_all(self) -> None:
        """Every relay reports to its parent, deepest first, as Report messages would."""
        for addr in sorted(self.parent, key=lambda a: -self.views[a].depth):
            v = self.views[addr]
            report = _roundtrip(Report(v.free, v.sent, free_places(v), members_below(v)))
            self.views[self.parent[addr]].children[addr] = ChildView(
                addr, report.free, report.sent, report.subtree, report.members)

    def _attach(self, addr: Addr, parent: Addr) -> None:
        p = self.views[parent]
        old = self.views.get(addr)
        p.children[addr] = ChildView(addr)
        self.parent[addr] = parent
        self._place(addr, p, old.children if old else {})
        if self.fresh:
            self.report_all()

    def _place(self, addr: Addr, parent: RelayView, children) -> None:
        """Give ``addr`` its depth and path under ``parent``, and pass it down (PathUpdate)."""
        n = int(addr.ip.rsplit(".", 1)[1])
        self.views[addr] = RelayView(addr, CHANNEL, self.fanout, True, parent.depth + 1,
                                     parent.path + (parent.me,), (n * 7919) % 1000, children)
        for child in list(children):
            self._place(child, self.views[addr], self.views[child].children)

    def join(self, addr: Addr, seeds, exclude=()) -> Addr:
        mine = members_below(self.views[addr]) if addr in self.views else ()
        hello = Hello("join", addr, CHANNEL, self.fanout, subtree=mine)
        search = JoinSearch(addr, exclude=(*mine, *exclude))
        search.add(seeds)
        while (c := search.next()) is not None:
            assert c.addr != addr and c.addr not in mine
            self.tries.append((addr, c.addr))
            relay = self.views.get(c.addr)
            if relay is None or c.addr in exclude:
                continue  # gone: cannot connect
            answer = decide_join(relay, _roundtrip(hello))
            if isinstance(answer, AcceptJoin):
                self._attach(addr, c.addr)
                return c.addr
            if isinstance(answer, RedirectJoin):
                search.add(_roundtrip(Redirect(answer.candidates)).candidates)
        raise AssertionError(f"{addr} found no place")

    def newcomer(self, addr: Addr) -> Addr:
        root = self.views[self.root]
        seeds = free_places(root) or (Candidate(root.me, root.depth, root.free, root.sent),)
        return self.join(addr, seeds)

    def kill(self, dead: Addr) -> list[Addr]:
        """``dead`` vanishes; its parent notices; returns its orphaned children."""
        parent = self.parent.pop(dead)
        del self.views[parent].children[dead]
        orphans = list(self.views[dead].children)
        for orphan in orphans:
            del self.parent[orphan]
            self.views[orphan] = dataclasses.replace(self.views[orphan], attached=False)
        del self.views[dead]
        self.report_all()
        return orphans

    def rejoin(self, orphan: Addr, dead: Addr) -> Addr:
        v = self.views[orphan]
        return self.join(orphan, rejoin_seeds(v.path, dead), exclude=(dead,))

    # -- shape checks

    def check(self) -> None:
        alive = set(self.views)
        for addr, v in self.views.items():
            assert len(v.children) <= self.fanout, addr
            assert set(v.children) <= alive
            for child in v.children:
                assert self.parent[child] == addr
        for addr in alive - {self.root}:
            chain, cur = [], addr
            while cur != self.root:
                assert cur not in chain, f"loop through {cur}"
                chain.append(cur)
                cur = self.parent[cur]
            ancestors = tuple(reversed(chain[1:]))
            assert self.views[addr].path == (self.root, *ancestors)
            assert self.views[addr].depth == len(chain) + 1
        below = members_below(self.views[self.root]) if self.fresh else None
        if below is not None:
            assert len(below) == len(set(below)) == len(alive) - 1
            assert set(below) == alive - {self.root}

    def depth(self) -> int:
        return max(v.depth for v in self.views.values())


def optimal_depth(nodes: int, fanout: int) -> int:
    depth, capacity, level = 0, 0, 1
    while capacity < nodes:
        depth += 1
        capacity += level
        level *= fanout
    return depth


def test_optimal_depth_helper():
    assert optimal_depth(20, 2) == 5
    assert optimal_depth(15, 2) == 4
    assert optimal_depth(31, 2) == 5
    assert optimal_depth(32, 2) == 6
    assert optimal_depth(1, 2) == 1


def test_tree_of_20_with_fanout_2_has_optimal_depth():
    tree = Tree(fanout=2)
    for n in range(1, 20):
        tree.newcomer(A(n))
        tree.check()
    assert len(tree.views) == 20
    assert tree.depth() == 5  # 1 + 2 + 4 + 8 = 15 < 20 <= 31
    levels = [sum(1 for v in tree.views.values() if v.depth == d) for d in range(1, 6)]
    assert levels == [1, 2, 4, 8, 5]


@pytest.mark.parametrize("nodes, fanout", [(2, 2), (31, 2), (32, 2), (40, 3), (25, 1), (30, 4)])
def test_tree_depth_is_optimal(nodes, fanout):
    tree = Tree(fanout=fanout)
    for n in range(1, nodes):
        tree.newcomer(A(n))
    tree.check()
    assert tree.depth() == optimal_depth(nodes, fanout)


def test_tree_newcomers_go_to_the_least_loaded_of_the_shallowest():
    tree = Tree(fanout=2)
    for n in range(1, 4):
        tree.newcomer(A(n))
    # depth 2 holds A(1), A(2); the third newcomer goes under whichever sent less
    sent = {a: tree.views[a].sent for a in (A(1), A(2))}
    assert tree.parent[A(3)] == min(sent, key=lambda a: (sent[a], a))


def test_tree_with_stale_reports_keeps_its_shape():
    # Reports only every fifth join: relays redirect on old news, joiners descend.
    tree = Tree(fanout=2, fresh_reports=False)
    for n in range(1, 40):
        root = tree.views[tree.root]
        tree.join(A(n), (Candidate(root.me, 1, max(root.free, 1), 0),))
        if n % 5 == 0:
            tree.report_all()
        tree.check()
    assert len(tree.views) == 40
    assert len(tree.tries) > 39  # some joiners were redirected


def test_tree_parent_death_and_rejoin():
    tree = Tree(fanout=2)
    for n in range(1, 20):
        tree.newcomer(A(n))
    dead = next(a for a, v in tree.views.items() if v.depth == 3 and len(v.children) == 2)
    subtrees = {o: set(members_below(tree.views[o])) for o in tree.views[dead].children}
    orphans = tree.kill(dead)
    assert len(orphans) == 2
    for orphan in orphans:
        parent = tree.rejoin(orphan, dead)
        assert parent != dead and parent not in subtrees[orphan]
    tree.check()
    assert len(tree.views) == 19
    assert dead not in members_below(tree.views[tree.root])
    for orphan, below in subtrees.items():
        # subtrees moved whole (an orphan that rejoined first may since have adopted the other)
        assert set(members_below(tree.views[orphan])) >= below
    assert all(target != dead for who, target in tree.tries[-10:] if who in orphans)


# -- backup advice and the balance rotation ----------------------------------------------------


def test_advice_for_a_child_is_a_free_place_outside_its_subtree():
    a, b = A(1), A(2)
    v = view([ChildView(a, places=(C(3, depth=3, sent=5),), members=(A(3),)),
              ChildView(b, places=(C(4, depth=3, sent=9),), members=(A(4),))])
    assert tree_module.advice_for(v, a).addr == A(4)
    assert tree_module.advice_for(v, b).addr == A(3)


def test_advice_for_prefers_the_relay_itself_when_it_has_room():
    v = view([ChildView(A(1), places=(C(3, depth=3),), members=(A(3),))], max_children=2)
    assert tree_module.advice_for(v, A(1)).addr == ME


def test_advice_for_none_when_nothing_free_outside():
    v = view([ChildView(A(1), places=(C(3, depth=3),), members=(A(3),)), ChildView(A(2))])
    assert tree_module.advice_for(v, A(1)) is None


def _reported(n, sent, max_children=2, children=()):
    return ChildView(A(n), sent=sent, max_children=max_children, children=tuple(children),
                     reported=True)


def test_choose_swap_picks_the_lightest_child_past_the_margin():
    v = view([_reported(1, 500), _reported(2, 100)], sent=1000)
    assert tree_module.choose_swap(v, margin=800) == A(2)
    assert tree_module.choose_swap(v, margin=900) is None


def test_choose_swap_only_children_that_reported_and_can_take_all_children():
    unreported = ChildView(A(1), sent=0, max_children=2)
    small = _reported(2, 0, max_children=1)
    assert tree_module.choose_swap(view([unreported, small], sent=10**6), margin=1) is None
    assert tree_module.choose_swap(view([unreported, _reported(3, 0)], sent=10**6), margin=1) == A(3)


def test_a_child_offering_more_places_takes_the_place_whatever_the_bytes_and_the_room():
    strong = _reported(1, 10**9, max_children=3, children=(A(5), A(6), A(7)))
    equal = _reported(2, 0, max_children=1, children=(A(8),))
    v = dataclasses.replace(view([strong, equal], sent=0, max_children=3), places=1)
    assert tree_module.offered_by(strong) == 3
    assert tree_module.choose_swap(v, margin=10**12, room=False) == A(1)
    # Not with a recent swap partner: uplinks of about the same strength would swap back
    # and forth as their estimates move.
    assert tree_module.choose_swap(v, margin=10**12, room=False, recent=frozenset({A(1)})) is None
    # It must be able to take every child this relay has.
    short = _reported(1, 0, max_children=2, children=(A(5), A(6), A(7)))
    crowded = dataclasses.replace(view([short, equal, A(9)], max_children=3), places=1)
    assert tree_module.offered_by(short) == 3
    assert tree_module.choose_swap(crowded, margin=10**12) is None


def test_the_rotation_needs_room_and_a_child_that_can_take_every_place_offered():
    v = dataclasses.replace(view([_reported(1, 0, max_children=1)], sent=10**6, max_children=3),
                            places=3)
    assert tree_module.choose_swap(v, margin=1) is None      # it holds one child, offers three
    able = dataclasses.replace(v, children={A(2): _reported(2, 0, max_children=3)})
    assert tree_module.choose_swap(able, margin=1) == A(2)
    assert tree_module.choose_swap(able, margin=1, room=False) is None


def test_the_new_holder_of_a_place_keeps_the_children_its_other_places_feed():
    kids = {A(1): ChildView(A(1), members=(A(4),)),
            A(2): ChildView(A(2), members=(A(5), A(6))),
            A(3): ChildView(A(3))}
    assert tree_module.keeps(kids, places=3, expected=1) == (A(2), A(1))
    assert tree_module.keeps(kids, places=2, expected=2) == ()
    assert tree_module.keeps(kids, places=1, expected=3) == ()


def test_choose_swap_not_while_detached():
    v = view([_reported(1, 0)], sent=10**6, attached=False)
    assert tree_module.choose_swap(v, margin=1) is None


def test_expected_swap_partner_accepted_while_detached_but_within_k():
    partner = A(7)
    v = dataclasses.replace(view([], attached=False), expected=frozenset({partner}))
    assert isinstance(decide_join(v, join(7)), AcceptJoin)
    assert not isinstance(decide_join(v, join(8)), AcceptJoin)
    full = dataclasses.replace(view([A(1), A(2)], attached=False), expected=frozenset({partner}))
    assert not isinstance(decide_join(full, join(7)), AcceptJoin)


def test_a_slot_kept_for_a_swap_partner_is_not_free():
    partner = A(7)
    v = dataclasses.replace(view([A(1)]), expected=frozenset({partner}))
    assert v.reserved == 1 and v.free == 0
    # A newcomer is pointed elsewhere; the partner gets the kept slot.
    assert not isinstance(decide_join(v, join(8)), AcceptJoin)
    assert isinstance(decide_join(v, join(7)), AcceptJoin)
    assert ME not in addrs(free_places(v))


def test_a_kept_slot_is_released_once_the_partner_arrived_or_is_above():
    arrived = dataclasses.replace(view([A(1), A(7)]), expected=frozenset({A(7)}))
    assert arrived.reserved == 0
    above = dataclasses.replace(view([A(1)], path=(A(100), A(7))), expected=frozenset({A(7)}))
    assert above.reserved == 0 and above.free == 1
    assert isinstance(decide_join(above, join(8)), AcceptJoin)


def _digest(first_byte: int) -> bytes:
    return bytes([first_byte]) + bytes(15)


def test_swaps_one_or_two_levels_apart_never_share_a_block_phase():
    for first in range(256):
        digest = _digest(first)
        swapping = [d for d in range(1, 13) if tree_module.may_swap(d, digest)]
        assert all(b - a >= 3 for a, b in zip(swapping, swapping[1:]))
        if tree_module.may_climb(digest):
            assert swapping == []


def test_every_depth_gets_a_phase_to_swap_in():
    for depth in range(1, 13):
        phases = {tree_module.block_phase(_digest(b)) for b in range(256)
                  if tree_module.may_swap(depth, _digest(b))}
        assert len(phases) == 1
    assert {tree_module.block_phase(_digest(b)) for b in range(256)
            if tree_module.may_climb(_digest(b))} == {0}


def test_a_move_waits_for_its_phase_then_goes_on_any_block():
    turn = tree_module.PhaseTurn()
    assert turn.turn(True)
    assert not any(turn.turn(False) for _ in range(tree_module.PHASE_PATIENCE))
    assert turn.turn(False)  # a short film may never bring this phase
    assert turn.turn(False)
    assert turn.turn(True)
    assert not turn.turn(False)


# -- member_parents and subtree: the whole subtree for the tree view ----------------------


def test_subtree_nests_each_member_under_the_parent_its_branch_reported():
    # ME -> 1 -> (3 -> 5), 4 ; ME -> 2
    one = ChildView(A(1), members=(A(3), A(4), A(5)), parents=(-1, -1, 0))
    v = view([one, ChildView(A(2))])
    assert members_below(v) == (A(1), A(2), A(3), A(4), A(5))
    assert tree_module.member_parents(v) == (-1, -1, 0, 0, 2)
    assert tree_module.subtree(v) == [
        {"addr": str(A(1)), "children": [
            {"addr": str(A(3)), "children": [{"addr": str(A(5)), "children": []}]},
            {"addr": str(A(4)), "children": []}]},
        {"addr": str(A(2)), "children": []}]


def test_members_of_a_report_without_parents_hang_under_the_child():
    v = view([ChildView(A(1), members=(A(3), A(4)))])
    assert tree_module.member_parents(v) == (-1, 0, 0)
    assert [n["addr"] for n in tree_module.subtree(v)[0]["children"]] == [str(A(3)), str(A(4))]


def test_a_lying_report_whose_parents_loop_draws_nothing_of_the_loop():
    v = view([ChildView(A(1), members=(A(3), A(4)), parents=(1, 0))])
    assert tree_module.subtree(v) == [{"addr": str(A(1)), "children": []}]
