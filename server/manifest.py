"""The manifest of a library item, shared by the tracker and the clients.

A manifest says what a film or file is, block by block, so that a
downloader can check every block it receives before writing it::

    {"name": "canal0", "kind": "film", "size": 1234567, "block_size": 0,
     "blocks": [{"size": 40960, "sha256": "ab12...", "duration": 2.0}, ...]}

``kind`` is ``film`` (blocks cut by separa.py, ``NAME_00000.mkv``...; each
block has a ``duration`` in seconds) or ``file`` (any other file, cut into
fragments of ``block_size`` bytes, the last one shorter). The *version* of a
manifest is a hash of its canonical JSON: two peers that announce different
manifests under one name announce two versions, never a mix.

Everything here is pure: validation raises :class:`ManifestError` with a
message that names the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

#: Names a library item may have: no path separators, no leading dot.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,99}")
KINDS = ("film", "file")
MAX_BLOCKS = 10_000
MAX_BLOCK_SIZE = 32 * 1024 * 1024
MAX_DURATION = 3600.0
VERSION_HEX = 16
SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"[0-9a-f]{%d}" % VERSION_HEX)
FIELDS = {"name", "kind", "size", "block_size", "blocks"}
BLOCK_FIELDS = {"film": {"size", "sha256", "duration"}, "file": {"size", "sha256"}}


class ManifestError(ValueError):
    """A manifest (or a name) that the library does not accept; the message says why."""


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; build it with :meth:`parse` or :func:`of_blocks`."""

    name: str
    kind: str
    size: int
    block_size: int
    blocks: tuple[dict, ...]

    @classmethod
    def parse(cls, obj) -> "Manifest":
        if not isinstance(obj, dict):
            raise ManifestError("a manifest is a JSON object")
        unknown = set(obj) - FIELDS
        if unknown:
            raise ManifestError(f"unknown manifest field(s): {', '.join(sorted(unknown))}")
        name = check_name(obj.get("name"))
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ManifestError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        size = _int(obj.get("size"), "size", 0, MAX_BLOCKS * MAX_BLOCK_SIZE)
        block_size = _int(obj.get("block_size", 0), "block_size", 0, MAX_BLOCK_SIZE)
        blocks = obj.get("blocks")
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS:
            raise ManifestError(f"blocks must be a list of 1 to {MAX_BLOCKS} blocks")
        checked = tuple(_block(b, i, kind) for i, b in enumerate(blocks))
        if sum(b["size"] for b in checked) != size:
            raise ManifestError("size is not the sum of the block sizes")
        if kind == "file":
            if block_size < 1:
                raise ManifestError("a file's block_size must be at least 1")
            if any(b["size"] != block_size for b in checked[:-1]) or checked[-1]["size"] > block_size:
                raise ManifestError(f"a file's fragments are all {block_size} bytes but the last")
        elif block_size != 0:
            raise ManifestError("a film's block_size is 0 (its blocks vary in size)")
        return cls(name, kind, size, block_size, checked)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": self.size,
                "block_size": self.block_size, "blocks": [dict(b) for b in self.blocks]}

    @property
    def version(self) -> str:
        """The hash of the canonical JSON: equal manifests, equal versions."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:VERSION_HEX]

    def __len__(self) -> int:
        return len(self.blocks)

    def block_file(self, index: int) -> str:
        """The file name block ``index`` has in a folder of this item's blocks."""
        if self.kind == "film":
            return f"{self.name}_{index:05d}.mkv"
        return f"{index:05d}"

    def matches(self, index: int, data: bytes) -> bool:
        """Whether ``data`` is block ``index`` of this manifest."""
        block = self.blocks[index]
        return len(data) == block["size"] and hashlib.sha256(data).hexdigest() == block["sha256"]


def check_name(value) -> str:
    """A library name, or :class:`ManifestError` (``../``, slashes, control characters...)."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise ManifestError(f"bad name {value!r}: 1-100 letters, digits, '.', '_', '-' or spaces, "
                            "not starting with a dot, no '..'")
    return value


def check_version(value) -> str:
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise ManifestError(f"bad version {value!r}: {VERSION_HEX} hexadecimal digits")
    return value


def _int(value, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ManifestError(f"bad {name} {value!r}: a whole number from {low} to {high}")
    return value


def _block(obj, index: int, kind: str) -> dict:
    if not isinstance(obj, dict):
        raise ManifestError(f"block {index} is not an object")
    unknown = set(obj) - BLOCK_FIELDS[kind]
    if unknown:
        raise ManifestError(f"unknown field(s) in block {index}: {', '.join(sorted(unknown))}")
    size = _int(obj.get("size"), f"size of block {index}", 1, MAX_BLOCK_SIZE)
    digest = obj.get("sha256")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise ManifestError(f"bad sha256 of block {index}: 64 lowercase hexadecimal digits")
    out = {"size": size, "sha256": digest}
    if kind == "film":
        duration = obj.get("duration")
        if (not isinstance(duration, (int, float)) or isinstance(duration, bool)
                or not 0 < duration <= MAX_DURATION):
            raise ManifestError(f"bad duration of block {index}: seconds, over 0")
        out["duration"] = float(duration)
    return out


def of_blocks(name: str, kind: str, blocks: list[bytes], block_size: int = 0,
              durations: list[float] | None = None) -> Manifest:
    """The manifest of these blocks (the sharer's side)."""
    entries = []
    for index, data in enumerate(blocks):
        entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if kind == "film":
            entry["duration"] = float(durations[index]) if durations else 2.0
        entries.append(entry)
    return Manifest.parse({"name": name, "kind": kind, "size": sum(len(b) for b in blocks),
                           "block_size": block_size, "blocks": entries})


def ranges(indices) -> list[list[int]]:
    """``[0, 1, 2, 5]`` as ``[[0, 2], [5, 5]]``: holdings stay short on the wire."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def from_ranges(value, count: int) -> frozenset[int]:
    """The block indices ``[[first, last], ...]`` names, each within ``0..count-1``."""
    if not isinstance(value, list) or len(value) > MAX_BLOCKS:
        raise ManifestError(f"blocks held must be a list of at most {MAX_BLOCKS} [first, last] ranges")
    out: set[int] = set()
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
                or not 0 <= item[0] <= item[1] < count):
            raise ManifestError(f"bad range {item!r}: [first, last] within 0..{count - 1}")
        out.update(range(item[0], item[1] + 1))
    return frozenset(out)
