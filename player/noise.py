"""Keep the noise of the C libraries under libvlc out of the log (each distinct line once).

libvlc's own messages are silenced by ``--quiet``, but the libraries it loads
write to the process's standard error (file descriptor 2) themselves: the
ALSA library writes a dozen lines each time an audio output is tried
without a sound card, libvdpau a warning each time a decoder probes it, for
every block, for hours. :class:`StderrFilter` puts a pipe on descriptor 2 and
one thread that reads it: a line is logged the first time its shape (digits
and addresses aside) is seen, repeats are only counted and summed up once
at the end, and after :data:`MAX_DISTINCT` shapes nothing new is logged.
The player's own log lines go to the original standard error, untouched.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

log = logging.getLogger("player.libvlc")

#: Distinct line shapes logged before the filter logs no new ones.
MAX_DISTINCT = 100
#: Longest line kept (a line without a newline is cut there).
MAX_LINE = 4096

_VARIABLE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")


def shape(line: str) -> str:
    """A line with its numbers and addresses blanked: repeats of one message share it."""
    return _VARIABLE.sub("#", line.strip())


class RepeatCounter:
    """Which lines to let through: the first of each shape, up to ``max_distinct`` shapes (pure)."""

    def __init__(self, max_distinct: int = MAX_DISTINCT):
        self.max_distinct = max_distinct
        self.counts: dict[str, int] = {}
        self.dropped = 0      # lines of shapes beyond the bound
        self.overflowed = False

    def admit(self, line: str) -> bool:
        key = shape(line)
        if not key:
            return False
        if key in self.counts:
            self.counts[key] += 1
            return False
        if len(self.counts) >= self.max_distinct:
            self.dropped += 1
            return False
        self.counts[key] = 1
        return True

    @property
    def repeats(self) -> int:
        """Lines held back because a line of the same shape was logged before."""
        return sum(n - 1 for n in self.counts.values())


class StderrFilter:
    """Routes descriptor 2 through :class:`RepeatCounter` while it is started.

    ``start()`` before libvlc is loaded, ``stop()`` after it is released (it
    restores descriptor 2 and joins its thread). Logging handlers that wrote
    to ``sys.stderr`` write to the original standard error meanwhile.
    """

    def __init__(self, counter: RepeatCounter | None = None):
        self.counter = counter or RepeatCounter()
        self._saved_fd: int | None = None
        self._stream = None
        self._thread: threading.Thread | None = None
        self._handlers: list[logging.StreamHandler] = []
        self._sys_stderr = None

    def start(self) -> None:
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._stream = os.fdopen(self._saved_fd, "w", buffering=1, errors="replace",
                                 closefd=False)
        self._sys_stderr = sys.stderr
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(self._stream)
                self._handlers.append(handler)
        sys.stderr = self._stream
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._read, args=(read_fd,),
                                        name="stderr-filter")
        self._thread.start()

    def _read(self, fd: int) -> None:
        pending = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE:
                    lines.append(pending[:MAX_LINE])
                    pending = b""
                for raw in lines:
                    self._line(raw.decode(errors="replace"))
        if pending:
            self._line(pending.decode(errors="replace"))

    def _line(self, line: str) -> None:
        if self.counter.admit(line):
            log.warning("%s", line.strip())
            if len(self.counter.counts) == self.counter.max_distinct:
                log.warning("the libraries under libvlc say many different things: "
                            "no more of them are logged")

    def stop(self) -> None:
        if self._saved_fd is None:
            return
        os.dup2(self._saved_fd, 2)  # the pipe's last writer is gone: the thread sees its end
        self._thread.join(timeout=5)
        if self.counter.repeats or self.counter.dropped:
            log.info("the libraries under libvlc repeated themselves %d time(s) "
                     "(%d line(s) not logged)", self.counter.repeats,
                     self.counter.repeats + self.counter.dropped)
        for handler in self._handlers:
            handler.setStream(self._sys_stderr)
        sys.stderr = self._sys_stderr
        self._stream.close()
        os.close(self._saved_fd)
        self._saved_fd = None
