"""The tracker's pure parts: manifests, holdings, the rate limit and the replication planner."""

from __future__ import annotations

import pytest

from server.holdings import Holdings, RateLimit
from server.manifest import Manifest, ManifestError, check_name, from_ranges, of_blocks, ranges
from server.replication import Replicator


def test_manifest_version_is_the_hash_of_its_content():
    one = of_blocks("f", "film", [b"a" * 10, b"b" * 5], durations=[2.0, 1.5])
    same = Manifest.parse(one.to_json())
    other = of_blocks("f", "film", [b"a" * 10, b"c" * 5], durations=[2.0, 1.5])
    assert one.version == same.version != other.version
    assert one.matches(1, b"b" * 5) and not one.matches(1, b"x" * 5)
    assert one.block_file(3) == "f_00003.mkv"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 101, "a\x00b", "a..b"])
def test_bad_names_are_refused(name):
    with pytest.raises(ManifestError):
        check_name(name)


def test_fragments_must_have_the_stated_size():
    good = of_blocks("x.bin", "file", [b"a" * 4, b"b" * 4, b"c"], block_size=4).to_json()
    good["blocks"][0]["size"] = 3
    good["size"] -= 1
    with pytest.raises(ManifestError, match="fragments"):
        Manifest.parse(good)


def test_ranges_round_trip_and_bounds():
    assert ranges([5, 0, 1, 2, 7, 6]) == [[0, 2], [5, 7]]
    assert from_ranges([[0, 2], [5, 7]], 8) == {0, 1, 2, 5, 6, 7}
    for bad in ([[3, 2]], [[0, 8]], [[-1, 0]], [[0, True]], "0-3", [[0]]):
        with pytest.raises(ManifestError):
            from_ranges(bad, 8)


def test_silent_peers_are_dropped_after_the_bound():
    holdings = Holdings(drop_after=30)
    events = holdings.register("10.0.0.1", 9092, {"v1": frozenset({0, 1})}, 0, now=0)
    assert [e["type"] for e in events] == ["holder_joined"]
    assert holdings.heartbeat("10.0.0.1:9092", now=20)
    assert holdings.expire(now=50) == []
    left = holdings.expire(now=50.1)
    assert [(e["type"], e["reason"]) for e in left] == [("holder_left", "silent")]
    assert not holdings.heartbeat("10.0.0.1:9092", now=51)


def test_rate_limit_refills():
    limit = RateLimit(rate=2, burst=3)
    assert [limit.allow("a", 0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b", 0)
    assert limit.allow("a", 0.5) and not limit.allow("a", 0.5)


def _cluster(holders: int, spare: list[int]):
    holdings = Holdings(drop_after=30)
    for i in range(holders):
        holdings.register(f"10.0.0.{i + 1}", 9092, {"v": frozenset(range(4))}, 0, now=0)
    for i, space in enumerate(spare):
        holdings.register(f"10.0.1.{i + 1}", 9092, {}, space, now=0)
    return holdings


def test_replication_fills_short_blocks_on_peers_with_space():
    sizes = {"v": [100] * 4}
    holdings = _cluster(1, [1000, 1000, 250])
    replicator = Replicator(replicas=3, task_timeout=60)
    started = replicator.progress({"v": holdings.replication("v", 4)}, holdings, sizes, now=0)
    assert [e["type"] for e in started] == ["replication_started"]
    first = replicator.tasks_for("10.0.1.1:9092", holdings, sizes, now=0)
    second = replicator.tasks_for("10.0.1.2:9092", holdings, sizes, now=0)
    assert first == second == [{"version": "v", "blocks": [[0, 3]]}]
    # Two copies in flight: the third peer is not asked (and it had room for 2 blocks only).
    assert replicator.tasks_for("10.0.1.3:9092", holdings, sizes, now=0) == []
    for key in ("10.0.1.1:9092", "10.0.1.2:9092"):
        holdings.add_blocks(key, "v", frozenset(range(4)), now=1)
        replicator.delivered(key, "v", range(4))
    done = replicator.progress({"v": holdings.replication("v", 4)}, holdings, sizes, now=1)
    assert [e["type"] for e in done] == ["replication_done"]


def test_a_task_not_delivered_is_handed_out_again():
    sizes = {"v": [100] * 4}
    holdings = _cluster(2, [1000, 1000])
    replicator = Replicator(replicas=3, task_timeout=60)
    assert replicator.tasks_for("10.0.1.1:9092", holdings, sizes, now=0)
    assert replicator.tasks_for("10.0.1.2:9092", holdings, sizes, now=10) == []
    assert replicator.tasks_for("10.0.1.2:9092", holdings, sizes, now=61)
