"""Overlay benchmark: a server and N relay clients on loopback, with churn.

    python bench/overlay.py --clients 30 --server-slots 2 --max-children 3 \\
        --duration 120 --kill-rate 0.1 --baseline star --json out.json --plot out.png

Real processes (``python -m server``, ``python -m client``), each client on
its own 127.0.x.y with its own store, players off. Churn events are drawn in
advance from ``--seed`` (same seed, same schedule). Everything started is
stopped by process id at the end, on Ctrl-C and on SIGTERM; the temporary
folder is removed unless ``--keep``.

Measures (see :mod:`bench.metrics` for the definitions): continuity and
on-time fraction per client, startup delay, live lag per depth, repair after
each failure, the tree's depths against the best the limits allow, bytes sent
and Jain's index, CPU seconds and peak memory per process; with
``--baseline star``, the same clients served directly by the server.

With ``--netns`` (root only), every client and the server run on hosts of
their own: network namespaces joined by a bridge in a namespace of its own,
10.231.0.0/16, each client's upload capped at ``--upload-mbit`` by a token
bucket (see :mod:`bench.netns`). Every namespace is deleted at the end, on
Ctrl-C, on SIGTERM and on errors; ``python -m bench.netns --cleanup`` removes
those of a run that was killed outright.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):           # python bench/overlay.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import metrics                                   # noqa: E402
from bench import netns                                     # noqa: E402
from bench.cluster import REPO, Cluster, Proc, next_address, wait_until  # noqa: E402
from stopsignals import StopSignals                         # noqa: E402


def block_digest(data: bytes) -> bytes:
    """Identity of a block's bytes (for matching stored blocks to the film's files).

    Our own hash, not the client's, so that the benchmark does not import
    the code under test: it may run another commit's client (``--code``).
    """
    return hashlib.blake2b(data, digest_size=16).digest()

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUFFER_BLOCKS = 2

#: Ctrl-C, a kill, the terminal closing: each stops the run the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """A stop signal came: raised by normal code at a point where stopping is safe."""


def check_stop(args) -> None:
    if args.stop.is_set():
        raise Interrupted


# ------------------------------------------------------------------ options

def _fanouts(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",")]
        if not ks or min(ks) < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not K or K1,K2,... (whole numbers >= 0): {text!r}") from None
    return ks


def _caps(text: str) -> list[float]:
    try:
        return netns.parse_caps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Named frame sizes of the sample films (``--film-size``); any WIDTHxHEIGHT works too.
FILM_PRESETS = {
    "small": "320x180",   # about 130 KB a 2-second block (0.5 Mbit/s): the default
    "720p": "1280x720",   # about 980 KB a 2-second block (3.9 Mbit/s): a realistic stream
}


def _film_size(text: str) -> str:
    size = FILM_PRESETS.get(text, text)
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT nor one of {', '.join(FILM_PRESETS)}: "
                                         f"{text!r}")
    return size


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"not a rate between 0 and 10 per minute: {text!r}")
    return value


def program_name() -> str:
    """How the user started the benchmark, for the usage line."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None:
        return "python bench/overlay.py"
    name = spec.name.removesuffix(".__main__")
    return f"python -m {name}" if name.startswith("bench") else "python -m bench"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name(), description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=int, default=10, help="relay clients (N)")
    p.add_argument("--max-children", type=_fanouts, default=[3], metavar="K[,K2,...]",
                   help="each client's fan-out; a list is spread over the clients in turn")
    p.add_argument("--server-slots", type=int, default=2, metavar="S",
                   help="the server's --max-clients (direct clients per channel)")
    p.add_argument("--channels", type=int, default=1, help="channels; clients spread over them")
    p.add_argument("--period", type=float, default=2.0, help="seconds between blocks")
    p.add_argument("--duration", type=float, default=60.0, metavar="T",
                   help="seconds from the first client's start to the stop")
    p.add_argument("--join-spread", type=float, default=0.0, metavar="SECONDS",
                   help="clients start evenly over this many seconds (0: flash crowd)")
    p.add_argument("--kill-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays (K >= 1) killed with SIGKILL per minute")
    p.add_argument("--freeze-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays frozen with SIGSTOP per minute")
    p.add_argument("--freeze-for", type=float, default=0.0, metavar="SECONDS",
                   help="thaw a frozen relay (SIGCONT) after this long; 0: never thawed")
    p.add_argument("--leave-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays that leave gracefully (SIGTERM) per minute")
    p.add_argument("--victims", choices=["any", "parents"], default="any",
                   help="whom churn hits: any relay (K >= 1), or only relays that have children "
                        "at that moment")
    p.add_argument("--restart-server-at", type=float, default=None, metavar="SECONDS",
                   help="kill the server (SIGKILL) at this time and start it again at once")
    p.add_argument("--catch-up", type=float, default=0.0, metavar="SECONDS",
                   help="every client starts this far behind live (the client's --catch-up)")
    p.add_argument("--players", action="store_true",
                   help="run every client's player, headless (the DISPLAY is not passed on); "
                        "players delete what they have played, so continuity then counts only "
                        "the blocks still on disk: use it to measure cost")
    p.add_argument("--no-verify", action="store_true",
                   help="clients store blocks unchecked (the cost of verification, side by side)")
    p.add_argument("--client-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to every client (repeat it: --client-arg=--balance-margin "
                        "--client-arg=0)")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn schedule")
    p.add_argument("--baseline", choices=["none", "star"], default="none",
                   help="star: afterwards, the same N clients all served by the server (limit N)")
    p.add_argument("--films", type=Path, default=None,
                   help="folder of film blocks (default: sample films made in the temp folder)")
    p.add_argument("--film-seconds", type=int, default=120,
                   help="length of the sample films made when --films is not given")
    p.add_argument("--film-size", type=_film_size, default="320x180", metavar="WxH|PRESET",
                   help="frame size of the sample films: WIDTHxHEIGHT or a preset, "
                        + ", ".join(f"{k} ({v})" for k, v in FILM_PRESETS.items()))
    p.add_argument("--code", default=None, metavar="GIT-REF",
                   help="run server, clients and separa.py from this commit (exported with "
                        "git archive into the temp folder) instead of the working tree")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results here")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stores)")
    p.add_argument("--netns", action="store_true",
                   help="each client and the server on a host of its own (network namespace, "
                        "10.231.0.0/16, joined by a bridge), client uploads capped; needs root")
    p.add_argument("--upload-mbit", type=_caps, default=[8.0], metavar="MBIT[,MBIT2,...]",
                   help="with --netns: each client host's upload cap (tbf); 0: no cap; a list "
                        "is spread over the clients in order, in equal parts (2,8,20: thirds)")
    p.add_argument("--server-upload-mbit", type=float, default=0.0, metavar="MBIT",
                   help="with --netns: the server host's upload cap; 0: no cap")
    p.add_argument("--client-server-port", type=int, default=None, metavar="PORT",
                   help="the server port given to the clients (default: the server's); "
                        "a wrong one simulates misconfigured clients")
    p.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.netns:
        reason = netns.unavailable()
        if reason:
            parser.exit(2, f"overlay.py: {reason}\n")
        if args.clients > 999:
            parser.error("--netns: at most 999 clients")
    if args.server_upload_mbit < 0:
        parser.error("--server-upload-mbit must be >= 0")
    if args.clients < 1 or args.server_slots < 1 or not 1 <= args.channels <= 10:
        parser.error("need --clients >= 1, --server-slots >= 1, 1 <= --channels <= 10")
    if args.period <= 0 or args.duration <= 0 or args.join_spread < 0:
        parser.error("--period and --duration must be > 0, --join-spread >= 0")
    if args.join_spread >= args.duration:
        parser.error("--join-spread must be shorter than --duration")
    return args


def say(args, message: str) -> None:
    if not args.quiet:
        print(f"[overlay] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- schedule

@dataclass(frozen=True)
class Event:
    at: float            # seconds after the first client's start
    action: str          # kill | freeze | thaw | leave | restart
    client: int | None   # index of the chosen client (the next alive relay is taken if it is gone)


def churn_schedule(args, fanouts: list[int]) -> list[Event]:
    """The churn events, drawn from ``--seed`` only: same options, same schedule.

    Events fall in [start, end): after every client started plus a few
    periods, and a few periods before the stop, evenly spaced with seeded
    jitter. Count per kind: rate * relays * duration / 60, rounded, at least
    one when the rate is not 0.
    """
    rng = random.Random(args.seed)
    relays = [i for i, k in enumerate(fanouts) if k >= 1]
    start = args.join_spread + 5 * args.period
    end = args.duration - 4 * args.period
    events: list[Event] = []
    if relays and end > start:
        for action, rate in (("kill", args.kill_rate), ("freeze", args.freeze_rate),
                             ("leave", args.leave_rate)):
            if rate <= 0:
                continue
            count = max(1, round(rate * len(relays) * args.duration / 60))
            step = (end - start) / count
            for n in range(count):
                at = start + step * (n + rng.random())
                events.append(Event(round(at, 3), action, rng.choice(relays)))
                if action == "freeze" and args.freeze_for > 0:
                    events.append(Event(round(at + args.freeze_for, 3), "thaw", None))
    if args.restart_server_at is not None:
        events.append(Event(args.restart_server_at, "restart", None))
    return sorted(events, key=lambda e: (e.at, e.action))


# --------------------------------------------------------------- processes

def proc_cost(pid: int) -> dict:
    """CPU seconds (user + system) and peak resident memory (VmHWM) of a live process."""
    out = {"cpu_s": None, "peak_rss_mib": None}
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


@dataclass
class ClientRun:
    index: int
    max_children: int
    channel: int
    proc: Proc | None = None
    started_at: float | None = None         # Unix time
    fate: str = "alive"                     # alive | killed | frozen | left | thawed
    fate_at: float | None = None
    cost: dict = field(default_factory=dict)
    timeline: list = field(default_factory=list)  # (Unix time, depth)

    @property
    def ip(self) -> str | None:
        return self.proc.ip if self.proc else None


def export_code(ref: str, folder: Path) -> str:
    """Export commit ``ref`` of the repository into ``folder``; its full hash."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.strip()
    folder.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def make_films(args, folder: Path, code: Path) -> Path:
    """Sample films cut by ``code``'s separa.py; a stop signal ends it at once."""
    with tempfile.TemporaryFile() as errors:
        cut = subprocess.Popen([sys.executable, str(code / "separa.py"), "--sample", "--channels",
                                str(max(args.channels, 1)), "--seconds-long", str(args.film_seconds),
                                "--size", args.film_size, "--out", str(folder)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + 600
        while cut.poll() is None:
            if args.stop.wait(0.1) or time.monotonic() > deadline:
                cut.terminate()
                cut.wait()
                check_stop(args)
                raise RuntimeError("separa.py took more than 600 s")
        if cut.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"separa.py failed: {errors.read().decode(errors='replace')}")
    return folder


def film_stream_rate(films: Path, period: float) -> float | None:
    """The channels' stream, bytes/s: the films' mean block size, one block a period."""
    sizes = [p.stat().st_size for p in films.glob("*_*.mkv")]
    return sum(sizes) / len(sizes) / period if sizes and period > 0 else None


def film_digests(films: Path, channels: int) -> list[dict[bytes, int]]:
    """Per channel: block digest -> film index (channel i plays film i, films repeating)."""
    names = sorted({p.name.rsplit("_", 1)[0] for p in films.glob("*_*.mkv")})
    out = []
    for ch in range(channels):
        name = names[ch % len(names)]
        blocks = sorted(films.glob(f"{name}_*.mkv"))
        out.append({block_digest(p.read_bytes()): i for i, p in enumerate(blocks)})
    return out


class Scenario:
    """One run: the server, the clients, the churn; then the raw observations."""

    def __init__(self, args, workdir: Path, films: Path, star: bool):
        self.args = args
        self.star = star
        self.films = films
        self.topology: netns.Topology | None = getattr(args, "topology", None)
        self.cluster = Cluster(workdir, films, code=args.code_dir,
                               prefix=self.topology.exec_prefix if self.topology else None)
        n = args.clients
        ks = [0] * n if star else [args.max_children[i % len(args.max_children)] for i in range(n)]
        self.clients = [ClientRun(i, ks[i], i % args.channels) for i in range(n)]
        self.slots = n if star else args.server_slots
        self.events = [] if star else churn_schedule(args, ks)
        self.epochs: list[metrics.Epoch] = []
        self.servers: list[tuple[Proc, Path]] = []
        self.server_costs: list[dict] = []
        self.server_ip = self.topology.add_server().ip if self.topology else next_address()
        if self.topology:                   # every host exists before the clock starts
            for c in self.clients:
                self.topology.add_client(c.index)
        self.failures: list[dict] = []
        self.t_start = self.t_end = None
        self.final_statuses: dict = {}

    # -- processes -----------------------------------------------------------
    def start_server(self) -> None:
        number = len(self.servers)
        stats = self.cluster.workdir / f"server-stats-{number}.json"
        proc = self.cluster.start_server(
            "--stats", str(stats), ip=self.server_ip, channels=self.args.channels,
            max_clients=self.slots, period=self.args.period, name=f"server-{number}",
            )
        self.servers.append((proc, stats))
        wait_until(lambda: "listening on" in proc.log_text() or not proc.alive, 30,
                   "the server to listen", interval=0.01)
        if not proc.alive:
            raise RuntimeError(f"the server did not start:\n{proc.log_text()}")
        # The schedule starts right after the "listening" line (server/app.py main).
        self.epochs.append(metrics.Epoch(time.time() - 0.01, number))

    def start_client(self, c: ClientRun) -> None:
        port = self.args.client_server_port or self.cluster.ports.server
        ip = netns.client_address(c.index) if self.topology else None
        extra = list(self.args.client_arg)
        if self.args.catch_up:
            extra += ["--catch-up", str(self.args.catch_up)]
        if self.args.players:
            extra.append("--player")
        if self.args.no_verify:
            extra.append("--no-verify")
        c.proc = self.cluster.start_client(
            self._server_proc(), *extra, max_children=c.max_children, channel=c.channel,
            period=self.args.period, name=f"client-{c.index:03d}", port=port, ip=ip)
        c.started_at = time.time()

    def _server_proc(self) -> Proc:
        return self.servers[-1][0]

    def alive_relay(self, preferred: int | None) -> ClientRun | None:
        """The preferred client when it still runs and relays, else the next one that does."""
        n = len(self.clients)
        start = preferred if preferred is not None else 0
        for j in range(n):
            c = self.clients[(start + j) % n]
            if c.proc and c.fate == "alive" and c.max_children >= 1:
                if self.args.victims == "parents" and not (Cluster.status_of(c.proc) or {}).get("children"):
                    continue
                return c
        return None

    def affected_by(self, victim: ClientRun) -> list[str]:
        """The victim's subtree just before the failure: the members it reports, and
        every live client whose chain of parents (status.json) passes through it."""
        status = Cluster.status_of(victim.proc) or {}
        affected = {m.split(":")[0] for m in status.get("members", [])}
        parents = {}
        for c in self.clients:
            if c.proc and c.fate in ("alive", "thawed") and c is not victim:
                parent = (Cluster.status_of(c.proc) or {}).get("parent")
                parents[c.ip] = parent["ip"] if isinstance(parent, dict) else None
        for ip in parents:
            seen, node = {ip}, parents.get(ip)
            while node is not None and node not in seen:
                if node == victim.ip:
                    affected.add(ip)
                    break
                seen.add(node)
                node = parents.get(node)
        affected.discard(victim.ip)
        return sorted(affected)

    def apply(self, event: Event) -> None:
        now = time.time()
        if event.action == "restart":
            old, _ = self.servers[-1]
            self.server_costs.append(proc_cost(old.pid))
            old.kill()
            self.failures.append({"action": "restart", "at": now, "victim": "server",
                                  "affected": [c.ip for c in self.clients if c.fate == "alive"]})
            self.start_server()
            return
        if event.action == "thaw":
            frozen = next((c for c in self.clients if c.fate == "frozen"
                           and now - c.fate_at >= self.args.freeze_for - 0.5), None)
            if frozen:
                frozen.proc.thaw()
                frozen.fate = "thawed"
            return
        victim = self.alive_relay(event.client)
        if victim is None:
            return
        affected = self.affected_by(victim)
        victim.cost = proc_cost(victim.proc.pid)
        if event.action == "kill":
            victim.proc.kill()
            victim.fate = "killed"
        elif event.action == "freeze":
            victim.proc.freeze()
            victim.fate = "frozen"
        elif event.action == "leave":
            victim.proc.signal(signal.SIGTERM)
            victim.fate = "left"
        victim.fate_at = now
        self.failures.append({"action": event.action, "at": now, "victim": victim.ip,
                              "affected": affected})

    def sample_depths(self) -> None:
        now = time.time()
        for c in self.clients:
            if c.proc and c.fate in ("alive", "thawed"):
                status = Cluster.status_of(c.proc)
                if status and status.get("state") in ("direct", "attached"):
                    depth = status.get("depth")
                    if not c.timeline or c.timeline[-1][1] != depth:
                        c.timeline.append((now, depth))

    def run(self) -> None:
        args = self.args
        self.start_server()
        n = len(self.clients)
        starts = [(args.join_spread * i / n if n > 1 else 0.0, c) for i, c in enumerate(self.clients)]
        self.t_start = time.time()
        pending_events = list(self.events)
        last_sample = 0.0
        while True:
            elapsed = time.time() - self.t_start
            if elapsed >= args.duration:
                break
            while starts and starts[0][0] <= elapsed:
                self.start_client(starts.pop(0)[1])
            while pending_events and pending_events[0].at <= elapsed:
                self.apply(pending_events.pop(0))
            if elapsed - last_sample >= min(0.5, args.period / 2):
                self.sample_depths()
                last_sample = elapsed
            check_stop(args)
            args.stop.wait(0.02)
        self.t_end = time.time()

    def stop(self) -> None:
        """Read each live process's cost, then SIGTERM all clients at once, then the server."""
        try:
            self._stop()
        finally:
            self.cluster.stop_all()

    def _stop(self) -> None:
        self.t_end = self.t_end or time.time()
        self.final_statuses = {c.ip: Cluster.status_of(c.proc) for c in self.clients
                               if c.proc and c.fate in ("alive", "thawed")}
        for c in self.clients:
            if c.proc and c.proc.alive:
                c.cost = proc_cost(c.proc.pid)
        server, _ = self.servers[-1]
        if server.alive:
            self.server_costs.append(proc_cost(server.pid))
        live = [c.proc for c in self.clients if c.proc and c.proc.alive]
        for p in live:
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in live:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()

    # -- observations -------------------------------------------------------
    def observe(self, digests: list[dict[bytes, int]]) -> dict:
        """Everything the analysis needs, read from the stores and stats files."""
        clients = []
        for c in self.clients:
            row = {"index": c.index, "ip": c.ip, "max_children": c.max_children,
                   "channel": c.channel, "started_at": c.started_at, "fate": c.fate,
                   "fate_at": c.fate_at, "cost": c.cost, "timeline": c.timeline,
                   "blocks": [], "stats": None, "status": None}
            if c.proc:
                store = Cluster.store_of(c.proc)
                film = digests[c.channel]
                for path in sorted(store.glob("*.mkv")):
                    try:
                        data, mtime = path.read_bytes(), path.stat().st_mtime
                    except OSError:
                        continue
                    row["blocks"].append((film.get(block_digest(data)), mtime))
                for name in ("stats", "status"):
                    try:
                        row[name] = json.loads((store / f"{name}.json").read_text())
                    except (OSError, json.JSONDecodeError):
                        pass
                row["final_status"] = self.final_statuses.get(c.ip)
            clients.append(row)
        servers = []
        for _, stats in self.servers:
            try:
                servers.append(json.loads(stats.read_text()))
            except (OSError, json.JSONDecodeError):
                servers.append(None)
        return {"clients": clients, "servers": servers, "server_costs": self.server_costs,
                "epochs": self.epochs, "failures": self.failures, "t_start": self.t_start,
                "t_end": self.t_end, "slots": self.slots, "events": self.events}


# ---------------------------------------------------------------- analysis

def analyse(args, raw: dict, digests: list[dict[bytes, int]], star: bool,
            stream: float | None = None) -> dict:
    """The figures of one run; ``stream`` (bytes/s) gives the best tree the capped uplinks allow."""
    period = args.period
    epochs = raw["epochs"]
    clients = raw["clients"]
    # Film indexes -> global slots.
    for row in clients:
        length = len(digests[row["channel"]])
        row["slots"] = [(None if idx is None else metrics.slot_of(idx, t, length, period, epochs), t)
                        for idx, t in row["blocks"]]
    per_client, lag_samples, on_time, conts, startups, lags_mean = [], [], [], [], [], []
    for ch in range(args.channels):
        members = [r for r in clients if r["channel"] == ch]
        ref = metrics.reference_times(r["slots"] for r in members)
        channel = metrics.channel_slots([s for s, _ in r["slots"] if s is not None] for r in members)
        for r in members:
            stopped = r["fate_at"] if r["fate"] in ("killed", "frozen", "left") else raw["t_end"]
            end_slot = metrics.last_expected_slot(ref, r["slots"], stopped, period)
            cont = metrics.continuity(r["slots"], channel, end_slot if end_slot is not None else -1,
                                      period, BUFFER_BLOCKS)
            first_t = next((t for s, t in r["slots"] if s is not None), None)
            startup = None if first_t is None or r["started_at"] is None else first_t - r["started_at"]
            client_lags = []
            for s, t in r["slots"]:
                if s is not None and s in ref and (end_slot is None or s <= end_slot):
                    lag = t - ref[s]
                    client_lags.append(lag)
                    lag_samples.append((metrics.depth_at(r["timeline"], t), lag))
            status = r.get("final_status") or {}
            stats = r.get("stats") or {}
            rejoins = stats.get("rejoins", [])
            entry = {"ip": r["ip"], "channel": ch, "max_children": r["max_children"],
                     "fate": r["fate"], "depth": status.get("depth"),
                     "children": len(status.get("children", [])) if status else None,
                     "startup_s": startup, "mean_lag_s": metrics.summary(client_lags)["mean"],
                     "bytes_sent": stats.get("bytes_sent", (r.get("status") or {}).get("bytes_sent")),
                     "bytes_received": stats.get("bytes_received"),
                     "rejoins": len(rejoins),
                     "rejoin_took_s": [j["took"] for j in rejoins],
                     "rejoin_causes": [str(j.get("cause", "")).split(":")[0] for j in rejoins],
                     "uplink": {k: (status.get("uplink") or {}).get(k)
                                for k in ("estimate_bps", "places", "children_moved")},
                     "cpu_s": r["cost"].get("cpu_s"), "peak_rss_mib": r["cost"].get("peak_rss_mib"),
                     **{k: cont[k] for k in ("continuity", "on_time_fraction", "expected", "good",
                                             "holes", "duplicates", "not_film")}}
            per_client.append(entry)
            if r["fate"] in ("alive", "thawed"):
                conts.append(cont["continuity"])
                on_time.append(cont["on_time_fraction"])
                startups.append(startup)
                lags_mean.append(entry["mean_lag_s"])
        r_by_ip = {r["ip"]: r for r in members}
        for failure in raw["failures"]:
            failure.setdefault("repairs", {})
            for ip in failure["affected"]:
                if ip in r_by_ip and r_by_ip[ip]["fate"] in ("alive", "thawed"):
                    failure["repairs"][ip] = metrics.repair_after(r_by_ip[ip]["slots"], failure["at"],
                                                                  channel, ref)
    survivors = [e for e in per_client if e["fate"] in ("alive", "thawed")]
    firsts = [r["slots"][0][1] for r in clients if r["slots"]]
    starts = [r["started_at"] for r in clients if r["started_at"]]
    statuses = {r["ip"]: r["final_status"] for r in clients if r.get("final_status")}
    relays = [e for e in per_client if e["max_children"] >= 1 and e["bytes_sent"] is not None]
    server_bytes = sum(ch.get("bytes_sent", 0) for s in raw["servers"] if s for ch in s["channels"])
    repair_took = [rep["took"] for f in raw["failures"] for rep in f.get("repairs", {}).values()]
    repair_missed = [rep["missed"] for f in raw["failures"] for rep in f.get("repairs", {}).values()]
    repair_late = [rep["late"] for f in raw["failures"] for rep in f.get("repairs", {}).values()
                   if rep.get("late") is not None]
    caps = getattr(args, "upload_mbit", None) if getattr(args, "netns", False) else None
    index_of = {r["ip"]: r["index"] for r in clients if "index" in r}
    best, best_capped = {}, {}
    for ch in range(args.channels):
        members = [e for e in survivors if e["channel"] == ch]
        ks = [e["max_children"] for e in members]
        for d, n in metrics.best_depths(ks, raw["slots"]).items():
            best[d] = best.get(d, 0) + n
        if caps and any(caps) and stream:
            capped = [metrics.fanout_by_capacity(
                e["max_children"], netns.cap_of(caps, index_of.get(e["ip"], 0), args.clients), stream)
                for e in members]
            for d, n in metrics.best_depths(capped, raw["slots"]).items():
                best_capped[d] = best_capped.get(d, 0) + n
    estimates: dict[str, list[float]] = {}   # what the survivors measured, by their cap
    for e in survivors if caps and any(caps) else ():
        cap = netns.cap_of(caps, index_of.get(e["ip"], 0), args.clients)
        if e["uplink"]["estimate_bps"] is not None:
            estimates.setdefault(f"{cap:g}", []).append(e["uplink"]["estimate_bps"] / 1e6)
    client_cpu = [e["cpu_s"] for e in per_client]
    client_mem = [e["peak_rss_mib"] for e in per_client]
    run_s = raw["t_end"] - raw["t_start"]
    return {
        "kind": "star" if star else "overlay",
        "clients": len(clients), "survivors": len(survivors),
        "server_slots": raw["slots"],
        "continuity": metrics.summary(conts),
        "on_time_fraction": metrics.summary(on_time),
        "startup_s": metrics.summary(startups),
        "all_receiving_after_s": (max(firsts) - min(starts)) if firsts and starts and
                                 len(firsts) == len(clients) else None,
        "lag_s_by_depth": metrics.lag_by_depth(lag_samples),
        "lag_s_per_hop": metrics.lag_per_hop(metrics.lag_by_depth(lag_samples)),
        "lag_s": metrics.summary(lag for _, lag in lag_samples),
        "mean_lag_per_client_s": metrics.summary(lags_mean),
        "repair": {"failures": [{k: f[k] for k in ("action", "at", "victim", "affected", "repairs")}
                                for f in raw["failures"]],
                   "time_to_next_block_s": metrics.summary(repair_took),
                   "blocks_missed": metrics.summary(repair_missed),
                   "late_s": metrics.summary(repair_late),
                   "never_recovered": sum(1 for t in repair_took if t is None),
                   "client_rejoin_causes": metrics.histogram(
                       c for e in per_client for c in e["rejoin_causes"]),
                   "client_rejoin_took_s": metrics.summary(
                       t for e in per_client for t in e["rejoin_took_s"])},
        "tree": {"depth_histogram": {str(k): v for k, v in metrics.histogram(
                     s.get("depth") for s in statuses.values()).items()},
                 "best_depth_histogram": {str(k): v for k, v in sorted(best.items())},
                 **({"best_capacity_depth_histogram": {str(k): v for k, v in sorted(best_capped.items())}}
                    if best_capped else {}),
                 "children_vs_max": metrics.histogram(
                     f"{len(s.get('children', []))}/{s.get('max_children')}" for s in statuses.values()),
                 **metrics.tree_check(statuses)},
        "load": {"bytes_sent": metrics.summary(e["bytes_sent"] for e in relays),
                 "jain_index_relays": metrics.jain_index(e["bytes_sent"] for e in relays),
                 "server_bytes_sent": server_bytes,
                 "server_upload_bytes_per_s": server_bytes / run_s if run_s else None,
                 "uplink_estimate_mbit_by_cap": {cap: metrics.summary(v)
                                                 for cap, v in sorted(estimates.items(),
                                                                      key=lambda kv: float(kv[0]))},
                 "control_vs_block_bytes": None},
        "cost": {"client_cpu_s": metrics.summary(client_cpu),
                 "client_cpu_fraction_of_a_core": metrics.summary(
                     None if c is None else c / run_s for c in client_cpu),
                 "client_peak_rss_mib": metrics.summary(client_mem),
                 "server_cpu_s": sum(c["cpu_s"] or 0 for c in raw["server_costs"]),
                 "server_peak_rss_mib": max((c["peak_rss_mib"] or 0 for c in raw["server_costs"]),
                                            default=None)},
        "verify": _verify_cost(clients),
        "run_s": run_s,
        "per_client": per_client,
    }


def _verify_cost(clients) -> dict:
    """Authenticated blocks (client.verify): feed bytes per stored block, fetches, verdicts."""
    rows = [(r.get("stats") or {}) for r in clients]
    checks = [s["verify"] for s in rows if s.get("verify")]
    blocks = sum(s.get("blocks_received", 0) for s in rows)
    feed_bytes = sum(v.get("feed_bytes", 0) for v in checks)
    return {"mode": metrics.histogram(v.get("mode") for v in checks),
            "feed_bytes_per_block": feed_bytes / blocks if blocks else None,
            "feed_fetches_per_client": metrics.summary(v.get("feed_fetches", 0) for v in checks),
            "feed_wait_per_fetch_s": (sum(v.get("feed_wait_s", 0) for v in checks)
                                      / max(1, sum(v.get("feed_fetches", 0) for v in checks))),
            "feed_wait_max_s": max((v.get("feed_wait_max_s", 0) for v in checks), default=None),
            **{k: sum(v.get(k, 0) for v in checks) for k in ("genuine", "forged", "unchecked")}}


def compare(overlay: dict, star: dict) -> dict:
    def ratio(a, b):
        return None if a is None or not b else a / b
    return {"server_upload_overlay_over_star": ratio(overlay["load"]["server_bytes_sent"],
                                                     star["load"]["server_bytes_sent"]),
            "median_lag_overlay_over_star": ratio(overlay["lag_s"]["median"], star["lag_s"]["median"]),
            "median_lag_overlay_minus_star_s":
                None if overlay["lag_s"]["median"] is None or star["lag_s"]["median"] is None
                else overlay["lag_s"]["median"] - star["lag_s"]["median"],
            "median_continuity": [overlay["continuity"]["median"], star["continuity"]["median"]],
            "server_cpu_s": [overlay["cost"]["server_cpu_s"], star["cost"]["server_cpu_s"]]}


# ------------------------------------------------------------------ output

def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _triple(s: dict, digits=3) -> str:
    return " / ".join(_fmt(s.get(k), digits) for k in ("min", "median", "mean"))


#: The note under the table and in the plot: what the Jain figure means.
JAIN_NOTE = ("Jain: Jain's fairness index of the bytes sent by the relay-capable clients "
             "(K >= 1): 1 = all sent the same, 1/n = one sent everything")


def depth_order(depth: str) -> int:
    """Depths in number order; a client with no depth (not placed) last."""
    return int(depth) if depth.lstrip("-").isdigit() else 99


def depth_counts(histogram: dict) -> str:
    """``{"1": 2, "2": 6}`` as ``1:2 2:6`` (depth:clients), in depth order."""
    return " ".join(f"{d}:{histogram[d]}" for d in sorted(histogram, key=depth_order)) or "-"


def table(results: dict) -> str:
    runs = [r for r in (results.get("overlay"), results.get("star")) if r]
    rows = [("", *[r["kind"] for r in runs])]

    def add(label, fn):
        rows.append((label, *[fn(r) for r in runs]))
    add("clients (survivors)", lambda r: f"{r['clients']} ({r['survivors']})")
    add("server slots", lambda r: str(r["server_slots"]))
    add("continuity min/med/mean", lambda r: _triple(r["continuity"]))
    add("on time min/med/mean", lambda r: _triple(r["on_time_fraction"]))
    add("startup s min/med/mean", lambda r: _triple(r["startup_s"], 2))
    add("all receiving after s", lambda r: _fmt(r["all_receiving_after_s"], 2))
    add("lag s med / p99 / max", lambda r: " / ".join(_fmt(r["lag_s"][k]) for k in ("median", "p99", "max")))
    add("lag s per hop (median)", lambda r: _fmt(r.get("lag_s_per_hop")))
    add("lag s median by depth", lambda r: " ".join(f"{d}:{_fmt(s['median'])}"
                                                     for d, s in r["lag_s_by_depth"].items()))
    add("failures (affected)", lambda r: f"{len(r['repair']['failures'])} "
        f"({sum(len(f['affected']) for f in r['repair']['failures'])})")
    add("repair s med/p99/max", lambda r: " / ".join(
        _fmt(r["repair"]["time_to_next_block_s"][k], 2) for k in ("median", "p99", "max")))
    add("repair late s med/p99/max", lambda r: " / ".join(
        _fmt((r["repair"].get("late_s") or {}).get(k), 2) for k in ("median", "p99", "max")))
    add("blocks missed med/max", lambda r: " / ".join(
        _fmt(r["repair"]["blocks_missed"][k], 1) for k in ("median", "max")))
    add("clients by depth (best)", lambda r: f"{depth_counts(r['tree']['depth_histogram'])} "
        f"(best {depth_counts(r['tree']['best_depth_histogram'])})")
    if any("best_capacity_depth_histogram" in r["tree"] for r in runs):
        add("best the uplinks allow", lambda r: depth_counts(
            r["tree"].get("best_capacity_depth_histogram", {})) or "-")
    if any(r["load"].get("uplink_estimate_mbit_by_cap") for r in runs):
        add("uplink estimate Mbit/s", lambda r: " ".join(
            f"{cap}:{_fmt(v['min'], 1)}-{_fmt(v['max'], 1)}"
            for cap, v in r["load"].get("uplink_estimate_mbit_by_cap", {}).items()) or "-")
    add("loops / over limit", lambda r: f"{r['tree']['loops']} / {len(r['tree']['over_limit'])}")
    add("Jain (relays)", lambda r: _fmt(r["load"]["jain_index_relays"]))
    add("server MB sent", lambda r: _fmt(r["load"]["server_bytes_sent"] / 1e6, 1))
    add("client CPU s med/max", lambda r: " / ".join(_fmt(r["cost"]["client_cpu_s"][k], 2)
                                                     for k in ("median", "max")))
    add("client peak MiB med/max", lambda r: " / ".join(_fmt(r["cost"]["client_peak_rss_mib"][k], 1)
                                                        for k in ("median", "max")))
    add("server CPU s / peak MiB", lambda r: f"{_fmt(r['cost']['server_cpu_s'], 2)} / "
        f"{_fmt(r['cost']['server_peak_rss_mib'], 1)}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if results.get("comparison"):
        c = results["comparison"]
        lines.append(f"overlay/star: server upload {_fmt(c['server_upload_overlay_over_star'])}, "
                     f"median lag {_fmt(c['median_lag_overlay_over_star'], 2)} "
                     f"(+{_fmt(c['median_lag_overlay_minus_star_s'])} s)")
    lines.append(JAIN_NOTE)
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    fig = figure(results)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figure(results: dict):
    """The four panels of :func:`plot`, as a matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    overlay, star = results["overlay"], results.get("star")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    for r in (overlay, star):
        if r:
            cont = sorted(e["continuity"] for e in r["per_client"] if e["fate"] in ("alive", "thawed"))
            ax.plot(range(len(cont)), cont, marker=".", label=r["kind"])
    ax.set_title("continuity per surviving client (sorted)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("client")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax = axes[0][1]
    depths = overlay["tree"]["depth_histogram"]
    best = overlay["tree"]["best_depth_histogram"]
    keys = sorted({*depths, *best}, key=depth_order)
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [depths.get(k, 0) for k in keys], 0.4, label="measured (end)")
    ax.bar([x + 0.2 for x in xs], [best.get(k, 0) for k in keys], 0.4, label="best the limits allow")
    ax.set_xticks(list(xs), keys)
    ax.set_xlabel("depth")
    ax.set_ylabel("clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))     # clients come whole
    ax.set_title("tree depth histogram")
    ax.legend()
    ax = axes[1][0]
    labels, medians, p99 = [], [], []
    for d, s in overlay["lag_s_by_depth"].items():
        labels.append(d)
        medians.append(s["median"] or 0)
        p99.append(s["p99"] or 0)
    ax.bar(labels, p99, color="#ccc", label="p99")
    ax.bar(labels, medians, label="median")
    ax.set_title("live lag by depth, s (vs earliest direct client)")
    ax.set_xlabel("depth")
    ax.legend()
    ax = axes[1][1]
    sent = sorted((e["bytes_sent"] or 0) / 1e6 for e in overlay["per_client"] if e["max_children"] >= 1)
    ax.bar(range(len(sent)), sent)
    ax.set_title(f"MB sent per relay (Jain's fairness index "
                 f"{_fmt(overlay['load']['jain_index_relays'], 2)}; 1 = all equal)")
    ax.set_xlabel("relay (sorted)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    took = [t for f in overlay["repair"]["failures"] for t in
            (rep["took"] for rep in f["repairs"].values()) if t is not None]
    if took:
        inset = ax.inset_axes([0.08, 0.55, 0.4, 0.38])
        inset.hist(took, bins=min(20, max(3, len(took))))
        inset.set_title("repair s", fontsize=8)
        inset.tick_params(labelsize=7)
    fig.suptitle(results["title"], fontsize=10)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------- main

def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(vars(value))
    return value


def run_one(args, workdir: Path, films: Path, digests, star: bool) -> dict:
    scenario = Scenario(args, workdir, films, star)
    try:
        say(args, f"{'star' if star else 'overlay'}: {args.clients} clients, "
                  f"{len(scenario.events)} churn event(s), {args.duration:.0f} s")
        scenario.run()
    finally:
        scenario.stop()
    return analyse(args, scenario.observe(digests), digests, star,
                   film_stream_rate(films, args.period)) | {
        "schedule": [vars(e) for e in scenario.events]}


def title_of(args, prefix: str = "") -> str:
    """One line naming a run's scenario (this benchmark's or the simulator's, ``prefix`` "sim ")."""
    churn = ", ".join(f"{name} {getattr(args, name.replace('-', '_'))}/min"
                      for name in ("kill-rate", "freeze-rate", "leave-rate")
                      if getattr(args, name.replace("-", "_")))
    ks = ",".join(map(str, args.max_children))
    return (f"{prefix}N={args.clients} S={args.server_slots} K={ks} period={args.period:g}s "
            f"T={args.duration:g}s spread={args.join_spread:g}s seed={args.seed}"
            + (f" {churn}" if churn else "")
            + (f" restart@{args.restart_server_at:g}s" if args.restart_server_at is not None else "")
            + (" netns up=" + ",".join(f"{c:g}" for c in args.upload_mbit) + "Mbit/s"
               if getattr(args, "netns", False) else "")
            + (" (churn of live relays)" if getattr(args, "churn_of", None) == "live" else ""))


def network_of(args) -> str:
    if not args.netns:
        return "loopback 127.0.x.y"
    caps = (f"client upload {netns.describe_caps(args.upload_mbit)}" if any(args.upload_mbit)
            else "no client cap")
    if args.server_upload_mbit:
        caps += f", server upload {args.server_upload_mbit:g} Mbit/s"
    return f"netns 10.231.0.0/16 via a bridge, tbf {caps}"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    if args.players:
        os.environ.pop("DISPLAY", None)  # hundreds of windows would help nobody: headless

    args.stop = StopSignals(STOP_SIGNALS).install()
    args.topology = None
    tmp = Path(tempfile.mkdtemp(prefix="relaytv-bench-"))
    results = {"title": title_of(args), "options": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items() if k != "stop"}}
    args.code_dir = REPO
    try:
        args.code_dir = REPO
        results["code"] = "working tree"
        if args.code:
            args.code_dir = tmp / "code"
            results["code"] = export_code(args.code, args.code_dir)
            say(args, f"running commit {results['code'][:12]}")
        films = args.films
        if films is None:
            say(args, f"making {args.channels} sample film(s) of {args.film_seconds} s")
            films = make_films(args, tmp / "films", args.code_dir)
        digests = film_digests(films, args.channels)
        if args.netns:
            args.topology = netns.Topology(netns.prefix_of(), upload_mbit=args.upload_mbit,
                                           server_upload_mbit=args.server_upload_mbit or None,
                                           clients=args.clients)
            say(args, f"netns: hosts {args.topology.prefix}*, client upload "
                      f"{netns.describe_caps(args.upload_mbit)}")
        results["film_blocks"] = [len(d) for d in digests]
        results["overlay"] = run_one(args, tmp / "overlay", films, digests, star=False)
        if args.baseline == "star":
            results["star"] = run_one(args, tmp / "star", films, digests, star=True)
            results["comparison"] = compare(results["overlay"], results["star"])
    except Interrupted:
        print("overlay.py: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except netns.NetnsError as e:
        print(f"overlay.py: --netns: {e}", file=sys.stderr)
        return 1
    finally:
        if args.topology is not None:
            results["netns"] = args.topology.describe()
            left = args.topology.close()
            results["netns"]["left_behind"] = left
            if left:
                print(f"overlay.py: could not delete namespaces {left}; "
                      "try python -m bench.netns --cleanup", file=sys.stderr)
        args.stop.close()
        if args.keep:
            print(f"overlay.py: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "kernel": platform.release(), "network": network_of(args)}
    results["wall_clock_s"] = time.time() - started
    results = _jsonable(results)
    print(results["title"])
    print(table(results))
    print(f"wall clock {results['wall_clock_s']:.0f} s on {os.cpu_count()} core(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
