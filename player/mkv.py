"""A block's real duration, read from its Matroska header (Segment > Info > Duration).

Blocks are not all 2 s long (a film cut with ``-c copy`` has blocks of
2.1-2.9 s), so the player's distance to live is the sum of the real
durations of the blocks waiting. The muxer writes the duration into the
segment's Info element, near the start of the file: reading a few KiB and
walking the EBML elements is enough, with no decoder and no process.
"""

from __future__ import annotations

import os
import struct

#: Element ids (with their length marker bits, as they appear in the file).
EBML = 0x1A45DFA3
SEGMENT = 0x18538067
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
#: Level-1 elements that may come before Info and are skipped over.
CLUSTER = 0x1F43B675

#: How much of a file is read: Info comes before the first Cluster.
HEAD_BYTES = 64 * 1024

_UNKNOWN = -1


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, next position)."""
    if pos >= len(data):
        raise ValueError("truncated")
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8 or pos + length > len(data):
        raise ValueError("bad or truncated variable-length integer")
    value = first if keep_marker else first & (mask - 1)
    all_ones = value == mask - 1
    for byte in data[pos + 1:pos + length]:
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    if not keep_marker and all_ones:
        value = _UNKNOWN
    return value, pos + length


def _element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(id, size, position of the payload) of the element at ``pos``."""
    ident, pos = _vint(data, pos, keep_marker=True)
    size, pos = _vint(data, pos, keep_marker=False)
    return ident, size, pos


def duration_from_head(data: bytes) -> float | None:
    """The duration in seconds from a file's first bytes, or None when it is not there."""
    try:
        ident, size, pos = _element(data, 0)
        if ident != EBML:
            return None
        pos += size
        ident, size, pos = _element(data, pos)
        if ident != SEGMENT:
            return None
        while pos < len(data):
            ident, size, payload = _element(data, pos)
            if ident == INFO:
                return _info_duration(data[payload:payload + size] if size >= 0 else data[payload:])
            if ident == CLUSTER or size < 0:
                return None
            pos = payload + size
    except ValueError:
        return None
    return None


def _info_duration(info: bytes) -> float | None:
    scale = 1_000_000  # nanoseconds per tick, Matroska's default
    duration = None
    pos = 0
    while pos < len(info):
        ident, size, payload = _element(info, pos)
        if size < 0 or payload + size > len(info):
            break
        body = info[payload:payload + size]
        if ident == TIMECODE_SCALE and 1 <= size <= 8:
            scale = int.from_bytes(body, "big")
        elif ident == DURATION and size in (4, 8):
            duration = struct.unpack(">f" if size == 4 else ">d", body)[0]
        pos = payload + size
    if duration is None or not duration > 0 or scale <= 0:
        return None
    return duration * scale / 1e9


def block_duration(path: str | os.PathLike) -> float | None:
    """The real duration of the block at ``path`` in seconds; None when unknown or unreadable."""
    try:
        with open(path, "rb") as f:
            return duration_from_head(f.read(HEAD_BYTES))
    except OSError:
        return None
