"""The library's films for the web view, as plain data: the list, VOD playlists, segments.

A film is looked up in the library's own table (:class:`client.library.Library`)
by its version or its name, never by a path made of the request: the request
only chooses an entry of that table and a block index within its manifest,
and the block is read with the entry's own reader. A film plays when this
client holds all its blocks. Segment ``i`` starts at the sum of the durations
before it (the manifest's), so that the MPEG-TS timestamps run on across
segments as they do on ``/live.m3u8``. Pure code, no sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from player.mkv import read_block_info
from server.manifest import MAX_BLOCKS, VERSION_HEX, ManifestError, check_name

#: ``/library/<version-or-name>.m3u8`` and ``/library/<version>/<index>.ts|mp4``.
PLAYLIST = re.compile(r"^/library/([^/]{1,100})\.m3u8$")
SEGMENT = re.compile(rf"^/library/([0-9a-f]{{{VERSION_HEX}}})/(\d{{1,{len(str(MAX_BLOCKS))}}})"
                     r"\.(mp4|ts)$")


@dataclass(frozen=True)
class Film:
    """A complete film of the library, as the web view serves it."""

    item: object                  # the client.library.Item
    mime: str | None              # of its first block, for Media Source Extensions

    @property
    def manifest(self):
        return self.item.manifest

    @property
    def durations(self) -> list[float]:
        return [float(b.get("duration") or 2.0) for b in self.manifest.blocks]

    def ts_offset(self, index: int) -> float:
        return sum(self.durations[:index])

    def to_json(self) -> dict:
        """One entry of ``/api/library`` (docs/guide/web.rst)."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "origin": self.item.origin,
                "blocks": len(m), "bytes": m.size, "duration": round(sum(self.durations), 3),
                "mime": self.mime, "playlist": f"/library/{m.version}.m3u8",
                "segments": f"/library/{m.version}/"}

    def playlist(self) -> str:
        """The whole film as an HLS VOD playlist of MPEG-TS segments."""
        durations = self.durations
        target = max(round(d + 0.5) for d in durations)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:VOD",
                 f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0"]
        for index, duration in enumerate(durations):
            lines += [f"#EXTINF:{duration:.3f},", f"/library/{self.manifest.version}/{index}.ts"]
        return "\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n"


def complete_films(library) -> list:
    """The library's items that are films held whole, by name then version."""
    if library is None:
        return []
    return sorted((i for i in library.items()
                   if i.manifest.kind == "film" and len(i.have) == len(i.manifest)),
                  key=lambda i: (i.manifest.name, i.version))


def find_film(library, key: str):
    """The complete film whose version is ``key``, else the first one named ``key``."""
    try:
        check_name(key)
    except ManifestError:
        return None
    films = complete_films(library)
    for item in films:
        if item.version == key:
            return item
    return next((i for i in films if i.manifest.name == key), None)


def first_block_mime(item) -> str | None:
    """The MSE type of a film's first block (None when it cannot be read)."""
    try:
        return read_block_info(item.read(0)).mime
    except (OSError, ValueError):
        return None
