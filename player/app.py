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
from pathlib import Path

from player.errors import PlayerError
from player.live import LiveEdge
from player.loop import PlayerLoop
from player.machine import PlayerMachine
from player.noise import StderrFilter
from player.queue import check_store, waiting_blocks
from player.report import PlayedLog
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
    p.add_argument("--max-behind", type=_non_negative_float, default=8.0, metavar="SECONDS",
                   help="stay within this many seconds of live (the blocks waiting, by their "
                        "real durations): play faster, up to --max-rate, when more are "
                        "waiting; skip ahead, deleting the skipped blocks, past 3 times it; "
                        "0 turns the live edge off (every block at 1.0x; off with --keep) "
                        "(default: %(default)s)")
    p.add_argument("--max-rate", type=float, default=1.4, metavar="RATE",
                   help="fastest play rate when behind live, sound pitch kept "
                        "(default: %(default)s)")
    p.add_argument("--played-log", type=Path, metavar="FILE",
                   help="append one JSON line per block played or skipped and per rate "
                        "change to FILE (kept under 1 MiB: the older part goes to FILE.1)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: %(default)s; DEBUG logs every gap between blocks")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
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
    from player.vlc_output import VlcOutput, sound_device_present, vlc_options

    store = check_store(args.dir, writable=not args.keep)
    sound = args.headless or bool(args.aout) or sound_device_present()
    options = vlc_options(headless=args.headless, vout=args.vout, aout=args.aout,
                          display=os.environ.get("DISPLAY"), sound=sound)
    if not sound:
        log.info("no sound device (no /dev/snd PCM, no PulseAudio or PipeWire server): "
                 "playing without sound (--aout dummy)")
    try:
        live = None if args.keep or not args.max_behind else LiveEdge(
            max_behind=args.max_behind, max_rate=args.max_rate)
    except ValueError as e:
        raise PlayerError(str(e)) from None
    machine = PlayerMachine(buffer=args.buffer, keep=args.keep,
                            stall_timeout=args.stall_timeout, live=live)
    played_log = PlayedLog(args.played_log) if args.played_log else None
    noise = StderrFilter()
    # The handler only sets a flag the loop polls (see stopsignals).
    stop = StopSignals(STOP_SIGNALS).install()
    output = None
    try:
        noise.start()  # before libvlc loads the libraries that write to stderr
        output = VlcOutput(options)
        log.info("playing the blocks of %s (buffer %d, %s; %s)", store, args.buffer,
                 " ".join(options),
                 f"within {live.max_behind:g} s of live, up to {live.max_rate:g}x"
                 if live else "live edge off")
        PlayerLoop(store, machine, output, stop=stop, played_log=played_log).run()
    finally:
        if output is not None:
            output.close()
        noise.stop()
        stop.close()
    return 0
