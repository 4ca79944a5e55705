"""Simulator: N real client cores over a simulated network and stock server, with churn.

    python -m bench.sim --clients 10000 --max-children 3 --server-slots 4 --duration 600 \\
        --kill-rate 0.1 --victims parents --latency-ms 20-100 --seed 1 --json out.json

The cores are :class:`client.core.ClientCore`, the same code a client runs;
the network and the server are :mod:`bench.simnet`'s (a discrete-event
clock: one event per frame per link, a block taking its size over the
sender's uplink plus the latency). The churn schedule is the overlay
benchmark's (:func:`bench.overlay.churn_schedule`: same options, same seed,
same events), and so are the figures (:mod:`bench.metrics`): continuity,
live lag by depth, repair after each failure, the tree against the best the
limits allow, Jain's index of the relays' upload; plus how many clients ask
the server after one relay fails, and the wall clock the run took.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):           # python bench/sim.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import metrics                                    # noqa: E402
from bench.overlay import (BUFFER_BLOCKS, _fanouts, _fraction, _jsonable, churn_schedule,  # noqa: E402
                           table, title_of)
from bench.simnet import Film, World                         # noqa: E402
from client.core import CoreConfig                           # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: Seconds after a failure in which the affected clients' server requests count for it.
STORM_WINDOW = 10.0


def _spread(text: str, what: str):
    """``8``, ``2,8,20`` (spread over the clients in equal parts) or ``2-20`` (uniform)."""
    try:
        if "-" in text.strip("-"):
            low, high = (float(x) for x in text.split("-"))
            if not 0 < low <= high:
                raise ValueError
            return ("range", low, high)
        values = [float(x) for x in text.split(",")]
        if not values or min(values) <= 0:
            raise ValueError
        return ("list", values)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}, {what}1,{what}2,... or LOW-HIGH "
                                         f"(numbers > 0): {text!r}") from None


def value_of(spec, index: int, count: int, rng: random.Random) -> float:
    """Client ``index``'s value of ``spec`` (a list in equal runs, as bench.netns.cap_of)."""
    if spec[0] == "range":
        return rng.uniform(spec[1], spec[2])
    values = spec[1]
    return values[min(index * len(values) // max(count, 1), len(values) - 1)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=int, default=100, help="relay clients (N)")
    p.add_argument("--max-children", type=_fanouts, default=[3], metavar="K[,K2,...]",
                   help="each client's fan-out; a list is spread over the clients in turn")
    p.add_argument("--server-slots", type=int, default=2, metavar="S",
                   help="direct clients the server takes (its --max-clients)")
    p.add_argument("--period", type=float, default=2.0, help="seconds between blocks")
    p.add_argument("--duration", type=float, default=60.0, metavar="T", help="simulated seconds")
    p.add_argument("--join-spread", type=float, default=0.0, metavar="SECONDS",
                   help="clients start evenly over this many seconds (0: flash crowd)")
    p.add_argument("--kill-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays (K >= 1) killed per minute (bench.overlay's count)")
    p.add_argument("--freeze-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays frozen per minute (never thawed)")
    p.add_argument("--leave-rate", type=_fraction, default=0.0, metavar="F",
                   help="fraction of relays that leave gracefully per minute")
    p.add_argument("--victims", choices=["any", "parents"], default="any",
                   help="whom churn hits: any relay, or only relays with children then")
    p.add_argument("--churn-of", choices=["start", "live"], default="start",
                   help="start: the rates are of the relays at the start, as bench.overlay's "
                        "(over 10 minutes, 0.1/min fails as many relays as there are); live: "
                        "of the relays still running (each scheduled event happens with the "
                        "chance live/start)")
    p.add_argument("--restart-server-at", type=float, default=None, metavar="SECONDS",
                   help="the server restarts (forgets its clients, starts its film again) then")
    p.add_argument("--upload-mbit", type=lambda t: _spread(t, "MBIT"), default=("list", [8.0]),
                   metavar="MBIT|LIST|LOW-HIGH", help="each client's upload capacity")
    p.add_argument("--latency-ms", type=lambda t: _spread(t, "MS"), default=("list", [0.5]),
                   metavar="MS|LOW-HIGH", help="each client's one-way latency (a link's: the "
                                               "mean of its two ends')")
    p.add_argument("--block-kb", type=float, default=None, metavar="KB",
                   help="blocks of this size (default: the film's in filme/)")
    p.add_argument("--film-blocks", type=int, default=60, help="blocks of the film with --block-kb")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn and of the network")
    p.add_argument("--wall-limit", type=float, default=None, metavar="SECONDS",
                   help="stop simulating after this much wall clock, and report the simulated "
                        "time reached (simulated_s) with the figures up to it")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    return p


def load_film(args) -> Film:
    if args.block_kb is not None:
        return Film.synthetic(args.film_blocks, int(args.block_kb * 1000), seed=args.seed)
    names = sorted((REPO / "filme").glob("*_*.mkv"))
    film = names[0].name.rsplit("_", 1)[0] if names else None
    blocks = [p.read_bytes() for p in names if p.name.startswith(f"{film}_")]
    if not blocks:
        sys.exit("bench.sim: no film in filme/ (make films), or give --block-kb")
    return Film(blocks)


class Run:
    """One simulated run: the world, the clients' start times, the churn, the observations."""

    def __init__(self, args):
        self.args = args
        rng = random.Random(args.seed)
        self.film = load_film(args)
        self.world = World([self.film], slots=args.server_slots, period=args.period)
        n = args.clients
        self.ks = [args.max_children[i % len(args.max_children)] for i in range(n)]
        self.specs = [(f"10.{(i + 1) // 65536 % 256}.{(i + 1) // 256 % 256}.{(i + 1) % 256}",
                       CoreConfig(0, self.ks[i], args.period),
                       value_of(args.upload_mbit, i, n, rng),
                       value_of(args.latency_ms, i, n, rng) / 1000.0) for i in range(n)]
        self.events = churn_schedule(argparse.Namespace(**vars(args), freeze_for=0.0), self.ks)
        self.clients = []
        self.relays = self.live_relays = sum(1 for k in self.ks if k >= 1)
        self._churn_rng = random.Random(args.seed + 1)
        self.failures: list[dict] = []
        self.epochs = [metrics.Epoch(0.0, 0)]
        self.timelines: dict[str, list] = {}

    def run(self) -> None:
        args, world = self.args, self.world
        n = args.clients
        starts = [(args.join_spread * i / n if n > 1 else 0.0, i) for i in range(n)]
        for at, i in starts:
            world.at(at, self._start, i)
        for event in self.events:
            world.at(event.at, self._apply, event)
        t, step = 0.0, args.period
        began = time.time()
        while t < args.duration:
            if args.wall_limit is not None and time.time() - began > args.wall_limit:
                break
            t = min(t + step, args.duration)
            world.run_until(t)
            self._sample_depths()
            if not args.quiet and int(t) % 60 == 0 and t == int(t):
                print(f"[sim] {t:.0f} s simulated, {world.events} events, "
                      f"{time.time() - began:.0f} s wall", file=sys.stderr, flush=True)

    def _start(self, i: int) -> None:
        ip, config, upload, latency = self.specs[i]
        self.clients.append(self.world.add_client(ip, config, upload, latency,
                                                  seed=self.args.seed * 1_000_003 + i))

    def _sample_depths(self) -> None:
        now = self.world.now
        for c in self.clients:
            if c.alive and c.core.state in ("direct", "attached"):
                line = self.timelines.setdefault(c.ip, [])
                if not line or line[-1][1] != c.core.depth:
                    line.append((now, c.core.depth))

    def _victim(self, preferred: int):
        n = len(self.clients)
        for j in range(n):
            c = self.clients[(preferred + j) % n]
            if c.alive and c.config.max_children >= 1:
                if self.args.victims == "parents" and not c.core.relay.children:
                    continue
                return c
        return None

    def _subtree(self, victim) -> list[str]:
        out, todo = [], [victim]
        by_ip = self.world.clients
        while todo:
            node = todo.pop()
            for addr in node.core.relay.children:
                child = by_ip.get(addr.ip)
                if child is not None and child.alive and child is not victim:
                    out.append(child.ip)
                    todo.append(child)
        return out

    def _apply(self, event) -> None:
        now = self.world.now
        if event.action == "restart":
            self.failures.append({"action": "restart", "at": now, "victim": "server",
                                  "affected": [c.ip for c in self.clients if c.alive]})
            self.world.server.start()
            self.epochs.append(metrics.Epoch(now, len(self.epochs)))
            return
        if event.action == "thaw" or not self.clients:
            return
        if self.args.churn_of == "live" and (
                self._churn_rng.random() >= self.live_relays / max(1, self.relays)):
            return
        victim = self._victim(event.client % len(self.clients))
        if victim is None:
            return
        affected = self._subtree(victim)
        getattr(victim, {"kill": "kill", "freeze": "freeze", "leave": "leave"}[event.action])()
        self.live_relays -= 1
        self.failures.append({"action": event.action, "at": now, "victim": victim.ip,
                              "affected": affected})


def analyse(run: Run) -> dict:
    args, world = run.args, run.world
    period, length = args.period, len(run.film.blocks)
    t_end = world.now
    rows = []
    for c in run.clients:
        slots = [(None if i is None else metrics.slot_of(i, t, length, period, run.epochs), t)
                 for i, t in c.stored]
        rows.append((c, slots))
    ref = metrics.reference_times(s for _, s in rows)
    channel = metrics.channel_slots([s for s, _ in slots if s is not None] for _, slots in rows)
    per_client, lag_samples, conts, on_time, startups, own_conts = [], [], [], [], [], []
    for c, slots in rows:
        stopped = c.fate_at if c.fate != "alive" else t_end
        end_slot = metrics.last_slot_before(ref, stopped - period)
        cont = metrics.continuity(slots, channel, end_slot if end_slot is not None else -1,
                                  period, BUFFER_BLOCKS)
        line = run.timelines.get(c.ip, [])
        for s, t in slots:
            if s is not None and s in ref and (end_slot is None or s <= end_slot):
                lag_samples.append((metrics.depth_at(line, t), t - ref[s]))
        first_t = next((t for s, t in slots if s is not None), None)
        startup = None if first_t is None else first_t - c.started_at
        own_last = max((s for s, _ in slots if s is not None), default=-1)
        own = metrics.continuity(slots, channel, own_last, period, BUFFER_BLOCKS)
        per_client.append({"ip": c.ip, "max_children": c.config.max_children, "fate": c.fate,
                           "continuity_to_own_last": own["continuity"],
                           "holes_to_own_last": own["holes"],
                           "bytes_sent": c.core.relay.bytes_sent, "startup_s": startup,
                           "continuity": cont["continuity"], "holes": cont["holes"],
                           "duplicates": cont["duplicates"]})
        if c.fate == "alive":
            own_conts.append(own["continuity"])
            conts.append(cont["continuity"])
            on_time.append(cont["on_time_fraction"])
            startups.append(startup)
    by_ip = {c.ip: slots for c, slots in rows}
    alive = {c.ip for c in run.clients if c.alive}
    took, missed, late = [], [], []
    for failure in run.failures:
        failure["repairs"] = {}
        for ip in failure["affected"]:
            if ip in alive:
                rep = _repair_after(by_ip[ip], failure["at"], channel, ref)
                failure["repairs"][ip] = rep
                took.append(rep["took"])
                missed.append(rep["missed"])
                if rep["late"] is not None:
                    late.append(rep["late"])
    statuses = {c.ip: c.core.snapshot() for c in run.clients if c.alive}
    best = metrics.best_depths([c.config.max_children for c in run.clients if c.alive],
                               args.server_slots)
    relays = [e for e in per_client if e["max_children"] >= 1]
    firsts = [slots[0][1] for _, slots in rows if slots]
    starts = [c.started_at for c in run.clients]
    depths = metrics.histogram(s["depth"] if s["state"] in ("direct", "attached") else None
                               for s in statuses.values())
    return {
        "kind": "sim", "clients": len(run.clients), "survivors": len(alive),
        "simulated_s": t_end,
        "server_slots": args.server_slots,
        "continuity": metrics.summary(conts),
        # (the overlay's continuity counts, up to the run's end, blocks a deep client had not
        # received yet because of its lag; this one ends at each client's own latest block)
        "continuity_to_own_last": metrics.summary(own_conts),
        "on_time_fraction": metrics.summary(on_time),
        "startup_s": metrics.summary(startups),
        "all_receiving_after_s": (max(firsts) - min(starts)) if firsts and
                                 len(firsts) == len(run.clients) else None,
        "lag_s_by_depth": metrics.lag_by_depth(lag_samples),
        "lag_s_per_hop": metrics.lag_per_hop(metrics.lag_by_depth(lag_samples)),
        "lag_s": metrics.summary(lag for _, lag in lag_samples),
        "repair": {"failures": [{k: f[k] for k in ("action", "at", "victim", "affected",
                                                   "repairs")} for f in run.failures],
                   "time_to_next_block_s": metrics.summary(took),
                   "blocks_missed": metrics.summary(missed),
                   "late_s": metrics.summary(late),
                   "never_recovered": sum(1 for t in took if t is None)},
        "tree": {"depth_histogram": {str(k): v for k, v in depths.items()},
                 "best_depth_histogram": {str(k): v for k, v in sorted(best.items())},
                 "deepest": max((s["depth"] for s in statuses.values()), default=None),
                 "best_deepest": max(best, default=None),
                 "children_vs_max": metrics.histogram(
                     f"{len(s['children'])}/{s['max_children']}" for s in statuses.values()),
                 **metrics.tree_check(statuses)},
        "load": {"bytes_sent": metrics.summary(e["bytes_sent"] for e in relays),
                 "jain_index_relays": metrics.jain_index(e["bytes_sent"] for e in relays),
                 "server_bytes_sent": world.server.bytes_sent},
        "server_requests_per_failure": storm(run),
        "holes": sum(e["holes"] for e in per_client if e["fate"] == "alive"),
        "holes_to_own_last": sum(e["holes_to_own_last"] for e in per_client
                                 if e["fate"] == "alive"),
        "events": world.events,
        "cost": {"client_cpu_s": metrics.summary([]), "client_peak_rss_mib": metrics.summary([]),
                 "server_cpu_s": None, "server_peak_rss_mib": None},
    }


def _repair_after(slots, at: float, channel, ref) -> dict:
    """metrics.repair_after on the blocks around ``at`` (the whole list is long)."""
    times = [t for _, t in slots]
    i = bisect.bisect_right(times, at)
    return metrics.repair_after(slots[max(0, i - metrics.USUAL_LAG_BLOCKS):i + 4], at,
                                channel, ref)


def storm(run: Run) -> dict:
    """After one relay fails: how many of the clients it orphaned asked the server (10X/11X)
    in the search that failure started, and how many requests they sent, within
    :data:`STORM_WINDOW` seconds (requests of climbs and other errands not counted)."""
    requests: dict[str, list[float]] = {}
    for t, ip, code in run.world.server.requests:
        if code in ("10", "11"):
            requests.setdefault(ip, []).append(t)
    clients, asks = [], []
    for failure in run.failures:
        if failure["action"] == "restart":
            continue
        at, victim = failure["at"], f"{failure['victim']}:"
        askers = sent = 0
        for ip in failure["affected"]:
            client = run.world.clients[ip]
            for search in client.core.searches:
                if at <= search.started <= at + STORM_WINDOW and victim in search.cause:
                    times = requests.get(ip, [])
                    lo = bisect.bisect_left(times, search.started)
                    hi = bisect.bisect_right(times, at + STORM_WINDOW)
                    askers += hi > lo
                    sent += hi - lo
                    break
        clients.append(askers)
        asks.append(sent)
    return {"clients": metrics.summary(clients), "requests": metrics.summary(asks),
            "window_s": STORM_WINDOW}


def sim_table(result: dict) -> str:
    """The overlay benchmark's table, and the simulator's own lines."""
    lines = [line for line in table({"overlay": result}).split("\n")
             if not line.startswith(("client CPU", "client peak", "server CPU"))]
    storm_ = result["server_requests_per_failure"]
    tree = result["tree"]
    lines.append(f"server requests per failure: clients med/mean/max "
                 f"{storm_['clients']['median']} / {_f(storm_['clients']['mean'])} / "
                 f"{storm_['clients']['max']}, requests mean {_f(storm_['requests']['mean'])}")
    own = result["continuity_to_own_last"]
    lines.append(f"continuity to each one's latest block min/med/mean {_f(own['min'])} / "
                 f"{_f(own['median'])} / {_f(own['mean'])} (holes {result['holes_to_own_last']})")
    lines.append(f"simulated {result['simulated_s']:.0f} s; "
                 f"depth at the end: deepest {tree['deepest']} (best {tree['best_deepest']}); "
                 f"holes in survivors {result['holes']}; {result['events']} events")
    return "\n".join(lines)


def _f(x):
    return "-" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.server_slots < 1 or args.period <= 0 or args.duration <= 0:
        sys.exit("bench.sim: need --clients >= 1, --server-slots >= 1, --period and --duration > 0")
    started = time.time()
    run = Run(args)
    run.run()
    result = analyse(run)
    wall = time.time() - started
    results = _jsonable({"title": title_of(args, "sim "), "options": {k: (str(v) if isinstance(v, Path)
                                                                 else v)
                                                             for k, v in vars(args).items()},
                         "sim": result, "wall_clock_s": wall,
                         "machine": {"cpus": os.cpu_count()}})
    results["sim"]["kind"] = "sim"
    print(results["title"])
    print(sim_table(results["sim"]))
    print(f"wall clock {wall:.0f} s on {os.cpu_count()} core(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
