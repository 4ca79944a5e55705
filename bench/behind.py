"""How far behind live one viewer's screen is over a run, with and without the live edge.

    python -m bench.behind --block 2.6 --period 2.0 --duration 600 --json b.json
    python -m bench.behind --block 2.6 --period 2.0 --duration 600 --no-control
    python -m bench.behind --films filme --period 2.0 --duration 600
    python -m bench.behind --plot behind.png a.json b.json ...   # one plot of earlier runs
    python -m bench.behind --cpu-rates 1.0,1.3                   # the player's CPU per rate

A run starts a server at ``--period`` with a sample film cut into blocks of
``--block`` seconds (or the films of ``--films``), and one client with its
player (headless unless DISPLAY is set). Every second it reads the client's
status.json: the seconds behind live, the play rate, the blocks on disk.
``--no-control`` runs the player with ``--max-behind 0`` (every block at
1.0x). ``--cpu-rates`` plays the same blocks through libvlc at each fixed
rate and prints the player's CPU time per second of wall clock and per
second of film.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster import REPO, Cluster, wait_until


def make_films(out: Path, block: float, seconds: int = 78, size: str = "640x360") -> Path:
    subprocess.run([sys.executable, str(REPO / "separa.py"), "--sample", "--channels", "1",
                    "--seconds", f"{block:g}", "--seconds-long", str(seconds), "--size", size,
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="relaytv-behind-") as tmp:
        tmp = Path(tmp)
        films = Path(args.films) if args.films else make_films(tmp / "filme", args.block)
        with Cluster(tmp / "run", films) as cluster:
            server = cluster.start_server(period=args.period, max_clients=1, channels=1)
            extra = ["--player", "--max-behind", "0" if args.no_control else f"{args.max_behind:g}"]
            client = cluster.start_client(server, *extra, max_children=0, period=args.period)
            wait_until(lambda: (Cluster.status_of(client) or {}).get("behind_live_s") is not None,
                       60, "the player's first figure")
            samples = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.duration:
                status = Cluster.status_of(client) or {}
                player = status.get("player") or {}
                samples.append({"t": round(time.monotonic() - t0, 2),
                                "behind_live_s": status.get("behind_live_s"),
                                "rate": status.get("play_rate"),
                                "skipped_ahead": player.get("skipped_ahead"),
                                "waits": player.get("waits"), "played": player.get("played"),
                                "on_disk": len(list(Cluster.store_of(client).glob("*.mkv")))})
                time.sleep(1.0)
            client.stop()
            stats = json.loads((Cluster.store_of(client) / "stats.json").read_text())
    behinds = [s["behind_live_s"] for s in samples if s["behind_live_s"] is not None]
    return {"block_s": None if args.films else args.block, "films": args.films,
            "period": args.period, "control": not args.no_control,
            "max_behind": args.max_behind, "duration": args.duration, "samples": samples,
            "behind_max_s": max(behinds, default=None),
            "behind_last_s": behinds[-1] if behinds else None,
            "behind_live_stats": stats.get("behind_live"), "last": samples[-1] if samples else None}


def label(result: dict) -> str:
    blocks = f"{result['block_s']:g} s blocks" if result["block_s"] else "sample films"
    control = "live edge" if result["control"] else "no control"
    return f"{blocks}, period {result['period']:g} s, {control}"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for result in results:
        points = [(s["t"] / 60, s["behind_live_s"]) for s in result["samples"]
                  if s["behind_live_s"] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label(result), lw=1)
    ax.axhline(results[0]["max_behind"], color="grey", ls="--", lw=0.8, label="--max-behind")
    ax.set_xlabel("minutes")
    ax.set_ylabel("seconds behind live")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7)
    fig.savefig(path)


def cpu_at_rates(rates: list[float], block: float, seconds: int) -> list[dict]:
    """Play the same blocks at each fixed rate in this process; CPU per wall and per film second."""
    from player.vlc_output import VlcOutput, vlc_options
    out = []
    with tempfile.TemporaryDirectory(prefix="relaytv-cpu-") as tmp:
        films = make_films(Path(tmp), block, seconds)
        blocks = sorted(films.glob("*.mkv"))
        for rate in rates:
            output = VlcOutput(vlc_options(headless=True))
            try:
                used0 = _cpu()
                wall0 = time.monotonic()
                for path in blocks:
                    output.play(path)
                    output.set_rate(rate)
                    while True:
                        kind, _ = output.events.get(timeout=30)
                        if kind == "ended":
                            break
                wall = time.monotonic() - wall0
                used = _cpu() - used0
            finally:
                output.close()
            film = block * len(blocks)
            out.append({"rate": rate, "wall_s": round(wall, 2), "cpu_s": round(used, 2),
                        "cpu_per_wall": round(used / wall, 3), "cpu_per_film_s": round(used / film, 3)})
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.behind", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--block", type=float, default=2.6, help="block length of the sample film (s)")
    p.add_argument("--films", help="serve these films instead (e.g. filme)")
    p.add_argument("--period", type=float, default=2.0, help="the server's period (s)")
    p.add_argument("--duration", type=float, default=600, help="seconds sampled")
    p.add_argument("--max-behind", type=float, default=8.0, help="the player's target (s)")
    p.add_argument("--no-control", action="store_true", help="the player without its live edge")
    p.add_argument("--json", type=Path, help="write the run here")
    p.add_argument("--plot", type=Path, help="plot the runs of the JSON files given")
    p.add_argument("--cpu-rates", help="measure the player's CPU at these rates (e.g. 1.0,1.3)")
    p.add_argument("runs", nargs="*", type=Path, help="with --plot: JSON files of earlier runs")
    args = p.parse_args(argv)
    if args.cpu_rates:
        for row in cpu_at_rates([float(r) for r in args.cpu_rates.split(",")], 2.0, 60):
            print(json.dumps(row))
        return 0
    if args.plot and args.runs:
        plot([json.loads(f.read_text()) for f in args.runs], args.plot)
        return 0
    result = run(args)
    summary = {k: result[k] for k in ("block_s", "films", "period", "control", "behind_max_s",
                                      "behind_last_s", "last")}
    print(json.dumps(summary))
    print(json.dumps(result["behind_live_stats"]))
    if args.json:
        args.json.write_text(json.dumps(result))
    if args.plot:
        plot([result], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
