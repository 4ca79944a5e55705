"""One HTTP request to the tracker or the server's feed, with a deadline for the whole of it.

``http.client`` bounds each ``recv`` only: a peer that sends one byte a
second holds the asking thread for as long as it likes. Here the request is
sent and its answer read until the peer closes (``Connection: close``), all
before one deadline and within a byte bound; only then is the answer parsed,
by ``http.client`` from memory.
"""

from __future__ import annotations

import http.client
import io
import time

from client.links import connect_from, read_until_closed

MAX_HEAD = 16 * 1024   # status line and headers of an answer


class _Recorded:
    """The received bytes, shaped like the socket ``http.client.HTTPResponse`` reads from."""

    def __init__(self, data: bytes):
        self._data = data

    def makefile(self, mode: str):
        return io.BytesIO(self._data)


def ask(own_ip: str | None, host: str, port: int, method: str, path: str, *,
        body: bytes | None = None, content_type: str | None = None,
        limit: int, within: float) -> tuple[int, str, bytes]:
    """``(status, reason, body)`` of one request, all of it within ``within`` seconds.

    ``OSError`` (``socket.timeout`` at the deadline) when the peer cannot be
    reached or does not finish in time; ``http.client.HTTPException`` when its
    answer is not HTTP or its body is over ``limit`` bytes.
    """
    deadline = time.monotonic() + within
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if body is not None:
        head += [f"Content-Type: {content_type or 'application/octet-stream'}",
                 f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    with connect_from(own_ip or "", host, port, within) as sock:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(request)   # with a timeout, sendall's bound is on the whole send
        raw = read_until_closed(sock, limit + MAX_HEAD, deadline)
    if len(raw) > limit + MAX_HEAD:
        raise http.client.HTTPException(f"answer over {limit} bytes")
    answer = http.client.HTTPResponse(_Recorded(raw), method=method)
    answer.begin()
    data = answer.read(limit + 1)
    if len(data) > limit:
        raise http.client.HTTPException(f"answer over {limit} bytes")
    return answer.status, answer.reason, data
