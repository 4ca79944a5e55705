"""``make demo``: a server, a tree of relay clients on loopback addresses, and a player.

The server broadcasts the films of ``filme/`` with few direct slots, so most
clients receive the channel from other clients. One client runs the player:
a VLC window where a screen exists (DISPLAY set), headless otherwise. Every
few seconds the demo prints the tree as the clients' status files describe
it. Ctrl-C (or ``--duration``) stops everything it started and removes its
temporary folder, within seconds, whether its output goes to a terminal or
through a pipe (``make demo | tee demo.txt``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench.cluster import REPO, STOCK_PORTS, Cluster, wait_until
from bench.tail import FileTail
from stopsignals import StopSignals

log = logging.getLogger("demo")

#: Ctrl-C, a kill, the terminal closing: each stops the demo the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PLAYED = re.compile(r"played \d{10}\.mkv")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8, help="relay clients to start (8)")
    p.add_argument("--max-children", type=int, default=2, help="children per client (2)")
    p.add_argument("--server-slots", type=int, default=1, help="direct clients per channel (1)")
    p.add_argument("--period", type=float, default=2.0, help="seconds per block (2.0)")
    p.add_argument("--films", type=Path, default=REPO / "filme", help="film blocks (filme/)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--no-player", action="store_true", help="run no player at all")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error("--clients must be at least 1")
    return args


def describe_tree(clients) -> list[str]:
    """One line per client, indented under its parent, from the status files."""
    statuses = {p.ip: Cluster.status_of(p) or {} for p in clients}
    children: dict[str, list[str]] = {}
    roots = []
    for ip, s in statuses.items():
        parent = s.get("parent")
        if isinstance(parent, dict):
            children.setdefault(parent["ip"], []).append(ip)
        else:
            roots.append(ip)
    lines = []

    def walk(ip: str, indent: int) -> None:
        s = statuses.get(ip, {})
        lines.append(f"{'   ' * indent}{ip}:9092  {s.get('state', '?'):8} depth {s.get('depth', '?')}  "
                     f"blocks {s.get('blocks_received', 0):4}  sent {s.get('bytes_sent', 0) / 1e6:7.2f} MB")
        for child in sorted(children.get(ip, [])):
            walk(child, indent + 1)

    for root in sorted(roots):
        walk(root, 0)
    return lines


def show(text: str, stop: StopSignals) -> None:
    """Print ``text``; when nobody reads any more (``| tee`` ended by the same
    Ctrl-C), stop the demo instead of dying on a broken pipe."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())      # the exit's flush goes nowhere, quietly
        os.close(devnull)
        stop.set()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo: %(message)s")
    if not any(args.films.glob("*_00000.mkv")):
        print(f"demo: no film blocks in {args.films}; make them with: python separa.py --sample",
              file=sys.stderr)
        return 1
    with StopSignals(STOP_SIGNALS) as stop:
        workdir = Path(tempfile.mkdtemp(prefix="relaytv-demo-"))
        try:
            run(args, workdir, stop)
        finally:
            log.info("removing %s", workdir)
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, workdir: Path, stop: StopSignals) -> None:
    """Start the server and the clients, print the tree until ``stop``, stop them all."""
    screen = bool(os.environ.get("DISPLAY"))
    with Cluster(workdir, args.films, ports=STOCK_PORTS) as cluster:
        server = cluster.start_server(max_clients=args.server_slots, period=args.period)
        log.info("server on %s:6060 (logs in %s)", server.ip, workdir)
        clients = []
        for n in range(args.clients):
            extra = ("--player",) if n == 0 and not args.no_player else ()
            proc = cluster.start_client(server, *extra, max_children=args.max_children,
                                        period=args.period)
            clients.append(proc)
            log.info("client %s started%s", proc.ip,
                     (" with the player (" + ("VLC window" if screen else "headless, no DISPLAY") + ")")
                     if extra else "")
            try:
                wait_until(lambda: stop.is_set() or (Cluster.status_of(proc) or {}).get("state")
                           in ("direct", "attached"), 30, f"{proc.ip} to join")
            except TimeoutError as exc:
                log.warning("%s", exc)
            if stop.is_set():
                break
        if not stop.is_set():
            log.info("all started; Ctrl-C stops everything")
            show(f"-- watch in a browser: http://{clients[-1].ip}:{STOCK_PORTS.http}/ "
                 f"(every client serves its page on port {STOCK_PORTS.http})", stop)
        player_log = FileTail(Cluster.store_of(clients[0]) / "player.log")
        played = 0
        waited = 0.0
        while not stop.wait(5.0):
            waited += 5.0
            show("\n".join(["-- tree --", *describe_tree(clients)]), stop)
            if not args.no_player:
                played += sum(len(PLAYED.findall(line)) for line in player_log.new_lines())
                show(f"-- player of {clients[0].ip}: {played} block(s) played and deleted", stop)
            if args.duration is not None and waited >= args.duration:
                break
        log.info("stopping")


if __name__ == "__main__":
    sys.exit(main())
