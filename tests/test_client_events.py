"""The structured event log: the records (pure) and the writer (a real file, a fake clock)."""

import json
import threading

import pytest

from client import events
from client.eventlog import EventLog, read
from client.peerproto import Addr


class FakeClock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_a_record_is_one_json_line_with_time_name_and_exactly_its_fields():
    line = events.record(1_700_000_000.12345, "child_gone", child=Addr("127.0.0.3", 9092),
                         kind="silent", reason="silent")
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"t": 1_700_000_000.123, "event": "child_gone",
                                "child": "127.0.0.3:9092", "kind": "silent", "reason": "silent"}


def test_fields_become_plain_json_data():
    line = events.record(0.0, "repair_done", by_source={Addr("127.0.0.2", 9092): 2},
                         repaired=2, lost=0)
    assert json.loads(line)["by_source"] == {"127.0.0.2:9092": 2}
    line = events.record(0.0, "repair_started", missing=3,
                         sources=(Addr("127.0.0.2", 1), Addr("127.0.0.4", 1)), held=0)
    assert json.loads(line)["sources"] == ["127.0.0.2:1", "127.0.0.4:1"]
    line = events.record(0.0, "rejoin", cause="x" * 5000, lost=None, silent=False, moved_by=None)
    assert len(json.loads(line)["cause"]) == events.MAX_TEXT


@pytest.mark.parametrize("event, fields", [
    ("no_such_event", {}),
    ("gap", {"kind": "server", "count": 2}),                                # a field missing
    ("gap", {"kind": "server", "count": 2, "sources": [], "extra": 1}),    # one too many
])
def test_an_unknown_event_or_a_wrong_field_set_is_refused(event, fields):
    with pytest.raises(events.EventError):
        events.record(0.0, event, **fields)


@pytest.mark.parametrize("reason, kind", [
    ("left", "left"), ("silent", "silent"), ("closed", "closed"),
    ("connection closed", "closed"), ("dropped: too slow", "dropped"),
    ("moved elsewhere", "moved"), ("cut: swap", "cut"), ("send failed: timed out", "send failed"),
    ("internal error: KeyError()", "internal error"), ("[Errno 104] Connection reset", "error"),
    ("silently", "error"),
])
def test_a_child_s_end_has_a_kind(reason, kind):
    assert events.child_gone_kind(reason) == kind


def test_parse_leaves_out_a_line_still_being_written_and_foreign_lines():
    whole = events.record(1.0, "gap", kind="server", count=2, sources=["127.0.0.2:9092"])
    text = whole + "not json\n" + '{"event": "other"}\n' + whole + whole[:10]
    assert [e["event"] for e in events.parse(text)] == ["gap", "gap"]


def test_the_writer_appends_lines_stamped_by_its_clock(tmp_path):
    clock = FakeClock()
    log = EventLog(lambda: tmp_path / events.FILE, clock=clock)
    log.emit("child_added", child=Addr("127.0.0.5", 9092), resumes="live", missed=0)
    clock.now += 2.5
    log.emit("child_gone", child=Addr("127.0.0.5", 9092), kind="left", reason="left")
    got = read(tmp_path / events.FILE)
    assert [(e["t"], e["event"]) for e in got] == [(1_700_000_000.0, "child_added"),
                                                   (1_700_000_002.5, "child_gone")]


def test_the_writer_rotates_so_that_at_most_two_files_of_the_limit_stay(tmp_path):
    path = tmp_path / events.FILE
    line = events.record(0.0, "gap", kind="server", count=1, sources=None)
    log = EventLog(lambda: path, limit=len(line) * 10, clock=lambda: 0.0)
    for _ in range(35):
        log.emit("gap", kind="server", count=1, sources=None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1"]
    assert all(p.stat().st_size <= len(line) * 10 for p in tmp_path.iterdir())
    assert len(read(path)) == 5 and len(read(tmp_path / "events.jsonl.1")) == 10


def test_the_writer_follows_the_store_when_it_moves(tmp_path):
    store = {"now": tmp_path / "channel0"}
    for folder in ("channel0", "channel1"):
        (tmp_path / folder).mkdir()
    log = EventLog(lambda: store["now"] / events.FILE, clock=lambda: 0.0)
    log.emit("gap", kind="server", count=1, sources=None)
    store["now"] = tmp_path / "channel1"
    log.emit("gap", kind="window", count=2, sources=None)
    assert [e["kind"] for e in read(tmp_path / "channel0" / events.FILE)] == ["server"]
    assert [e["kind"] for e in read(tmp_path / "channel1" / events.FILE)] == ["window"]


def test_lines_from_many_threads_are_never_mixed(tmp_path):
    path = tmp_path / events.FILE
    log = EventLog(lambda: path, clock=lambda: 0.0)
    reason = "r" * events.MAX_TEXT  # long lines: a torn write would show

    def emit_many(n):
        for i in range(200):
            log.emit("child_gone", child=f"127.0.0.{n}:9092", kind="error", reason=reason)

    threads = [threading.Thread(target=emit_many, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 1600 and len(read(path)) == 1600


def test_a_store_that_refuses_the_line_costs_the_line_only(tmp_path, caplog):
    log = EventLog(lambda: tmp_path / "missing-folder" / events.FILE, clock=lambda: 0.0)
    log.emit("gap", kind="server", count=1, sources=None)
    log.emit("gap", kind="server", count=1, sources=None)
    assert len([r for r in caplog.records if r.name == "client.eventlog"]) == 1


def test_reading_a_log_not_written_yet_gives_no_event(tmp_path):
    assert read(tmp_path / events.FILE) == []
