"""The stock protocol codec (server/protocol.py): pure, no sockets, no sleeps."""

from __future__ import annotations

import ast

import pytest

from server import protocol
from server.protocol import (BadAnswer, BadRequest, ProtocolError, Request, encode_count,
                             encode_join_answer, encode_list, encode_request,
                             parse_client_list, parse_count, parse_join_answer,
                             parse_request, request_complete)


# ------------------------------------------------------------------ requests

@pytest.mark.parametrize("data, code, channel", [
    (b"100", "10", 0),
    (b"111", "11", 1),
    (b"122", "12", 2),
    (b"139", "13", 9),
    (b"  101\r\n", "10", 1),          # white space around is stripped
    (b"\t131 ", "13", 1),
    (b"101xyz", "10", 1),             # anything past the third character is ignored
    (b"1011234567", "10", 1),
    (b"101" + b"\xff" * 5, None, None),  # ... but the stock server decodes it all
])
def test_parse_request_as_the_stock_server(data, code, channel):
    if code is None:
        with pytest.raises(BadRequest, match="UTF-8"):
            parse_request(data)
    else:
        assert parse_request(data) == Request(code, channel)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"   \r\n\t", "empty"),
    (b"1", "too short"),
    (b"10", "too short"),
    (b" 10 ", "too short"),
    (b"ab1", "not two digits"),
    (b"1a1", "not two digits"),
    (b"-11", "not two digits"),
    (b"1 0", "not two digits"),
    ("١٠١".encode(), "not two digits"),    # Arabic-Indic digits are not ASCII digits
    (b"141", "unknown code"),
    (b"001", "unknown code"),
    (b"99x", "unknown code"),
    (b"10x", "channel 'x' is not a digit"),
    (b"10 ", "too short"),
    (b"10-1", "channel '-' is not a digit"),
    ("10\u0661".encode(), "channel '\u0661' is not a digit"),
    (b"\xff\xfe\xfd", "UTF-8"),
    (b"\x00\x00\x00", "not two digits"),
    (b"x" * 1_000_000, "not two digits"),
])
def test_parse_request_rejects_malformed(data, reason):
    with pytest.raises(BadRequest, match=reason) as info:
        parse_request(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value)                      # prints on one line
    assert "\n" not in str(info.value)


def test_parse_request_channel_range():
    assert parse_request(b"131", channels=2) == Request("13", 1)
    with pytest.raises(BadRequest, match=r"channel 2 out of range \(channels 0-1\)"):
        parse_request(b"102", channels=2)
    with pytest.raises(BadRequest, match="out of range"):
        parse_request(b"119", channels=1)


def test_parse_request_looks_at_1024_bytes_only():
    # The stock server reads at most 1,024 bytes; padding past it does not count.
    assert parse_request(b" " * 1021 + b"101") == Request("10", 1)
    with pytest.raises(BadRequest, match="empty"):
        parse_request(b" " * 1024 + b"101")


def test_bad_request_message_is_bounded():
    with pytest.raises(BadRequest) as info:
        parse_request(b"x" * 1_000_000)
    assert len(str(info.value)) < 200
    assert "1024 bytes" in str(info.value)


def test_request_is_validated_when_built():
    with pytest.raises(BadRequest):
        Request("14", 0)
    with pytest.raises(BadRequest):
        Request("10", 10)
    with pytest.raises(BadRequest):
        Request("10", -1)
    with pytest.raises(BadRequest):
        Request("10", True)
    with pytest.raises(AttributeError):
        Request("10", 1).channel = 2          # frozen


def test_request_complete():
    assert not request_complete(b"")
    assert not request_complete(b"10")
    assert not request_complete(b"   \n 1")
    assert request_complete(b"101")
    assert request_complete(b"  10x")
    assert request_complete(b" " * 1024)     # the read bound: give up waiting


def test_encode_request_round_trips():
    for code in (protocol.JOIN, protocol.LIST, protocol.LEAVE, protocol.COUNT):
        for channel in range(10):
            data = encode_request(code, channel)
            assert len(data) == 3
            assert parse_request(data) == Request(code, channel)
    assert encode_request("10", 1) == b"101"


@pytest.mark.parametrize("code, channel", [("14", 0), ("1", 0), ("100", 0), ("10", 10),
                                           ("10", -1)])
def test_encode_request_refuses_what_cannot_be_sent(code, channel):
    with pytest.raises(ValueError):
        encode_request(code, channel)


# ------------------------------------------------------------------- answers

def test_constants():
    assert (protocol.JOIN, protocol.LIST, protocol.LEAVE, protocol.COUNT) == \
        ("10", "11", "12", "13")
    assert (protocol.JOINED, protocol.FULL) == (b"10", b"00")
    assert protocol.EBML_MAGIC == bytes([0x1A, 0x45, 0xDF, 0xA3])


def test_join_answer():
    assert encode_join_answer(True) == b"10"
    assert encode_join_answer(False) == b"00"
    assert parse_join_answer(b"10") is True
    assert parse_join_answer(b"00") is False
    for bad in (b"", b"1", b"01", b"100", b"\x1a\x45\xdf\xa3"):
        with pytest.raises(BadAnswer):
            parse_join_answer(bad)


@pytest.mark.parametrize("ips", [[], ["127.0.0.2"], ["127.0.0.2", "127.0.0.3"],
                                 ["10.0.0.1", "192.168.255.255", "0.0.0.0"]])
def test_list_answer_is_exactly_str_of_list(ips):
    data = encode_list(ips)
    assert data == str(ips).encode()
    assert parse_client_list(data) == ips


def test_list_answer_examples():
    assert encode_list([]) == b"[]"
    assert encode_list(["127.0.0.2", "127.0.0.3"]) == b"['127.0.0.2', '127.0.0.3']"


def test_count_answer():
    assert encode_count(0) == b"0"
    assert encode_count(12) == b"12"
    assert parse_count(b"2") == 2
    assert parse_count(b" 12\n") == 12
    for bad in (b"", b"-1", b"1.0", b"x", b"1 2", b"9" * 30):
        with pytest.raises(BadAnswer):
            parse_count(bad)
    with pytest.raises(ValueError):
        encode_count(-1)


# ----------------------------------------------------------- strict list parser

@pytest.mark.parametrize("data, ips", [
    (b"[]", []),
    (b"  [ ]  ", []),
    (b"\n[\t]\r\n", []),
    (b"['1.2.3.4']", ["1.2.3.4"]),
    (b'["1.2.3.4"]', ["1.2.3.4"]),
    (b"['1.2.3.4', \"5.6.7.8\"]", ["1.2.3.4", "5.6.7.8"]),
    (b"[ '1.2.3.4' ,'5.6.7.8' ]", ["1.2.3.4", "5.6.7.8"]),
    (b"[\n  '255.255.255.255',\n  '0.0.0.0'\n]\n", ["255.255.255.255", "0.0.0.0"]),
])
def test_parse_client_list_accepts(data, ips):
    assert parse_client_list(data) == ips


@pytest.mark.parametrize("data", [
    b"",
    b"   ",
    b"[",
    b"]",
    b"['1.2.3.4'",                         # unclosed list
    b"'1.2.3.4'",                          # no list
    b"('1.2.3.4',)",                       # a tuple is not a list
    b"['1.2.3.4',]",                       # trailing comma: str(list) never writes it
    b"[,]",
    b"['1.2.3.4' '5.6.7.8']",              # missing comma
    b"['1.2.3.4',, '5.6.7.8']",
    b"['1.2.3.4\"]",                       # mismatched quotes
    b"['1.2.3.4]",                         # unbalanced quote
    b"[\"1.2.3.4]",
    b"['1.2.3.4'']",
    b"[1.2.3.4]",                          # unquoted
    b"['1.2.3']",                          # not a dotted quad
    b"['1.2.3.4.5']",
    b"['256.1.1.1']",
    b"['01.2.3.4']",                       # leading zero
    b"['1.2.3.4 ']",                       # space inside the quotes
    b"[' 1.2.3.4']",
    b"['a.b.c.d']",
    b"['localhost']",
    b"['::1']",
    b"['']",
    b"['1.2.3.4'] x",                      # junk after the list
    b"['1.2.3.4'][]",
    b"[['1.2.3.4']]",
    b"[__import__('os')]",
    b"__import__('os').system('true')",
    b"[__import__('os').system('true')]",
    b"['1.2.3.4', __import__('os')]",
    b"[b'1.2.3.4']",
    b"[r'1.2.3.4']",
    b"[f'1.2.3.4']",
    b"['''1.2.3.4''']",
    b"['1.2.3.4' + '']",
    b"['\\x31.2.3.4']",                    # escapes are not data here
    "['1.2.3.\u0664']".encode(),           # non-ASCII digit
    b"['1.2.3.4']\x00",
    b"\xff[]",
])
def test_parse_client_list_rejects(data):
    with pytest.raises(BadAnswer) as info:
        parse_client_list(data)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ProtocolError)


def test_parse_client_list_never_evaluates(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("evaluated network data")

    monkeypatch.setattr("builtins.eval", forbidden)
    monkeypatch.setattr(ast, "literal_eval", forbidden)
    assert parse_client_list(b"['127.0.0.2']") == ["127.0.0.2"]
    with pytest.raises(BadAnswer):
        parse_client_list(b"[__import__('os')]")


def test_parse_client_list_bounds_its_input():
    ok = encode_list(["10.0.0.1"] * 4000)             # about 52 KB
    assert len(parse_client_list(ok)) == 4000
    too_long = encode_list(["10.0.0.1"] * 6000)       # about 78 KB
    with pytest.raises(BadAnswer, match="longer than"):
        parse_client_list(too_long)
    with pytest.raises(BadAnswer, match="longer than"):
        parse_client_list(b" " * (protocol.MAX_LIST_ANSWER + 1) + b"[]")


def test_parse_client_list_fed_one_byte_more_at_a_time():
    # Every proper prefix of a valid answer is incomplete, hence an error: a
    # reader must buffer to the end of the stream before parsing.
    data = encode_list(["127.0.0.2", "127.0.0.3"])
    for end in range(len(data)):
        with pytest.raises(BadAnswer):
            parse_client_list(data[:end])
    assert parse_client_list(data) == ["127.0.0.2", "127.0.0.3"]


def test_parse_client_list_takes_text_too():
    assert parse_client_list("['127.0.0.2']") == ["127.0.0.2"]
    with pytest.raises(BadAnswer):
        parse_client_list("['127.0.0.\u0662']")
