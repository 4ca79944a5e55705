"""Finding a place in the tree, and leaving it: the join and rejoin policy of a client.

A mixin of :class:`client.node.Node`: these methods run on the node's
controller thread and use its state; the decisions themselves are the pure
functions of :mod:`client.tree`.
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from client import channels, placement, places, roles, tree
from client.delivery import SERVER
from client.inputs import USER_COMMANDS
from client.links import ANSWER_DEADLINE, NoJoinAnswer, ParentLink, ask, connect_from
from client.model import Rejoin, State
from client.peerproto import (MAX_WANT, VERSION, Accept, Addr, Bye, Candidate, FrameDecoder, Hello,
                              Info, Move, PeerProtocolError, Reject, Vouch, VouchAnswer)
from server import protocol as stock

log = logging.getLogger("client.node")

#: How many of its latest block identities a joiner sends (``Hello.have``).
HAVE_COUNT = 8
#: Peers remembered in status.json ``incompatible_peers`` (those that refused our version).
MAX_INCOMPATIBLE = 16

#: Sources that place our latest block asked for a gap before it is fetched (_fill_gap).
GAP_SOURCES = 2


def repair_sources(parent: Addr, path: tuple[Addr, ...], old_path: tuple[Addr, ...],
                   silent: Addr | None) -> list[Addr]:
    """Whom a newly attached client fetches what it missed from: its new parent, the
    parent's ancestors, then its own former ancestors (nearest first, each once).

    The former ones matter near the top: a client that takes a swap partner's
    place at depth 2 has one new ancestor only, and when that one failed the
    blocks were lost for its whole subtree. A parent lost to silence is left
    out (a frozen source stalls a fetch for seconds); a dead one refuses at once.
    """
    sources = []
    for addr in (parent, *reversed(path), *reversed(old_path)):
        if addr not in sources and addr != silent:
            sources.append(addr)
    return sources


class Joining:
    """Join, rejoin after a loss, move when told, leave."""

    def _orphaned(self, lost: Addr | None, cause: str, seeds=None, server_first=False,
                  insist: Addr | None = None, moved_by: Addr | None = None,
                  silent: bool = False) -> None:
        """Our parent is gone (``silent``: it went quiet, its socket is still open): search."""
        log.warning("%s: rejoining", cause)
        self.events.emit("rejoin", cause=cause, lost=lost, silent=silent, moved_by=moved_by)
        self._cancel_repair()
        with self._lock:
            link, self.parent_link = self.parent_link, None
            was_direct = self.parent == SERVER
            self.parent = None
            self.state = State.ORPHANED
            path, backup = self.path, self._backup
        if link is not None:
            link.close()
        if seeds is None:
            seeds = tree.rejoin_seeds(path, lost)
        self._write_status()
        self._find_place(cause, server_first=server_first or was_direct, seeds=seeds,
                         exclude=(lost,) if lost else (), backup=backup, insist=insist,
                         moved_by=moved_by, silent_parent=lost if silent else None)

    def _find_place(self, cause: str, server_first: bool, seeds=(), exclude=(),
                    backup: Candidate | None = None, insist: Addr | None = None,
                    moved_by: Addr | None = None, silent_parent: Addr | None = None) -> None:
        """Try places until one takes us (or we are stopping): the whole rejoin policy.

        The order is :func:`client.placement.search`'s; the children stay
        attached meanwhile.
        """
        rejoin = Rejoin(cause, time.monotonic(), time.time(), depth_before=self.depth,
                        silent_parent=silent_parent, sent_to=insist)
        with self._lock:
            self.rejoins.append(rejoin)
            self._pending_rejoin = rejoin
            self._channel_problem = self.problem = None
        how = self._search_place(rejoin, server_first, seeds, exclude, backup, insist, moved_by)
        if self._channel_problem is not None:
            self._give_up_channel(self._channel_problem)
            return
        with self._lock:
            if self.state in (State.DIRECT, State.ATTACHED):
                rejoin.depth_after = self.depth
        if rejoin.depth_after is not None:
            log.info("placed at depth %d (was %d; %s): %s", rejoin.depth_after,
                     rejoin.depth_before, how, cause)
            self.events.emit("attached", parent=self.parent, depth=rejoin.depth_after,
                             was=rejoin.depth_before, how=how, cause=cause)

    def _search_place(self, rejoin: Rejoin, server_first: bool, seeds, exclude,
                      backup: Candidate | None, insist: Addr | None,
                      moved_by: Addr | None) -> str | None:
        """Drive the search of :mod:`client.placement` until placed, stopping or asked otherwise.

        Each command is performed here, blocking (a connection, a server
        request, a pause); the user's quit, leave or channel switch ends the
        search before the next one. Returns how the place was found (None: not placed).
        """
        with self._lock:
            members = tree.members_below(self._relay_view())
        search = placement.search(self.me, self.config.period, server_first, seeds, exclude,
                                  backup, insist, moved_by, members)
        command = next(search)
        while not self._stopping.is_set() and not self._peek_command():
            if isinstance(command, placement.Placed):
                return command.how
            if isinstance(command, placement.TryJoin):
                answer = self._try_join(command.addr, rejoin, command.moved_by, command.insisted)
            elif isinstance(command, placement.TryServer):
                answer = (self._try_server(), self.server_reachable)
                if self._channel_problem is not None:
                    return None  # the server has no such channel (client.channels)
            elif isinstance(command, placement.StartRound):
                with self._lock:
                    answer = tree.members_below(self._relay_view())
            elif isinstance(command, placement.ProbeListed):
                answer = self._probe_listed((*command.members, *command.skip))
            else:
                self._stopping.wait(command.seconds)
                answer = None
            command = search.send(answer)
        return None

    def _peek_command(self) -> bool:
        """True when the user asked for something else (quit, leave, another channel).

        The event stays queued for the loop, which acts on it once the search returns.
        """
        with self._inputs.mutex:
            return any(isinstance(event, USER_COMMANDS) for event in self._inputs.queue)

    def _server_call(self, call, *args):
        """One request to the server; None when it failed (said once while the server is away)."""
        try:
            result = call(*args)
        except NoJoinAnswer:
            self._server_answered()
            raise
        except stock.ProtocolError as exc:
            self._server_answered()
            log.warning("server %s:%d: %s", self.server.host, self.server.port, exc)
            return None
        except OSError as exc:
            self._server_unreachable(exc)
            return None
        self._server_answered()
        return result

    def _server_unreachable(self, exc: OSError) -> None:
        with self._lock:
            first, self.server_reachable = self.server_reachable, False
            self.server_failures += 1
        if first:
            log.warning("the server %s:%d is not reachable (%s): still trying, "
                        "quietly, with a growing pause", self.server.host, self.server.port, exc)
        else:
            log.debug("server %s:%d still not reachable: %s", self.server.host, self.server.port, exc)
        self._write_status()

    def _server_answered(self) -> None:
        with self._lock:
            back, failures = not self.server_reachable, self.server_failures
            self.server_reachable, self.server_failures = True, 0
        if back:
            log.info("the server %s:%d answers again (after %d failed request(s))",
                     self.server.host, self.server.port, failures)
            self._write_status()

    def _try_server(self) -> bool:
        with self._lock:
            off_server = self.shedding.off_server(time.monotonic())
        if off_server:
            return False  # gave its slot up for a client that can relay (client.upkeep)
        try:
            joined = self._server_call(self.server.join, self.config.channel, self._join_answers)
        except NoJoinAnswer as exc:
            self._no_join_answer(exc)
            return False
        if not joined:
            return False
        with self._deliver_lock, self._lock:
            self._former_path = self.path   # asked too for what was missed (_server_gap)
            self._cut_short = b""
            self.state, self.parent, self.path, self.depth = State.DIRECT, SERVER, (), 1
            self.parent_link = None
            self.moves.moved(time.monotonic())
            self._server_member = True
            self._last_server_block = time.monotonic()
            # The gap is looked for once the server's first block is in (the gate
            # holds it): asked sooner, the other direct clients may still be
            # receiving the very block this client missed, and would say none was.
            resumed = len(self.window) > 0
            self.gate.follow(SERVER, skip=self.window.latest_digests(3), gap_check=resumed,
                             gap_waits_for_server=resumed)
        log.info("direct client of the server %s:%d, channel %d", self.server.host,
                 self.server.port, self.config.channel)
        self._tell_children_path()
        self._write_status()
        return True

    def _no_join_answer(self, exc: NoJoinAnswer) -> None:
        """The server took our join and said nothing: is the channel one it has (``13X``)?"""
        try:
            problem = channels.missing_channel(self.server, self.config.channel)
        except (OSError, stock.ProtocolError) as error:
            problem = None
            log.warning("server %s:%d: %s; and the count request failed: %s",
                        self.server.host, self.server.port, exc, error)
        if problem is None:
            log.warning("server %s:%d: %s", self.server.host, self.server.port, exc)
        with self._lock:
            self._channel_problem = problem

    def _give_up_channel(self, problem: str) -> None:
        """The channel is not one the server has: leave it and wait, idle, for another."""
        log.error("%s: leaving it", problem)
        self._leave()
        with self._lock:
            self.state = State.IDLE
            self.problem = problem
            if self._wanted_channel == self.config.channel:
                self._wanted_channel = None
        self._write_status()

    def _server_gap(self) -> None:
        """The server's first block is held: fetch what was missed on the way to the server.

        By now the other direct clients had a whole period to store the
        block of the round this client joined too late for.
        """
        with self._lock:
            if self.parent != SERVER or not self.gate.gap_check:
                return
            former = list(reversed(self._former_path))
        # The other direct clients may be as new as this one (both slots changed hands at
        # once): its former ancestors had the block of the round it missed (measured).
        self._fill_gap("on the way to the server", [*self._listed_direct_clients(), *former],
                       SERVER)

    def _listed_direct_clients(self) -> list[Addr]:
        ips = self._server_call(self.server.clients, self.config.channel) or []
        return [Addr(ip, self.config.peer_port) for ip in ips]

    def _fill_gap(self, why: str, sources, parent) -> None:
        """Fetch the blocks we missed that our new parent cannot name.

        The server sends nothing old, and a parent whose recent window does
        not reach back to our latest block (a newcomer) resumes us live: a
        block sent meanwhile would be missing here and in our whole subtree.
        ``sources`` (other direct clients, or the new parent's ancestors)
        are asked in turn, with a probe that carries our latest blocks, until
        :data:`GAP_SOURCES` of them place it; the longest list of blocks after
        ours that one names is fetched from all of them. One is not enough: a
        source with a hole of its own names the blocks around it, not the one
        it lacks. Live blocks wait (the gate's ``gap_check``) meanwhile.
        """
        with self._lock:
            probe = Hello("probe", self.me, self.config.channel,
                          have=self.window.latest_digests(HAVE_COUNT), have_seq=max(self.gate.seq, 0))
            members = set(tree.members_below(self._relay_view()))
        missing, found = [], []
        for addr in dict.fromkeys(sources):
            if addr == self.me or addr in members or addr == parent:
                continue
            info = self._ask(addr, probe)
            if isinstance(info, Info) and info.after is not None:
                with self._lock:
                    ours = set(self.window.latest_digests(self.window.capacity))
                named = [d for d in info.missing if d not in ours]
                if len(named) > len(missing):   # the fullest window, in its play order
                    missing = named
                found.append(addr)
                if len(found) >= GAP_SOURCES:
                    break
        with self._deliver_lock, self._lock:
            if missing and self.parent == parent:
                log.info("missed %d block(s) %s: fetching them from %s", len(missing), why,
                         ", ".join(map(str, found)))
                self.events.emit("gap", kind="server" if parent == SERVER else "window",
                                 count=len(missing), sources=found)
                job = self._repair_job(missing, found, self._pending_rejoin)
                # The parent may still send the newest of them: they are skipped then.
                self.gate.gap_checked(time.time(), job, missing)
                job.start()
                return
            self._perform(self.gate.gap_checked(time.time()))

    def _leave_server(self) -> None:
        """Free our slot at the server (``12X``) if it still counts us as a client."""
        with self._lock:
            member, self._server_member = self._server_member, False
        if member:
            self._server_call(self.server.leave, self.config.channel)

    def _probe_listed(self, members) -> list[Candidate]:
        """Ask each direct client the server lists where the free places are."""
        ips = self._server_call(self.server.clients, self.config.channel) or []
        found: list[Candidate] = []
        for ip in ips:
            addr = Addr(ip, self.config.peer_port)
            if addr == self.me or addr in members:
                continue
            info = self._ask(addr, Hello("probe", self.me, self.config.channel))
            if isinstance(info, Info) and info.attached:
                found.append(Candidate(addr, info.depth, info.free, info.sent))
                found.extend(info.candidates)
        return found

    def _ask(self, addr: Addr, question):
        """One question, one answer (within :data:`~client.links.ANSWER_DEADLINE`), connection closed."""
        role = roles.ASKER[roles.frame_name(question)]
        try:
            with connect_from(self.config.ip, addr.ip, addr.port, 2.0) as sock:
                answer = ask(sock, roles.Conversation(role, roles.PEER), question,
                             time.monotonic() + ANSWER_DEADLINE)
        except socket.timeout:
            self._cut_at_deadline(role, addr)
            return None
        except (OSError, EOFError, PeerProtocolError) as exc:
            log.info("peer %s: %s", addr, exc)
            return None
        except roles.OwnViolation:  # a bug of ours: said with its traceback, the search goes on
            log.exception("question to %s not asked", addr)
            return None
        self._check_version_refusal(addr, answer)
        return answer

    def _cut_at_deadline(self, role: roles.Role, addr: Addr) -> None:
        """A peer did not answer (or connect) in time: counted by role for status.json."""
        log.info("peer %s: no whole %s answer within %.1f s", addr, role.name, ANSWER_DEADLINE)
        with self._lock:
            cut = self.counters.cut_at_deadline
            cut[role.name] = cut.get(role.name, 0) + 1

    def _check_version_refusal(self, addr: Addr, answer) -> None:
        """A peer that refused our protocol version: said to the user (status.json)."""
        if not isinstance(answer, Reject) or answer.version is None:
            return
        log.warning("peer %s speaks protocol version %d, this client %d: %s", addr,
                    answer.version, VERSION, answer.reason)
        with self._lock:
            peers = self.counters.incompatible_peers
            peers.pop(str(addr), None)
            peers[str(addr)] = answer.version
            while len(peers) > MAX_INCOMPATIBLE:
                del peers[next(iter(peers))]

    def _try_join(self, addr: Addr, rejoin: Rejoin, moved_by: Addr | None = None,
                  insisted: bool = False):
        """Ask ``addr`` to be our parent; True once attached, else its answer.

        ``insisted``: ``addr`` is the place we were sent to (a swap partner, or
        where a leaving parent sent us).
        """
        if self._is_distrusted(addr):
            return None  # caught lying lately (client.verify)
        with self._lock:
            have = self.window.latest_digests(HAVE_COUNT)
            catch_up = 0 if have else min(int(self.config.catch_up_seconds / self.config.period),
                                          self.window.capacity, MAX_WANT)
            hello = Hello("join", self.me, self.config.channel, self._can_take(),
                          have=have, have_seq=max(self.gate.seq, 0),
                          subtree=tree.members_below(self._relay_view()),
                          catch_up=catch_up, moved_by=moved_by, lost=rejoin.silent_parent)
        decoder = FrameDecoder()
        talk = roles.Conversation(roles.JOIN, roles.PEER)  # what may come back (client.roles)
        try:
            sock = connect_from(self.config.ip, addr.ip, addr.port, 2.0)
        except OSError as exc:
            log.info("cannot reach %s: %s", addr, exc)
            return None
        try:
            answer = ask(sock, talk, hello, time.monotonic() + ANSWER_DEADLINE, decoder)
        except socket.timeout:
            self._cut_at_deadline(roles.JOIN, addr)
            sock.close()
            return None
        except (OSError, EOFError, PeerProtocolError, roles.OwnViolation) as exc:
            if isinstance(exc, roles.OwnViolation):
                log.exception("join at %s not asked", addr)
            else:
                log.info("join at %s failed: %s", addr, exc)
            sock.close()
            return None
        if not isinstance(answer, Accept):
            sock.close()
            if isinstance(answer, Reject):
                log.info("%s refused us: %s", addr, answer.reason)
                self._check_version_refusal(addr, answer)
            return answer
        if self.me in answer.path:
            log.warning("%s would put us under ourselves: refused", addr)
            sock.close()
            return None
        problem = self._place_problem(addr, answer)
        if problem is not None:
            sock.close()
            if not answer.path and insisted:
                # Sent here by a swap or a leaving parent: a partner taking a server slot
                # accepts its partners a few milliseconds before the server lists it.
                # Not a lie (yet): refused for now, and asked again (client.placement).
                log.info("place at %s not verified yet (%s): asking again", addr, problem)
                return Reject(f"place not verified yet: {problem}")
            if not answer.path and addr == rejoin.sent_to:
                # Still not listed once the insisting is over: the partner lost the race
                # for the slot (another client's join came first). Honest, and unplaced.
                log.info("place at %s not verified (%s): refused", addr, problem)
                return None
            if not answer.path:  # a false depth-1 claim: a lie of the offering relay alone
                self._distrust(addr, f"{problem}: place refused")
            else:
                log.warning("place at %s not verified (%s): refused", addr, problem)
            return None
        link = ParentLink(sock, decoder, addr, self.config.parent_silence,
                          self._on_parent_message, self._on_parent_lost, talk,
                          keepalive=self.config.keepalive_interval)
        self._leave_server()
        with self._deliver_lock, self._lock:
            self.parent, self.parent_link, self.state = addr, link, State.ATTACHED
            self.moves.moved(time.monotonic())
            old_path = self.path
            self.path, self.depth = answer.path + (addr,), answer.depth + 1
            self._backup = self._advice = None  # the new parent will advise
            latest = self.window.latest_digests(1)
            rejoin.resumed_after_latest = bool(latest) and answer.after == latest[0]
            # A parent that cannot place our latest block: ask further up.
            gap_check = bool(latest) and not answer.after
            if answer.after:
                skip = self.window.since(answer.after)
                missing = [d for d in answer.missing if d not in set(skip)]
            else:
                skip = list(self.window.latest_digests(3))
                missing = [] if latest else list(answer.missing)
            # The beginning of our next block, if our lost parent was sending it: when it is
            # the first we miss, only its rest is fetched.
            held, self._cut_short = self._cut_short, b""
            if not rejoin.resumed_after_latest:
                held = b""
            self.gate.follow(link, skip, gap_check=gap_check)
            if missing:
                job = self._repair_job(missing, repair_sources(addr, answer.path, old_path,
                                                               rejoin.silent_parent), rejoin, held)
                self.gate.start_repair(job)
                job.start()
        link.start()
        log.info("attached to %s at depth %d", addr, self.depth)
        if gap_check:
            self._fill_gap(f"before {addr}'s window", [*reversed(answer.path)]
                           or self._listed_direct_clients(), addr)
        self._tell_children_path()
        self._report_to_parent()
        self._write_status()
        return True

    def _place_problem(self, addr: Addr, answer: Accept) -> str | None:
        """Why the place ``addr`` accepts us at is not verified (:mod:`client.places`)."""
        if not self.config.verify:
            return None
        links = places.vouch_links(addr, answer.path)
        with ThreadPoolExecutor(1 + len(links), thread_name_prefix="place-check") as pool:
            listed = pool.submit(self._server_call, self.server.clients, self.config.channel)
            asked = {link: pool.submit(self._vouch, *link) for link in links}
        return places.place_problem(addr, answer.depth, answer.path, listed.result(),
                                    lambda ancestor, child: asked[ancestor, child].result())

    def _vouch(self, ancestor: Addr, child: Addr) -> bool | None:
        """Does ``ancestor`` say ``child`` is its child now (None: no answer)?"""
        reply = self._ask(ancestor, Vouch(self.config.channel, child))
        return reply.yes if isinstance(reply, VouchAnswer) else None

    def _leave(self) -> None:
        """Tell the server, the parent and the children, then close every link."""
        self._cancel_repair()
        with self._lock:
            self.state = State.LEAVING
            was_direct = self.parent == SERVER
            link, self.parent_link, self.parent = self.parent_link, None, None
            path, self.path, self.depth = self.path, (), 0
            children = list(self.children.values())
        self._leave_server()
        if link is not None:
            link.send(Bye())
            link.close()
        move = Move(path, server=was_direct or not path)
        for child in children:
            child.enqueue(move)
        for child in children:
            child.close()
            self._forget_child(child, "handed over")
        log.info("left channel %d (%d children handed over)", self.config.channel, len(children))
        self._write_status()
