"""The per-link role tables (:mod:`client.roles`) and the whole-operation deadlines.

Pure tests of the tables first (every frame in some role, each table takes
exactly what it lists, a violation names role, state and frame), then the
thin adapters that use them over socket pairs and loopback sockets, with a
peer or a server that trickles one byte at a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from bench.cluster import Cluster, next_address, session_ports, wait_until
from client import roles
from client.fetcher import RepairJob
from client.links import ANSWER_DEADLINE, ParentLink, StockServer, ask, read_message_by
from client.peerproto import (HEADER, JSON_MESSAGES, PART_BOUNDS, VERSION, Accept, Addr, Advice,
                              Block, BlockAbort, BlockEnd, BlockPart, BlockStart, BlockTail, Bye,
                              Drop, FetchEnd, FrameDecoder, Hello, Info, Keepalive, LibraryEnd,
                              LibraryFetch, Move, PathUpdate, PeerProtocolError, Redirect, Reject,
                              Report, Swap, SwapAnswer, TreeAnswer, TreeQuery, VersionMismatch,
                              Vouch, VouchAnswer, DigestQuery, DigestAnswer, encode)
from client.repair import RepairPlan
from server import protocol as stock

A = Addr("10.0.0.1", 9092)
B = Addr("10.0.0.2", 9092)

#: One frame of each name a table knows.
SAMPLES = {
    "Hello(join)": Hello("join", A, 0), "Hello(probe)": Hello("probe", A, 0),
    "Hello(fetch)": Hello("fetch", A, 0), "Accept": Accept(1), "Redirect": Redirect(()),
    "Reject": Reject("no"), "Block": Block.of(1, b"x"), "Keepalive": Keepalive(),
    "PathUpdate": PathUpdate(1, ()), "Move": Move(()), "Drop": Drop("slow"), "Bye": Bye(),
    "Report": Report(0, 0), "Info": Info(True, 1, 0, 0), "Advice": Advice(),
    "FetchEnd": FetchEnd(), "Swap": Swap(B, (), ()), "SwapAnswer": SwapAnswer(True),
    "TreeQuery": TreeQuery(0), "TreeAnswer": TreeAnswer(), "LibraryFetch":
    LibraryFetch(A, "0123456789abcdef", (0,)), "LibraryEnd": LibraryEnd(), "Vouch": Vouch(0, B),
    "VouchAnswer": VouchAnswer(True), "DigestQuery": DigestQuery(0, (bytes(16),)),
    "DigestAnswer": DigestAnswer(), "BlockStart": BlockStart(1), "BlockPart": BlockPart(b"x"),
    "BlockEnd": BlockEnd(1, bytes(16)), "BlockAbort": BlockAbort("short"),
    "BlockTail": BlockTail(1, bytes(16), 1, b"x"),
}


# ------------------------------------------------------------------- tables

def test_the_samples_are_every_frame_name():
    assert set(SAMPLES) == roles.FRAME_NAMES
    assert {roles.frame_name(m) for m in SAMPLES.values()} == roles.FRAME_NAMES


def test_every_peer_frame_type_may_arrive_in_some_role():
    allowed = {name for role in roles.ROLES.values() for moves in role.table.values()
               for name in moves}
    types = {type(SAMPLES[name]).TYPE for name in allowed}
    assert types == {*JSON_MESSAGES, Block.TYPE, *PART_BOUNDS}
    assert allowed == roles.FRAME_NAMES        # every Hello kind too


@pytest.mark.parametrize("role", roles.ROLES.values(), ids=lambda r: r.name)
def test_each_table_takes_exactly_what_it_lists(role):
    for state, moves in role.table.items():
        for name, message in SAMPLES.items():
            if name in moves:
                assert role.next(state, message) == moves[name]
            else:
                with pytest.raises(roles.ProtocolViolation) as caught:
                    role.next(state, message)
                assert (caught.value.role, caught.value.state, caught.value.frame,
                        caught.value.blame) == (role.name, state, name, "peer")
    with pytest.raises(roles.ProtocolViolation):   # nothing arrives once it is over
        role.next(roles.DONE, Keepalive())


def test_a_violation_names_role_state_and_frame_and_is_a_peer_protocol_error():
    talk = roles.Conversation(roles.PEER)
    talk.received(Hello("join", A, 0))
    with pytest.raises(PeerProtocolError) as caught:
        talk.received(Block.of(1, b"x"))        # a child may not send blocks
    exc = caught.value
    assert isinstance(exc, roles.ProtocolViolation)
    assert (exc.role, exc.state, exc.frame, exc.blame) == ("peer", "child", "Block", "peer")
    assert "peer" in str(exc) and "child" in str(exc) and "Block" in str(exc)


def test_what_we_send_is_checked_against_the_peers_role_and_blamed_on_us():
    talk = roles.Conversation(roles.PEER)
    talk.received(Hello("probe", A, 0))
    talk.answering(Hello("probe", A, 0))
    assert talk.theirs is roles.PROBE
    with pytest.raises(roles.OwnViolation) as caught:
        talk.sending(Accept(1))                  # a probe is answered with an Info
    assert (caught.value.role, caught.value.state, caught.value.frame,
            caught.value.blame) == ("probe", "asked", "Accept", "us")
    assert not isinstance(caught.value, PeerProtocolError)   # no handler blames the peer
    talk.sending(Info(True, 1, 0, 0))
    assert talk.their_state == roles.DONE


def test_a_join_becomes_a_parent_link_and_a_child_link_on_each_side():
    joiner = roles.Conversation(roles.JOIN, roles.PEER)
    relay = roles.Conversation(roles.PEER)
    hello = Hello("join", A, 0)
    joiner.sending(hello)
    relay.received(hello)
    relay.answering(hello)
    for message in (Accept(1), Block.of(1, b"x"), Keepalive(), Swap(None, (), (), server=True)):
        relay.sending(message)
        joiner.received(message)
    for message in (Report(0, 0), SwapAnswer(False), Bye()):
        joiner.sending(message)
        relay.received(message)
    assert (joiner.state, relay.state) == ("attached", roles.DONE)
    with pytest.raises(roles.ProtocolViolation):
        joiner.received(Accept(1))               # once attached, no second Accept


def test_a_block_in_parts_has_a_start_parts_and_one_end_and_control_frames_may_interleave():
    link = roles.Conversation(roles.PARENT)
    for message in (BlockStart(1), BlockPart(b"a"), Keepalive(), Advice(), BlockPart(b"b"),
                    BlockEnd(2, bytes(16)), Block.of(2, b"x"), BlockStart(3), BlockAbort("cut")):
        link.received(message)
    assert link.state == "attached"
    for wrong in (BlockPart(b"a"), BlockEnd(1, bytes(16)), BlockAbort("none begun")):
        with pytest.raises(roles.ProtocolViolation):     # no block begun
            roles.Conversation(roles.PARENT).received(wrong)
    for wrong in (BlockStart(2), Block.of(2, b"x")):
        inside = roles.Conversation(roles.PARENT)
        inside.received(BlockStart(1))
        with pytest.raises(roles.ProtocolViolation):     # two blocks never interleave
            inside.received(wrong)


def test_the_tables_refuse_unknown_names():
    with pytest.raises(ValueError):
        roles.Role("bad", "s", {"s": {"Helo": roles.DONE}}, "a typo")
    with pytest.raises(ValueError):
        roles.Role("bad", "s", {"s": {"Bye": "nowhere"}}, "a missing state")


def test_the_docs_draw_each_role_from_its_table():
    import importlib.util
    from bench.cluster import REPO
    spec = importlib.util.spec_from_file_location("relaytv_docs",
                                                  REPO / "docs" / "_ext" / "relaytv_docs.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    for role in roles.ROLES.values():
        dot = docs.role_dot(role)
        for state, moves in role.table.items():
            assert f'[label="{state}"]' in dot
            for frame in moves:
                assert frame in dot, (role.name, frame)


# ------------------------------------------------------- version handshake

def _frame(kind: int, obj: dict) -> bytes:
    payload = json.dumps(obj).encode()
    return HEADER.pack(kind, len(payload)) + payload


def test_a_hello_of_another_version_is_a_version_mismatch_naming_it():
    hello = Hello("join", A, 0).to_json() | {"version": VERSION + 1, "kind": "join-v9", "have": 7}
    decoder = FrameDecoder()
    decoder.feed(_frame(Hello.TYPE, hello))
    with pytest.raises(VersionMismatch) as caught:   # before any other field is read
        decoder.next_message()
    assert caught.value.theirs == VERSION + 1
    fetch = LibraryFetch(A, "0123456789abcdef", (0,)).to_json() | {"version": VERSION + 2}
    decoder.feed(_frame(LibraryFetch.TYPE, fetch))
    with pytest.raises(VersionMismatch):
        decoder.next_message()


def test_the_version_refusal_is_a_reject_every_client_decodes():
    refusal = roles.version_refusal(VERSION + 1)
    assert refusal.version == VERSION and str(VERSION + 1) in refusal.reason
    assert f"version {VERSION}" in refusal.reason
    decoder = FrameDecoder()
    decoder.feed(encode(refusal))
    assert decoder.next_message() == refusal
    obj = json.loads(encode(refusal)[HEADER.size:])
    assert Reject.from_json({"reason": obj["reason"]}).reason == refusal.reason  # what v1 reads
    assert encode(Reject("x")) == b'\x04\x00\x00\x00\x0e{"reason":"x"}'          # unchanged
    for role in (roles.JOIN, roles.PROBE, roles.VOUCH, roles.TREE, roles.FETCH, roles.LIBRARY):
        assert role.next(role.start, refusal) == roles.DONE


# ------------------------------------------------------------ adapters

def test_a_parent_that_sends_what_a_child_sends_is_lost_for_a_protocol_error():
    mine, theirs = socket.socketpair()
    lost, got = [], []
    done = threading.Event()
    talk = roles.Conversation(roles.JOIN, roles.PEER, our_state="attached", their_state="child")
    link = ParentLink(mine, FrameDecoder(), B, 5.0, lambda _l, m: got.append(m),
                      lambda _l, why: (lost.append(why), done.set()), talk)
    link.start()
    with theirs:
        theirs.sendall(encode(Keepalive()) + encode(Report(0, 0)))
        assert done.wait(5)
    link.close()
    assert got == [Keepalive()]
    assert "protocol error" in lost[0] and "Report" in lost[0]


def test_the_parent_link_refuses_to_send_what_a_child_may_not(caplog):
    mine, theirs = socket.socketpair()
    talk = roles.Conversation(roles.JOIN, roles.PEER, our_state="attached", their_state="child")
    link = ParentLink(mine, FrameDecoder(), B, 5.0, lambda *a: None, lambda *a: None, talk)
    with theirs:
        assert link.send(Report(0, 0))
        assert not link.send(Block.of(1, b"x"))          # our bug: logged with its traceback
        assert any(r.exc_info and isinstance(r.exc_info[1], roles.OwnViolation)
                   for r in caplog.records)
        theirs.settimeout(1)
        assert read_message_by(theirs, FrameDecoder(), time.monotonic() + 1) == Report(0, 0)
    mine.close()


def test_ask_bounds_the_whole_answer_with_a_fake_clock():
    now = [0.0]
    mine, theirs = socket.socketpair()
    with mine, theirs:
        theirs.sendall(encode(Info(True, 1, 0, 0))[:4])
        now[0] = 10.0                                   # the deadline passed meanwhile
        with pytest.raises(socket.timeout):
            ask(mine, roles.Conversation(roles.PROBE, roles.PEER), Hello("probe", A, 0),
                deadline=3.0, clock=lambda: now[0])


class Trickler:
    """A listener on a loopback address that answers each connection one byte a second."""

    def __init__(self, answer: bytes, interval: float = 1.0):
        self.ip, self.port = next_address(), session_ports().peer
        self.answer, self.interval = answer, interval
        self.sock = socket.create_server((self.ip, self.port))
        self.sock.settimeout(0.1)   # (a closed listener does not wake accept(): look again)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn):
        with conn:
            for byte in self.answer:
                if self.stopping.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def test_a_repair_source_that_trickles_is_cut_at_the_jobs_deadline():
    block = Block.of(7, b"y" * 1000)
    source = Trickler(encode(block) + encode(FetchEnd()))
    try:
        plan = RepairPlan([block.digest], [Addr(source.ip, source.port)], time.monotonic(),
                          stall_after=1.5)
        got, done = [], threading.Event()
        job = RepairJob(plan, Addr("127.0.0.1", 1), 0, lambda d, b: got.append(b),
                        lambda j: done.set(), deadline=2.0)
        started = time.monotonic()
        job.start()
        assert done.wait(10)
        took = time.monotonic() - started
        job.join()
    finally:
        source.close()
    assert got == [None]                    # lost: the trickle never gave the whole block
    assert took < 4.0, took                 # (bytes kept coming: no stall; the deadline cut it)


def test_a_server_that_trickles_its_list_is_cut_at_the_requests_deadline():
    server = Trickler(b"['127.0.0.2', '127.0.0.3']", interval=0.5)
    try:
        stock = StockServer(server.ip, server.port, "127.0.0.1", timeout=1.5)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            stock.clients(0)
        took = time.monotonic() - started
    finally:
        server.close()
    assert took < 2.5, took


# ------------------------------------------------------ real processes

PERIOD = 0.5


def status(proc) -> dict:
    return Cluster.status_of(proc) or {}


class FakeDirect:
    """A direct client of the server that is a bad peer: it takes a slot (``10X``),
    drains the server's pushes, and answers every peer connection with ``answer(first)``
    sent one byte every ``interval`` seconds (0: at once)."""

    def __init__(self, server_ip: str, answer, interval: float = 0.0):
        self.ip, self.ports = next_address(), session_ports()
        self.answer, self.interval = answer, interval
        self.stopping = threading.Event()
        self.listeners = [socket.create_server((self.ip, p)) for p in (self.ports.push,
                                                                         self.ports.peer)]
        self.threads = [threading.Thread(target=self._accept, args=(sock, handle), daemon=True)
                        for sock, handle in zip(self.listeners, (self._drain, self._answer))]
        for sock in self.listeners:
            sock.settimeout(0.1)
        for thread in self.threads:
            thread.start()
        with socket.create_connection((server_ip, self.ports.server), 5,
                                      source_address=(self.ip, 0)) as sock:
            sock.sendall(stock.encode_request(stock.JOIN, 0))

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.ports.peer}"

    def _accept(self, listener, handle):
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def _answer(self, conn):
        with conn:
            try:
                first = read_message_by(conn, FrameDecoder(), time.monotonic() + 5)
                data = encode(self.answer(first))
                step = 1 if self.interval else len(data)
                for start in range(0, len(data), step):
                    if self.interval and self.stopping.wait(self.interval):
                        return
                    conn.sendall(data[start:start + step])
                conn.settimeout(5)
                conn.recv(1)
            except (OSError, EOFError, PeerProtocolError):
                pass

    def close(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        for sock in self.listeners:
            sock.close()


def start_tree(cluster, fake_answer, interval: float = 0.0):
    """A server with two slots: a fake direct client in one, client A in the other;
    then client B, which the full server sends into the tree (it probes both)."""
    server = cluster.start_server(max_clients=2, period=PERIOD)
    wait_until(lambda: _listening(server.ip, cluster.ports.server), 20, "the server")
    fake = FakeDirect(server.ip, fake_answer, interval)
    a = cluster.start_client(server, period=PERIOD)
    wait_until(lambda: status(a).get("state") == "direct", 20, "A to be a direct client")
    b = cluster.start_client(server, period=PERIOD)
    return fake, a, b


def _listening(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), 1).close()
        return True
    except OSError:
        return False


def test_a_hello_of_the_next_version_is_answered_and_a_version_refusal_is_shown(cluster):
    future = VERSION + 1
    fake, a, b = start_tree(cluster, lambda first: Reject(f"protocol version {VERSION} is not "
                                                          "supported here: this client speaks "
                                                          f"version {future}", version=future))
    try:
        # A fake joiner written with the project's codec, speaking the next version.
        joiner = next_address()
        hello = Hello("join", Addr(joiner, cluster.ports.peer), 0).to_json() | {"version": future}
        with socket.create_connection((a.ip, cluster.ports.peer), 5,
                                      source_address=(joiner, 0)) as sock:
            sock.sendall(_frame(Hello.TYPE, hello))
            answer = read_message_by(sock, FrameDecoder(), time.monotonic() + 5)
        assert isinstance(answer, Reject) and answer.version == VERSION, answer
        assert f"version {future}" in answer.reason and f"version {VERSION}" in answer.reason
        wait_until(lambda: status(a)["refusals"].get("protocol violation", 0) >= 1, 10,
                   "A to count the refusal")
        # B probes the fake direct client, which refuses our version: B says so, and goes on.
        wait_until(lambda: status(b).get("incompatible_peers") == {fake.addr: future}, 20,
                   "B to show the version refusal")
        wait_until(lambda: status(b).get("state") == "attached", 20, "B to attach to A")
        assert status(b)["parent"] == {"ip": a.ip, "port": cluster.ports.peer}
    finally:
        fake.close()


def test_a_peer_that_trickles_its_answer_is_cut_at_the_deadline(cluster):
    fake, a, b = start_tree(cluster, lambda first: Info(True, 1, 2, 0), interval=1.0)
    try:
        started = time.monotonic()
        # The Info frame is over 100 bytes: a byte a second would hold B for minutes.
        assert len(encode(Info(True, 1, 2, 0))) > 60
        wait_until(lambda: status(b).get("state") == "attached", 30, "B to attach to A")
        took = time.monotonic() - started
        assert status(b)["parent"] == {"ip": a.ip, "port": cluster.ports.peer}
        assert status(b)["cut_at_deadline"].get("probe", 0) >= 1, status(b)["cut_at_deadline"]
        print(f"\ntrickling peer: B attached {took:.1f} s after it started "
              f"(answer deadline {ANSWER_DEADLINE:.0f} s), cut: {status(b)['cut_at_deadline']}")
    finally:
        fake.close()
