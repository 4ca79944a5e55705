"""Start and stop the player as a child process (for the client).

    proc = start_player(store, log=open(store / "player.log", "ab"))
    ...
    stop_player(proc)   # SIGTERM; unplayed blocks stay in the store

The player needs nothing from its parent but the store path; it is headless
by default when there is no DISPLAY.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Sequence

#: The entry script: works whatever the child's working directory.
SCRIPT = Path(__file__).resolve().parent / "player.py"


def player_command(store: str | os.PathLike, *, headless: bool | None = None, buffer: int = 2,
                   keep: bool = False, log_level: str = "INFO",
                   max_behind: float | None = None, played_log: str | os.PathLike | None = None,
                   extra: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """The argv that plays ``store``. ``headless=None``: headless when there is no DISPLAY.

    ``max_behind``: the live edge's target in seconds (0: off; None: the player's
    default); ``played_log``: where the played-blocks log goes (None: nowhere).
    """
    if headless is None:
        headless = not os.environ.get("DISPLAY")
    argv = [python, str(SCRIPT), str(store), "--buffer", str(buffer), "--log-level", log_level]
    if max_behind is not None:
        argv += ["--max-behind", f"{max_behind:g}"]
    if played_log is not None:
        argv += ["--played-log", str(played_log)]
    if headless:
        argv.append("--headless")
    if keep:
        argv.append("--keep")
    return argv + list(extra)


def start_player(store: str | os.PathLike, *, log: IO | None = None, env: dict | None = None,
                 **options) -> subprocess.Popen:
    """Start the player on ``store``; its log (stderr) goes to ``log``.

    ``options`` are those of :func:`player_command`.
    """
    return subprocess.Popen(player_command(store, **options), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT if log else None, env=env)


def stop_player(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
