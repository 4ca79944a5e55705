"""HTTP/1.1 as the web view speaks it, as pure data transformations (bytes in, bytes out).

The server is read-only and small, so the wire is too: a request head of at
most :data:`MAX_HEAD` bytes, ``GET`` or ``HEAD`` only, a path of at most
:data:`MAX_TARGET` bytes, at most :data:`MAX_HEADERS` header lines, no body,
one request per connection (``Connection: close``). Anything else is an
:class:`HttpError` carrying the status to answer with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_HEAD = 8192
MAX_TARGET = 1024
MAX_HEADERS = 40
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           414: "URI Too Long", 431: "Request Header Fields Too Large",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class HttpError(ValueError):
    """A request we refuse, with the status that says why."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    headers: dict = field(default_factory=dict)


def head_end(buffer: bytes) -> int:
    """Where the request head ends (after the blank line), -1 while it is incomplete.

    Raises :class:`HttpError` as soon as the head is longer than allowed.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        return -1
    if end + 4 > MAX_HEAD:
        raise HttpError(431, "request head too large")
    return end + 4


def parse_head(head: bytes) -> Request:
    """The request of a complete head (as :func:`head_end` delimited it)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head is not ASCII") from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "unsupported HTTP version")
    if len(target) > MAX_TARGET:
        raise HttpError(414, "request target too long")
    if method not in ("GET", "HEAD"):
        raise HttpError(405, "read-only: GET and HEAD only")
    if not target.startswith("/"):
        raise HttpError(400, "request target is not a path")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header lines")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    path, _, query = target.partition("?")
    return Request(method, path, query, headers)


def response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, extra: dict | None = None) -> bytes:
    """A whole response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Cache-Control: no-store", "X-Content-Type-Options: nosniff", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def error_response(error: HttpError) -> bytes:
    return response(error.status, f"{error.status} {REASONS.get(error.status, 'Error')}: "
                                  f"{error}\n".encode())


def sse_head() -> bytes:
    return ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n").encode()


def sse_event(name: str, data: str, event_id: int | None = None) -> bytes:
    """One Server-Sent Event (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n".encode()
