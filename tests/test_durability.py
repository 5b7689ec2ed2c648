"""The journal repairs that close PySyncObj's compaction windows (consensus/durability.py)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import pysyncobj.journal as ps_journal
import pytest

from consensus.durability import CompactionSafeJournal, SyncedFileJournal, align_journal_with_snapshot
from consensus.settings import Durability


def entry(i: int) -> tuple[bytes, int, int]:
    return (b"\x00command-%d" % i, i, 1)


def write_journal(path: Path, indexes: range) -> None:
    journal = ps_journal.FileJournal(str(path))
    for i in indexes:
        journal.add(*entry(i))
    journal._destroy()


def read_journal(path: Path) -> list[tuple[bytes, int, int]]:
    journal = ps_journal.FileJournal(str(path))
    try:
        return [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()


def write_snapshot(path: Path, last: int) -> None:
    """What PySyncObj's serializer writes: (state, last applied entry, the one before, cluster)."""
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        pickle.dump((None, entry(last), entry(last - 1), set()), g)


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
    journal = cls(str(path))
    for i in range(1, 11):
        journal.add(*entry(i))
    journal.deleteEntriesTo(4)
    assert [journal[i] for i in range(len(journal))] == [entry(i) for i in range(5, 11)]
    journal.add(*entry(11))
    journal._destroy()
    assert read_journal(path) == [entry(i) for i in range(5, 12)]
    assert not (tmp_path / "g.journal.rewrite").exists()


def entries_of(journal: ps_journal.FileJournal) -> list[tuple[bytes, int, int]]:
    return [journal[i] for i in range(len(journal))]


@pytest.mark.parametrize("cls", [CompactionSafeJournal, SyncedFileJournal])
def test_a_resent_overlap_keeps_the_entries_a_follower_already_acknowledged(tmp_path: Path, cls: type) -> None:
    """PySyncObj's follower deletes from prevLogIdx + 1 and re-appends what the message carries; a message
    carrying only some of the entries it holds must not shorten its log, in memory or on disk."""
    path = tmp_path / "g.journal"
    journal = cls(str(path))
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
def test_a_conflicting_entry_still_truncates_from_there(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "g.journal"
    journal = cls(str(path))
    for i in range(1, 11):
        journal.add(*entry(i))
    newer = (b"\x00other", 7, 2)  # index 7 from a later term: 7..10 were never committed
    journal.deleteEntriesFrom(5)
    journal.add(*entry(6))
    journal.add(*newer)
    assert entries_of(journal) == [entry(i) for i in range(1, 7)] + [newer]
    journal._destroy()
    assert read_journal(path) == [entry(i) for i in range(1, 7)] + [newer]
