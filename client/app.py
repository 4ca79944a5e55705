"""Command line of the relay client: options, logging, the player process, the menu."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import FrameType

from client.libraryapp import add_library_arguments, get_once, start_library, stop_library
from client.menu import Menu
from client.node import Config, Node
from client.peerproto import MAX_CHILDREN
from client.store import StoreLimit, parse_store_limit
from client.verify import parse_key
from client.web import WebView
from server.protocol import MAX_CHANNELS
from player.launch import start_player, stop_player
from stopsignals import StopSignals

log = logging.getLogger("client")
REPO = Path(__file__).resolve().parent.parent


def _server_address(value: str) -> tuple[str, int]:
    host, _, port = value.partition(":")
    try:
        return host or "127.0.0.1", int(port) if port else 6060
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {value!r}") from None


def _children_limit(value: str) -> int:
    """A ``--max-children`` the peer protocol can carry (0 to :data:`MAX_CHILDREN`)."""
    try:
        n = int(value)
        if not 0 <= n <= MAX_CHILDREN:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a whole number from 0 to {MAX_CHILDREN}: {value!r}") from None
    return n


def _port(value: str) -> int:
    """A TCP port number, or 0 for "off"."""
    try:
        n = int(value)
        if not 0 <= n <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port from 0 to 65535: {value!r}") from None
    return n


def check_own_ip(value: str) -> str | None:
    """Why ``value`` cannot be this client's address, or None when it can.

    The client binds its listeners and its outgoing connections to it, so it
    must be an IPv4 address of this machine: binding a throw-away socket
    tells (no packet is sent).
    """
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        return f"--ip {value!r} is not an IPv4 address (e.g. 127.0.0.2)"
    if address.is_unspecified or address.is_multicast:
        return f"--ip {value}: not one machine's address (other clients must reach it there)"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((value, 0))
        except OSError as exc:
            return f"--ip {value}: not an address of this machine ({exc.strerror})"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="client.py",
        description="relaytv client: receive a channel, relay it to other clients, play it.")
    p.add_argument("--max-children", type=_children_limit, metavar=f"0-{MAX_CHILDREN}",
                   help="how many other clients may receive the channel from this one, "
                        f"at most {MAX_CHILDREN} (asked once at start when missing)")
    p.add_argument("--server", type=_server_address, default=("127.0.0.1", 6060),
                   metavar="HOST[:PORT]", help="the channel server (default 127.0.0.1:6060)")
    p.add_argument("--channel", type=int, default=0, choices=range(MAX_CHANNELS),
                   metavar="N", help="channel to watch (default 0); the server says which "
                                     "of 0-9 it has")
    p.add_argument("--ip", help="this client's address: listeners and outgoing connections bind "
                                "to it (default: the address that reaches the server)")
    p.add_argument("--push-port", type=int, default=9091, help="port the server sends to (9091)")
    p.add_argument("--peer-port", type=int, default=9092,
                   help="port for other clients, the same on every client of a channel (9092)")
    p.add_argument("--store", type=Path,
                   help="where blocks are written (default store/<ip>/channel<N> in the project)")
    p.add_argument("--period", type=float, default=2.0,
                   help="the server's period in seconds (2.0): sets failure-detection bounds")
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds of recent blocks kept in memory to resume children (30)")
    p.add_argument("--catch-up", type=float, default=0.0, metavar="SECONDS",
                   help="start this far behind live, the buffer filled from several peers at once (0)")
    p.add_argument("--balance-margin", type=float, default=8.0, metavar="BLOCKS",
                   help="swap places with a child once this client has sent this many blocks per "
                        "child more than it (the upload balance rotation; 0 turns it off; 8)")
    p.add_argument("--repair-rate", type=float, default=0.0, metavar="KB/S",
                   help="cap on the upload spent answering other clients' repair fetches, "
                        "so that it leaves room for live relaying on a thin uplink (0: no cap)")
    p.add_argument("--http-port", type=_port, default=8090,
                   help="port of the web view (page, HLS, JSON API) on this client's address; "
                        "0 turns it off (8090)")
    p.add_argument("--stats", type=Path, help="write statistics as JSON here on exit "
                                              "(default <store>/stats.json)")
    p.add_argument("--no-player", action="store_true",
                   help="do not start the player (a relay without a screen): only the blocks of "
                        "the recent --window stay on disk, older ones are removed")
    p.add_argument("--store-limit", metavar="NMB|Nmin",
                   help="bound of the blocks on disk: N megabytes (200MB) or the blocks of the "
                        "last N minutes (10min); past it the oldest go, played or not; 'none' "
                        "keeps every block (for tests that read them all) "
                        f"(default: the --window with --no-player, {PLAYER_STORE_LIMIT} with the player)")
    p.add_argument("--max-behind", type=float, default=8.0, metavar="SECONDS",
                   help="the player stays within this many seconds of live: it plays faster "
                        "(up to 1.4x) when more is waiting, and skips ahead past 3 times it; "
                        "0 turns this off (default 8)")
    p.add_argument("--no-menu", action="store_true",
                   help="no interactive menu: run until SIGTERM or Ctrl-C")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_library_arguments(p)
    add_verify_arguments(p)
    args = p.parse_args(argv)
    if args.max_behind < 0:
        p.error(f"--max-behind must be 0 or more, not {args.max_behind:g}")
    try:
        args.store_limit = store_limit(args)
    except ValueError as exc:
        p.error(f"--store-limit: {exc}")
    return args


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    """Authenticated blocks (client/verify.py)."""
    def key(text: str) -> bytes:
        try:
            return parse_key(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    group = p.add_argument_group("authenticated blocks")
    group.add_argument("--feed-port", type=_port, default=6062, metavar="PORT",
                       help="the server's signed digest feed (default 6062; 0: none, blocks "
                            "from other clients are then not authenticated)")
    group.add_argument("--server-key", type=key, default=None, metavar="HEX",
                       help="the feed's public key the server prints at start (default: "
                            "pinned on first use, with a warning)")
    group.add_argument("--no-verify", action="store_true",
                       help="store blocks unchecked (for benchmarks only)")
    group.add_argument("--no-crosscheck", action="store_true",
                       help="with a server without a feed (the stock server), store blocks from "
                            "other clients without asking a direct client (for benchmarks only)")


#: The store limit of a client with a player, when --store-limit is not given.
PLAYER_STORE_LIMIT = "10min"


def store_limit(args: argparse.Namespace) -> StoreLimit | None:
    """The bound of the store: --store-limit, else the window (no player) or PLAYER_STORE_LIMIT."""
    if args.store_limit:
        return parse_store_limit(args.store_limit, args.period)
    if args.no_player:
        return StoreLimit(blocks=int(args.window / args.period) + 1)
    return parse_store_limit(PLAYER_STORE_LIMIT, args.period)


def ask_max_children(stdin=sys.stdin, stdout=sys.stdout) -> int:
    """The assignment's rule: when not given, ask the user once, before anything else."""
    while True:
        stdout.write("How many clients may receive the channel from this one (max children)? ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            raise SystemExit("client: --max-children is required (no answer on standard input)")
        try:
            return _children_limit(line.strip())
        except argparse.ArgumentTypeError as exc:
            stdout.write(f"{exc}\n")


def own_address(server: tuple[str, int]) -> str:
    """The local address the system would use to reach the server (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(server)
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_own_ip(args.ip) if args.ip else None
    if problem:
        print(f"client: {problem}", file=sys.stderr)
        return 2
    if args.get:
        return get_once(args, own_address)  # the film library's one-shot download, no channel
    if args.max_children is None:
        args.max_children = ask_max_children()
    host, port = args.server
    ip = args.ip or own_address(args.server)

    def store_of_channel(channel: int) -> Path:
        return REPO / "store" / ip / f"channel{channel}"

    store = args.store or store_of_channel(args.channel)
    store.mkdir(parents=True, exist_ok=True)

    log_file = None if args.no_menu else store / "client.log"
    logging.basicConfig(
        level=args.log_level, filename=log_file,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")

    config = Config(ip=ip, server_host=host, server_port=port, channel=args.channel,
                    max_children=args.max_children, store=store, push_port=args.push_port,
                    peer_port=args.peer_port, period=args.period, window_seconds=args.window,
                    catch_up_seconds=args.catch_up, balance_blocks=args.balance_margin,
                    repair_rate=args.repair_rate, store_limit=args.store_limit,
                    player=not args.no_player,
                    store_of_channel=None if args.store else store_of_channel,
                    feed_port=args.feed_port, server_key=args.server_key,
                    verify=not args.no_verify, crosscheck=not args.no_crosscheck)
    signals = StopSignals(interrupt=None if args.no_menu else at_menu_prompt).install()
    node = Node(config)
    # A failed core thread stops the program the way SIGTERM does (the stop wakes a
    # menu blocked reading its standard input too).
    node.on_failure = signals.set
    try:
        node.start()
    except OSError as exc:
        signals.close()
        print(f"client: cannot listen on {ip} ports {args.push_port}/{args.peer_port}: {exc}",
              file=sys.stderr)
        return 1
    web = None
    if args.http_port:
        web = WebView(node, ip, args.http_port, max_behind=args.max_behind)
        try:
            web.start()
        except OSError as exc:
            node.stop()
            signals.close()
            print(f"client: cannot serve the web view on {ip}:{args.http_port}: {exc}",
                  file=sys.stderr)
            return 1
        print(f"relaytv client {ip}: watch in a browser at {web.url}", flush=True)
    library = start_library(args, node)
    player = None

    def play(folder: Path) -> None:
        nonlocal player
        if player is not None:
            stop_player(player)
        with open(folder / "player.log", "ab") as player_log:
            player = start_player(folder, log=player_log, max_behind=args.max_behind,
                                  played_log=folder / "played.jsonl")
        log.info("player started (pid %d)%s, log in %s", player.pid,
                 "" if os.environ.get("DISPLAY") else ", headless (no DISPLAY)", folder / "player.log")

    if not args.no_player:
        play(store)
        node.on_store_moved = play  # a new channel's folder: the player follows it

    try:
        if args.no_menu:
            signals.wait()
        elif not signals.is_set():
            Menu(node, log_file, web_url=web.url if web else None, library=library).cmdloop()
    except KeyboardInterrupt:
        pass
    finally:
        signals.interrupt = None         # the clean-up below is not to be cut short
        if web is not None:
            web.stop()
        node.stop()
        stop_library(library)
        if player is not None:
            stop_player(player)
        stats_file = args.stats or node.config.store / "stats.json"
        try:
            stats_file.write_text(json.dumps(node.stats(), indent=1))
        except OSError as exc:
            log.error("could not write statistics to %s: %s", stats_file, exc)
        signals.close()
        log.info("stopped")
    if node.failed.is_set():
        print(f"client: stopped: {node.failure} (the traceback is in the log)", file=sys.stderr)
        return 1
    return 0


def at_menu_prompt(frame: FrameType | None) -> bool:
    """Where a stop signal may raise ``KeyboardInterrupt`` to end the menu.

    True while the menu waits for a line (``cmdloop`` itself runs, no command);
    False while a command runs or the menu is not up yet: asked again soon.
    """
    in_command = False
    while frame is not None:
        name = frame.f_code.co_name
        if name == "onecmd":
            in_command = True
        elif name == "cmdloop":
            return not in_command
        frame = frame.f_back
    return False
