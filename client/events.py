"""The client's structured events: what happened, as data, one JSON object a line.

The log is for people and its wording may change; ``<store>/events.jsonl``
is for programs (tests, tools): each line has ``t`` (Unix time), ``event``
(one of :data:`EVENTS`) and exactly that event's fields. This module builds
and reads the lines; :mod:`client.eventlog` writes them.
"""

from __future__ import annotations

import json

from client.peerproto import Addr

#: The file in the store.
FILE = "events.jsonl"

#: Every event and its fields (docs/guide/web.rst says what each means).
EVENTS: dict[str, tuple[str, ...]] = {
    "parent_lost": ("parent", "reason"),
    "rejoin": ("cause", "lost", "silent", "moved_by"),
    "attached": ("parent", "depth", "was", "how", "cause"),
    "repair_started": ("missing", "sources", "held"),
    "repair_source_failed": ("source", "why"),
    "repair_done": ("by_source", "repaired", "lost"),
    "gap": ("kind", "count", "sources"),
    "child_added": ("child", "resumes", "missed"),
    "child_gone": ("child", "kind", "reason"),
}

#: Free text (a reason, a cause) is cut to this many characters: it may quote a peer.
MAX_TEXT = 200

#: The kinds of ``child_gone``, from the first words of the link's reason.
CHILD_GONE_KINDS = (("left", "left"), ("silent", "silent"), ("closed", "closed"),
                    ("connection closed", "closed"), ("dropped:", "dropped"),
                    ("moved elsewhere", "moved"), ("cut:", "cut"),
                    ("send failed:", "send failed"), ("internal error:", "internal error"))


class EventError(ValueError):
    """An event that is not in :data:`EVENTS` or lacks or adds a field: a bug of the caller."""


def record(t: float, event: str, **fields) -> str:
    """The line of ``event`` at Unix time ``t``; fields in :data:`EVENTS`' order."""
    names = EVENTS.get(event)
    if names is None:
        raise EventError(f"unknown event {event!r}")
    if set(fields) != set(names):
        raise EventError(f"{event} has fields {sorted(names)}, not {sorted(fields)}")
    obj = {"t": round(t, 3), "event": event}
    obj.update((name, plain(fields[name])) for name in names)
    return json.dumps(obj, separators=(",", ":")) + "\n"


def plain(value):
    """``value`` as JSON data: addresses as ``ip:port``, text cut to :data:`MAX_TEXT`."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, Addr):
        return str(value)
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return plain(str(value))


def child_gone_kind(reason: str) -> str:
    """Why a child link ended, as one of a few kinds; ``error`` for a failed read (a
    reset, a protocol violation)."""
    for prefix, kind in CHILD_GONE_KINDS:
        if reason == prefix or (prefix.endswith(":") and reason.startswith(prefix)):
            return kind
    return "error"


def parse(text: str) -> list[dict]:
    """The events of a file's text; a last line still being written is left out."""
    found = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        if isinstance(obj, dict) and obj.get("event") in EVENTS:
            found.append(obj)
    return found
