"""Read what a growing log file gained since the last look, never the whole file again.

The demo looks at a player's log every few seconds; that log can grow by
megabytes, so reading it whole each time costs more every time. A
:class:`FileTail` keeps its offset and hands back only complete new lines.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The most one :meth:`FileTail.new_lines` reads; the rest waits for the next call.
MAX_READ = 4 * 1024 * 1024


class FileTail:
    """The complete lines appended to ``path`` since the previous call."""

    def __init__(self, path: Path, max_read: int = MAX_READ):
        self.path = Path(path)
        self.max_read = max_read
        #: Where the next read starts: the bytes before it were read once.
        self.offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        """Lines completed since the last call (an unfinished last line waits).

        A file that shrank (replaced or truncated) is read again from its start.
        """
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.offset, self._partial = 0, b""
                f.seek(self.offset)
                data = f.read(min(self.max_read, size - self.offset))
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]
