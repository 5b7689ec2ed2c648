"""The journal repairs that close PySyncObj's compaction windows (consensus/durability.py)."""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path

import pytest

from consensus.durability import (
    CompactionSafeJournal,
    SnapshotReceiver,
    SyncedFileJournal,
    align_journal_with_snapshot,
)
from consensus.journal_file import JournalFile
from consensus.settings import Durability

NOTHING_APPLIED = 0


def entry(i: int) -> tuple[bytes, int, int]:
    return (b"\x00command-%d" % i, i, 1)


def write_journal(path: Path, indexes: range) -> None:
    journal = JournalFile(str(path))
    for i in indexes:
        journal.add(*entry(i))
    journal._destroy()


def read_journal(path: Path) -> list[tuple[bytes, int, int]]:
    journal = JournalFile(str(path))
    try:
        return [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()


def write_snapshot(path: Path, last: int, state: object = None) -> None:
    """What PySyncObj's serializer writes: (state, last applied entry, the one before, cluster)."""
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        pickle.dump((state, entry(last), entry(last - 1), set()), g)


@pytest.mark.parametrize("durability", list(Durability))
def test_a_journal_that_predates_its_snapshot_keeps_the_entries_after_it(tmp_path: Path, durability: Durability) -> None:
    """Killed after the snapshot was renamed in, before the journal was cut: entries 7..10 must survive."""
    journal, dump = tmp_path / "g.journal", tmp_path / "g.dump"
    write_journal(journal, range(1, 11))
    write_snapshot(dump, last=6)
    assert align_journal_with_snapshot(str(journal), str(dump), durability) == 4
    entries = read_journal(journal)
    # PySyncObj keeps a journal only if it starts with the snapshot's last two entries.
    assert entries[:2] == [entry(5), entry(6)]
    assert entries == [entry(i) for i in range(5, 11)]


def test_a_journal_already_cut_or_unrelated_is_left_alone(tmp_path: Path) -> None:
    journal, dump = tmp_path / "g.journal", tmp_path / "g.dump"
    write_journal(journal, range(5, 11))
    write_snapshot(dump, last=6)
    assert align_journal_with_snapshot(str(journal), str(dump), Durability.OS) == 0
    write_snapshot(dump, last=40)  # a snapshot ahead of the journal: PySyncObj's own case
    assert align_journal_with_snapshot(str(journal), str(dump), Durability.OS) == 0
    assert read_journal(journal) == [entry(i) for i in range(5, 11)]
    assert align_journal_with_snapshot(str(tmp_path / "none.journal"), str(dump), Durability.OS) == 0


@pytest.mark.parametrize("cls", [CompactionSafeJournal, SyncedFileJournal])
def test_truncation_at_compaction_is_atomic_and_the_journal_stays_usable(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "g.journal"
    journal = cls(str(path), lambda: NOTHING_APPLIED)
    for i in range(1, 11):
        journal.add(*entry(i))
    journal.deleteEntriesTo(4)
    assert [journal[i] for i in range(len(journal))] == [entry(i) for i in range(5, 11)]
    journal.add(*entry(11))
    journal._destroy()
    assert read_journal(path) == [entry(i) for i in range(5, 12)]
    assert not (tmp_path / "g.journal.rewrite").exists()


def entries_of(journal: JournalFile) -> list[tuple[bytes, int, int]]:
    return [journal[i] for i in range(len(journal))]


@pytest.mark.parametrize("cls", [CompactionSafeJournal, SyncedFileJournal])
def test_a_resent_overlap_keeps_the_entries_a_follower_already_acknowledged(tmp_path: Path, cls: type) -> None:
    """PySyncObj's follower deletes from prevLogIdx + 1 and re-appends what the message carries; a message
    carrying only some of the entries it holds must not shorten its log, in memory or on disk."""
    path = tmp_path / "g.journal"
    journal = cls(str(path), lambda: 10)  # applied entries, re-sent: PySyncObj's false CRITICAL case
    for i in range(1, 11):
        journal.add(*entry(i))
    journal.deleteEntriesFrom(4)  # a re-send after entry 4 that carries only 5 and 6
    journal.add(*entry(5))
    journal.add(*entry(6))
    assert entries_of(journal) == [entry(i) for i in range(1, 11)]
    journal.deleteEntriesFrom(10)  # then the next entry, after the whole log
    journal.add(*entry(11))
    journal.deleteEntriesFrom(6)  # and a heartbeat from an old next index: carries nothing
    journal.add(*entry(12))  # a later append goes to the end, not to the remembered place
    journal._destroy()
    assert read_journal(path) == [entry(i) for i in range(1, 13)]


@pytest.mark.parametrize("cls", [CompactionSafeJournal, SyncedFileJournal])
def test_a_conflicting_entry_still_truncates_from_there(
    tmp_path: Path, cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "g.journal"
    journal = cls(str(path), lambda: 6)  # 7..10 not applied yet: replacing them is ordinary Raft
    for i in range(1, 11):
        journal.add(*entry(i))
    newer = (b"\x00other", 7, 2)  # index 7 from a later term: 7..10 were never committed
    journal.deleteEntriesFrom(5)
    journal.add(*entry(6))
    journal.add(*newer)
    assert entries_of(journal) == [entry(i) for i in range(1, 7)] + [newer]
    journal._destroy()
    assert read_journal(path) == [entry(i) for i in range(1, 7)] + [newer]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("cls", [CompactionSafeJournal, SyncedFileJournal])
def test_a_conflict_at_an_applied_entry_is_logged_critical(
    tmp_path: Path, cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    """The one truncation that means divergence: this replica already executed the entry being replaced."""
    path = tmp_path / "g.journal"
    journal = cls(str(path), lambda: 8)
    for i in range(1, 11):
        journal.add(*entry(i))
    journal.deleteEntriesFrom(5)
    journal.add(*entry(6))
    journal.add(b"\x00other", 7, 2)
    journal._destroy()
    (alarm,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert alarm.levelno == logging.CRITICAL and alarm.name == "consensus.durability"
    message = alarm.getMessage()
    assert str(path) in message and "entry 7 (term 1) with one of term 2" in message and "up to 8" in message


def journal_of(tmp_path: Path, indexes: range, term: int = 1) -> CompactionSafeJournal:
    journal = CompactionSafeJournal(str(tmp_path / "g.journal"), lambda: NOTHING_APPLIED)
    for i in indexes:
        journal.add(b"\x00", i, term)
    return journal


@pytest.mark.parametrize(
    ("last_index", "last_term", "needed"),
    [
        (11, 1, True),  # past the end of the log: the follower is behind, install
        (10, 1, False),  # the log's last entry: the snapshot holds nothing the log does not
        (7, 1, False),  # inside the log, same term: Raft section 7 keeps the log after it
        (7, 2, True),  # inside the log, another term: the log's entry there was never committed
        (3, 1, False),  # before the log starts: older than this replica's own snapshot
    ],
)
def test_a_snapshot_is_needed_only_when_it_adds_to_the_log(
    tmp_path: Path, last_index: int, last_term: int, needed: bool
) -> None:
    journal = journal_of(tmp_path, range(5, 11))
    assert journal.needs_snapshot(last_index, last_term) is needed
    journal._destroy()


def receiver_for(tmp_path: Path, journal: CompactionSafeJournal) -> SnapshotReceiver:
    """What DurableSyncObj builds: Serializer(fullDumpFile, logCompactionBatchSize, useFork, ...)."""
    return SnapshotReceiver(journal, str(tmp_path / "g.dump"), 2**16, True, None, None, None)


def receive(receiver: SnapshotReceiver, snapshot: Path) -> bool:
    """PySyncObj's transmission: the file's bytes, then an empty last chunk (serializer.py)."""
    receiver.setTransmissionData((snapshot.read_bytes(), True, False))
    return receiver.setTransmissionData((b"", False, True))


@pytest.mark.parametrize(
    ("last", "serializing", "installed"),
    [
        (20, False, True),  # behind: install
        (20, True, False),  # behind, but this replica's forked child is writing its own snapshot
        (8, False, False),  # already in the log (a stale snapshot)
    ],
)
def test_the_receiver_installs_only_a_snapshot_that_adds_and_never_while_serializing(
    tmp_path: Path, last: int, serializing: bool, installed: bool
) -> None:
    journal = journal_of(tmp_path, range(1, 11))
    dump = tmp_path / "g.dump"
    write_snapshot(dump, last=6, state="own")
    receiver = receiver_for(tmp_path, journal)
    if serializing:
        receiver._Serializer__pid = 4242  # serializer.py serialize(): the forked child's pid, until reaped
    incoming = tmp_path / "from-leader"
    write_snapshot(incoming, last=last, state="leader's")
    assert receive(receiver, incoming) is installed
    with open(dump, "rb") as f, gzip.GzipFile(fileobj=f) as g:
        assert pickle.load(g)[0] == ("leader's" if installed else "own")
    assert not (tmp_path / "g.dump.1.tmp").exists()
    assert entries_of(journal) == [(b"\x00", i, 1) for i in range(1, 11)]  # only PySyncObj's load clears it
    journal._destroy()
