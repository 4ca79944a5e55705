"""The peer protocol codec, h11 style: bytes in, messages out, no sockets.

Every message class goes through ``encode`` and back through ``FrameDecoder``,
whole, split at every point and one byte at a time; every malformed frame the
module promises to refuse is fed and must raise :class:`PeerProtocolError`.
"""

from __future__ import annotations

import hashlib
import json

import pytest

import client.peerproto as peerproto
from client.peerproto import (BLOCK_HEADER, DIGEST_SIZE, HEADER, JSON_MESSAGES, MAX_BLOCK,
                              MAX_CHILDREN, MAX_CONTROL, MAX_LIST, MAX_PART, MAX_WANT, PART_BOUNDS,
                              PROTOCOL, VERSION, Accept, Addr, Advice, Block, BlockAbort, BlockEnd,
                              BlockPart, BlockStart, BlockTail, Bye, Reassembly, parts_of, Candidate, Drop,
                              FetchEnd, FrameDecoder, Hello, Info,
                              Keepalive, LibraryEnd, LibraryFetch, Move, PathUpdate,
                              PeerProtocolError, Redirect, Reject, Report, Swap, SwapAnswer,
                              TreeAnswer, TreeQuery, Vouch, VouchAnswer, DigestQuery, DigestAnswer,
                              block_digest, encode)
from client.treenode import TreeNode

# A relay lists its whole subtree (Report.members, Hello.subtree): a longer bound than MAX_LIST.
MEMBERS_BOUND = getattr(peerproto, "MAX_MEMBERS", MAX_LIST)
KNOWN_TYPES = {Block.TYPE, *JSON_MESSAGES, *PART_BOUNDS}
UNKNOWN_TYPES = [t for t in (0, 13, 14, 15, 42, 128, 255) if t not in KNOWN_TYPES]

# -- helpers ----------------------------------------------------------------------------------


def addr(n: int, port: int = 9092) -> Addr:
    return Addr(f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}", port)


def cand(n: int, depth: int = 2, free: int = 1, sent: int = 0) -> Candidate:
    return Candidate(addr(n), depth, free, sent)


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, obj) -> bytes:
    return frame(kind, json.dumps(obj).encode())


def decode_all(data: bytes) -> list:
    """Every whole message in ``data``, fed in one piece."""
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def decode_one(data: bytes):
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder.next_message()


D1 = block_digest(b"one")
D2 = block_digest(b"two")

MESSAGES = [
    Hello("join", addr(1), 3, max_children=4, have=(D1, D2), subtree=(addr(2), addr(3))),
    Hello("probe", addr(1), 0),
    Hello("fetch", Addr("192.168.0.7", 65535), 9, have=(D1,)),
    Accept(2, path=(addr(4), addr(5)), after=D1),
    Accept(1),
    Redirect((cand(6, depth=3, free=2, sent=10), cand(7, depth=4, free=1, sent=0))),
    Redirect(()),
    Reject("full"),
    Reject(""),
    Reject("ünïcødé ✓"),
    Reject("protocol version 2 is not supported here", version=1),
    Block.of(0, b""),
    Block.of(7, b"\x00\x01\x02binary\xff" * 100),
    Block.of(2**64 - 1, b"last"),
    BlockStart(0),
    BlockStart(2**64 - 1),
    BlockPart(b"\x1a\x45\xdf\xa3"),
    BlockPart(bytes(MAX_PART)),
    BlockEnd(0, block_digest(b"")),
    BlockEnd(MAX_BLOCK, D1),
    BlockAbort("parent lost"),
    BlockTail(9, D1, 1, b"rest of it"),
    BlockTail(0, D2, MAX_BLOCK, b""),
    Hello("fetch", addr(1), 0, want=(D1,), held=70000),
    Keepalive(),
    PathUpdate(3, (addr(8), addr(9))),
    PathUpdate(1, ()),
    Move((addr(10), addr(11)), server=True),
    Move((addr(10),)),
    Move((), server=False),
    Drop("too slow"),
    Bye(),
    Bye(addr(11)),
    Report(2, 12345, subtree=(cand(12, depth=5, free=1, sent=9),), members=(addr(12), addr(13))),
    Report(0, 0),
    Report(MAX_CHILDREN, 2**63),
    Info(True, 3, 1, 99, candidates=(cand(14, depth=3),)),
    Info(False, 1, 0, 0),
    Info(True, 1, 0, 5, after=D1, missing=(D2,)),
    Hello("join", addr(1), 0, catch_up=5),
    Hello("fetch", addr(1), 0, want=(D1, D2)),
    Accept(3, path=(addr(4),), after=D1, missing=(D2,)),
    Report(1, 5, max_children=2, children=(addr(15), addr(16))),
    Report(0, 5, members=(addr(15), addr(16)), parents=(-1, 0)),
    Advice(backup=cand(17, depth=2), advice=None),
    Advice(),
    FetchEnd((D1,)),
    FetchEnd(),
    Swap(addr(18), (addr(19), addr(18)), (addr(20), addr(21))),
    Swap(None, (), (addr(20),), server=True),
    SwapAnswer(True),
    SwapAnswer(False),
    Hello("join", addr(1), 0, moved_by=addr(22)),
    TreeQuery(3),
    TreeAnswer(),
    TreeAnswer((TreeNode(addr(23), None, True, 1, 2, 2, 10, 20, 5, 0, "full"),
                TreeNode(addr(24), addr(23), False, 2, 0, 0, 0, 20, 0, 1, "leaf"))),
    Report(0, 0, nodes=(TreeNode(addr(24), addr(23), False, 2, 0, 0, 0, 20, 0, 1, "stalled"),)),
    LibraryFetch(addr(1), "0123456789abcdef", (0, 5, 9999)),
    LibraryEnd((3,)),
    LibraryEnd(),
    Vouch(0, addr(25)),
    VouchAnswer(True),
    VouchAnswer(False),
    DigestQuery(0, (D1, D2), 750),
    DigestQuery(9, ()),
    DigestAnswer((D1,), True, 12000),
    DigestAnswer(),
]


def _id(message) -> str:
    return type(message).__name__


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=_id)
def test_round_trip(message):
    data = encode(message)
    kind, length = HEADER.unpack_from(data)
    assert kind == message.TYPE
    assert length == len(data) - HEADER.size
    assert decode_all(data) == [message]


@pytest.mark.parametrize("message", MESSAGES, ids=_id)
def test_round_trip_one_byte_at_a_time(message):
    data = encode(message)
    decoder = FrameDecoder()
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(data[-1:])
    assert decoder.next_message() == message
    assert decoder.next_message() is None


def test_every_message_class_is_covered():
    covered = {type(m) for m in MESSAGES}
    binary = {Block, BlockStart, BlockPart, BlockEnd, BlockTail}
    assert covered == set(JSON_MESSAGES.values()) | binary
    # 20-29: the web view, 30-39: the library, 45-49: verification, 50-59: blocks in parts
    assert {cls.TYPE for cls in covered} == (set(range(1, 17)) | {20, 21, 30, 31, 45, 46, 47, 48}
                                             | {50, 51, 52, 53, 54})
    assert all(JSON_MESSAGES[cls.TYPE] is cls for cls in covered - binary)
    assert not {cls.TYPE for cls in binary} & set(JSON_MESSAGES)


def test_hello_fields_survive():
    hello = decode_one(encode(MESSAGES[0]))
    assert hello.proto == PROTOCOL and hello.version == VERSION
    assert hello.kind == "join" and hello.channel == 3 and hello.max_children == 4
    assert hello.have == (D1, D2)
    assert hello.subtree == (addr(2), addr(3))


def test_accept_with_and_without_after():
    assert decode_one(encode(Accept(2, after=D2))).after == D2
    assert decode_one(encode(Accept(2))).after is None
    assert json.loads(encode(Accept(2))[HEADER.size:])["after"] is None


def test_move_server_flag_survives():
    assert decode_one(encode(Move((addr(1),), server=True))).server is True
    assert decode_one(encode(Move((addr(1),), server=False))).server is False


def test_several_frames_in_one_feed():
    data = b"".join(encode(m) for m in MESSAGES)
    assert decode_all(data) == MESSAGES


def test_several_frames_one_byte_at_a_time():
    data = b"".join(encode(m) for m in MESSAGES)
    decoder = FrameDecoder()
    out = []
    for byte in data:
        decoder.feed(bytes([byte]))
        while (message := decoder.next_message()) is not None:
            out.append(message)
    assert out == MESSAGES


def test_two_frames_split_at_every_point():
    messages = [Hello("join", addr(1), 2, have=(D1,)), Block.of(5, b"payload")]
    data = b"".join(encode(m) for m in messages)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        out = []
        for piece in (data[:cut], data[cut:]):
            if piece:
                decoder.feed(piece)
            while (message := decoder.next_message()) is not None:
                out.append(message)
        assert out == messages, cut


def test_nothing_fed_needs_data():
    assert FrameDecoder().next_message() is None


def test_wire_format_is_pinned():
    assert encode(Keepalive()) == b"\x06\x00\x00\x00\x02{}"
    assert encode(Reject("x")) == b'\x04\x00\x00\x00\x0e{"reason":"x"}'
    block = Block.of(1, b"abc")
    assert encode(block) == (b"\x05" + (BLOCK_HEADER.size + 3).to_bytes(4, "big")
                             + (1).to_bytes(8, "big") + block_digest(b"abc") + b"abc")


def test_unknown_json_fields_are_ignored():
    assert decode_one(json_frame(Reject.TYPE, {"reason": "r", "extra": [1, 2]})) == Reject("r")
    assert decode_one(json_frame(Keepalive.TYPE, {"anything": None})) == Keepalive()


def test_optional_fields_default():
    hello = decode_one(json_frame(Hello.TYPE, {"proto": PROTOCOL, "version": VERSION, "kind": "probe",
                                               "ip": "1.2.3.4", "port": 5, "channel": 0}))
    assert hello == Hello("probe", Addr("1.2.3.4", 5), 0)
    assert decode_one(json_frame(Accept.TYPE, {"depth": 4})) == Accept(4)
    assert decode_one(json_frame(Move.TYPE, {"candidates": []})) == Move(())
    assert decode_one(json_frame(Report.TYPE, {"free": 0, "sent": 0})) == Report(0, 0)
    assert decode_one(json_frame(Info.TYPE, {"attached": True, "depth": 1, "free": 0,
                                             "sent": 0})) == Info(True, 1, 0, 0)


def test_lists_at_their_bound_are_accepted():
    subtree = tuple(addr(n) for n in range(MEMBERS_BOUND))
    have = tuple(block_digest(bytes([n])) for n in range(16))
    hello = Hello("join", addr(999), 1, have=have, subtree=subtree)
    assert decode_one(encode(hello)) == hello
    redirect = Redirect(tuple(cand(n) for n in range(MAX_LIST)))
    assert decode_one(encode(redirect)) == redirect
    report = Report(0, 0, subtree=tuple(cand(n) for n in range(MAX_LIST)),
                    members=tuple(addr(n) for n in range(MEMBERS_BOUND)))
    assert decode_one(encode(report)) == report
    path = PathUpdate(2, tuple(addr(n) for n in range(MAX_LIST)))
    assert decode_one(encode(path)) == path


# -- end of stream ----------------------------------------------------------------------------


def test_eof_between_frames():
    decoder = FrameDecoder()
    decoder.feed(encode(Bye()) + encode(Keepalive()))
    decoder.feed(b"")
    assert decoder.next_message() == Bye()
    assert decoder.next_message() == Keepalive()
    with pytest.raises(EOFError, match="^peer closed$"):
        decoder.next_message()
    with pytest.raises(EOFError, match="^peer closed$"):
        decoder.next_message()


def test_eof_before_anything():
    decoder = FrameDecoder()
    decoder.feed(b"")
    with pytest.raises(EOFError, match="^peer closed$"):
        decoder.next_message()


@pytest.mark.parametrize("message", [Reject("bye now"), Block.of(3, b"data")], ids=_id)
def test_eof_in_the_middle_of_a_frame(message):
    data = encode(message)
    for cut in range(1, len(data)):
        decoder = FrameDecoder()
        decoder.feed(data[:cut])
        assert decoder.next_message() is None
        decoder.feed(b"")
        with pytest.raises(EOFError, match="middle of a frame"):
            decoder.next_message()


def test_eof_after_a_whole_frame_and_a_partial_one():
    decoder = FrameDecoder()
    decoder.feed(encode(Drop("x")) + encode(Bye())[:3])
    decoder.feed(b"")
    assert decoder.next_message() == Drop("x")
    with pytest.raises(EOFError, match="middle of a frame"):
        decoder.next_message()


# -- malformed frames: header -----------------------------------------------------------------


@pytest.mark.parametrize("kind", UNKNOWN_TYPES)
def test_unknown_frame_type(kind):
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(kind, 2))  # header alone: no payload needed to refuse it
    with pytest.raises(PeerProtocolError, match="unknown frame type"):
        decoder.next_message()


def test_unknown_frame_type_refused_on_the_fifth_byte():
    decoder = FrameDecoder()
    header = HEADER.pack(99, 0)
    for byte in header[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(header[-1:])
    with pytest.raises(PeerProtocolError):
        decoder.next_message()


@pytest.mark.parametrize("kind", sorted(JSON_MESSAGES))
@pytest.mark.parametrize("length", [MAX_CONTROL + 1, 2**32 - 1])
def test_control_frame_over_bound_refused_from_header_alone(kind, length):
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(kind, length))
    with pytest.raises(PeerProtocolError, match="exceeds"):
        decoder.next_message()


def test_control_frame_at_bound_waits_for_payload():
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(Reject.TYPE, MAX_CONTROL))
    assert decoder.next_message() is None


@pytest.mark.parametrize("length", [BLOCK_HEADER.size + MAX_BLOCK + 1, 2**32 - 1])
def test_block_frame_over_bound_refused_from_header_alone(length):
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(Block.TYPE, length))
    with pytest.raises(PeerProtocolError, match="out of bounds"):
        decoder.next_message()


@pytest.mark.parametrize("length", [0, 1, BLOCK_HEADER.size - 1])
def test_block_frame_shorter_than_its_header(length):
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(Block.TYPE, length) + b"\x00" * length)
    with pytest.raises(PeerProtocolError, match="out of bounds"):
        decoder.next_message()


def test_block_frame_at_bound_waits_for_payload():
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(Block.TYPE, BLOCK_HEADER.size + MAX_BLOCK))
    assert decoder.next_message() is None


# -- malformed frames: block payload ----------------------------------------------------------


def test_block_digest_mismatch():
    data = b"the real bytes"
    payload = BLOCK_HEADER.pack(1, block_digest(b"other bytes")) + data
    with pytest.raises(PeerProtocolError, match="digest"):
        decode_one(frame(Block.TYPE, payload))


def test_block_with_one_flipped_byte():
    good = encode(Block.of(9, b"abcdefgh"))
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(PeerProtocolError, match="digest"):
        decode_one(bad)


# -- malformed frames: JSON payload -----------------------------------------------------------


@pytest.mark.parametrize("payload", [b"\xff", b'{"reason": "\xc3"}', b"\xed\xa0\x80{}"],
                         ids=["ff", "truncated-utf8", "encoded-surrogate"])
def test_invalid_utf8(payload):
    with pytest.raises(PeerProtocolError, match="malformed JSON"):
        decode_one(frame(Reject.TYPE, payload))


@pytest.mark.parametrize("payload", [b"", b"{", b'{"reason":', b"{'reason': 'x'}", b"nope",
                                     b'{"reason": "x"} trailing'])
def test_not_json(payload):
    with pytest.raises(PeerProtocolError, match="malformed JSON"):
        decode_one(frame(Reject.TYPE, payload))


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"1", b"null", b"true", b'[{"reason": "x"}]'])
def test_json_not_an_object(payload):
    with pytest.raises(PeerProtocolError, match="not an object"):
        decode_one(frame(Reject.TYPE, payload))


def test_deeply_nested_json_is_a_protocol_error():
    # Fits in MAX_CONTROL, but nests deeper than the JSON parser's recursion limit.
    payload = b'{"reason":' + b"[" * 30000 + b"]" * 30000 + b"}"
    assert len(payload) <= MAX_CONTROL
    with pytest.raises(PeerProtocolError):
        decode_one(frame(Reject.TYPE, payload))


def test_huge_integer_literal_is_a_protocol_error():
    # 5000 digits: over Python's int-from-string limit (4300), inside MAX_CONTROL.
    payload = b'{"depth":' + b"1" * 5000 + b"}"
    with pytest.raises(PeerProtocolError):
        decode_one(frame(PathUpdate.TYPE, payload))


def _hello(**changes) -> dict:
    obj = {"proto": PROTOCOL, "version": VERSION, "kind": "join", "ip": "10.0.0.1", "port": 9092,
           "channel": 1, "max_children": 2, "have": [D1.hex()],
           "subtree": [{"ip": "10.0.0.2", "port": 9092}]}
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not _MISSING}


_MISSING = object()
_C = {"ip": "10.0.0.9", "port": 9000, "depth": 2, "free": 1, "sent": 0}
_A = {"ip": "10.0.0.9", "port": 9000}


def _c(**changes) -> dict:
    return {**_C, **changes}


def _a(**changes) -> dict:
    return {**_A, **changes}


BAD_IPS = ["999.1.1.1", "localhost", "1.2.3", "1.2.3.4.5", "::1", "", " 1.2.3.4", "01.2.3.4x",
           "1.2.3.4" + " " * 20, 16909060, None, ["1.2.3.4"]]
BAD_PORTS = [0, 70000, -1, 65536, "9092", 9092.0, True, None]

MALFORMED = [
    # Hello: protocol, version, kind, channel
    (Hello.TYPE, _hello(proto="http"), "hello-proto-http"),
    (Hello.TYPE, _hello(proto=_MISSING), "hello-proto-missing"),
    (Hello.TYPE, _hello(version=VERSION + 1), "hello-version-next"),
    (Hello.TYPE, _hello(version=0), "hello-version-0"),
    (Hello.TYPE, _hello(version="1"), "hello-version-str"),
    (Hello.TYPE, _hello(version=_MISSING), "hello-version-missing"),
    (Hello.TYPE, _hello(kind="push"), "hello-kind-push"),
    (Hello.TYPE, _hello(kind=None), "hello-kind-null"),
    (Hello.TYPE, _hello(kind=["join"]), "hello-kind-list"),
    (Hello.TYPE, _hello(kind=_MISSING), "hello-kind-missing"),
    (Hello.TYPE, _hello(channel=10), "hello-channel-10"),
    (Hello.TYPE, _hello(channel=-1), "hello-channel-neg"),
    (Hello.TYPE, _hello(channel="1"), "hello-channel-str"),
    (Hello.TYPE, _hello(channel=True), "hello-channel-bool"),
    (Hello.TYPE, _hello(channel=1.0), "hello-channel-float"),
    (Hello.TYPE, _hello(channel=_MISSING), "hello-channel-missing"),
    (Hello.TYPE, _hello(max_children=-1), "hello-maxchildren-neg"),
    (Hello.TYPE, _hello(max_children=MAX_CHILDREN + 1), "hello-maxchildren-big"),
    (Hello.TYPE, _hello(max_children=False), "hello-maxchildren-bool"),
    (Hello.TYPE, _hello(ip=_MISSING), "hello-ip-missing"),
    (Hello.TYPE, _hello(port=_MISSING), "hello-port-missing"),
    # Hello: digests
    (Hello.TYPE, _hello(have=["ab"]), "hello-have-short"),
    (Hello.TYPE, _hello(have=[D1.hex() + "00"]), "hello-have-long"),
    (Hello.TYPE, _hello(have=["zz" * DIGEST_SIZE]), "hello-have-nonhex"),
    (Hello.TYPE, _hello(have=[" " + D1.hex()[1:]]), "hello-have-space"),
    (Hello.TYPE, _hello(have=[5]), "hello-have-int"),
    (Hello.TYPE, _hello(have=[None]), "hello-have-null"),
    (Hello.TYPE, _hello(have=D1.hex()), "hello-have-not-list"),
    (Hello.TYPE, _hello(have=[D1.hex()] * 17), "hello-have-17"),
    # Hello: subtree
    (Hello.TYPE, _hello(subtree=[_a()] * (MEMBERS_BOUND + 1)), "hello-subtree-over-bound"),
    (Hello.TYPE, _hello(subtree=[_a(ip="999.1.1.1")]), "hello-subtree-bad-ip"),
    (Hello.TYPE, _hello(subtree=[_a(port=0)]), "hello-subtree-port-0"),
    (Hello.TYPE, _hello(subtree=["10.0.0.2:9092"]), "hello-subtree-str"),
    (Hello.TYPE, _hello(subtree={"ip": "10.0.0.2", "port": 1}), "hello-subtree-dict"),
    (Hello.TYPE, _hello(subtree=None), "hello-subtree-null"),
    # Accept
    (Accept.TYPE, {"depth": 0}, "accept-depth-0"),
    (Accept.TYPE, {"depth": 1001}, "accept-depth-1001"),
    (Accept.TYPE, {"depth": True}, "accept-depth-bool"),
    (Accept.TYPE, {"depth": "2"}, "accept-depth-str"),
    (Accept.TYPE, {}, "accept-depth-missing"),
    (Accept.TYPE, {"depth": 2, "after": "xyz"}, "accept-after-short"),
    (Accept.TYPE, {"depth": 2, "after": "g" * 32}, "accept-after-nonhex"),
    (Accept.TYPE, {"depth": 2, "after": 5}, "accept-after-int"),
    (Accept.TYPE, {"depth": 2, "after": [D1.hex()]}, "accept-after-list"),
    (Accept.TYPE, {"depth": 2, "path": [_a()] * (MAX_LIST + 1)}, "accept-path-65"),
    (Accept.TYPE, {"depth": 2, "path": [_a(ip="localhost")]}, "accept-path-bad-ip"),
    (Accept.TYPE, {"depth": 2, "path": "10.0.0.1"}, "accept-path-str"),
    # Redirect
    (Redirect.TYPE, {}, "redirect-missing"),
    (Redirect.TYPE, {"candidates": None}, "redirect-null"),
    (Redirect.TYPE, {"candidates": _c()}, "redirect-dict"),
    (Redirect.TYPE, {"candidates": [_c()] * (MAX_LIST + 1)}, "redirect-65"),
    (Redirect.TYPE, {"candidates": ["10.0.0.9:9000"]}, "redirect-str-entry"),
    (Redirect.TYPE, {"candidates": [_c(depth=0)]}, "redirect-depth-0"),
    (Redirect.TYPE, {"candidates": [_c(depth=True)]}, "redirect-depth-bool"),
    (Redirect.TYPE, {"candidates": [_c(free=-1)]}, "redirect-free-neg"),
    (Redirect.TYPE, {"candidates": [_c(free=1001)]}, "redirect-free-big"),
    (Redirect.TYPE, {"candidates": [_c(free=True)]}, "redirect-free-bool"),
    (Redirect.TYPE, {"candidates": [_c(sent=-1)]}, "redirect-sent-neg"),
    (Redirect.TYPE, {"candidates": [_c(sent=2**63 + 1)]}, "redirect-sent-big"),
    (Redirect.TYPE, {"candidates": [_c(sent=1.5)]}, "redirect-sent-float"),
    (Redirect.TYPE, {"candidates": [{"ip": "10.0.0.9", "port": 9000, "depth": 2, "free": 1}]},
     "redirect-sent-missing"),
    # Reject / Drop
    (Reject.TYPE, {}, "reject-missing"),
    (Reject.TYPE, {"reason": 5}, "reject-int"),
    (Reject.TYPE, {"reason": None}, "reject-null"),
    (Reject.TYPE, {"reason": "x" * 201}, "reject-too-long"),
    (Reject.TYPE, {"reason": "v", "version": "1"}, "reject-version-str"),
    (Reject.TYPE, {"reason": "v", "version": -1}, "reject-version-negative"),
    (Drop.TYPE, {}, "drop-missing"),
    (Drop.TYPE, {"reason": ["slow"]}, "drop-list"),
    (Drop.TYPE, {"reason": "x" * 201}, "drop-too-long"),
    # PathUpdate
    (PathUpdate.TYPE, {"path": []}, "pathupdate-depth-missing"),
    (PathUpdate.TYPE, {"depth": 0, "path": []}, "pathupdate-depth-0"),
    (PathUpdate.TYPE, {"depth": -3, "path": []}, "pathupdate-depth-neg"),
    (PathUpdate.TYPE, {"depth": 2, "path": [_a(port="9092")]}, "pathupdate-port-str"),
    (PathUpdate.TYPE, {"depth": 2, "path": [_a()] * (MAX_LIST + 1)}, "pathupdate-path-65"),
    # Move
    (Move.TYPE, {}, "move-missing"),
    (Move.TYPE, {"candidates": [_a()], "server": "yes"}, "move-server-str"),
    (Move.TYPE, {"candidates": [_a()], "server": 1}, "move-server-int"),
    (Move.TYPE, {"candidates": [_a()], "server": None}, "move-server-null"),
    (Move.TYPE, {"candidates": [_a(ip="1.1.1")]}, "move-bad-ip"),
    (Move.TYPE, {"candidates": [_a()] * (MAX_LIST + 1)}, "move-65"),
    # Bye
    (Bye.TYPE, {"successor": "10.0.0.9:9000"}, "bye-successor-str"),
    (Bye.TYPE, {"successor": _a(ip="1.1.1")}, "bye-successor-bad-ip"),
    (Bye.TYPE, {"successor": _a(port=0)}, "bye-successor-port-0"),
    # Report
    (Report.TYPE, {"sent": 0}, "report-free-missing"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": 0, "sent": 0, "after": "zz"},
     "info-after-not-hex"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": 0, "sent": 0,
                 "missing": [D1.hex()] * (MAX_WANT + 1)}, "info-missing-over-bound"),
    (Report.TYPE, {"free": 0}, "report-sent-missing"),
    (Report.TYPE, {"free": -1, "sent": 0}, "report-free-neg"),
    (Report.TYPE, {"free": True, "sent": 0}, "report-free-bool"),
    (Report.TYPE, {"free": 0, "sent": "0"}, "report-sent-str"),
    (Report.TYPE, {"free": 0, "sent": 0, "subtree": [_c(depth=0)]}, "report-subtree-depth-0"),
    (Report.TYPE, {"free": 0, "sent": 0, "subtree": [_c()] * (MAX_LIST + 1)}, "report-subtree-65"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a(ip="999.1.1.1")]}, "report-members-bad-ip"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a()] * (MEMBERS_BOUND + 1)},
     "report-members-over-bound"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": {}}, "report-members-dict"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a()], "parents": [1]},
     "report-parent-past-members"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a()], "parents": [-2]},
     "report-parent-below-minus-1"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a()], "parents": [-1, -1]},
     "report-parents-not-one-per-member"),
    (Report.TYPE, {"free": 0, "sent": 0, "members": [_a()], "parents": ["0"]},
     "report-parent-str"),
    # Info
    (Info.TYPE, {"depth": 1, "free": 0, "sent": 0}, "info-attached-missing"),
    (Info.TYPE, {"attached": 1, "depth": 1, "free": 0, "sent": 0}, "info-attached-int"),
    (Info.TYPE, {"attached": "true", "depth": 1, "free": 0, "sent": 0}, "info-attached-str"),
    (Info.TYPE, {"attached": True, "depth": 0, "free": 0, "sent": 0}, "info-depth-0"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": -1, "sent": 0}, "info-free-neg"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": 0, "sent": False}, "info-sent-bool"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": 0, "sent": 0,
                 "candidates": [_c(ip="localhost")]}, "info-candidate-bad-ip"),
    (Info.TYPE, {"attached": True, "depth": 1, "free": 0, "sent": 0,
                 "candidates": [_c()] * (MAX_LIST + 1)}, "info-candidates-65"),
    (DigestQuery.TYPE, {"channel": 0, "want": [D1.hex()] * 17}, "digestquery-want-17"),
    (DigestQuery.TYPE, {"channel": 0, "want": ["ab"]}, "digestquery-bad-digest"),
    (DigestQuery.TYPE, {"channel": 0, "want": [], "wait_ms": 5001}, "digestquery-wait-long"),
    (DigestQuery.TYPE, {"channel": 10, "want": []}, "digestquery-channel-10"),
    (DigestAnswer.TYPE, {"got": [D1.hex()] * 17}, "digestanswer-got-17"),
    (DigestAnswer.TYPE, {"got": [], "fresh": 1}, "digestanswer-fresh-int"),
    (DigestAnswer.TYPE, {"got": [], "covered_ms": -1}, "digestanswer-covered-neg"),
]
MALFORMED += [(Hello.TYPE, _hello(ip=ip), f"hello-ip-{ip!r}") for ip in BAD_IPS]
MALFORMED += [(Hello.TYPE, _hello(port=port), f"hello-port-{port!r}") for port in BAD_PORTS]
MALFORMED += [(Redirect.TYPE, {"candidates": [_c(ip=ip)]}, f"candidate-ip-{ip!r}") for ip in BAD_IPS]
MALFORMED += [(Redirect.TYPE, {"candidates": [_c(port=port)]}, f"candidate-port-{port!r}")
              for port in BAD_PORTS]


@pytest.mark.parametrize("kind, obj", [(k, o) for k, o, _ in MALFORMED],
                         ids=[name for _, _, name in MALFORMED])
def test_malformed_fields(kind, obj):
    with pytest.raises(PeerProtocolError):
        decode_one(json_frame(kind, obj))


SMALL_MALFORMED = [(k, o, name) for k, o, name in MALFORMED if len(json.dumps(o)) < 4096]


@pytest.mark.parametrize("kind, obj", [(k, o) for k, o, _ in SMALL_MALFORMED],
                         ids=[name for _, _, name in SMALL_MALFORMED])
def test_malformed_fields_one_byte_at_a_time(kind, obj):
    data = json_frame(kind, obj)
    decoder = FrameDecoder()
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(data[-1:])
    with pytest.raises(PeerProtocolError):
        decoder.next_message()


def test_malformed_base_hello_is_actually_valid():
    # The mutations above start from a valid Hello, so each one tests only its own change.
    hello = decode_one(json_frame(Hello.TYPE, _hello()))
    assert hello == Hello("join", Addr("10.0.0.1", 9092), 1, 2, have=(D1,),
                          subtree=(Addr("10.0.0.2", 9092),))
    assert decode_one(json_frame(Redirect.TYPE, {"candidates": [_C]})) == \
        Redirect((Candidate(Addr("10.0.0.9", 9000), 2, 1, 0),))


# -- construction and encoding ----------------------------------------------------------------


@pytest.mark.parametrize("ip", BAD_IPS)
def test_addr_refuses_bad_ip(ip):
    with pytest.raises(PeerProtocolError):
        Addr(ip, 9092)


@pytest.mark.parametrize("port", BAD_PORTS)
def test_addr_refuses_bad_port(port):
    with pytest.raises(PeerProtocolError):
        Addr("10.0.0.1", port)


def test_addr_bounds_and_text():
    assert str(Addr("10.0.0.1", 1)) == "10.0.0.1:1"
    assert Addr("255.255.255.255", 65535).port == 65535
    with pytest.raises(PeerProtocolError):
        Addr.parse(["10.0.0.1", 1])


def test_messages_validate_when_built():
    with pytest.raises(PeerProtocolError):
        Hello("join", addr(1), 1, proto="other")
    with pytest.raises(PeerProtocolError):
        Hello("join", addr(1), 1, version=VERSION - 1)
    with pytest.raises(PeerProtocolError):
        Hello("leave", addr(1), 1)
    with pytest.raises(PeerProtocolError):
        Accept(0)
    with pytest.raises(PeerProtocolError):
        Info(1, 1, 0, 0)
    with pytest.raises(PeerProtocolError):
        Block(0, b"\x00" * 15, b"")
    with pytest.raises(PeerProtocolError):
        Block(-1, block_digest(b""), b"")
    with pytest.raises(PeerProtocolError):
        Block(2**64, block_digest(b""), b"")


def test_block_over_max_refused_when_built():
    with pytest.raises(PeerProtocolError, match="too large"):
        Block.of(0, bytes(MAX_BLOCK + 1))


def test_encode_refuses_control_frame_over_bound():
    members = tuple(addr(n) for n in range(3000))
    big = Report(0, 0, members=members)
    assert len(json.dumps(big.to_json(), separators=(",", ":"))) > MAX_CONTROL
    with pytest.raises(PeerProtocolError, match="too large"):
        encode(big)


def _report_of_payload_size(size: int) -> Report:
    """A Report whose JSON payload is exactly ``size`` bytes (ports pad it digit by digit)."""
    def length(report):
        return len(json.dumps(report.to_json(), separators=(",", ":")))
    # Every IP has the same width, so each member adds the same number of bytes.
    ips = [f"10.{100 + n // 10000}.{100 + n // 100 % 100}.{100 + n % 100}" for n in range(5000)]
    base = length(Report(0, 0))
    one = length(Report(0, 0, members=(Addr(ips[0], 1),))) - base + 1  # a member and its comma
    count = (size - base + 1) // one
    members = [Addr(ips[n], 1) for n in range(count)]
    deficit = size - length(Report(0, 0, members=tuple(members)))
    for i, member in enumerate(members):
        if deficit <= 0:
            break
        extra = min(4, deficit)  # port 1 -> 10**extra: 1 to 5 digits
        members[i] = Addr(member.ip, 10**extra)
        deficit -= extra
    report = Report(0, 0, members=tuple(members))
    assert length(report) == size
    return report


def test_encode_accepts_control_frame_exactly_at_bound():
    data = encode(_report_of_payload_size(MAX_CONTROL))
    assert len(data) == HEADER.size + MAX_CONTROL


def test_encode_refuses_control_frame_one_byte_over_bound():
    with pytest.raises(PeerProtocolError, match="too large"):
        encode(_report_of_payload_size(MAX_CONTROL + 1))


# -- block identity ---------------------------------------------------------------------------


def test_block_digest_is_deterministic_and_16_bytes():
    data = bytes(range(256)) * 10
    assert block_digest(data) == block_digest(bytes(data))
    assert len(block_digest(data)) == DIGEST_SIZE == 16
    assert len(block_digest(b"")) == 16
    assert block_digest(b"a") != block_digest(b"b")
    assert block_digest(data) == hashlib.blake2b(data, digest_size=16).digest()


def test_block_of_uses_the_digest():
    block = Block.of(3, b"xyz")
    assert block.digest == block_digest(b"xyz")
    assert "xyz" not in repr(block)


def test_swap_names_either_a_parent_or_the_server():
    with pytest.raises(PeerProtocolError):
        Swap(None, (), ())
    with pytest.raises(PeerProtocolError):
        Swap(addr(1), (), (), server=True)


def test_hello_catch_up_is_bounded():
    with pytest.raises(PeerProtocolError):
        Hello("join", addr(1), 0, catch_up=10_000)


# -- blocks in parts (cut-through relaying) ---------------------------------------------------


def test_wire_format_of_a_block_in_parts_is_pinned():
    assert encode(BlockStart(7)) == b"\x32\x00\x00\x00\x08" + (7).to_bytes(8, "big")
    assert encode(BlockPart(b"ab")) == b"\x33\x00\x00\x00\x02ab"
    assert encode(BlockEnd(3, D1)) == b"\x34\x00\x00\x00\x14" + (3).to_bytes(4, "big") + D1


@pytest.mark.parametrize("kind, length", [
    (BlockStart.TYPE, 7), (BlockStart.TYPE, 9), (BlockPart.TYPE, 0),
    (BlockPart.TYPE, MAX_PART + 1), (BlockPart.TYPE, 2**32 - 1), (BlockEnd.TYPE, 19),
    (BlockEnd.TYPE, 21), (BlockAbort.TYPE, MAX_CONTROL + 1)])
def test_a_part_frame_out_of_its_bounds_is_refused_from_its_header(kind, length):
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(kind, length))
    with pytest.raises(PeerProtocolError, match="out of bounds|exceeds"):
        decoder.next_message()


def test_a_part_frame_at_its_bound_waits_for_its_payload():
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(BlockPart.TYPE, MAX_PART))
    assert decoder.next_message() is None


def test_an_end_declaring_more_than_a_block_is_refused():
    with pytest.raises(PeerProtocolError, match="size"):
        decode_one(frame(BlockEnd.TYPE, (MAX_BLOCK + 1).to_bytes(4, "big") + D1))
    with pytest.raises(PeerProtocolError):
        BlockPart(bytes(MAX_PART + 1))
    with pytest.raises(PeerProtocolError):
        BlockPart(b"")


def reassembled(data: bytes, seq: int = 4) -> Block:
    whole = Reassembly()
    whole.start(seq)
    for part in parts_of(data):
        whole.add(part.data)
    return whole.end(BlockEnd(len(data), block_digest(data)))


def test_a_block_in_parts_is_the_block_and_its_digest_is_checked_at_its_end():
    data = bytes(range(256)) * 1000
    assert len(parts_of(data)) == -(-len(data) // MAX_PART)
    assert all(len(p.data) <= MAX_PART for p in parts_of(data))
    assert reassembled(data) == Block.of(4, data)


def test_an_end_with_the_wrong_size_or_digest_is_the_senders_error():
    for end in (BlockEnd(5, block_digest(b"abcd")), BlockEnd(4, block_digest(b"abce"))):
        whole = Reassembly()
        whole.start(1)
        whole.add(b"abcd")
        with pytest.raises(PeerProtocolError, match="ends at|digest"):
            whole.end(end)


def test_parts_with_no_start_or_past_a_blocks_bound_are_refused():
    whole = Reassembly()
    with pytest.raises(PeerProtocolError, match="no block started"):
        whole.add(b"x")
    with pytest.raises(PeerProtocolError, match="no block started"):
        whole.end(BlockEnd(0, block_digest(b"")))
    whole.start(2)
    with pytest.raises(PeerProtocolError, match="inside block"):
        whole.start(3)
    for _ in range(MAX_BLOCK // MAX_PART):
        whole.add(bytes(MAX_PART))
    whole.add(bytes(MAX_BLOCK % MAX_PART))
    with pytest.raises(PeerProtocolError, match="grows past"):
        whole.add(b"x")


def test_an_aborted_block_is_forgotten_and_the_next_one_starts_clean():
    whole = Reassembly()
    whole.start(1)
    whole.add(b"half of it")
    whole.abort()
    assert not whole.open
    with pytest.raises(PeerProtocolError):
        whole.add(b"more")
    assert reassembled(b"next", seq=2) == Block.of(2, b"next")


def test_the_rest_of_a_block_completes_only_its_own_beginning():
    data = bytes(range(256)) * 500
    tail = BlockTail(3, block_digest(data), 1000, data[1000:])
    assert tail.completes(data[:1000]) == Block.of(3, data)
    assert tail.completes(data[:999]) is None                  # not as long as it says
    assert tail.completes(b"x" + data[1:1000]) is None         # another block's beginning
    assert decode_one(encode(tail)) == tail


@pytest.mark.parametrize("offset, size", [(0, 10), (MAX_BLOCK, 1), (MAX_BLOCK + 1, 0)])
def test_a_tail_out_of_a_blocks_bounds_is_refused(offset, size):
    with pytest.raises(PeerProtocolError):
        BlockTail(1, D1, offset, bytes(size))


def test_a_fetch_can_say_how_much_of_its_first_block_it_holds():
    assert decode_one(encode(Hello("fetch", addr(1), 0, want=(D1,), held=5))).held == 5
    assert "held" not in Hello("fetch", addr(1), 0, want=(D1,)).to_json()
    with pytest.raises(PeerProtocolError):
        Hello("fetch", addr(1), 0, held=MAX_BLOCK + 1)
