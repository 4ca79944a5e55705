"""Command line of the player: ``python player.py DIR`` / ``python -m player DIR``.

Plays the ``*.mkv`` blocks of a store directory in name order in one VLC
window, picking up blocks as they arrive and deleting each one after it has
been shown. Ctrl-C or SIGTERM stops it; blocks not yet played (and the one
being played) stay on disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from player.errors import PlayerError
from player.loop import PlayerLoop
from player.machine import PlayerMachine
from player.queue import check_store, waiting_blocks
from stopsignals import StopSignals

log = logging.getLogger("player")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="player",
        description="Play the *.mkv blocks of a store directory as one continuous "
                    "channel in a VLC window, deleting each block once shown.")
    p.add_argument("dir", help="the store directory the client writes blocks into")
    p.add_argument("--headless", action="store_true",
                   help="no window, no sound (--vout=dummy --aout=dummy)")
    p.add_argument("--buffer", type=_positive_int, default=2, metavar="N",
                   help="blocks on disk before playback starts (default: %(default)s)")
    p.add_argument("--vout", help="libvlc video output (default: xcb_x11 under a DISPLAY)")
    p.add_argument("--aout", help="libvlc audio output (default: libvlc's choice)")
    p.add_argument("--list", action="store_true",
                   help="print the blocks waiting for display, oldest first, with sizes, "
                        "and exit")
    p.add_argument("--keep", action="store_true", help="play without deleting anything")
    p.add_argument("--stall-timeout", type=float, default=5.0, metavar="S",
                   help="skip a block that makes no progress for S seconds "
                        "(default: %(default)s)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: %(default)s; DEBUG logs every gap between blocks")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.list:
            return list_blocks(args.dir)
        return play(args)
    except PlayerError as e:
        print(f"player: error: {e}", file=sys.stderr)
        return 1


def list_blocks(directory: str) -> int:
    """``--list``: one ``NAME SIZE`` line per waiting block, oldest first."""
    store = check_store(directory, writable=False)
    blocks = waiting_blocks(store)
    for name, size in blocks:
        print(f"{name}  {size}")
    if not blocks:
        log.info("no blocks waiting in %s", store)
    return 0


def play(args: argparse.Namespace) -> int:
    # Imported here so that --list and the store checks work without libvlc.
    from player.vlc_output import VlcOutput, vlc_options

    store = check_store(args.dir, writable=not args.keep)
    options = vlc_options(headless=args.headless, vout=args.vout, aout=args.aout,
                          display=os.environ.get("DISPLAY"))
    machine = PlayerMachine(buffer=args.buffer, keep=args.keep,
                            stall_timeout=args.stall_timeout)
    # The handler only sets a flag the loop polls (see stopsignals).
    stop = StopSignals(STOP_SIGNALS).install()
    output = None
    try:
        output = VlcOutput(options)
        log.info("playing the blocks of %s (buffer %d, %s)", store, args.buffer,
                 " ".join(options))
        PlayerLoop(store, machine, output, stop=stop).run()
    finally:
        if output is not None:
            output.close()
        stop.close()
    return 0
