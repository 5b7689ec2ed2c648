"""What an acknowledged write survives, and the PySyncObj hooks that make it so.

``os``    (default) PySyncObj writes its journal through mmap and never syncs
          it. An acknowledged write is in the page cache of a majority of
          replicas: it survives kill -9 of any or all node processes, not the
          loss of power or a kernel crash on a majority of machines.

``fsync`` every journal append, and every change of term or vote, is synced
          to disk (msync / fsync) before PySyncObj goes on, so before a
          follower acknowledges an entry and before the leader counts its own
          copy. The snapshot written at log compaction is fsynced, and so is
          its directory, before it replaces the old one. An acknowledged write
          then survives power loss on any minority of replicas, and on all of
          them at once. It costs one disk sync per append on every replica.

Both modes also stop PySyncObj 0.3.17's followers from deleting entries they
already acknowledged (``CompactionSafeJournal``: truncate only at a
conflicting entry, as Raft says), and close two windows in which it loses
committed entries when a node is killed during log compaction:

* after compaction's forked child has renamed the new snapshot into place,
  and before the journal is truncated to start at the snapshot point,
  PySyncObj on restart sees a journal that does not start with the
  snapshot's last two entries and throws the whole journal away, with every
  entry after the snapshot. ``align_journal_with_snapshot`` runs before a
  group starts and cuts such a journal to start at the snapshot point instead;
* the truncation itself clears the journal and re-adds the remaining entries
  one by one; ``CompactionSafeJournal`` writes them to a new file and renames
  it over the old one, so a crash leaves either journal, whole.

PySyncObj offers no hook for any of this, so journal classes are swapped in
while a group is constructed (``journal_factory``), the snapshot rename is
wrapped (``install_snapshot_sync``) and the journal is repaired before the
group starts. All of it is confined to this module.
"""

from __future__ import annotations

import gzip
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pysyncobj.journal as ps_journal
import pysyncobj.serializer as ps_serializer
import pysyncobj.syncobj as ps_syncobj

from consensus.settings import Durability


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SyncedMetaStorer(ps_journal.MetaStorer):
    """Stores term and vote through a synced temporary file and a synced rename."""

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 (PySyncObj's name)
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(ps_journal.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        _fsync_path(os.path.dirname(os.path.abspath(path)))


def _write_journal(path: str, entries: list[Any], synced: bool) -> int:
    """Replace the journal at ``path`` by one holding ``entries``, atomically; returns its end offset."""
    tmp = path + ".rewrite"
    if os.path.exists(tmp):
        os.remove(tmp)
    fresh = ps_journal.FileJournal(tmp)
    for entry in entries:
        fresh.add(*entry)
    end = fresh._FileJournal__currentOffset
    fresh._destroy()  # msync and close
    if synced:
        _fsync_path(tmp)
    os.replace(tmp, path)
    if synced:
        _fsync_path(os.path.dirname(os.path.abspath(path)))
    return end


class CompactionSafeJournal(ps_journal.FileJournal):
    """A FileJournal that truncates only at a conflict, and whose compaction truncation is atomic.

    Conflicts: a PySyncObj follower that gets entries after ``prevLogIdx`` it already holds deletes its
    whole log from there and appends what the message carries. The leader re-sends overlapping entries
    all the time (it moves a follower's next index back on every older acknowledgement), so followers
    keep deleting entries they already acknowledged, some of them committed; a re-send that carries
    fewer entries, or a kill -9 between the delete and the re-append, loses them on a majority. Raft
    (Figure 2, AppendEntries steps 3 and 4) deletes only from the first entry whose term differs. So
    ``deleteEntriesFrom`` only remembers where the next appends go, and each ``add`` there either
    matches the entry in place (same index and term: the same entry, by Log Matching) and changes
    nothing, or conflicts and truncates there first.
    """

    synced = False

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._path = journal_file
        self._overwrite_at: int | None = None

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 (PySyncObj's names)
        self._overwrite_at = entryFrom if entryFrom < len(self) else None

    def clear(self) -> None:
        self._overwrite_at = None
        super().clear()

    def add(self, command: bytes, idx: int, term: int) -> None:
        at = self._overwrite_at
        if at is not None:
            entries = self._FileJournal__journal  # type: ignore[has-type]
            if at < len(entries) and entries[at][1] == idx:
                if entries[at][2] == term:
                    self._overwrite_at = at + 1
                    return
                super().deleteEntriesFrom(at)
            self._overwrite_at = None
        super().add(command, idx, term)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 (PySyncObj's names)
        self._overwrite_at = None
        keep = self._FileJournal__journal[entryTo:]  # type: ignore[has-type]
        self._FileJournal__journalFile._destroy()  # type: ignore[has-type]
        end = _write_journal(self._path, keep, self.synced)
        self._FileJournal__journalFile = ps_journal.ResizableFile(self._path)
        self._FileJournal__journal = list(keep)
        self._FileJournal__currentOffset = end


class SyncedFileJournal(CompactionSafeJournal):
    """A FileJournal that syncs every change before PySyncObj acts on it."""

    synced = True

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = _SyncedMetaStorer(journal_file + ".meta")

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def clear(self) -> None:
        super().clear()
        self.flush()


_construct_lock = threading.Lock()


@contextmanager
def journal_factory(durability: Durability) -> Iterator[None]:
    """While constructing a SyncObj, make it create the journal this mode needs."""
    journal_class = SyncedFileJournal if durability is Durability.FSYNC else CompactionSafeJournal

    def create(journal_file: str | None = None) -> Any:
        return ps_journal.MemoryJournal() if journal_file is None else journal_class(journal_file)

    with _construct_lock:
        original: Callable[..., Any] = ps_syncobj.createJournal
        ps_syncobj.createJournal = create
        try:
            yield
        finally:
            ps_syncobj.createJournal = original


def align_journal_with_snapshot(journal_path: str, dump_path: str, durability: Durability) -> int:
    """Before a group starts: cut a journal that predates its snapshot to start at the snapshot point.

    Returns how many leading entries were dropped (they are all in the snapshot). A journal that
    already starts at the snapshot point, or holds no trace of it, is left for PySyncObj to handle.
    """
    if not (os.path.isfile(journal_path) and os.path.isfile(dump_path)):
        return 0
    try:
        with open(dump_path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
            snapshot = pickle.load(g)
        before_last, last = snapshot[2], snapshot[1]
    except Exception:  # PySyncObj reports an unreadable snapshot itself
        return 0
    journal = ps_journal.FileJournal(journal_path)
    try:
        entries = [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()
    for i in range(1, len(entries) - 1):
        if entries[i] == before_last and entries[i + 1] == last:
            _write_journal(journal_path, entries[i:], durability is Durability.FSYNC)
            return i
    return 0


_rename_unsynced: Callable[[str, str], Any] = ps_serializer.atomicReplace


def _synced_replace(tmp_path: str, final_path: str) -> Any:
    _fsync_path(tmp_path)
    result = _rename_unsynced(tmp_path, final_path)
    _fsync_path(os.path.dirname(os.path.abspath(final_path)))
    return result


def install_snapshot_sync(durability: Durability) -> None:
    """Make snapshot replacement durable; runs in PySyncObj's forked serializer too."""
    if durability is Durability.FSYNC:
        ps_serializer.atomicReplace = _synced_replace
