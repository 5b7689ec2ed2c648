"""Damage in a file a node wrote is refused with the file and the byte; only a torn last write is cut.

Covers ``consensus.framed_file`` (the record format and its torn-tail rule), the three files that use it
(``2pc.log``, ``acceptor.log``, the Raft journal and its ``.meta``), the checks of what their records hold,
the snapshot (``.dump``) check before a group starts, and a real node that refuses to start.
"""

from __future__ import annotations

import gzip
import pickle
import random
import time
import zlib
from pathlib import Path
from typing import Any

import pysyncobj.journal as ps_journal
import pytest
import trio

import commit
from commit.node.decision_log import DecisionLog
from commit.node.main import REFUSED
from commit.tooling.localcluster import LocalCluster
from consensus.acceptor_log import AcceptorLog
from consensus.durability import CompactionSafeJournal, align_journal_with_snapshot
from consensus.errors import CorruptFile
from consensus.framed_file import header_of, open_record_file, read_records
from consensus.journal_file import JournalFile
from consensus.settings import Durability

KIND = "test records"
A = "2pc:" + "a" * 32
B = "2pc:" + "b" * 32
C = "2pc:" + "c" * 32
PARTS = ("shard-0", "shard-1")


def write_records(path: Path, values: list[Any]) -> list[int]:
    """Append ``values`` as records; the offset where each starts."""
    file, _ = open_record_file(path, KIND, synced=False, consequence="nothing")
    ends = file.append(values, sync=False)
    file.close()
    return [len(header_of(KIND))] + ends[:-1]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


VALUES = [["decide", f"t{i}", "committed", ["shard-0"]] for i in range(5)]


# -- the record format and the torn-tail rule --------------------------------------------------------


@pytest.mark.parametrize("where", ["length", "payload checksum", "header checksum", "payload"])
def test_a_damaged_record_followed_by_others_is_refused_naming_the_file_and_its_offset(
    tmp_path: Path, where: str
) -> None:
    """The old reader took a damaged length for a torn tail and silently dropped every record after it."""
    path = tmp_path / "f.log"
    starts = write_records(path, VALUES)
    size = path.stat().st_size
    byte = {"length": 3, "payload checksum": 5, "header checksum": 9, "payload": 14}[where]
    flip(path, starts[2] + byte)
    with pytest.raises(CorruptFile) as caught:
        read_records(path, KIND)
    assert caught.value.path == str(path) and caught.value.offset == starts[2]
    assert f"{path} at byte {starts[2]}: " in str(caught.value)
    assert f"a whole record follows at byte {starts[3]}" in str(caught.value)
    assert path.stat().st_size == size  # refused, and nothing cut


@pytest.mark.parametrize("tail", ["cut in the header", "cut in the payload", "zeros", "garbage",
                                  "last payload flipped", "last length flipped"])
def test_a_torn_last_write_is_cut_and_the_records_before_it_load(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "f.log"
    starts = write_records(path, VALUES)
    data = path.read_bytes()
    last = starts[-1]
    torn = {
        "cut in the header": data[:last + 7],
        "cut in the payload": data[:-3],
        "zeros": data[:last] + bytes(len(data) - last),  # a power loss: the size grew, the data never came
        "garbage": data[:last] + b"\x17" * 40,
        "last payload flipped": data[:-1] + bytes([data[-1] ^ 1]),
        "last length flipped": data[:last + 2] + bytes([data[last + 2] ^ 1]) + data[last + 3:],
    }[tail]
    path.write_bytes(torn)
    records, end = read_records(path, KIND)
    assert [r.value for r in records] == VALUES[:-1]
    assert end == last and path.stat().st_size == last  # cut
    write_records(path, [["after", 1]])
    assert [r.value for r in read_records(path, KIND)[0]] == VALUES[:-1] + [["after", 1]]


def test_a_file_cut_inside_its_header_holds_nothing_yet(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    path.write_bytes(header_of(KIND)[:5])  # a crash during the very first append
    assert read_records(path, KIND) == ([], 0)
    assert path.stat().st_size == 0
    write_records(path, VALUES[:1])
    assert [r.value for r in read_records(path, KIND)[0]] == VALUES[:1]


def test_a_file_of_another_format_or_kind_is_refused_naming_it(tmp_path: Path) -> None:
    old = tmp_path / "g.journal"
    journal = ps_journal.FileJournal(str(old))  # the format journals had before this one
    journal.add(b"\x00cmd", 1, 1)
    journal._destroy()
    with pytest.raises(CorruptFile, match=r"g\.journal at byte 0: not a raft journal file of this version"):
        JournalFile(str(old))
    other = tmp_path / "other.log"
    write_records(other, VALUES)
    with pytest.raises(CorruptFile, match="'raftcommit records 1: test records' file, not a "
                                          "'raftcommit records 1: raft journal' file"):
        JournalFile(str(other))


def test_a_record_whose_checksums_hold_but_is_not_msgpack_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    write_records(path, VALUES[:1])
    payload = b"\xc1"  # a byte msgpack never uses, framed with right checksums: written wrong, not damaged
    head = len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big")
    with open(path, "ab") as f:
        f.write(head + zlib.crc32(head).to_bytes(4, "big") + payload)
    with pytest.raises(CorruptFile, match="not msgpack although its checksums hold"):
        read_records(path, KIND)


def test_random_single_byte_damage_is_refused_or_is_the_last_record_never_a_wrong_record(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    for trial in range(150):
        path = tmp_path / f"f{trial}.log"
        values = [[rng.randrange(1 << 30), rng.randbytes(rng.randrange(0, 60))] for _ in range(rng.randrange(1, 8))]
        starts = write_records(path, values)
        data = path.read_bytes()
        at = rng.randrange(len(data))
        damaged = bytearray(data)
        damaged[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        try:
            records, _ = read_records(path, KIND)
        except CorruptFile as exc:
            assert exc.offset is not None and exc.offset <= at, (seed, trial, at, exc)
            assert at < starts[-1], (seed, trial, at, exc)  # refused: damage before the last record
            continue
        assert at >= starts[-1], (seed, trial, at)  # accepted only as a torn last record
        assert [r.value for r in records] == values[:-1], (seed, trial, at)


def test_random_cuts_keep_exactly_the_whole_records_before_the_cut(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "f.log"
    values = [[i, rng.randbytes(rng.randrange(0, 40))] for i in range(12)]
    starts = write_records(path, values)
    data = path.read_bytes()
    for _ in range(60):
        cut = rng.randrange(len(data) + 1)
        path.write_bytes(data[:cut])
        records, _ = read_records(path, KIND)
        whole = sum(1 for s, e in zip(starts, starts[1:] + [len(data)]) if e <= cut)
        assert [r.value for r in records] == values[:whole], (seed, cut)


# -- the 2pc decision log ----------------------------------------------------------------------------


def three_decisions(path: Path) -> None:
    log = DecisionLog(path)
    log.decide(A, "committed", PARTS)
    log.decide(B, "aborted", PARTS)
    log.decide(C, "committed", PARTS)
    log.close()


def test_decision_log_damaged_in_the_middle_is_refused(tmp_path: Path) -> None:
    """Before: the damaged record and all after it vanished, and B, C were then presumed aborted."""
    path = tmp_path / "2pc.log"
    three_decisions(path)
    records, _ = read_records(path, "2pc decision log")
    flip(path, records[1].offset + 2)  # B's length
    with pytest.raises(CorruptFile, match=rf"2pc\.log at byte {records[1].offset}: the record's length"):
        DecisionLog(path)


def test_decision_log_torn_tail_is_cut_and_the_rest_loads(tmp_path: Path) -> None:
    path = tmp_path / "2pc.log"
    three_decisions(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)
    log = DecisionLog(path)
    assert set(log.decisions) == {A, B}
    log.close()


@pytest.mark.parametrize("record, what", [
    (["decide", A, "commited", list(PARTS)], "not a decision record"),  # not an outcome word
    (["decide", A, "pending", list(PARTS)], "not a decision record"),  # an outcome word, not a decision
    (["decide", A, "committed", [1, 2]], "not a decision record"),
    (["end", C], "no decision precedes"),
    (["decide", A, "aborted", list(PARTS)], "a second decision"),
    ({"decide": A}, "not a decision record"),
])
def test_decision_log_record_that_is_not_a_decision_is_refused(tmp_path: Path, record: Any, what: str) -> None:
    path = tmp_path / "2pc.log"
    log = DecisionLog(path)
    log.decide(A, "committed", PARTS)
    log.close()
    file, _ = open_record_file(path, "2pc decision log", synced=False, consequence="nothing")
    file.append([record], sync=False)
    file.close()
    with pytest.raises(CorruptFile, match=what):
        DecisionLog(path)


def test_decision_log_refuses_to_write_a_word_it_would_refuse_to_read(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "2pc.log")
    with pytest.raises(ValueError):
        log.decide(A, "commit", PARTS)
    assert log.decisions == {}
    log.close()


# -- the acceptor log ----------------------------------------------------------------------------------


async def test_acceptor_log_damaged_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "acceptor.log"
    log = AcceptorLog(path, Durability.OS)
    for i in range(3):
        await log.persist([(["t", f"s{i}"], [1, 0, 1], [1, 0, 1], "prepared")])
    log.close()
    records, _ = read_records(path, "paxos acceptor log")
    flip(path, records[0].offset + 20)
    with pytest.raises(CorruptFile, match=rf"acceptor\.log at byte {records[0].offset}: the record's payload"):
        AcceptorLog(path, Durability.OS)


@pytest.mark.parametrize("record, what", [
    ([["t", "s0"], [1, 0, 1], [1, 0, 1], "maybe"], "accepted value 'maybe' is not one of"),
    ([["t", "s0"], [1, 0], None, None], "malformed ballot"),
    ([["t", "s0"], [1, 0, 1], None, "prepared"], "a value without its ballot"),
    (["t", [1, 0, 1], None, None], "not an acceptor's record"),
])
def test_acceptor_log_record_that_is_not_an_acceptors_is_refused(tmp_path: Path, record: Any, what: str) -> None:
    path = tmp_path / "acceptor.log"
    file, _ = open_record_file(path, "paxos acceptor log", synced=False, consequence="nothing")
    file.append([[["t", "s1"], [1, 0, 1], [1, 0, 1], "aborted"], record], sync=False)
    file.close()
    with pytest.raises(CorruptFile, match=what):
        AcceptorLog(path, Durability.OS, values=("prepared", "aborted"))


# -- the Raft journal, its meta and the snapshot --------------------------------------------------------


def entry(i: int) -> tuple[bytes, int, int]:
    return (b"\x00put %d" % i, i, 1)


def journal_with(path: Path, indexes: range) -> list[int]:
    journal = JournalFile(str(path))
    for i in indexes:
        journal.add(*entry(i))
    journal.setCurrentTerm(1, "127.0.0.1:1")
    journal._destroy()
    return [r.offset for r in read_records(path, "raft journal")[0]]


def test_journal_damaged_in_the_middle_is_refused_where_it_served_the_damage(tmp_path: Path) -> None:
    """PySyncObj's FileJournal loaded the flipped byte into a command, which the replica applied."""
    path = tmp_path / "shard-0.journal"
    offsets = journal_with(path, range(1, 11))
    flip(path, offsets[4] + 20)  # inside entry 5's command
    with pytest.raises(CorruptFile, match=rf"shard-0\.journal at byte {offsets[4]}: the record's payload"):
        JournalFile(str(path))


def test_journal_cut_mid_record_loads_without_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PySyncObj's FileJournal looped on EOFError in every tick after such a cut."""
    path = tmp_path / "g.journal"
    journal_with(path, range(1, 11))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 5)
    journal = CompactionSafeJournal(str(path), lambda: 0)
    assert [journal[i] for i in range(len(journal))] == [entry(i) for i in range(1, 10)]
    journal.add(*entry(10))
    journal._destroy()
    assert len(JournalFile(str(path))) == 10
    assert "cut a torn last write" in caplog.text


def test_journal_whose_indexes_do_not_follow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.journal"
    journal = JournalFile(str(path))
    journal.add(*entry(1))
    journal.add(*entry(3))  # a gap: PySyncObj never writes one
    journal._destroy()
    with pytest.raises(CorruptFile, match="entry 3 .term 1. cannot follow entry 1"):
        JournalFile(str(path))


def test_journal_meta_damaged_is_refused_naming_it(tmp_path: Path) -> None:
    """PySyncObj's MetaStorer read a damaged meta as empty: term 0, no vote, so it could vote twice."""
    path = tmp_path / "g.journal"
    journal_with(path, range(1, 3))
    meta = tmp_path / "g.journal.meta"
    flip(meta, meta.stat().st_size - 3)
    with pytest.raises(CorruptFile, match=r"g\.journal\.meta at byte \d+: the record's payload"):
        JournalFile(str(path))
    meta.write_bytes(meta.read_bytes()[:-2])  # and it is written whole, so a cut is damage too
    with pytest.raises(CorruptFile, match="runs past the end of a file that is only ever written whole"):
        JournalFile(str(path))


def test_journal_keeps_term_vote_and_commit_index(tmp_path: Path) -> None:
    path = tmp_path / "g.journal"
    journal = JournalFile(str(path))
    journal.setCurrentTerm(7, "127.0.0.1:9")
    journal.setRaftCommitIndex(3)
    journal.onOneSecondTimer()
    journal._destroy()
    again = JournalFile(str(path))
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (7, "127.0.0.1:9", 3)
    again._destroy()


def write_snapshot(path: Path, last: int) -> None:
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        pickle.dump(({"state": list(range(200))}, entry(last), entry(last - 1), set()), g)


@pytest.mark.parametrize("damage", ["flipped", "cut"])
def test_a_damaged_snapshot_is_refused_before_the_group_starts(tmp_path: Path, damage: str) -> None:
    """PySyncObj logged 'failed to load full dump' and ran the journal without the state before it."""
    journal, dump = tmp_path / "g.journal", tmp_path / "g.dump"
    journal_with(journal, range(1, 11))
    write_snapshot(dump, last=6)
    if damage == "flipped":
        flip(dump, dump.stat().st_size // 2)
    else:
        dump.write_bytes(dump.read_bytes()[:-6])
    with pytest.raises(CorruptFile, match=r"g\.dump: the snapshot is not a whole gzip stream"):
        align_journal_with_snapshot(str(journal), str(dump), Durability.OS)


# -- a real node ------------------------------------------------------------------------------------------


async def test_a_node_with_a_damaged_journal_refuses_to_start_and_says_where(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    cluster.start_all()
    try:
        await cluster.wait_ready()
        async with commit.connect(cluster.config) as db:
            for i in range(30):
                await db.put(f"k{i}", i)
        cluster.kill("n3")
        path = cluster.config.node_dir("n3") / "shard-0.journal"
        offsets = [r.offset for r in read_records(path, "raft journal")[0]]
        flip(path, offsets[len(offsets) // 2] + 16)
        log_before = cluster.config.node_log("n3").stat().st_size
        cluster.start("n3")
        started = time.monotonic()
        with trio.fail_after(20):
            while cluster.alive("n3"):
                await trio.sleep(0.1)
        assert cluster.procs["n3"].returncode == REFUSED
        print(f"n3 refused to start after {time.monotonic() - started:.1f}s")
        text = cluster.config.node_log("n3").read_text()[log_before:]
        assert f"node n3 refuses to start: {path} at byte {offsets[len(offsets) // 2]}: " in text
        assert "Traceback" not in text
        assert text.count("refuses to start") == 2  # the log line and the same on stderr, once each: no loop
    finally:
        cluster.stop()


def test_the_message_names_the_file_and_the_byte() -> None:
    assert str(CorruptFile("/data/n1/2pc.log", 120, "the record's length fails its checksum")) == \
        "/data/n1/2pc.log at byte 120: the record's length fails its checksum"
    assert str(CorruptFile("/data/n1/coord.dump", None, "cut short")) == "/data/n1/coord.dump: cut short"
