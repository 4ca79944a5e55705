"""Authenticated blocks: the signed digest feed and the verification rules (pure, fake clock).

Issue 16 "authenticated blocks"; the real-process attacks are in
tests/test_verify_liar.py.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.fetcher import RepairJob
from client.peerproto import (Accept, Addr, Block, Candidate, PeerProtocolError, VouchAnswer,
                              block_digest)
from client.joining import Joining
from client.places import DECLINES_LIMIT, MAX_VOUCHES, advertised, place_problem, vouch_links
from client.repair import RepairPlan
from client.tree import ChildView, RelayView, free_places
from client.verify import KEEP, STOCK_RETRY, DigestBook, Verdict, Verifier, parse_key
from server.feed import (AHEAD, BEHIND, MAX_DOCUMENT, FeedBook, FeedError, decode_document,
                         encode_document, load_or_create_key)


class Film:
    """A film of ``n`` blocks with distinct bytes."""

    def __init__(self, n: int):
        self.blocks = [b"\x1a\x45\xdf\xa3" + i.to_bytes(2, "big") * 50 for i in range(n)]

    def __len__(self):
        return len(self.blocks)

    def read_block(self, index: int) -> bytes:
        return self.blocks[index % len(self.blocks)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Feed:
    """A fake feed: the server's book behind a fetch function that can be cut."""

    def __init__(self, film: Film, signer=None):
        self.signer = signer or Ed25519PrivateKey.generate()
        self.key = self.signer.public_key().public_bytes_raw()
        self.book = FeedBook(self.signer, 2.0)
        self.film, self.up, self.calls = film, True, []

    def publish(self, slot: int):
        self.book.publish_round(0, slot, self.film)

    def fetch(self, channel: int, since):
        self.calls.append(since)
        if not self.up:
            raise OSError("connection refused")
        return self.book.document(channel, since)


# ------------------------------------------------------------- the document

def test_a_document_round_trips_and_any_changed_byte_is_refused():
    signer = Ed25519PrivateKey.generate()
    key = signer.public_key().public_bytes_raw()
    digests = [(7, block_digest(b"a")), (8, block_digest(b"b"))]
    data = encode_document(signer, 3, 2.0, 7, digests)
    doc = decode_document(data, key)
    assert (doc.channel, doc.period, doc.now, doc.blocks, doc.key) == (3, 2.0, 7, tuple(digests), key)
    assert decode_document(data, None).key == key            # first use: its own key
    for at in range(0, len(data) - 1, 7):                      # every 7th byte flipped
        bad = bytearray(data)
        bad[at] ^= 0x01
        with pytest.raises(FeedError):
            decode_document(bytes(bad), key)


def test_a_document_signed_by_another_key_is_refused():
    mine, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = encode_document(theirs, 0, 2.0, 1, [(1, block_digest(b"x"))])
    with pytest.raises(FeedError, match="not the pinned"):
        decode_document(data, mine.public_key().public_bytes_raw())


@pytest.mark.parametrize("data", [b"", b"relaytv-feed 1\n", b"x" * (MAX_DOCUMENT + 1),
                                  b"relaytv-feed 1\nsignature " + b"0" * 128 + b"\n"])
def test_malformed_documents_are_refused(data):
    with pytest.raises(FeedError):
        decode_document(data, None)


def test_the_server_book_vouches_ahead_and_forgets_behind():
    feed = Feed(Film(5))
    assert feed.book.document(0, None) is None                  # nothing sent yet
    feed.publish(0)
    doc = decode_document(feed.book.document(0, None), feed.key)
    assert [s for s, _ in doc.blocks] == list(range(0, AHEAD + 1))
    assert doc.blocks[6][1] == block_digest(feed.film.read_block(6))   # films wrap around
    for slot in range(1, BEHIND + 10):
        feed.publish(slot)
    doc = decode_document(feed.book.document(0, None), feed.key)
    assert doc.blocks[0][0] == doc.now - BEHIND
    since = decode_document(feed.book.document(0, doc.now + 3), feed.key)
    assert [s for s, _ in since.blocks] == list(range(doc.now + 3, doc.now + AHEAD + 1))


def test_the_key_file_is_made_once_and_private(tmp_path):
    path = tmp_path / "key"
    first = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_key(path)
    assert again.public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
    path.write_bytes(b"short")
    with pytest.raises(OSError):
        load_or_create_key(path)


def test_a_server_key_is_64_hex_digits():
    assert parse_key("ab" * 32) == bytes([0xab]) * 32
    for bad in ("ab" * 31, "zz" * 32):
        with pytest.raises(ValueError):
            parse_key(bad)


# ------------------------------------------------------------- the rules

def test_a_genuine_block_passes_with_one_fetch_for_many_blocks():
    feed, clock = Feed(Film(40)), Clock()
    verifier = Verifier(feed.fetch, feed.key, clock=clock)
    for slot in range(AHEAD):
        feed.publish(slot)
        clock.now += 2.0
        assert verifier.check(0, block_digest(feed.film.read_block(slot))) is Verdict.GENUINE
    assert len(feed.calls) == 1                      # the first fetch named AHEAD slots ahead
    feed.publish(AHEAD + 1)
    assert verifier.check(0, block_digest(feed.film.read_block(AHEAD + 1))) is Verdict.GENUINE
    assert feed.calls[-1] == AHEAD + 1               # only the entries it lacked


def test_an_altered_block_is_forged_and_a_flood_of_them_costs_few_fetches():
    feed, clock = Feed(Film(40)), Clock()
    feed.publish(0)
    verifier = Verifier(feed.fetch, feed.key, refetch=0.5, clock=clock)
    altered = bytearray(feed.film.read_block(0))
    altered[10:74] = b"\xff" * 64
    assert verifier.check(0, block_digest(bytes(altered))) is Verdict.FORGED
    for n in range(100):                              # within the refetch interval: no fetch
        assert verifier.check(0, block_digest(bytes([n]))) is Verdict.FORGED
    assert len(feed.calls) == 1
    clock.now += 0.6
    assert verifier.check(0, block_digest(b"other")) is Verdict.FORGED
    assert len(feed.calls) == 2
    assert verifier.snapshot()["forged"] == 102


def test_a_keyed_client_fails_closed_while_the_feed_is_unreachable():
    feed, clock = Feed(Film(40)), Clock()
    feed.publish(0)
    verifier = Verifier(feed.fetch, feed.key, refetch=0.5, clock=clock)
    feed.up = False
    genuine = block_digest(feed.film.read_block(1))
    assert verifier.check(0, genuine) is Verdict.UNCHECKED      # not stored, nobody blamed
    feed.up = True
    clock.now += 0.6
    assert verifier.check(0, genuine) is Verdict.GENUINE
    assert verifier.snapshot()["unchecked"] == 1


def test_without_key_or_feed_blocks_pass_unauthenticated_and_the_feed_is_retried():
    feed, clock = Feed(Film(40)), Clock()
    feed.up = False
    verifier = Verifier(feed.fetch, None, clock=clock)
    assert verifier.mode == "unpinned"
    assert verifier.check(0, block_digest(b"anything")) is Verdict.STOCK
    assert verifier.mode == "stock"
    assert verifier.check(0, block_digest(b"more")) is Verdict.STOCK
    assert len(feed.calls) == 1                                 # retried after STOCK_RETRY only
    feed.up = True
    feed.publish(0)
    clock.now += STOCK_RETRY
    assert verifier.check(0, block_digest(feed.film.read_block(0))) is Verdict.GENUINE
    assert verifier.mode == "feed" and verifier.pinned == feed.key    # pinned on first use
    feed.up = False
    clock.now += 1
    assert verifier.check(0, block_digest(b"unknown")) is Verdict.UNCHECKED  # now fails closed


def test_the_first_used_key_is_kept_and_another_server_key_is_refused(tmp_path):
    pin = tmp_path / "server-key.pinned"
    feed, clock = Feed(Film(40)), Clock()
    feed.publish(0)
    first = Verifier(feed.fetch, None, pin_file=pin, clock=clock)
    assert first.check(0, block_digest(feed.film.read_block(0))) is Verdict.GENUINE
    impostor = Feed(Film(40))                     # same film, another key
    impostor.publish(0)
    later = Verifier(impostor.fetch, None, pin_file=pin, clock=clock)
    assert later.pinned == feed.key
    assert later.check(0, block_digest(feed.film.read_block(0))) is Verdict.UNCHECKED


def test_digests_are_forgotten_keep_slots_after_their_slot():
    feed, clock = Feed(Film(400)), Clock()
    feed.publish(0)
    verifier = Verifier(feed.fetch, feed.key, clock=clock)
    old = block_digest(feed.film.read_block(2))
    assert verifier.check(0, old) is Verdict.GENUINE
    clock.now += 2.0 * (KEEP + 3)                # the server moved on KEEP+3 slots
    feed.publish(KEEP + 3)
    assert verifier.check(0, old) is Verdict.FORGED   # a replay of an old block


def test_a_channel_switch_starts_a_new_book():
    feed, clock = Feed(Film(40)), Clock()
    feed.publish(0)
    verifier = Verifier(feed.fetch, feed.key, clock=clock)
    assert verifier.check(0, block_digest(feed.film.read_block(0))) is Verdict.GENUINE
    feed.book.publish_round(1, 0, Film(3))
    assert verifier.check(1, block_digest(feed.film.read_block(10))) is Verdict.FORGED
    assert verifier.check(1, block_digest(feed.film.read_block(1))) is Verdict.GENUINE


def test_verification_off_accepts_everything_without_fetching():
    feed = Feed(Film(4))
    verifier = Verifier(feed.fetch, feed.key, enabled=False)
    assert verifier.check(0, block_digest(b"x")) is Verdict.GENUINE and not feed.calls
    assert verifier.mode == "off"


def test_the_book_keeps_the_newest_slot_of_a_repeated_block():
    book, feed = DigestBook(), Feed(Film(2))
    for slot in range(0, 6):
        feed.publish(slot)
    book.learn(decode_document(feed.book.document(0, None), feed.key), 0.0)
    assert book.newest == 5 + AHEAD and len(book) == 2


# ------------------------------------------------------------- verified places

R, P, Q, L = (Addr(f"10.0.0.{n}", 9092) for n in (1, 2, 3, 9))


def vouches(children: dict[Addr, set[Addr]], asked: list | None = None):
    """An ancestor says yes for its real children; None for an address that does not answer."""
    def vouch(ancestor, child):
        if asked is not None:
            asked.append((ancestor, child))
        return child in children[ancestor] if ancestor in children else None
    return vouch


def test_a_depth_one_place_must_be_in_the_server_list():
    assert place_problem(R, 1, (), ["10.0.0.1"], vouches({})) is None
    problem = place_problem(L, 1, (), ["10.0.0.1"], vouches({}))
    assert "does not list it" in problem


def test_a_deeper_place_is_confirmed_by_every_ancestor_nearest_first():
    tree = {R: {P}, P: {Q}}
    asked = []
    assert place_problem(Q, 3, (R, P), ["10.0.0.1"], vouches(tree, asked)) is None
    assert asked == [(P, Q), (R, P)]
    # The liar names a real chain it is not part of: the nearest ancestor says no.
    assert "does not confirm" in place_problem(L, 3, (R, P), ["10.0.0.1"], vouches(tree))
    # A chain whose top the server does not list.
    assert "does not list" in place_problem(Q, 3, (L, P), ["10.0.0.1"], vouches(tree))
    # An ancestor that does not answer: not verified.
    assert "could not be asked" in place_problem(Q, 3, (R, P), ["10.0.0.1"], vouches({P: {Q}}))


def test_a_depth_that_does_not_match_the_chain_is_refused():
    assert "claims depth 1" in place_problem(L, 1, (R,), ["10.0.0.1"], vouches({R: {L}}))


def test_without_the_server_list_only_the_chain_is_checked():
    assert place_problem(P, 2, (R,), None, vouches({R: {P}})) is None


def test_a_long_chain_is_checked_nearest_ancestors_only():
    chain = tuple(Addr(f"10.0.1.{n}", 9092) for n in range(1, 30))
    tree = {a: {b} for a, b in zip(chain, chain[1:])}
    asked = []
    leaf = chain[-1]
    assert place_problem(leaf, len(chain), chain[:-1], ["10.0.1.1"], vouches(tree, asked)) is None
    assert len(asked) == MAX_VOUCHES


def test_the_pairs_asked_are_the_nearest_first_and_bounded():
    chain = tuple(Addr(f"10.0.1.{n}", 9092) for n in range(1, 30))
    assert vouch_links(Q, (R, P)) == [(P, Q), (R, P)]
    links = vouch_links(chain[-1], chain[:-1])
    assert len(links) == MAX_VOUCHES and links[0] == (chain[-2], chain[-1])
    assert vouch_links(R, ()) == []


class Asker(Joining):
    """The place check of a joiner, with the server's list and each ancestor's answer faked.

    Each ancestor answers only once every question is in: asked one after
    another, the first would wait for the others until its deadline.
    """

    def __init__(self, tree: dict[Addr, set[Addr]], listed: list[str], questions: int):
        self.config = SimpleNamespace(verify=True, channel=0)
        self.server = SimpleNamespace(clients=lambda channel: listed)
        self.tree, self.all_asked = tree, threading.Barrier(questions, timeout=5)

    def _server_call(self, call, *args):
        return call(*args)

    def _ask(self, addr, question):
        try:
            self.all_asked.wait()
        except threading.BrokenBarrierError:
            return None
        return VouchAnswer(question.child in self.tree.get(addr, ()))


def test_a_joiner_asks_every_ancestor_at_once():
    chain = tuple(Addr(f"10.0.1.{n}", 9092) for n in range(1, 7))
    tree = {a: {b} for a, b in zip(chain, chain[1:])}
    joiner = Asker(tree, ["10.0.1.1"], questions=len(chain) - 1)
    accept = Accept(depth=len(chain), path=chain[:-1])
    assert joiner._place_problem(chain[-1], accept) is None
    liar = Addr("10.0.0.9", 9092)
    joiner = Asker(tree, ["10.0.1.1"], questions=len(chain))
    assert "does not confirm" in joiner._place_problem(liar, Accept(depth=7, path=chain))


def test_a_child_that_declines_every_swap_stops_being_advertised():
    liar = ChildView(L, free=4, places=(Candidate(L, 2, 4, 0),), members=(), reported=True)
    honest = ChildView(P, free=1, places=(Candidate(P, 2, 1, 50),), reported=True)
    children = {L: liar, P: honest}
    view = lambda declines: RelayView(R, 0, 2, True, 1, (), 0, advertised(children, declines))
    assert free_places(view({}))[0].addr == L                    # the liar looks best
    assert free_places(view({L: DECLINES_LIMIT - 1}))[0].addr == L
    places = free_places(view({L: DECLINES_LIMIT}))
    assert [c.addr for c in places] == [P]                        # no more climbers drawn
    assert advertised(children, {L: DECLINES_LIMIT})[L].members == liar.members  # still a child


def test_a_restarted_server_is_followed_from_its_first_slot_again():
    feed, clock = Feed(Film(400)), Clock()
    feed.publish(300)
    verifier = Verifier(feed.fetch, feed.key, refetch=0.5, clock=clock)
    assert verifier.check(0, block_digest(feed.film.read_block(300))) is Verdict.GENUINE
    restarted = Feed(feed.film, feed.signer)          # same key file, slots from 0 again
    restarted.publish(0)
    verifier._fetch = restarted.fetch
    clock.now += 1.0
    assert verifier.check(0, block_digest(feed.film.read_block(0))) is Verdict.GENUINE
    assert restarted.calls == [300 + AHEAD + 1, None]


def test_a_repair_source_that_sends_a_forged_block_loses_its_part():
    good, bad = Block.of(1, b"\x1a\x45\xdf\xa3good"), Block.of(2, b"\x1a\x45\xdf\xa3bad")
    checked = []

    def check(digest, source):
        checked.append((digest, source))
        return digest == good.digest

    plan = RepairPlan([good.digest, bad.digest], [P], 0.0, stall_after=1.0)
    job = RepairJob(plan, R, 0, lambda d, b: None, lambda j: None, deadline=5.0, check=check)
    wanted = {good.digest, bad.digest}
    assert job._answer(P, good, wanted) == ("block", (good.digest, good))
    with pytest.raises(PeerProtocolError, match="feed"):
        job._answer(P, bad, wanted)        # a "failed" report: the others take its part
    assert checked == [(good.digest, P), (bad.digest, P)]
