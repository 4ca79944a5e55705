"""The server's reading of requests (server/intake.py): pure, with a fake clock."""

from __future__ import annotations

from server.intake import Intake


def test_a_request_is_finished_when_its_three_characters_are_in():
    intake = Intake(timeout=2.0)
    assert intake.add("a", "10.0.0.1", now=0.0) == []
    assert intake.received("a", b" 1") is None
    assert intake.room("a") == 1024 - 2
    done = intake.received("a", b"30\n")
    assert (done.key, done.ip, done.data, done.why) == ("a", "10.0.0.1", b" 130\n", "complete")
    assert len(intake) == 0 and intake.next_deadline() is None


def test_end_of_stream_and_timeout_finish_a_connection():
    intake = Intake(timeout=2.0)
    intake.add("a", "10.0.0.1", now=0.0)
    intake.add("b", "10.0.0.2", now=0.5)
    assert intake.received("a", b"1") is None
    assert intake.next_deadline() == 2.0
    assert intake.expired(1.9) == []
    [a] = intake.expired(2.0)
    assert (a.key, a.data, a.why) == ("a", b"1", "timeout")
    b = intake.received("b", b"")
    assert (b.key, b.data, b.why) == ("b", b"", "eof")


def test_the_oldest_connection_of_a_crowded_address_gives_way():
    intake = Intake(timeout=2.0, max_reading=100, max_per_address=3)
    for n in range(3):
        assert intake.add(("x", n), "10.0.0.9", now=n * 0.1) == []
    assert intake.add("good", "10.0.0.1", now=0.3) == []
    [evicted] = intake.add(("x", 3), "10.0.0.9", now=0.4)
    assert (evicted.key, evicted.why) == (("x", 0), "evicted")
    assert intake.received("good", b"130").why == "complete"   # the other address untouched
    assert len(intake) == 3


def test_the_oldest_of_all_gives_way_past_the_total_bound():
    intake = Intake(timeout=2.0, max_reading=2, max_per_address=10)
    intake.add("a", "10.0.0.1", now=0.0)
    intake.add("b", "10.0.0.2", now=0.1)
    [evicted] = intake.add("c", "10.0.0.3", now=0.2)
    assert evicted.key == "a"
    assert sorted(f.key for f in intake.drain()) == ["b", "c"]
    assert len(intake) == 0
