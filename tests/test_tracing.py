"""Per-transaction traces: the Tracer's records and bound, summaries, and the text sequence diagram."""

from __future__ import annotations

import itertools

import pytest

from commit.node import tracing
from commit.node.tracing import Tracer
from commit.tooling.traces import sequence_diagram, summarize

WIDTH = 18  # one column per node in the diagram


def center(i: int) -> int:
    return i * WIDTH + WIDTH // 2


@pytest.fixture
def clock(monkeypatch):
    """time.time() as seen by the tracer: 100, 101, 102, ..."""
    ticks = itertools.count(100)
    monkeypatch.setattr(tracing.time, "time", lambda: float(next(ticks)))


def msg(src, dst, kind="2a", hop=1, t=0.0):
    return {"t": t, "node": src, "event": "message", "kind": kind, "src": src, "dst": dst, "hop": hop}


def fw(node, kind="acceptor accept", t=0.0):
    return {"t": t, "node": node, "event": "forced_write", "kind": kind}


# -- Tracer ---------------------------------------------------------------------------------


def test_sent_and_forced_are_recorded_per_transaction_in_order(clock):
    tr = Tracer("n1", max_traced=100)
    tr.sent("tx1", "prepare", "s0", 1)
    tr.forced("tx1", "acceptor accept")
    tr.sent("tx2", "2b", "n2", 3)
    assert tr.of("tx1") == [
        {"t": 100.0, "node": "n1", "event": "message", "kind": "prepare", "src": "n1", "dst": "s0", "hop": 1},
        {"t": 101.0, "node": "n1", "event": "forced_write", "kind": "acceptor accept"},
    ]
    assert tr.of("tx2") == [
        {"t": 102.0, "node": "n1", "event": "message", "kind": "2b", "src": "n1", "dst": "n2", "hop": 3}
    ]
    assert tr.of("unknown") == []
    assert tr.messages == {"prepare": 1, "2b": 1}
    assert tr.forced_writes == {"acceptor accept": 1}


def test_of_returns_a_copy():
    tr = Tracer("n1", max_traced=100)
    tr.sent("tx1", "prepare", "s0", 1)
    copy = tr.of("tx1")
    copy.append({"bogus": True})
    copy.clear()
    assert len(tr.of("tx1")) == 1


def test_counters_count_every_event_by_kind():
    tr = Tracer("n1", max_traced=100)
    for dst in ("a0", "a1", "a2"):
        tr.sent("tx1", "2a", dst, 2)
    tr.sent("tx2", "2a", "a0", 2)
    tr.sent("tx2", "decision", "s0", 4)
    tr.forced("tx1", "acceptor accept")
    tr.forced("tx2", "acceptor accept")
    tr.forced("tx2", "acceptor promise")
    assert tr.messages == {"2a": 4, "decision": 1}
    assert tr.forced_writes == {"acceptor accept": 2, "acceptor promise": 1}


def test_traces_are_bounded_forgetting_the_oldest_transactions_first():
    tr = Tracer("n1", max_traced=3)
    for i in range(1, 4):
        tr.sent(f"tx{i}", "prepare", "s0", 1)
    tr.sent("tx1", "decision", "s0", 2)  # more events for a known transaction evict nothing
    assert list(tr.events) == ["tx1", "tx2", "tx3"]
    assert len(tr.of("tx1")) == 2
    tr.forced("tx4", "decision")
    assert list(tr.events) == ["tx2", "tx3", "tx4"]
    assert tr.of("tx1") == []
    tr.sent("tx5", "prepare", "s0", 1)
    tr.sent("tx6", "prepare", "s0", 1)
    assert list(tr.events) == ["tx4", "tx5", "tx6"]
    assert len(tr.events) == 3
    # The totals are not per transaction and are not forgotten.
    assert tr.messages == {"prepare": 5, "decision": 1}
    assert tr.forced_writes == {"decision": 1}


# -- summarize ----------------------------------------------------------------------------------


def test_summarize_counts_and_message_delays_is_the_largest_hop():
    events = [
        msg("c", "s0", "prepare", 1),
        msg("c", "s1", "prepare", 1),
        msg("s0", "a0", "2a", 2),
        fw("a0", "acceptor accept"),
        msg("a0", "c", "2b", 3),
        msg("c", "s0", "decision", 4),
        msg("c", "s1", "decision", 2),  # a later message may have a smaller hop
        fw("c", "decision"),
        fw("a1", "acceptor accept"),
    ]
    assert summarize(events) == {
        "messages": 6,
        "messages_by_type": {"prepare": 2, "2a": 1, "2b": 1, "decision": 2},
        "forced_writes": 3,
        "forced_writes_by_type": {"acceptor accept": 2, "decision": 1},
        "message_delays": 4,
    }


def test_summarize_of_nothing():
    assert summarize([]) == {
        "messages": 0,
        "messages_by_type": {},
        "forced_writes": 0,
        "forced_writes_by_type": {},
        "message_delays": 0,
    }
    assert summarize([fw("a0")])["message_delays"] == 0


def test_summarize_of_a_tracer_record(clock):
    tr = Tracer("c", max_traced=100)
    tr.sent("tx", "prepare", "s0", 1)
    tr.forced("tx", "decision")
    tr.sent("tx", "decision", "s0", 3)
    s = summarize(tr.of("tx"))
    assert (s["messages"], s["forced_writes"], s["message_delays"]) == (2, 1, 3)


# -- sequence diagram -----------------------------------------------------------------------------

NODES = ["c", "a0", "s0"]


def test_header_names_one_column_per_node():
    header = sequence_diagram([], NODES)
    assert header == "".join(n.center(WIDTH) for n in NODES).rstrip()
    for i, n in enumerate(NODES):
        assert header[i * WIDTH : (i + 1) * WIDTH].strip() == n


def test_one_line_per_event_in_time_order():
    events = [
        msg("a0", "c", "2b", 3, t=3.0),
        msg("c", "s0", "prepare", 1, t=1.0),
        fw("a0", "acceptor accept", t=2.5),
        msg("s0", "a0", "2a", 2, t=2.0),
    ]
    lines = sequence_diagram(events, NODES).split("\n")
    assert len(lines) == 1 + len(events)
    assert "prepare(1)" in lines[1]
    assert "2a(2)" in lines[2]
    assert "forced write" in lines[3]
    assert "2b(3)" in lines[4]


@pytest.mark.parametrize("src, dst", [(0, 1), (0, 2), (1, 2)])
def test_arrow_points_right_when_the_destination_is_to_the_right(src, dst):
    line = sequence_diagram([msg(NODES[src], NODES[dst], "prepare", 1)], NODES).split("\n")[1]
    assert line[center(dst) - 1] == ">"
    assert line[center(dst)] == "|" and line[center(src)] == "|"
    assert "<" not in line and line.count(">") == 1
    between = line[center(src) + 1 : center(dst)]
    assert "prepare(1)" in between
    assert set(between) <= set("-> prepare(1)")
    assert between.startswith("-") and between.rstrip(">").endswith("-")


@pytest.mark.parametrize("src, dst", [(1, 0), (2, 0), (2, 1)])
def test_arrow_points_left_when_the_destination_is_to_the_left(src, dst):
    line = sequence_diagram([msg(NODES[src], NODES[dst], "2b", 3)], NODES).split("\n")[1]
    assert line[center(dst) + 1] == "<"
    assert line[center(dst)] == "|" and line[center(src)] == "|"
    assert ">" not in line and line.count("<") == 1
    between = line[center(dst) + 1 : center(src)]
    assert "2b(3)" in between
    assert between.lstrip("<").startswith("-") and between.endswith("-")


def test_columns_outside_the_message_keep_their_lifelines():
    line = sequence_diagram([msg("c", "a0", "prepare", 1)], NODES).split("\n")[1]
    assert line == line.rstrip()
    assert len(line) == center(2) + 1  # ends with s0's lifeline
    assert line[center(2)] == "|"
    assert line[: center(0)] == " " * center(0)


def test_a_long_label_is_cut_to_fit_between_the_columns_and_keeps_the_arrow():
    line = sequence_diagram([msg("c", "a0", "a-very-long-message-kind", 12)], NODES).split("\n")[1]
    assert line[center(1) - 1] == ">"
    assert "a-very-long-me" in line
    assert "a-very-long-message-kind" not in line


def test_forced_writes_are_notes_on_their_own_line():
    lines = sequence_diagram([fw("a0", "acceptor promise")], NODES).split("\n")
    assert len(lines) == 2
    assert lines[1].endswith("a0: forced write (acceptor promise)")
    assert "<" not in lines[1] and ">" not in lines[1]
    expected_row = [" "] * (WIDTH * len(NODES))
    for i in range(len(NODES)):
        expected_row[center(i)] = "|"
    assert lines[1] == "".join(expected_row).rstrip() + "   a0: forced write (acceptor promise)"


def test_a_message_to_itself_is_a_note():
    line = sequence_diagram([msg("a0", "a0", "2b", 3)], NODES).split("\n")[1]
    assert line.endswith("a0: 2b(3) to itself")
    assert "<" not in line and ">" not in line


def test_a_message_to_an_unknown_node_draws_no_arrow_but_is_a_note():
    lines = sequence_diagram([msg("c", "elsewhere", "prepare", 1), fw("c", "decision")], NODES).split("\n")
    assert len(lines) == 3
    row, _, note = lines[1].partition("   c:")
    assert set(row) <= {" ", "|"}
    assert note == " prepare(1) to elsewhere"


def test_diagram_of_a_tracer_record(clock):
    c, a0 = Tracer("c", max_traced=100), Tracer("a0", max_traced=100)
    c.sent("tx", "1a", "a0", 1)
    a0.forced("tx", "acceptor promise")
    a0.sent("tx", "1b", "c", 2)
    lines = sequence_diagram(c.of("tx") + a0.of("tx"), ["c", "a0"]).split("\n")
    assert len(lines) == 4
    assert lines[1][center(1) - 1] == ">" and "1a(1)" in lines[1]
    assert lines[2].endswith("a0: forced write (acceptor promise)")
    assert lines[3][center(0) + 1] == "<" and "1b(2)" in lines[3]
