"""Benchmark of the web view: what a browser viewer costs its client, and what the tree costs all.

One run, on loopback: a server and ``--clients`` clients; headless Chromium
opens the page of the deepest client. Over ``--duration`` seconds it
measures the CPU and peak memory of that client against another client at
the same depth that nobody watches (same run), the remux time per block, the
lag from the client storing a block to the page showing it, and the control
bytes per block that the whole-tree view adds (the nodes in every client's
reports, and the watched client's questions to the direct clients)::

    python -m bench.webview --clients 30 --duration 60

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.cluster import REPO, Cluster, session_ports, wait_until


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def api(proc, path: str):
    with urllib.request.urlopen(f"http://{proc.ip}:{session_ports().http}{path}", timeout=10) as a:
        return json.loads(a.read())


def tree_bytes(clients) -> int:
    total = 0
    for c in clients:
        try:
            web = api(c, "/api/stats")["web"]
        except OSError:
            continue
        total += web["tree_report_bytes"] + web["tree_query_bytes"]
    return total


def hop_delays(relay, clients) -> list[float]:
    """Seconds from ``relay`` storing a block to each of its children storing it.

    Blocks are matched by size and time (sizes of the sample film's blocks
    differ; the nearest occurrence is taken).
    """
    by_ip = {c.ip: c for c in clients}
    mine = api(relay, "/api/blocks")["blocks"]
    out = []
    for child in api(relay, "/api/status")["children"]:
        proc = by_ip.get(child["ip"])
        if proc is None:
            continue
        for block in api(proc, "/api/blocks")["blocks"]:
            earlier = [b["stored_at"] for b in mine if b["bytes"] == block["bytes"]
                       and 0 <= block["stored_at"] - b["stored_at"] < 5]
            if earlier:
                out.append(block["stored_at"] - max(earlier))
    return out


def median(values):
    values = sorted(values)
    return round(values[len(values) // 2], 4) if values else None


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.webview", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=30)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--period", type=float, default=2.0)
    p.add_argument("--films", type=Path, default=REPO / "filme")
    p.add_argument("--no-browser", action="store_true",
                   help="only the tree's control bytes: /api/tree asked every 5 s keeps it gathered")
    args = p.parse_args(argv)
    with Cluster(Path(tempfile.mkdtemp(prefix="relaytv-webview-")), args.films) as cluster:
        server = cluster.start_server(max_clients=2, period=args.period)
        clients = [cluster.start_client(server, "--balance-margin", "0", max_children=2,
                                        period=args.period) for _ in range(args.clients)]
        wait_until(lambda: all((Cluster.status_of(c) or {}).get("blocks_received", 0) >= 2
                               for c in clients), 120, "every client receiving")
        time.sleep(3 * args.period)  # let the tree settle (nothing to await: it is a benchmark)
        depth = {c.ip: Cluster.status_of(c)["depth"] for c in clients}
        # Two relays at the same depth (the deepest that has two), so that what a viewer
        # costs relaying shows in their children's delays.
        relays = [c for c in clients if Cluster.status_of(c)["children"]]
        deep = max((d for d in set(depth[c.ip] for c in relays)
                    if sum(1 for c in relays if depth[c.ip] == d) >= 2), default=max(depth.values()))
        same = [c for c in relays if depth[c.ip] == deep] or [c for c in clients if depth[c.ip] == deep]
        watched, unwatched = same[0], (same[1] if len(same) > 1 else
                                       max((c for c in clients if c is not same[0]),
                                           key=lambda c: depth[c.ip]))
        pair = (watched, unwatched)
        driver = None if args.no_browser else browser()
        try:
            if driver is None:
                api(watched, "/api/tree")
                time.sleep(2 * args.period)  # the first gathering
            else:
                driver.get(f"http://{watched.ip}:{session_ports().http}/")
                wait_until(lambda: driver.execute_script(
                    "return document.getElementById('video').currentTime") > 1, 60, "playback")
            start = [cpu_seconds(c.pid) for c in pair]
            bytes_before, began = tree_bytes(clients), time.monotonic()
            peak = [0.0, 0.0]
            while time.monotonic() - began < args.duration:
                peak = [max(m, rss_mib(c.pid)) for m, c in zip(peak, pair)]
                if driver is None and int(time.monotonic() - began) % 5 == 0:
                    api(watched, "/api/tree")  # keeps the tree gathered
                time.sleep(1.0)
            elapsed = time.monotonic() - began
            bytes_after = tree_bytes(clients)
            cpu = [cpu_seconds(c.pid) - s for c, s in zip(pair, start)]
            nodes = len(api(watched, "/api/tree")["nodes"])
            page = {"lags": [], "dropped": None, "total": None} if driver is None else driver.execute_script(
                "const q = document.getElementById('video').getVideoPlaybackQuality();"
                "return {lags: window.relaytv.lags, dropped: q.droppedVideoFrames,"
                " total: q.totalVideoFrames};")
        finally:
            if driver is not None:
                driver.quit()
        remux = api(watched, "/api/stats")["web"]["remux"]
        hops = [hop_delays(c, clients) for c in pair]
        lags = sorted(page["lags"])
        blocks = elapsed / args.period
        result = {
            "clients": args.clients, "browser": driver is not None, "tree_nodes_seen": nodes,
            "seconds": round(elapsed, 1), "period": args.period,
            **{name: {"ip": c.ip, "depth": depth[c.ip], "cpu_s": round(cpu[i], 2),
                      "peak_rss_mib": round(peak[i], 1)}
               for i, (name, c) in enumerate((("watched", watched), ("unwatched", unwatched)))},
            "hop_delay_s_median": {"watched": median(hops[0]), "unwatched": median(hops[1])},
            "remux_s_per_block": round(remux["seconds_total"] / max(1, remux["remuxed"]), 3),
            "remuxed": remux["remuxed"],
            "lag_store_to_display_s": {"median": lags[len(lags) // 2] if lags else None,
                                       "max": lags[-1] if lags else None, "count": len(lags)},
            "dropped_frames": page["dropped"], "total_frames": page["total"],
            "tree_control_bytes_per_block": round((bytes_after - bytes_before) / blocks),
            "tree_control_bytes_per_block_per_client":
                round((bytes_after - bytes_before) / blocks / args.clients, 1),
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
