"""The blocks of a store directory: which files count, in which order.

The client writes each block atomically (a temporary name that starts with
``.`` or ends in ``.part``, then a rename to ``*.mkv``), and the name order of
the blocks is their play order. Everything else in the directory
(``status.json``, temporary files, sub-directories) is not a block.

This module only reads the directory; it is shared by the player and by the
client's menu (:func:`waiting_blocks`).
"""

from __future__ import annotations

import os
from pathlib import Path

from player.errors import StoreError

BLOCK_SUFFIX = ".mkv"
TEMP_PREFIX = "."
TEMP_SUFFIX = ".part"

#: Every Matroska (and WebM) file starts with the EBML magic number.
MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"


def is_block_name(name: str) -> bool:
    """True for a finished block's file name (``*.mkv``, not a temporary name)."""
    return (name.endswith(BLOCK_SUFFIX) and not name.startswith(TEMP_PREFIX)
            and not name.endswith(TEMP_SUFFIX))


def waiting_blocks(directory: str | os.PathLike) -> list[tuple[str, int]]:
    """The blocks waiting in ``directory`` for display, oldest first, with sizes.

    Returns ``[(name, size_in_bytes), ...]`` in play order (name order). The
    block the player is showing right now is included: it stays on disk until
    its end. Raises ``OSError`` when the directory cannot be read.
    """
    blocks = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not is_block_name(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                size = entry.stat().st_size
            except FileNotFoundError:  # deleted between the listing and the stat
                continue
            blocks.append((entry.name, size))
    blocks.sort()
    return blocks


def block_names(directory: str | os.PathLike) -> list[str]:
    """Just the names of :func:`waiting_blocks`, in play order."""
    return [name for name, _ in waiting_blocks(directory)]


def looks_like_matroska(path: str | os.PathLike) -> bool:
    """True when the file starts with the EBML magic number of Matroska.

    A missing or unreadable file is not Matroska either.
    """
    try:
        with open(Path(path), "rb") as f:
            return f.read(len(MATROSKA_MAGIC)) == MATROSKA_MAGIC
    except OSError:
        return False


def check_store(directory: str | os.PathLike, *, writable: bool) -> Path:
    """The store as a ``Path``, or :class:`StoreError` saying what is wrong with it.

    ``writable``: the player will delete played blocks there.
    """
    store = Path(directory)
    if not store.exists():
        raise StoreError(f"store directory {store} does not exist")
    if not store.is_dir():
        raise StoreError(f"{store} is not a directory")
    try:
        with os.scandir(store):
            pass
    except OSError as e:
        raise StoreError(f"cannot read store directory {store}: {e.strerror}") from None
    if writable and not os.access(store, os.W_OK | os.X_OK):
        raise StoreError(f"cannot delete blocks in {store}: no write permission "
                         f"(--keep plays without deleting)")
    return store
