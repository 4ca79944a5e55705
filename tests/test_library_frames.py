"""The library frames of the peer protocol: bounds and bad input (no sockets)."""

from __future__ import annotations

import json

import pytest

from client.peerproto import (HEADER, VERSION, MAX_LIBRARY_WANT, Addr, FrameDecoder, LibraryEnd,
                              LibraryFetch, PeerProtocolError, encode)


def _frame(kind: int, obj) -> bytes:
    payload = json.dumps(obj).encode()
    return HEADER.pack(kind, len(payload)) + payload


def _decode(data: bytes):
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder.next_message()


GOOD = {"proto": "relaytv", "version": VERSION, "ip": "127.0.0.2", "port": 9092,
        "film": "0123456789abcdef", "blocks": [0, 1]}


def test_a_library_fetch_round_trips():
    request = LibraryFetch(Addr("127.0.0.2", 9092), "0123456789abcdef", (4, 2))
    assert _decode(encode(request)) == request
    assert _decode(_frame(LibraryFetch.TYPE, GOOD)).blocks == (0, 1)


@pytest.mark.parametrize("change", [
    {"film": "../../etc/passwd"}, {"film": "0123456789ABCDEF"}, {"film": 7},
    {"blocks": [-1]}, {"blocks": [10_000]}, {"blocks": [True]}, {"blocks": "0-3"},
    {"blocks": list(range(MAX_LIBRARY_WANT + 1))}, {"proto": "other"}, {"version": VERSION - 1},
    {"ip": "not an ip"},
])
def test_bad_library_fetches_are_refused(change):
    with pytest.raises(PeerProtocolError):
        _decode(_frame(LibraryFetch.TYPE, {**GOOD, **change}))


@pytest.mark.parametrize("missing", [[-1], ["3"], "all", [None]])
def test_bad_library_ends_are_refused(missing):
    with pytest.raises(PeerProtocolError):
        _decode(_frame(LibraryEnd.TYPE, {"missing": missing}))
