"""The Raft journal as a plain file of checksummed records, behind PySyncObj's journal interface.

PySyncObj 0.3.17's ``FileJournal`` writes through mmap: on a full disk a store into the mapping raises
SIGBUS, which kills the process. It keeps no checksum, so a flipped byte became a command that was applied
and served, and a journal cut in the middle of a record made every tick fail (EOFError). This journal keeps
``consensus.framed_file`` records, one per entry (``[command, index, term]``, PySyncObj's entry order),
written with ``pwrite``: a full disk is an ``OSError``, raised as ``StorageUnavailable`` after the file is
cut back to its last whole record, which the replica survives (``consensus.durability``).

The entries in memory are exactly the entries on disk: an entry joins the list only once its record is
written (and synced, in a ``synced`` journal); a failed write changes neither. That is what lets a
replica that could not write refuse to acknowledge, and lets the next message from the leader try again.
On load the records must be entries whose indexes follow one another and whose terms never go down (Raft's
Log Matching, Figure 2): anything else is ``CorruptFile``.

Term, vote and commit index live in ``<journal>.meta``, one record replaced whole (a new file renamed
over the old one) at every change, as PySyncObj's MetaStorer does. The term and vote reach the file before
this journal's memory holds them (Raft Figure 2: persistent state is updated on stable storage before
responding to RPCs); the commit index, which Raft does not need to keep, is stored at most once a second
(PySyncObj's ``onOneSecondTimer``). A ``synced`` journal fsyncs every record, and the meta file and its
directory at every replacement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pysyncobj.journal as ps_journal
from pysyncobj.pickle import to_bytes

from consensus.errors import CorruptFile
from consensus.framed_file import Record, open_record_file

Entry = tuple[bytes, int, int]  # PySyncObj's (command, index, term)

JOURNAL_KIND = "raft journal"
META_KIND = "raft journal meta"
_CONSEQUENCE = "This replica stops acknowledging entries to its leader, and stops leading"
_NO_META = {"currentTerm": 0, "votedForNodeId": None, "raftCommitIndex": 1}  # FileJournal's defaults


def _entry_of(path: Path, record: Record, previous: Entry | None) -> Entry:
    match record.value:
        case [bytes() as command, int() as index, int() as term] if index >= 1 and term >= 0:
            entry = (command, index, term)
        case other:
            raise CorruptFile(path, record.offset, f"not a journal entry: {other!r:.80}")
    if previous is not None and (index != previous[1] + 1 or term < previous[2]):
        raise CorruptFile(path, record.offset, f"entry {index} (term {term}) cannot follow entry {previous[1]} "
                                               f"(term {previous[2]}): a Raft log's indexes follow one another "
                                               "and its terms never go down")
    return entry


def _meta_of(path: Path, records: list[Record]) -> dict[str, Any]:
    if not records:
        return dict(_NO_META)
    if len(records) > 1:
        raise CorruptFile(path, records[1].offset, f"holds {len(records)} records; it is written whole, with one")
    match records[0].value:
        case {"currentTerm": int() as term, "votedForNodeId": str() | None as voted,
              "raftCommitIndex": int() as commit} if term >= 0 and commit >= 0:
            return {"currentTerm": term, "votedForNodeId": voted, "raftCommitIndex": commit}
        case other:
            raise CorruptFile(path, records[0].offset, f"not a replica's term, vote and commit index: {other!r:.80}")


class JournalFile(ps_journal.Journal):
    """PySyncObj's ``Journal`` on a file of records; see the module docstring."""

    synced: ClassVar[bool] = False

    def __init__(self, journal_file: str) -> None:
        self._path = journal_file
        path = Path(journal_file)
        self._file, records = open_record_file(path, JOURNAL_KIND, synced=self.synced, consequence=_CONSEQUENCE)
        self._entries: list[Entry] = []
        self._ends: list[int] = []
        for record in records:
            self._entries.append(_entry_of(path, record, self._entries[-1] if self._entries else None))
            self._ends.append(record.end)
        meta_path = path.with_name(path.name + ".meta")
        self._meta_file, meta_records = open_record_file(
            meta_path, META_KIND, synced=self.synced, consequence=_CONSEQUENCE, appended=False)
        self._stored = _meta_of(meta_path, meta_records)  # what the file holds
        self._meta = dict(self._stored)  # what PySyncObj set; differs only in a commit index not stored yet

    # -- entries ------------------------------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        entry = (to_bytes(command), idx, term)
        self._ends += self._file.append([list(entry)], sync=self.synced)
        self._entries.append(entry)

    def clear(self) -> None:
        self._file.truncate(self._file.first_record)
        self._entries, self._ends = [], []

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 (PySyncObj's names)
        if entryFrom >= len(self._entries):
            return
        self._file.truncate(self._ends[entryFrom - 1] if entryFrom > 0 else self._file.first_record)
        del self._entries[entryFrom:], self._ends[entryFrom:]

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 (PySyncObj's names)
        self._rewrite(self._entries[entryTo:])

    def reset(self, anchors: list[Entry]) -> None:
        """Make the journal hold just a snapshot's last two entries, as PySyncObj's install leaves it."""
        self._rewrite(anchors)

    def _rewrite(self, entries: list[Entry]) -> None:
        """Make the journal hold exactly ``entries``, atomically (a new file renamed over the old one)."""
        self._ends = self._file.replace([list(e) for e in entries])
        self._entries = list(entries)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._file.close()
        self._meta_file.close()

    def problem(self) -> str | None:
        """What keeps this journal from being written now (``RecordFile.problem``); None if nothing."""
        problems = [f"{f.path.name}: {p}" for f in (self._file, self._meta_file) if (p := f.problem())]
        return "; ".join(problems) or None

    # -- term, vote, commit index ---------------------------------------------------------------------

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        self._meta["raftCommitIndex"] = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return int(self._meta["raftCommitIndex"])

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        meta = {**self._meta, "currentTerm": term, "votedForNodeId": votedForNodeId}
        if meta != self._stored:
            self._store(meta)
        self._meta = meta

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta["currentTerm"])

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        voted = self._meta["votedForNodeId"]
        return voted if isinstance(voted, str) else None

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._meta != self._stored:
            self._store(self._meta)

    def _store(self, meta: dict[str, Any]) -> None:
        self._meta_file.replace([meta])
        self._stored = dict(meta)
