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
already acknowledged, in two ways:

* at a re-send of entries they hold (``CompactionSafeJournal``: truncate only
  at a conflicting entry, as Raft says);
* at a stale snapshot (``SnapshotReceiver``): a snapshot whose last entry the
  follower's log already holds, or that predates the follower's own, is
  discarded instead of clearing the whole journal, as Raft section 7 says;
  and none is installed while the replica writes its own snapshot.

A follower's commit index rises only over the entries a leader's message
carried (``DurableSyncObj``, Raft Figure 2), not to the end of its log, so it
never applies an entry it was not shown to share with the leader.

Both modes also close two windows in which PySyncObj loses committed
entries when a node is killed during log compaction:

* after compaction's forked child has renamed the new snapshot into place,
  and before the journal is truncated to start at the snapshot point,
  PySyncObj on restart sees a journal that does not start with the
  snapshot's last two entries and throws the whole journal away, with every
  entry after the snapshot. ``align_journal_with_snapshot`` runs before a
  group starts and cuts such a journal to start at the snapshot point instead;
* the truncation itself clears the journal and re-adds the remaining entries
  one by one; ``CompactionSafeJournal`` writes them to a new file and renames
  it over the old one, so a crash leaves either journal, whole.

PySyncObj offers no hook for any of this, so the journal and serializer
classes are swapped in while a replica is constructed (``DurableSyncObj``),
the snapshot rename is wrapped (``install_snapshot_sync``) and the journal is
repaired before the group starts. All of it is confined to this module.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pysyncobj.journal as ps_journal
import pysyncobj.pickle as ps_pickle
import pysyncobj.serializer as ps_serializer
import pysyncobj.syncobj as ps_syncobj

from consensus.raft_log_filter import install_raft_log_filter
from consensus.settings import Durability

log = logging.getLogger(__name__)

Entry = tuple[bytes, int, int]  # PySyncObj's (command, index, term)


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

    A conflict at or below the last applied index (``last_applied``, read from the replica) would replace
    an entry this replica's state machine has already executed: Raft's State Machine Safety is broken
    and the replica has diverged. PySyncObj's own alarm for it fires on every harmless re-send
    (``consensus.raft_log_filter``), so the journal raises the real one.
    """

    synced = False

    def __init__(self, journal_file: str, last_applied: Callable[[], int]) -> None:
        super().__init__(journal_file)
        self._path = journal_file
        self._last_applied = last_applied
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
                self._truncate_at_conflict(at, term)
            self._overwrite_at = None
        super().add(command, idx, term)

    def _truncate_at_conflict(self, at: int, term: int) -> None:
        _, idx, held_term = self._FileJournal__journal[at]  # type: ignore[has-type]
        applied = self._last_applied()
        if idx <= applied:
            log.critical(
                "journal %s: the leader replaces entry %d (term %d) with one of term %d, but this replica has "
                "already applied every entry up to %d: its state has diverged from the group's. Stop this "
                "node and rebuild this replica from the others (docs/OPERATIONS.md, Durability)",
                self._path, idx, held_term, term, applied)
        super().deleteEntriesFrom(at)

    def needs_snapshot(self, last_index: int, last_term: int) -> bool:
        """Whether installing a snapshot that ends at entry ``(last_index, last_term)`` adds anything.

        Raft section 7 (InstallSnapshot, receiver steps 6-7): if the log holds an entry with the
        snapshot's last index and term, keep the log; the snapshot's state is the prefix of it this
        replica has or will have applied. A snapshot ending before the log starts is older than this
        replica's own (the log starts at its own snapshot point, applied, hence committed). Only a
        snapshot ending past the log, or at an entry of another term (uncommitted here), is news.
        """
        entries = self._FileJournal__journal  # type: ignore[has-type]
        first, end = entries[0][1], entries[-1][1]
        if last_index > end:
            return True
        if last_index < first:
            return False
        return bool(entries[last_index - first][2] != last_term)

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

    def __init__(self, journal_file: str, last_applied: Callable[[], int]) -> None:
        super().__init__(journal_file, last_applied)
        self._FileJournal__metaStorer = _SyncedMetaStorer(journal_file + ".meta")

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def clear(self) -> None:
        super().clear()
        self.flush()


def _snapshot_anchors(path: str) -> tuple[Entry, Entry]:
    """The last two entries a snapshot file covers: ``(before last, last)``.

    PySyncObj's Serializer writes a gzipped pickle of ``(state, last entry, the one before, cluster)``
    (serializer.py ``serialize``, syncobj.py ``__tryLogCompaction``).
    """
    with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
        snapshot = ps_pickle.load(g)
    return snapshot[2], snapshot[1]


class SnapshotReceiver(ps_serializer.Serializer):
    """PySyncObj's Serializer, except that a received snapshot is installed only when it adds something.

    A PySyncObj 0.3.17 follower installs every snapshot it receives: ``setTransmissionData`` renames it
    over the dump, then ``__loadDumpFile(clearJournal=True)`` clears the whole journal and keeps only the
    snapshot's last two entries (syncobj.py ``__onMessageReceived``, 'append_entries'). The leader sends
    one whenever its next index for the follower is at or below its own log start, and a stale
    ``next_node_idx`` reply (to a message sent before the follower caught up) moves that index back;
    the leader's match index for the follower does not move back. So a follower that acknowledged entries
    after the snapshot point lost them while the leader still counted its copy: with one replica down, a
    committed entry was then on the leader alone. Refused here, as Raft section 7 says (the journal
    decides: ``CompactionSafeJournal.needs_snapshot``).

    Also refused while this replica writes its own snapshot. Its forked child renames its dump when it
    is done and PySyncObj then cuts the journal up to that child's point (``__tryLogCompaction``): after
    an install in between, the cut emptied the journal (IndexError on every tick), and the two renames
    raced for the dump, which could then predate the journal, which PySyncObj throws away at restart.

    Refusing costs nothing: when the leader sends the last chunk it moves its next index past the
    snapshot point and goes on with the entries after it (``__sendAppendEntries``). A replica that holds
    that point appends them as usual; one that does not (its own snapshot is newer, or it was writing
    one) answers with its own next index, and the leader sends a snapshot again if it still needs one.
    """

    def __init__(self, journal: CompactionSafeJournal, *args: Any) -> None:
        super().__init__(*args)
        self._journal = journal

    def setTransmissionData(self, data: tuple[bytes, bool, bool] | None) -> bool:  # noqa: N802 (PySyncObj's name)
        if data is None or not data[2]:
            return bool(super().setTransmissionData(data))
        chunk, is_first, _ = data
        super().setTransmissionData((chunk, is_first, False))  # writes the final bytes, keeps the file open
        incoming = self._Serializer__incomingTransmissionFile  # type: ignore[has-type]
        if incoming is None:  # PySyncObj could not write it (and said so), or missed the first chunk
            return False
        incoming.flush()
        received = self._Serializer__fileName + ".1.tmp"  # PySyncObj's name for the incoming snapshot
        refusal = self._refusal(received)
        if refusal is None:
            return bool(super().setTransmissionData((b"", False, True)))  # close, rename over the dump
        incoming.close()
        self._Serializer__incomingTransmissionFile = None
        os.remove(received)
        log.info("%s: kept this replica's log, discarded the leader's snapshot: %s",
                 self._Serializer__fileName, refusal)
        return False

    def _refusal(self, received: str) -> str | None:
        if self._Serializer__pid != 0:
            return "this replica is writing its own snapshot (the leader sends it again if still needed)"
        try:
            _, (_, index, term) = _snapshot_anchors(received)
        except Exception as exc:
            log.error("%s: the leader's snapshot cannot be read: %r", self._Serializer__fileName, exc)
            return "it cannot be read"
        if self._journal.needs_snapshot(index, term):
            return None
        return f"the log already holds or has applied its last entry, {index} (term {term})"


_construct_lock = threading.Lock()


class DurableSyncObj(ps_syncobj.SyncObj):
    """A PySyncObj replica whose journal and snapshot receiver are this module's.

    PySyncObj creates both inside ``SyncObj.__init__`` from the names ``createJournal`` and
    ``Serializer`` of pysyncobj.syncobj and offers no other hook, so they are swapped while one replica
    is constructed (under a lock: replicas of several groups start in one process). The journal reads
    the replica's last applied index, which ``__init__`` sets right after creating the journal and
    before the tick thread can deliver a message.
    """

    def __init__(
        self, self_node: str, other_nodes: list[str], conf: Any, consumers: list[Any], durability: Durability
    ) -> None:
        if conf.journalFile is None or conf.fullDumpFile is None:
            raise ValueError("a replica needs both journalFile and fullDumpFile (DESIGN.md section 5)")
        journal_class = SyncedFileJournal if durability is Durability.FSYNC else CompactionSafeJournal
        journals: list[CompactionSafeJournal] = []

        def create_journal(journal_file: str) -> CompactionSafeJournal:
            journals.append(journal_class(journal_file, lambda: int(self.raftLastApplied)))
            return journals[-1]

        def create_serializer(*args: Any) -> SnapshotReceiver:
            return SnapshotReceiver(journals[-1], *args)

        with _construct_lock:
            install_raft_log_filter()
            originals = ps_syncobj.createJournal, ps_syncobj.Serializer
            ps_syncobj.createJournal, ps_syncobj.Serializer = create_journal, create_serializer
            try:
                super().__init__(self_node, other_nodes, conf=conf, consumers=consumers)
            finally:
                ps_syncobj.createJournal, ps_syncobj.Serializer = originals

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        """A follower's commit index rises only as far as this message showed its log to match the leader's.

        Raft (Figure 2, AppendEntries step 5): commitIndex = min(leaderCommit, index of last new entry).
        PySyncObj 0.3.17 takes the end of the whole log instead (syncobj.py ``__onMessageReceived``,
        'append_entries'), and does so for snapshot chunks too, which show nothing. Its own journal cut
        the log after the message's entries, so the end was the last new entry except on snapshot chunks;
        ``CompactionSafeJournal`` keeps what follows them, which may be an old term's entries that were
        never committed. Either way the follower applied them, and then an older snapshot or a conflict
        could no longer be told from real divergence. So after PySyncObj has handled the message, its
        rise is cut back to the last entry the message carried, or for a snapshot to nothing but the
        snapshot point (an install sets the last applied index to it).
        """
        before = self.raftCommitIndex
        super()._SyncObj__onMessageReceived(node, message)
        if message.get("type") != "append_entries" or self.raftCommitIndex <= before:
            return
        if "prevLogIdx" in message:
            carried = 1 if message.get("transmission") == "finish" else len(message.get("entries", []))
            verified = message["prevLogIdx"] + carried
        else:
            verified = self.raftLastApplied
        if self.raftCommitIndex > max(before, verified):
            self._SyncObj__raftCommitIndex = max(before, verified)
            self._SyncObj__raftLog.setRaftCommitIndex(self._SyncObj__raftCommitIndex)


def align_journal_with_snapshot(journal_path: str, dump_path: str, durability: Durability) -> int:
    """Before a group starts: cut a journal that predates its snapshot to start at the snapshot point.

    Returns how many leading entries were dropped (they are all in the snapshot). A journal that
    already starts at the snapshot point, or holds no trace of it, is left for PySyncObj to handle.
    """
    if not (os.path.isfile(journal_path) and os.path.isfile(dump_path)):
        return 0
    try:
        before_last, last = _snapshot_anchors(dump_path)
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
