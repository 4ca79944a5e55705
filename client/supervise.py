"""No thread of a client ends on an unexpected exception without the client noticing.

A core thread (the controller, the listeners) is started through
:func:`supervised`: an exception it did not expect is logged with its
traceback and handed to the node, which stops with a message and a non-zero
exit status instead of running on as a client that relays but never rejoins.
Link threads catch their own unexpected exceptions and report them as a lost
link, which the node answers with a rejoin (:mod:`client.links`).

:func:`checkpoint` is the one test hook: the end-to-end tests set
``RELAYTV_TEST_FAULT`` to a place name (``controller``, ``parent-link``) to
make that place raise once, as a bug there would. Nothing else sets it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

log = logging.getLogger(__name__)

#: The environment variable that names the place where :func:`checkpoint` raises once.
FAULT_ENV = "RELAYTV_TEST_FAULT"

_fired: set[str] = set()
_fired_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """The fault a test asked for through :data:`FAULT_ENV`."""


def supervised(target: Callable[[], None], name: str,
               on_crash: Callable[[str, BaseException], None]) -> Callable[[], None]:
    """``target`` wrapped so that an exception it lets out is logged and reported."""

    def run() -> None:
        try:
            target()
        except Exception as exc:
            log.exception("thread %s failed", name)
            on_crash(name, exc)

    return run


def checkpoint(place: str) -> None:
    """Raise :class:`InjectedFault` the first time ``place`` is reached, if the test asked for it."""
    if os.environ.get(FAULT_ENV) != place:
        return
    with _fired_lock:
        if place in _fired:
            return
        _fired.add(place)
    raise InjectedFault(f"fault injected at {place} ({FAULT_ENV})")
