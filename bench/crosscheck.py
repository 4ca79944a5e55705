"""``python -m bench.crosscheck``: what the cross-check costs with a server without a feed.

Real processes on loopback: a server with ``--feed-port 0`` (bytes only, as
the stock server) and ``--slots`` direct clients, ``--clients`` more below
them (two children each), a block every ``--period``. Once every client has
stored ``--blocks`` blocks, from each client's ``status.json``:

* the time a checked block waited for its witness's answer (it is held that
  long before it is stored and relayed: the delay the cross-check adds at one
  hop), by depth;
* the control bytes (DigestQuery and DigestAnswer frames, without TCP/IP
  headers) per checked block, and the questions per block;
* the lag: when a client stored each block, minus when the first client (a
  direct one) stored it (file times), median by depth.

Depths are the clients' at the end (balance swaps move clients up and down
meanwhile; their counts are of the whole run), over every client.

Run with the cross-check on, then again with ``--no-crosscheck`` in the same
sitting (``--compare``, the default), to set the lag side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.cluster import Cluster, wait_until
from client.peerproto import block_digest


def arrivals(proc) -> list[tuple[bytes, float]]:
    """(digest, store time) of every block a client stored."""
    return [(block_digest(p.read_bytes()), p.stat().st_mtime)
            for p in sorted(Cluster.store_of(proc).glob("*.mkv"))]


def lags(proc, reference: dict[bytes, list[float]], period: float) -> list[float]:
    """How long after the first client (a direct one) this client stored each block (that
    occurrence: the film loops, but not within a few periods)."""
    out = []
    for digest, at in arrivals(proc):
        times = [t for t in reference.get(digest, ()) if abs(at - t) < 4 * period]
        if times:                   # (else stored after the reference was read)
            out.append(at - min(times))
    return out


def run(root: Path, args, crosscheck: bool) -> dict:
    flags = ("--window", "5") + (() if crosscheck else ("--no-crosscheck",))
    with Cluster(root) as cluster:
        server = cluster.start_server("--feed-port", "0", max_clients=args.slots,
                                      period=args.period)
        direct = []
        for _ in range(args.slots):
            direct.append(cluster.start_client(server, *flags, max_children=2,
                                               period=args.period))
            wait_until(lambda: (Cluster.status_of(direct[-1]) or {}).get("state") == "direct",
                       20, "a direct client")
        below = []
        for _ in range(args.clients):
            below.append(cluster.start_client(server, *flags, max_children=2, period=args.period))
            wait_until(lambda: (Cluster.status_of(below[-1]) or {}).get("blocks_received", 0) >= 2,
                       30, "a client placed")
        everyone = direct + below
        start = time.monotonic()
        wait_until(lambda: all((Cluster.status_of(p) or {}).get("blocks_received", 0) >= args.blocks
                               for p in everyone), args.blocks * args.period * 4 + 60,
                   "every client's blocks")
        statuses = {p.ip: Cluster.status_of(p) for p in everyone}
        reference: dict[bytes, list[float]] = {}    # the first store of a block is a direct one
        for proc in everyone:
            for digest, at in arrivals(proc):
                reference.setdefault(digest, []).append(at)
        result = {"seconds": time.monotonic() - start, "by_depth": {}}
        for proc in everyone:
            status = statuses[proc.ip]
            depth = status["depth"]
            check = status["verify"]["crosscheck"]
            checked = sum(check[k] for k in ("confirmed", "refuted", "unanswered", "lone"))
            row = result["by_depth"].setdefault(depth, {"clients": 0, "checked": 0, "wait_s": 0.0,
                                                        "wait_max_s": 0.0, "control_bytes": 0,
                                                        "queries": 0, "lone": 0, "lags": [],
                                                        "refuted": 0, "unanswered": 0, "lies": 0,
                                                        "long": 0, "long_s": 0.0})
            row["clients"] += 1
            row["checked"] += checked
            row["lone"] += check["lone"]
            row["refuted"] += check["refuted"]
            row["long"] += check["waits_over_100ms"]
            row["long_s"] += check["wait_over_100ms_s"]
            row["unanswered"] += check["unanswered"]
            row["lies"] += status["refusals"].get("lie", 0)
            row["wait_s"] += check["wait_s"]
            row["wait_max_s"] = max(row["wait_max_s"], check["wait_max_s"])
            row["control_bytes"] += check["control_bytes"]
            row["queries"] += check["queries"]
            row["lags"] += lags(proc, reference, args.period)
        result["block_bytes"] = median(len(p.read_bytes())
                                       for p in Cluster.store_of(direct[0]).glob("*.mkv"))
        return result


def show(name: str, result: dict) -> None:
    print(f"{name}: median block {result['block_bytes'] / 1000:.0f} kB")
    rows = sorted(result["by_depth"].items())
    total = {k: sum(r[k] for _, r in rows) for k in ("clients", "checked", "lone", "unanswered",
                                                     "refuted", "lies", "wait_s", "long", "long_s",
                                                     "control_bytes", "queries")}
    total["wait_max_s"] = max(r["wait_max_s"] for _, r in rows)
    total["lags"] = [lag for _, r in rows for lag in r["lags"]]
    for label, row in [*((f"depth {d}", r) for d, r in rows), ("all", total)]:
        checked = max(row["checked"], 1)
        lag = median(row["lags"]) if row["lags"] else float("nan")
        print(f"  {label}: {row['clients']} client(s), {row['checked']} block(s) checked "
              f"({row['lone']} lone, {row['unanswered']} unanswered, {row['refuted']} refuted; "
              f"{row['lies']} lie refusal(s), of places or blocks); held mean "
              f"{1000 * row['wait_s'] / checked:.1f} ms, max {1000 * row['wait_max_s']:.0f} ms, "
              f"{row['long']} over 100 ms, the others "
              f"{1000 * (row['wait_s'] - row['long_s']) / max(row['checked'] - row['long'], 1):.1f} "
              f"ms; {row['queries'] / checked:.2f} question(s) and "
              f"{row['control_bytes'] / checked:.0f} control bytes per block; "
              f"lag median {1000 * lag:.1f} ms")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crosscheck", description=__doc__.split("\n")[0])
    p.add_argument("--slots", type=int, default=2, help="the server's direct clients (default 2)")
    p.add_argument("--clients", type=int, default=6, help="clients below them (default 6)")
    p.add_argument("--period", type=float, default=0.5, help="seconds per block (default 0.5)")
    p.add_argument("--blocks", type=int, default=40, help="blocks each client stores (default 40)")
    p.add_argument("--only", choices=("on", "off"), help="one run only (default: both)")
    p.add_argument("--workdir", type=Path, help="keep the runs' logs and stores here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-crosscheck-") as tmp:
        for name, on in (("cross-check on", True), ("cross-check off", False)):
            if args.only in (None, "on" if on else "off"):
                show(name, run((args.workdir or Path(tmp)) / name.replace(" ", "-"), args, on))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
