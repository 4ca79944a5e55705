"""Stop signals (Ctrl-C, SIGTERM) turned into a flag and a byte on a self-pipe.

A Python signal handler runs in the main thread between two bytecodes: inside
whatever the main thread was doing, a ``threading.Event.set()``, a logging
call, a ``print``, or another signal handler. A handler that takes a lock there
can wait forever on a lock its own thread holds. And the kernel may deliver a
process's signal to any of its threads: then the main thread's blocking call
is not interrupted at all, and a Python handler waits until it returns.

So the byte that wakes the waiters is written by the interpreter's C-level
handler, whatever thread the signal lands on (``signal.set_wakeup_fd``); the
Python handler only sets plain attributes; and the stop itself happens in
normal code that waits with :meth:`StopSignals.wait` or selects on
:meth:`StopSignals.fileno`::

    with StopSignals() as stop:
        while not stop.wait(5.0):
            work()
    clean_up()                       # normal code: locks, logging, joins

:class:`StopSignals` looks like a ``threading.Event`` that is never cleared
(``is_set``, ``set``, ``wait``), so it can stand where code waits on one.
Repeated signals change nothing: the stop already under way goes on.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from types import FrameType
from typing import Callable, Iterable

#: The signals that ask a program to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Decides where the main thread may be interrupted (see ``interrupt``).
InterruptPoint = Callable[[FrameType | None], bool]

#: How often the main thread is poked until it can be interrupted, in seconds.
POKE_INTERVAL = 0.1

#: The byte :meth:`StopSignals.set` writes (no signal has number 0).
_SET = b"\0"


class StopSignals:
    """Catch stop signals as a flag plus a byte on a self-pipe.

    ``interrupt``: for a main thread that blocks where no pipe can wake it
    (``input()`` at a menu prompt), a function of the interrupted frame that
    says whether raising ``KeyboardInterrupt`` there is safe. Once a stop is
    asked for, a small thread sends the main thread SIGALRM every
    :data:`POKE_INTERVAL` seconds (its blocking call then returns to run the
    handler) until the function says True at one of them; it is raised there,
    once.
    """

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS,
                 interrupt: InterruptPoint | None = None):
        self.signals = tuple(signals)
        self.interrupt = interrupt
        #: How many stop signals the Python handler saw, and the first one
        #: (plain values: a handler may set them while the main thread reads them).
        self.count = 0
        self.first: int | None = None
        self._set = False
        self._interrupted = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous: dict[int, object] = {}
        self._previous_wakeup: int | None = None
        self._closing = threading.Event()
        self._poker: threading.Thread | None = None

    # -- the Event-like face ------------------------------------------------
    def is_set(self) -> bool:
        """True from the first stop request on (it looks at the pipe too)."""
        if not self._set:
            self._read_pipe()
        return self._set

    def set(self) -> None:
        """Ask for the stop from normal code (any thread), as a signal would."""
        self._set = True
        self._wake()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is asked for or ``timeout`` seconds pass; True once asked."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                select.select([self._read], [], [], left)
            except (OSError, ValueError):        # closed meanwhile
                break
        return self._set

    def fileno(self) -> int:
        """Readable from the first stop request on; then call :meth:`is_set`."""
        return self._read

    # -- life cycle ---------------------------------------------------------
    def install(self) -> "StopSignals":
        """Install the handlers (main thread only; elsewhere nothing is installed).

        Install before starting threads of one's own: a signal that comes
        earlier meets the default handler.
        """
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._previous_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        if self.interrupt is not None:
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
            self._poker = threading.Thread(target=self._poke_main, name="stop-poker",
                                           args=(threading.main_thread().ident,))
            self._poker.start()
        return self

    def restore(self) -> None:
        """Put the previous handlers back, or ignore the signals if a stop came.

        After a stop the process is on its way out, and a repeated signal must
        change nothing: neither fall to the default handler halfway through
        the clean-up, nor kill the process as it exits (the interpreter's
        exit gives Python handlers back to the default action). So from the
        end of the stop on, these signals are ignored.
        """
        self.interrupt = None
        self._closing.set()
        if self._poker is not None:
            self._poker.join()
            self._poker = None
        stopped = self.is_set()
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if stopped else handler)
        self._previous.clear()
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None

    def close(self) -> None:
        """Restore, then close the pipe (a late write then goes to fd -1, not to
        whatever file reuses the number)."""
        self.restore()
        write, self._write = self._write, -1
        read, self._read = self._read, -1
        for fd in (write, read):
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pipe -----------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._write, _SET)
        except OSError:                          # full (already awake) or closed
            pass

    def _read_pipe(self) -> None:
        """Take what the pipe holds: a stop signal's number (or :data:`_SET`)
        sets the flag, and one byte goes back so that the pipe stays readable
        for every other waiter."""
        try:
            data = os.read(self._read, 4096)
        except OSError:                          # empty, or closed
            return
        if _SET[0] in data or any(sig in data for sig in self.signals):
            self._set = True
            self._wake()

    # -- the handlers: nothing here may block or take a lock ----------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        self._set = True
        self._maybe_interrupt(frame)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._maybe_interrupt(frame)

    def _maybe_interrupt(self, frame: FrameType | None) -> None:
        point = self.interrupt
        if point is not None and not self._interrupted and self._set and point(frame):
            self._interrupted = True
            raise KeyboardInterrupt

    # -- the poker thread ---------------------------------------------------
    def _poke_main(self, main: int) -> None:
        """Once a stop is asked for, make the main thread run its handlers soon:
        a signal sent to that thread ends its blocking call (EINTR)."""
        while not self._closing.wait(POKE_INTERVAL):
            if self.interrupt is None or self._interrupted:
                return
            if self.is_set():
                try:
                    signal.pthread_kill(main, signal.SIGALRM)
                except ProcessLookupError:       # the main thread is gone
                    return
