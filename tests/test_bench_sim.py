"""``python -m bench.sim``: a small run as the user starts it, its JSON checked for the invariants.

50 real client cores (client.core), 60 simulated seconds, relays with
children killed at 0.1 a minute: no loop, nobody over K, every survivor's
stored blocks continuous, the overlay benchmark's keys in the JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_simulated_run_keeps_the_tree_whole_under_kills(tmp_path):
    out = tmp_path / "sim.json"
    subprocess.run([sys.executable, "-m", "bench.sim", "--clients", "50", "--max-children", "3",
                    "--server-slots", "4", "--duration", "60", "--kill-rate", "0.1",
                    "--victims", "parents", "--latency-ms", "20-100", "--seed", "1",
                    "--block-kb", "100", "--quiet", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=120, capture_output=True)
    results = json.loads(out.read_text())
    sim = results["sim"]
    assert sim["clients"] == 50 and sim["survivors"] == 45
    assert sim["tree"]["loops"] == 0 and sim["tree"]["over_limit"] == []
    assert sim["tree"]["parent_child_disagreements"] == 0
    assert sim["continuity"]["min"] == 1.0 and sim["holes"] == 0
    assert len(sim["repair"]["failures"]) == 5
    assert sim["repair"]["never_recovered"] == 0
    for key in ("lag_s_by_depth", "all_receiving_after_s", "server_requests_per_failure"):
        assert key in sim
    assert set(sim["tree"]) >= {"depth_histogram", "best_depth_histogram"}
    assert "jain_index_relays" in sim["load"] and "wall_clock_s" in results
