"""The 2pc coordinator's decision log (``commit.txlog``) and transaction ids (``commit.txids``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from commit.node.decision_log import DecisionLog, LoggedDecision
from commit.protocols.registry import ONE_PHASE
from commit.txids import (
    are_participants_of, authority_of, check_participants, check_payloads, check_txid, new_txid, protocol_of,
)
from consensus.errors import InvalidRequest

A = "2pc:" + "a" * 32
B = "2pc:" + "b" * 32
C = "2pc:" + "c" * 32
PARTS = ("shard-0", "shard-1")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "decisions.log"


def reopen(path: Path) -> DecisionLog:
    return DecisionLog(path)


# -- DecisionLog -------------------------------------------------------------------


def test_new_log_is_empty_and_creates_the_file(log_path):
    log = DecisionLog(log_path)
    try:
        assert log.decisions == {}
        assert log.unfinished() == []
        assert log.forced_writes == 0
        assert log_path.exists()
    finally:
        log.close()


def test_decide_forces_and_returns_the_first_outcome(log_path):
    log = DecisionLog(log_path)
    try:
        assert log.decide(A, "committed", PARTS) == "committed"
        assert log.forced_writes == 1
        size = log_path.stat().st_size
        assert size > 0  # on disk before decide returned
        assert log.decide(A, "aborted", PARTS) == "committed"
        assert log.decide(A, "committed", ("other",)) == "committed"
        assert log.forced_writes == 1  # the first decision stays; nothing more is forced
        assert log_path.stat().st_size == size
        assert log.decisions[A] == LoggedDecision("committed", PARTS, False)
        assert log.decide(B, "aborted", PARTS) == "aborted"
        assert log.forced_writes == 2
    finally:
        log.close()


def test_decide_fsyncs_the_record_after_writing_it(log_path, monkeypatch):
    log = DecisionLog(log_path)
    synced: list[bytes] = []
    real_fsync = os.fsync

    def fake_fsync(fd: int) -> None:
        synced.append(log_path.read_bytes())  # what the OS holds when fsync is asked
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fake_fsync)
    try:
        log.decide(A, "committed", PARTS)
        assert len(synced) == 1
        assert A.encode() in synced[0]  # flushed before the fsync, not after
        log.decide(A, "aborted", PARTS)
        assert len(synced) == 1  # a repeated decide forces nothing
    finally:
        log.close()


def test_finish_marks_finished_once(log_path):
    log = DecisionLog(log_path)
    try:
        log.decide(A, "committed", PARTS)
        log.decide(B, "aborted", PARTS)
        assert [txid for txid, _ in log.unfinished()] == [A, B]
        log.finish(A)
        assert log.decisions[A].finished is True
        assert [txid for txid, _ in log.unfinished()] == [B]
        size = log_path.stat().st_size
        log.finish(A)  # again: nothing written
        log.finish(C)  # unknown: nothing written, nothing recorded
        assert log_path.stat().st_size == size
        assert C not in log.decisions
        assert log.forced_writes == 2  # finishing is lazy, not forced
    finally:
        log.close()


def test_reload_keeps_decisions_and_finished_flags(log_path):
    log = DecisionLog(log_path)
    log.decide(A, "committed", PARTS)
    log.decide(B, "aborted", ("shard-2",))
    log.decide(C, "committed", ())
    log.finish(A)
    log.close()

    again = reopen(log_path)
    try:
        assert again.decisions == {
            A: LoggedDecision("committed", PARTS, True),
            B: LoggedDecision("aborted", ("shard-2",), False),
            C: LoggedDecision("committed", (), False),
        }
        assert isinstance(again.decisions[B].participants, tuple)
        assert [txid for txid, _ in again.unfinished()] == [B, C]
        assert again.forced_writes == 0
        # The first decision still wins after a restart, and nothing is re-forced.
        assert again.decide(B, "committed", ("shard-2",)) == "aborted"
        assert again.forced_writes == 0
        again.finish(B)
    finally:
        again.close()

    third = reopen(log_path)
    try:
        assert third.decisions[B].finished is True
        assert [txid for txid, _ in third.unfinished()] == [C]
    finally:
        third.close()


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_torn_last_record_is_ignored_and_earlier_records_survive(log_path, cut):
    log = DecisionLog(log_path)
    log.decide(A, "committed", PARTS)
    log.decide(B, "aborted", PARTS)
    size_after_b = log_path.stat().st_size
    log.decide(C, "committed", PARTS)
    log.close()
    full = log_path.stat().st_size
    assert full - cut > size_after_b
    with open(log_path, "r+b") as f:
        f.truncate(full - cut)

    again = reopen(log_path)
    try:
        assert set(again.decisions) == {A, B}
        assert again.decisions[A] == LoggedDecision("committed", PARTS, False)
        assert again.decisions[B] == LoggedDecision("aborted", PARTS, False)
        # C was never acknowledged as durable: deciding it again is a fresh decision.
        assert again.decide(C, "aborted", PARTS) == "aborted"
    finally:
        again.close()


def test_torn_end_record_leaves_the_decision_unfinished(log_path):
    log = DecisionLog(log_path)
    log.decide(A, "committed", PARTS)
    log.finish(A)
    log.close()
    with open(log_path, "r+b") as f:
        f.truncate(log_path.stat().st_size - 2)
    again = reopen(log_path)
    try:
        assert again.decisions == {A: LoggedDecision("committed", PARTS, False)}
    finally:
        again.close()


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_decisions_forced_after_a_torn_tail_survive_the_next_reload(log_path, cut):
    log = DecisionLog(log_path)
    log.decide(A, "committed", PARTS)
    log.decide(B, "aborted", PARTS)
    log.close()
    with open(log_path, "r+b") as f:
        f.truncate(log_path.stat().st_size - cut)  # crash mid-write of B

    second = reopen(log_path)
    assert set(second.decisions) == {A}
    assert second.decide(C, "committed", PARTS) == "committed"  # forced: participants may hear it
    assert second.forced_writes == 1
    second.close()

    third = reopen(log_path)
    try:
        assert third.decisions == {
            A: LoggedDecision("committed", PARTS, False),
            C: LoggedDecision("committed", PARTS, False),
        }
    finally:
        third.close()


def test_garbage_record_stops_loading_but_keeps_what_came_before(log_path):
    log = DecisionLog(log_path)
    log.decide(A, "committed", PARTS)
    log.close()
    with open(log_path, "ab") as f:
        f.write(b"\x00\x00\x00\x02\xc1\xc1")  # a complete frame that is not msgpack
    again = reopen(log_path)
    try:
        assert set(again.decisions) == {A}
    finally:
        again.close()


# -- txids -------------------------------------------------------------------------

HEX32 = r"[0-9a-f]{32}"


@pytest.mark.parametrize("protocol", ["2pc", "raft-2pc", "paxos-commit", "fast-paxos-commit", "3pc", "3pc-quorum"])
def test_new_txid_multi_shard_format(protocol):
    txid = new_txid(protocol, PARTS)
    assert re.fullmatch(rf"{re.escape(protocol)}:{HEX32}\.[0-9a-f]{{16}}\.[0-9a-f]{{16}}", txid)
    assert check_txid(txid) == txid
    assert authority_of(txid) == (protocol, None)


def test_a_multi_shard_txid_binds_exactly_its_participants():
    """Issue 9.1: a status question naming part of the participants must be recognisable as wrong."""
    txid = new_txid("paxos-commit", ["shard-1", "shard-0"])
    assert are_participants_of(txid, ["shard-0", "shard-1"])
    assert are_participants_of(txid, ["shard-1", "shard-0"])  # a set: order does not matter
    for wrong in (["shard-0"], ["shard-1"], ["shard-0", "shard-1", "shard-2"], ["shard-0", "shard-0", "shard-1"],
                  ["shard-0", "shard-2"], []):
        assert not are_participants_of(txid, wrong), wrong
    assert check_participants(txid, ["shard-1", "shard-0"]) == ("shard-0", "shard-1")
    with pytest.raises(InvalidRequest, match="not the participants"):
        check_participants(txid, ["shard-0"])


def test_a_multi_shard_txid_binds_its_reads_and_writes():
    """Only the payload a txid was made for commits it, whoever resends it and wherever."""
    payloads = {"shard-0": {"reads": [[b"a", 3]], "writes": [[b"b", b"\x01"]]},
                "shard-1": {"reads": [], "writes": [[b"c", None]]}}
    txid = new_txid("paxos-commit", payloads)
    check_payloads(txid, payloads)
    check_payloads(txid, dict(reversed(list(payloads.items()))))  # shards in any order
    for other in ({**payloads, "shard-1": {"reads": [], "writes": [[b"c", b"\x02"]]}},
                  {**payloads, "shard-0": {"reads": [[b"a", 4]], "writes": [[b"b", b"\x01"]]}},
                  {**payloads, "shard-1": {"reads": [], "writes": []}}):
        with pytest.raises(InvalidRequest, match="other reads and writes than"):
            check_payloads(txid, other)
    with pytest.raises(InvalidRequest, match="not the participants"):
        check_payloads(txid, {"shard-0": payloads["shard-0"]})


def test_the_binding_is_per_txid_and_per_protocol():
    first, second = new_txid("paxos-commit", PARTS), new_txid("paxos-commit", PARTS)
    nonce, digest, payload = second.split(":")[1].split(".")
    lifted = first.split(".")[0] + f".{digest}.{payload}"
    assert not are_participants_of(lifted, PARTS)  # a digest lifted from another txid
    assert not are_participants_of(f"raft-2pc:{nonce}.{digest}.{payload}", PARTS)  # or put under another protocol
    assert not are_participants_of(new_txid("2pc", shard="shard-0"), ["shard-0"])  # one-phase binds a shard


@pytest.mark.parametrize("shard", ["shard-0", "shard-7", "shard-1234"])
def test_new_txid_one_phase_format(shard):
    txid = new_txid("raft-2pc", shard=shard)  # a shard means one-phase, whatever the protocol
    assert re.fullmatch(rf"1pc:{shard}:{HEX32}", txid)
    assert check_txid(txid) == txid
    assert authority_of(txid) == (ONE_PHASE.name, shard)
    assert protocol_of(txid) is ONE_PHASE


def test_new_txids_are_unique():
    txids = {new_txid("2pc", PARTS) for _ in range(1000)}
    assert len(txids) == 1000


@pytest.mark.parametrize(
    "txid",
    [
        None,
        42,
        b"2pc:" + b"a" * 32,
        ["2pc:" + "a" * 32],
        "",
        "2pc",
        "2pc:",
        "4pc:" + "a" * 32,
        "2PC:" + "a" * 32,
        "2pc:" + "a" * 31,
        "2pc:" + "a" * 33,
        "2pc:" + "A" * 32,
        "2pc:" + "g" * 32,
        " 2pc:" + "a" * 32,
        "2pc:" + "a" * 32 + " ",
        "2pc:" + "a" * 32,  # no participant digest
        "2pc:" + "a" * 32 + "." + "b" * 15,
        "2pc:" + "a" * 32 + "." + "B" * 16,
        "2pc:" + "a" * 32 + "." + "b" * 16,  # no payload digest
        "2pc:" + "a" * 32 + "." + "b" * 16 + "." + "c" * 15,
        "2pc::" + "a" * 32,
        "raft-2pc:shard-0:" + "a" * 32,
        "1pc:" + "a" * 32,
        "1pc:shard-:" + "a" * 32,
        "1pc:shard-12345:" + "a" * 32,
        "1pc:node-1:" + "a" * 32,
        "1pc:shard-x:" + "a" * 32,
    ],
)
def test_check_txid_rejects_malformed(txid):
    with pytest.raises(InvalidRequest, match="malformed txid"):
        check_txid(txid)


def test_check_txid_rejects_a_trailing_newline():
    with pytest.raises(InvalidRequest):
        check_txid(new_txid("2pc", PARTS) + "\n")


def test_check_txid_error_message_is_bounded():
    with pytest.raises(InvalidRequest) as info:
        check_txid("x" * 10_000)
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "txid,authority",
    [
        ("2pc:" + "0" * 32 + "." + "1" * 16, ("2pc", None)),
        ("raft-2pc:" + "0" * 32 + "." + "1" * 16, ("raft-2pc", None)),
        ("1pc:shard-3:" + "0" * 32, ("1pc", "shard-3")),
        ("1pc:shard-1024:" + "f" * 32, ("1pc", "shard-1024")),
    ],
)
def test_authority_of(txid, authority):
    assert authority_of(txid) == authority
