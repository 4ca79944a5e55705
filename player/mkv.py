"""What a Matroska block says about itself: its duration and its codecs, read without ffmpeg.

The player needs a block's real duration (its distance to live is the sum of
the real durations of the blocks waiting: a film cut with ``-c copy`` has
blocks of 2.1-2.9 s). The web view needs a block's real duration (HLS ``EXTINF``, the timestamp
offset that keeps MPEG-TS segments continuous) and its codecs (the MIME type
of a Media Source Extensions buffer, a discontinuity when they change) the
moment the block is stored. Both sit in the Matroska header (``Info`` and
``Tracks``), so a small EBML walk over the first bytes finds them in
microseconds. Pure code: bytes in, a :class:`BlockInfo` out; every size read
from the data is bounded by the data itself.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

SEGMENT, INFO, TRACKS, CLUSTER = 0x18538067, 0x1549A966, 0x1654AE6B, 0x1F43B675
TIMESTAMP_SCALE, DURATION = 0x2AD7B1, 0x4489
TRACK_ENTRY, TRACK_TYPE, CODEC_ID, CODEC_PRIVATE = 0xAE, 0x83, 0x86, 0x63A2
VIDEO, PIXEL_WIDTH, PIXEL_HEIGHT = 0xE0, 0xB0, 0xBA
#: Only this much of a block is walked: the header elements come first.
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class BlockInfo:
    """Duration in seconds (None: not written), RFC 6381 codec names, the video frame size."""

    duration: float | None
    codecs: tuple[str, ...]
    width: int = 0
    height: int = 0

    @property
    def mime(self) -> str | None:
        """The fragmented-MP4 MIME type for this block, None when a codec is not known."""
        if not self.codecs or any(c.startswith("?") for c in self.codecs):
            return None
        return f'video/mp4; codecs="{", ".join(self.codecs)}"'

    def format_key(self) -> tuple:
        """What must stay equal between two blocks for a player to go on without a reset."""
        return (self.codecs, self.width, self.height)


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, next position); -1 for 'unknown size'."""
    if pos >= len(data):
        raise ValueError("truncated")
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        raise ValueError("bad variable-length integer")
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, pos + length


def _elements(data: bytes, start: int, end: int):
    """(id, payload start, payload end) of each element between ``start`` and ``end``."""
    pos = start
    while pos < end:
        ident, pos = _vint(data, pos, keep_marker=True)
        size, pos = _vint(data, pos, keep_marker=False)
        stop = end if size < 0 else min(end, pos + size)
        yield ident, pos, stop
        pos = stop


def _uint(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "big")


def _codec(codec_id: str, private: bytes) -> str:
    if codec_id == "V_MPEG4/ISO/AVC" and len(private) >= 4:
        return f"avc1.{private[1]:02x}{private[2]:02x}{private[3]:02x}"
    if codec_id == "A_AAC":
        object_type = private[0] >> 3 if private else 2
        return f"mp4a.40.{object_type}"
    if codec_id == "A_OPUS":
        return "opus"
    if codec_id == "V_VP9":
        return "vp9"
    if codec_id == "V_VP8":
        return "vp8"
    return "?" + codec_id[:32]


def _track(data: bytes, start: int, end: int) -> tuple[int, str, int, int]:
    kind, codec_id, private, width, height = 0, "", b"", 0, 0
    for ident, a, b in _elements(data, start, end):
        if ident == TRACK_TYPE:
            kind = _uint(data[a:b])
        elif ident == CODEC_ID:
            codec_id = data[a:b].decode("ascii", "replace").rstrip("\0")
        elif ident == CODEC_PRIVATE:
            private = data[a:b]
        elif ident == VIDEO:
            for vid, va, vb in _elements(data, a, b):
                if vid == PIXEL_WIDTH:
                    width = _uint(data[va:vb])
                elif vid == PIXEL_HEIGHT:
                    height = _uint(data[va:vb])
    return kind, _codec(codec_id, private), width, height


def read_block_info(block: bytes) -> BlockInfo:
    """The duration and codecs of one Matroska block (what is missing stays empty)."""
    data = bytes(block[:HEAD_LIMIT])
    scale, duration, tracks, width, height = 1_000_000, None, [], 0, 0
    try:
        for ident, start, end in _elements(data, 0, len(data)):
            if ident != SEGMENT:
                continue
            for child, a, b in _elements(data, start, end):
                if child == CLUSTER:
                    break
                if child == INFO:
                    for field, fa, fb in _elements(data, a, b):
                        if field == TIMESTAMP_SCALE:
                            scale = _uint(data[fa:fb]) or scale
                        elif field == DURATION and fb - fa in (4, 8):
                            duration = struct.unpack(">f" if fb - fa == 4 else ">d", data[fa:fb])[0]
                elif child == TRACKS:
                    for entry, ea, eb in _elements(data, a, b):
                        if entry == TRACK_ENTRY:
                            kind, codec, w, h = _track(data, ea, eb)
                            tracks.append((kind != 1, codec))  # video first
                            if kind == 1:
                                width, height = w, h
            break
    except ValueError:
        pass
    seconds = duration * scale / 1e9 if duration is not None and duration > 0 else None
    return BlockInfo(seconds, tuple(c for _, c in sorted(tracks)), width, height)


def duration_from_head(data: bytes) -> float | None:
    """The duration in seconds from a file's first bytes, or None when it is not there."""
    return read_block_info(data).duration


def block_duration(path: str | os.PathLike) -> float | None:
    """The real duration of the block at ``path`` in seconds; None when unknown or unreadable."""
    try:
        with open(path, "rb") as f:
            return duration_from_head(f.read(HEAD_LIMIT))
    except OSError:
        return None
