"""Library figures: download time from 1, 2 and 3 holders, takeover time, tracker requests/s.

::

    python -m bench.library [--netns --upload-mbit 8] [--size-mb 8] [--peers 1000] [--seconds 10]

* **downloads**: a random file of ``--size-mb`` MB (fragments of 256 KiB)
  held by 3 peers; ``--get`` from 1, 2 and 3 of them. Each holder's upload is
  capped: with ``--netns`` by a token bucket on its host's link (bench.netns),
  else by ``--repair-rate`` (``--upload-mbit`` converted to kB/s).
* **takeover**: the same download from 3 holders; the second holder is
  killed (SIGKILL) 40 % of a 3-holder download time after the download
  started; the figure is the time from the kill to its part being handed to
  the others (the downloader's ``taken_over_at``).
* **tracker**: ``--peers`` simulated peers (each its own loopback address)
  register a 30-block film and then heartbeat as fast as 8 threads can for
  ``--seconds``; the figure is heartbeats answered per second.

Prints one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import netns
from bench.cluster import Cluster, next_address, session_ports, wait_until
from client.library import TrackerClient, TrackerError

FRAGMENT_KIB = 256


class _InHost:
    """The tracker's GET API from inside a host of the topology (its addresses are not ours)."""

    def __init__(self, prefix: list[str], ip: str):
        self.prefix, self.url = prefix, f"http://{ip}:{session_ports().tracker}"

    def get(self, path: str) -> dict:
        code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        result = subprocess.run(self.prefix + [sys.executable, "-c", code, self.url + path],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise TrackerError(result.stderr.strip().splitlines()[-1] if result.stderr else "failed")
        return json.loads(result.stdout)

    def search(self, word: str) -> list[dict]:
        return self.get(f"/search?q={word}")["films"]


def _tracker(cluster: Cluster, ip: str, workdir: Path, *extra: str, api=None):
    proc = cluster.spawn("tracker", ip, [cluster.python, "-m", "server.tracker", "--host", ip,
                                         "--port", str(session_ports().tracker), "--db",
                                         str(workdir / "catalogue.db"), "--heartbeat", "1",
                                         "--log-level", "WARNING", *extra])
    api = api or TrackerClient(ip, session_ports().tracker)

    def answers():
        try:
            return api.get("/")
        except TrackerError:
            return None
    wait_until(answers, 30, "the tracker")
    return proc, api


def _holders(cluster, server, tracker_ip, share, ips, rate_kb):
    extra = ["--repair-rate", str(rate_kb)] if rate_kb else []
    return [cluster.start_client(server, "--tracker", f"{tracker_ip}:{session_ports().tracker}",
                                 "--share", str(share), "--fragment-size", str(FRAGMENT_KIB),
                                 *extra, ip=ip) for ip in ips]


def _get(cluster, tracker_ip, ip, dest, stats, wanted, parts=3):
    argv = [cluster.python, "-m", "client", "--get", wanted, "--to", str(dest), "--ip", ip,
            "--tracker", f"{tracker_ip}:{session_ports().tracker}", "--stats", str(stats),
            "--parts", str(parts)]
    return cluster.spawn(f"get-{dest.name}", ip, argv)


def downloads(args, workdir: Path) -> dict:
    share = workdir / "share"
    share.mkdir()
    (share / "payload.bin").write_bytes(os.urandom(int(args.size_mb * 1_000_000)))
    rate_kb = 0 if args.netns else args.upload_mbit * 1000 / 8
    topology = None
    if args.netns:
        topology = netns.Topology(netns.prefix_of(), upload_mbit=args.upload_mbit)
    try:
        if topology is not None:
            server_ip = topology.add_server().ip
            ips = [topology.add_client(i).ip for i in range(4)]
        else:
            server_ip, ips = next_address(), [next_address() for _ in range(4)]
        with Cluster(workdir / "run", prefix=topology.exec_prefix if topology else None) as cluster:
            api = _InHost(topology.exec_prefix(ips[3]), server_ip) if topology else None
            _, api = _tracker(cluster, server_ip, workdir, api=api)
            server = cluster.start_server("--tracker-port", "0", ip=server_ip)
            _holders(cluster, server, server_ip, share, ips[:3], rate_kb)

            def held():
                found = api.search("payload.bin")
                return found and len(found[0]["holders"]) == 3
            wait_until(held, 120, "3 holders")
            out = {}
            for count in (1, 2, 3):
                dest = workdir / f"got{count}"
                stats = workdir / f"get{count}.json"
                proc = _get(cluster, server_ip, ips[3], dest, stats, "payload.bin", parts=count)
                if proc.popen.wait(timeout=600) != 0:
                    raise RuntimeError(f"the download failed:\n{proc.log_text()}")
                result = json.loads(stats.read_text())
                out[f"holders_{count}"] = {"seconds": result["seconds"],
                                           "served_by": result["served_by"]}
                shutil.rmtree(dest)
            out["speedup_3_vs_1"] = round(out["holders_1"]["seconds"] / out["holders_3"]["seconds"], 2)

            dest, stats = workdir / "gotk", workdir / "getk.json"
            proc = _get(cluster, server_ip, ips[3], dest, stats, "payload.bin")
            victim = cluster.procs[3]  # the second holder: its part is in the middle
            wait_until(lambda: "payload.bin: 0/" in proc.log_text(), 60, "the download to start")
            time.sleep(0.4 * out["holders_3"]["seconds"])  # well inside every part
            killed_at = time.time()
            victim.kill()
            proc.popen.wait(timeout=600)
            result = json.loads(stats.read_text())
            key = f"{victim.ip}:{session_ports().peer}"
            out["takeover"] = {"killed": key, "complete": result["complete"],
                               "seconds_total": result["seconds"],
                               "kill_to_takeover_s": round(result["taken_over_at"][key] - killed_at, 3)
                               if key in result["taken_over_at"] else None}
            return out
    finally:
        if topology is not None:
            topology.close()


def tracker_rate(args, workdir: Path) -> dict:
    with Cluster(workdir / "tracker-run") as cluster:
        ip = next_address()
        _, api = _tracker(cluster, ip, workdir, "--rate", "100000", "--heartbeat", "30")
        manifest = {"name": "load.bin", "kind": "file", "size": 30 * 1000, "block_size": 1000,
                    "blocks": [{"size": 1000, "sha256": f"{i:064x}"} for i in range(30)]}
        peers = [TrackerClient(ip, session_ports().tracker, own_ip=next_address()) for _ in range(args.peers)]
        started = time.monotonic()
        for peer in peers:
            status, _ = peer.request("POST", "/register", {"ip": peer.own_ip, "port": session_ports().peer,
                                                           "films": [{"manifest": manifest}]})
            assert status == 200
        register_s = time.monotonic() - started
        count = [0] * 8
        stop = time.monotonic() + args.seconds

        def beat(slot: int):
            i = slot
            while time.monotonic() < stop:
                peer = peers[i % len(peers)]
                status, _ = peer.request("POST", "/heartbeat", {"ip": peer.own_ip, "port": session_ports().peer})
                if status == 200:
                    count[slot] += 1
                i += 8

        threads = [threading.Thread(target=beat, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        holders = len(api.search("load.bin")[0]["holders"])
        return {"peers": args.peers, "registrations_per_s": round(args.peers / register_s, 1),
                "heartbeats": sum(count), "seconds": args.seconds,
                "heartbeats_per_s": round(sum(count) / args.seconds, 1), "holders_seen": holders}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.library", description=__doc__.split("\n")[0])
    p.add_argument("--netns", action="store_true", help="holders on capped hosts (root)")
    p.add_argument("--upload-mbit", type=float, default=8.0, help="each holder's upload cap (8)")
    p.add_argument("--size-mb", type=float, default=8.0, help="size of the file downloaded (8)")
    p.add_argument("--peers", type=int, default=1000, help="simulated peers for the tracker (1000)")
    p.add_argument("--seconds", type=float, default=10.0, help="heart-beating time (10)")
    p.add_argument("--skip-downloads", action="store_true")
    p.add_argument("--workdir", type=Path, help="keep the logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.netns and netns.unavailable():
        p.error(netns.unavailable())
    with tempfile.TemporaryDirectory(prefix="relaytv-library-") as tmp:
        tmp = args.workdir or tmp
        results = {"upload_mbit": args.upload_mbit, "netns": args.netns, "size_mb": args.size_mb}
        if not args.skip_downloads:
            results["downloads"] = downloads(args, Path(tmp))
        results["tracker"] = tracker_rate(args, Path(tmp))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
