"""The stock channel server's request/answer codec, as pure data transformations.

Nothing here touches a socket (the h11 style, see STYLE.md): the server and the
client read and write the bytes; this module says what they mean. The wire
behaviour is the stock server's, described in docs/report/protocol.rst.

Requests (client -> server, one per TCP connection)::

    <code:2 ASCII digits><channel:1 ASCII digit>     e.g. b"101"

The stock server reads up to :data:`MAX_REQUEST` bytes, strips surrounding
white space and looks only at characters 0-1 and 2; the rest is ignored.
:func:`parse_request` does the same, but turns every malformed message into a
:class:`BadRequest` naming the reason instead of crashing.

Answers (server -> client):

* join (``10X``): :data:`JOINED` or :data:`FULL`, on a new connection to the
  client's push port (:func:`encode_join_answer`, :func:`parse_join_answer`);
* list (``11X``): the text of a Python list of IP strings, exactly as
  ``str(list)`` writes it (:func:`encode_list`); a client parses it with the
  strict :func:`parse_client_list`, never with ``eval``;
* count (``13X``): decimal text (:func:`encode_count`, :func:`parse_count`);
* leave (``12X``): no answer.

Client side: :func:`encode_request` builds a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# Request codes (text, as on the wire).
JOIN = "10"
LIST = "11"
LEAVE = "12"
COUNT = "13"
CODES = frozenset({JOIN, LIST, LEAVE, COUNT})

#: Join answers, sent on a new connection to the client's push port.
JOINED = b"10"
FULL = b"00"

#: Every Matroska block starts with these bytes: tells a block from a join answer.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"

#: The stock server reads at most this many bytes of a request.
MAX_REQUEST = 1024
#: Wire form of a request: two code digits and one channel digit.
REQUEST_LENGTH = 3
#: Channels are numbered with one digit on the wire.
MAX_CHANNELS = 10
#: Longest list answer :func:`parse_client_list` accepts (about 3,500 addresses).
MAX_LIST_ANSWER = 64 * 1024
#: Largest block relaytv handles, pushed by the server or relayed between
#: clients (the stock protocol sets no bound; a client refuses a larger push).
MAX_BLOCK = 32 * 1024 * 1024
#: Longest count answer :func:`parse_count` accepts.
MAX_COUNT_ANSWER = 20

_DIGITS = frozenset("0123456789")


class ProtocolError(ValueError):
    """Bytes that do not follow the stock protocol. Base of the errors below."""


class BadRequest(ProtocolError):
    """A request the server cannot act on; ``reason`` says why, in a few words."""

    def __init__(self, reason: str, data: bytes = b""):
        super().__init__(reason)
        self.reason = reason
        self.data = data

    def __str__(self) -> str:
        if not self.data:
            return self.reason
        shown = self.data[:40]
        more = "..." if len(self.data) > len(shown) else ""
        return f"{self.reason}: {shown!r}{more} ({len(self.data)} bytes)"


class BadAnswer(ProtocolError):
    """A server answer (list, count, join) that the stock protocol does not allow."""


@dataclass(frozen=True)
class Request:
    """One valid request: a known ``code`` and a channel number ``0..9``.

    Validated when built, so an invalid request cannot exist.
    """

    code: str
    channel: int

    def __post_init__(self):
        if self.code not in CODES:
            raise BadRequest(f"unknown code {self.code!r}")
        if (not isinstance(self.channel, int) or isinstance(self.channel, bool)
                or not 0 <= self.channel < MAX_CHANNELS):
            raise BadRequest(f"channel {self.channel!r} is not a digit 0-9")


# ---------------------------------------------------------------- requests

def request_complete(buffer: bytes) -> bool:
    """True once ``buffer`` holds all the server will read of a request.

    That is three characters after leading white space (anything later is
    ignored anyway), or :data:`MAX_REQUEST` bytes. The caller also stops at
    end of stream and at its read timeout.
    """
    return len(buffer) >= MAX_REQUEST or len(buffer.lstrip()) >= REQUEST_LENGTH


def parse_request(data: bytes, channels: int = MAX_CHANNELS) -> Request:
    """Parse a request as the stock server does, or raise :class:`BadRequest`.

    ``data`` is what was read (at most :data:`MAX_REQUEST` bytes are looked
    at); ``channels`` is how many channels the server has: a channel number at
    or past it is out of range.
    """
    data = data[:MAX_REQUEST]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("not UTF-8 text", data) from None
    text = text.strip()
    if not text:
        raise BadRequest("empty request", data)
    if len(text) < REQUEST_LENGTH:
        raise BadRequest("too short (want 3 characters: 2-digit code, 1-digit channel)", data)
    code, channel = text[0:2], text[2]
    if not set(code) <= _DIGITS:
        raise BadRequest(f"code {code!r} is not two digits", data)
    if code not in CODES:
        raise BadRequest(f"unknown code {code!r}", data)
    if channel not in _DIGITS:
        raise BadRequest(f"channel {channel!r} is not a digit", data)
    number = int(channel)
    if number >= channels:
        raise BadRequest(f"channel {number} out of range (channels 0-{channels - 1})", data)
    return Request(code, number)


def encode_request(code: str, channel: int) -> bytes:
    """The bytes a client sends for ``code`` (e.g. :data:`JOIN`) and ``channel``.

    >>> encode_request(JOIN, 1)
    b'101'
    """
    return f"{Request(code, channel).code}{channel}".encode("ascii")


# ----------------------------------------------------------------- answers

def encode_join_answer(joined: bool) -> bytes:
    """:data:`JOINED` or :data:`FULL`."""
    return JOINED if joined else FULL


def parse_join_answer(data: bytes) -> bool:
    """True for :data:`JOINED`, False for :data:`FULL`; anything else is a :class:`BadAnswer`."""
    if data == JOINED:
        return True
    if data == FULL:
        return False
    raise BadAnswer(f"join answer is neither {JOINED!r} nor {FULL!r}: {data[:20]!r}")


def encode_list(ips: Iterable[str]) -> bytes:
    """The list answer: exactly ``str(list_of_ip_strings)``, e.g. ``['127.0.0.2']``."""
    return str([str(ip) for ip in ips]).encode("ascii")


def encode_count(count: int) -> bytes:
    """The count answer: decimal text."""
    if count < 0:
        raise ValueError(f"negative count {count}")
    return str(int(count)).encode("ascii")


def parse_count(data: bytes) -> int:
    """The count from a count answer (decimal text, white space around allowed)."""
    if len(data) > MAX_COUNT_ANSWER:
        raise BadAnswer(f"count answer longer than {MAX_COUNT_ANSWER} bytes")
    text = data.strip()
    if not text or not all(48 <= b <= 57 for b in text):
        raise BadAnswer(f"count answer is not a decimal number: {data!r}")
    return int(text)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_SPACE = " \t\r\n"


def parse_client_list(data: bytes | str) -> list[str]:
    """The IP addresses of a list answer, parsed strictly as data.

    Accepts exactly a list of quoted dotted-quad strings: ``[``, items
    separated by ``,``, ``]``; each item in single or double quotes (the same
    on both ends); white space anywhere between tokens; ``[]`` for none. Octets
    are decimal ``0``-``255`` without leading zeros. Anything else (other
    literals, expressions, a trailing comma, unbalanced quotes, bytes past
    :data:`MAX_LIST_ANSWER`) raises :class:`BadAnswer`. Never evaluates.

    >>> parse_client_list(b"['127.0.0.2', \\"10.0.0.1\\"]")
    ['127.0.0.2', '10.0.0.1']
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_LIST_ANSWER:
        raise BadAnswer(f"list answer longer than {MAX_LIST_ANSWER} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BadAnswer("list answer is not ASCII") from None

    pos = 0

    def skip_space() -> None:
        nonlocal pos
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1

    def fail(what: str):
        raise BadAnswer(f"list answer: {what} at offset {pos}: {text[:60]!r}")

    skip_space()
    if pos >= len(text) or text[pos] != "[":
        fail("expected '['")
    pos += 1
    skip_space()
    ips: list[str] = []
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            if pos >= len(text) or text[pos] not in "'\"":
                fail("expected a quoted address")
            quote = text[pos]
            end = text.find(quote, pos + 1)
            if end < 0:
                fail("unbalanced quote")
            item = text[pos + 1:end]
            if not _DOTTED_QUAD.fullmatch(item):
                fail(f"{item[:20]!r} is not a dotted-quad address")
            ips.append(item)
            pos = end + 1
            skip_space()
            if pos < len(text) and text[pos] == ",":
                pos += 1
                skip_space()
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            fail("expected ',' or ']'")
    skip_space()
    if pos != len(text):
        fail("unexpected text after ']'")
    return ips
