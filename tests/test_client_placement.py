"""The search for a place (client.placement), driven by a scripted world: the exact commands, in order."""

from client import placement
from client.peerproto import Addr, Candidate, Redirect, Reject
from client.placement import Pause, Placed, ProbeListed, StartRound, TryJoin, TryServer

PERIOD = 2.0
ME = Addr("127.0.9.250", 7092)


def addr(n: int) -> Addr:
    return Addr(f"127.0.9.{n}", 7092)


class World:
    """Answers the search's commands: who takes us, what the server and the probes say."""

    def __init__(self, takes=(), answers=None, server_joins=False, listed=(), members=(),
                 reachable=True):
        self.takes = set(takes)
        self.answers = answers or {}   # addr -> list of answers given in turn (then None)
        self.server_joins = server_joins
        self.listed = list(listed)
        self.members = frozenset(members)
        self.reachable = reachable
        self.log: list = []

    def run(self, search, limit: int = 200):
        command = next(search)
        for _ in range(limit):
            self.log.append(command)
            if isinstance(command, Placed):
                return command
            command = search.send(self.answer(command))
        return None

    def answer(self, command):
        if isinstance(command, TryJoin):
            if command.addr in self.takes:
                return True
            queued = self.answers.get(command.addr)
            return queued.pop(0) if queued else None
        if isinstance(command, TryServer):
            return self.server_joins, self.reachable
        if isinstance(command, StartRound):
            return self.members
        if isinstance(command, ProbeListed):
            return self.listed
        return None


def test_a_new_client_asks_the_server_first_and_is_placed_there():
    world = World(server_joins=True)
    assert world.run(placement.search(ME, PERIOD, server_first=True)) == Placed("server")
    assert world.log == [StartRound(), TryServer(), Placed("server")]


def test_under_a_full_server_the_probed_places_are_tried_shallowest_and_free_first():
    listed = [Candidate(addr(2), 2, 0, 10), Candidate(addr(3), 1, 1, 50), Candidate(addr(4), 1, 1, 5)]
    world = World(takes=[addr(2)], listed=listed)
    assert world.run(placement.search(ME, PERIOD, server_first=True)) == Placed("search")
    assert world.log == [StartRound(), TryServer(), ProbeListed(frozenset()),
                         TryJoin(addr(4)), TryJoin(addr(3)), TryJoin(addr(2)), Placed("search")]


def test_a_redirect_adds_the_places_it_names():
    world = World(takes=[addr(7)],
                  answers={addr(3): [Redirect((Candidate(addr(7), 2, 1, 0),))]},
                  listed=[Candidate(addr(3), 1, 0, 0)])
    world.run(placement.search(ME, PERIOD, server_first=False))
    assert [c.addr for c in world.log if isinstance(c, TryJoin)] == [addr(3), addr(7)]
    assert TryServer() not in world.log  # a tree client asks the server after the tree


def test_an_orphan_tries_its_ancestors_first_never_its_dead_parent_nor_its_own_subtree():
    seeds = [Candidate(addr(2), 2, 1, 0), Candidate(addr(1), 1, 1, 0), Candidate(addr(5), 1, 1, 0)]
    world = World(takes=[addr(1)], members=[addr(5)])
    world.run(placement.search(ME, PERIOD, server_first=False, seeds=seeds, exclude=[addr(2)]))
    assert [c.addr for c in world.log if isinstance(c, TryJoin)] == [addr(1)]


def test_the_place_we_were_sent_to_is_asked_again_while_it_gets_ready():
    world = World(answers={addr(6): [Reject("busy"), Redirect(()), True]})
    result = world.run(placement.search(ME, PERIOD, server_first=False, insist=addr(6),
                                        moved_by=addr(2)))
    assert result == Placed("insisted")
    assert world.log == [TryJoin(addr(6), addr(2), True), Pause(PERIOD / 20), TryJoin(addr(6), addr(2), True),
                         Pause(PERIOD / 20), TryJoin(addr(6), addr(2), True), Placed("insisted")]


def test_an_unreachable_insisted_place_is_given_up_at_once_for_the_backup():
    backup = Candidate(addr(8), 2, 1, 0)
    world = World(takes=[addr(8)])
    result = world.run(placement.search(ME, PERIOD, server_first=False, insist=addr(6),
                                        backup=backup))
    assert result == Placed("backup")
    assert world.log == [TryJoin(addr(6), insisted=True), TryJoin(addr(8)), Placed("backup")]


def test_the_insisted_place_is_asked_a_bounded_number_of_times():
    world = World(answers={addr(6): [Reject("full")] * 50}, server_joins=True)
    world.run(placement.search(ME, PERIOD, server_first=False, insist=addr(6)))
    assert world.log.count(TryJoin(addr(6), insisted=True)) == placement.INSIST_TRIES


def test_a_backup_in_our_own_subtree_is_not_asked():
    world = World(members=[addr(8)], server_joins=True)
    world.run(placement.search(ME, PERIOD, server_first=True, backup=Candidate(addr(8), 2, 1, 0),
                               members=[addr(8)]))
    assert TryJoin(addr(8)) not in world.log


def test_nothing_free_pauses_longer_each_round_up_to_a_period_and_the_dead_parent_is_retried():
    world = World(listed=[])
    seeds = [Candidate(addr(2), 1, 1, 0)]
    assert world.run(placement.search(ME, PERIOD, server_first=False, seeds=seeds,
                                      exclude=[addr(2)]), limit=40) is None
    pauses = [c.seconds for c in world.log if isinstance(c, Pause)]
    assert pauses[:4] == [0.5, 1.0, 2.0, 2.0]
    # Round one skips the lost parent, probes included; from round two on it is asked again.
    first_round = world.log[:world.log.index(Pause(0.5))]
    assert TryJoin(addr(2)) not in first_round
    assert ProbeListed(frozenset(), (addr(2),)) in first_round
    assert TryJoin(addr(2)) in world.log[len(first_round):]
    assert ProbeListed(frozenset(), ()) in world.log[len(first_round):]


def test_while_the_server_is_unreachable_the_pause_grows_to_four_periods():
    world = World(reachable=False)
    world.run(placement.search(ME, PERIOD, server_first=True), limit=60)
    pauses = [c.seconds for c in world.log if isinstance(c, Pause)]
    assert pauses[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_members_are_read_anew_each_round():
    search = placement.search(ME, PERIOD, server_first=False)
    assert next(search) == StartRound()
    assert search.send(frozenset()) == ProbeListed(frozenset())
    assert search.send([]) == TryServer()
    assert search.send((False, True)) == Pause(0.5)
    assert search.send(None) == StartRound()
    # addr(3) joined our subtree meanwhile: the probe answer naming it is not tried.
    assert search.send(frozenset({addr(3)})) == ProbeListed(frozenset({addr(3)}))
    assert search.send([Candidate(addr(3), 1, 1, 0)]) == TryServer()
