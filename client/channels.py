"""Which channels the server has, asked the only way the stock protocol allows: ``13X``.

Our server and the stock one both answer a count for a channel they have and
close a request for any other without a word (the stock server's handler
crashes on it, PROTOCOL.md). The client asks before a switch of channel and
after a join that got no answer, so that a channel the server lacks ends in
a clear message instead of endless retries.
"""

from __future__ import annotations

from client.links import StockServer
from server import protocol as stock


def channel_count(server: StockServer) -> int | None:
    """How many channels the server has (they are 0 to N-1); None when it cannot be asked."""
    try:
        for channel in range(stock.MAX_CHANNELS):
            if server.count(channel) is None:
                return channel
    except (OSError, stock.ProtocolError):
        return None
    return stock.MAX_CHANNELS


def missing_channel(server: StockServer, channel: int) -> str | None:
    """None when the server has ``channel``; else a sentence that says which it has.

    Raises OSError when the server is not reachable, :class:`stock.ProtocolError`
    when its count is not a number.
    """
    if server.count(channel) is not None:
        return None
    channels = channel_count(server)
    has = f"it has channels 0-{channels - 1}" if channels else "it has none"
    return f"the server {server.host}:{server.port} has no channel {channel} ({has})"


def why_not_join(server: StockServer, channel: int) -> str | None:
    """Why ``channel`` cannot be joined now, for the user; None when the server has it."""
    try:
        return missing_channel(server, channel)
    except OSError as exc:
        return f"the server {server.host}:{server.port} is not reachable ({exc})"
    except stock.ProtocolError as exc:
        return f"the server {server.host}:{server.port} gave a bad answer: {exc}"
