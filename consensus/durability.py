"""What an acknowledged write survives, and the PySyncObj hooks that make it so.

``os``    (default) the journal (``consensus.journal_file``) is written to the
          page cache and never synced. An acknowledged write is in the page
          cache of a majority of replicas: it survives kill -9 of any or all
          node processes, not the loss of power or a kernel crash on a
          majority of machines.

``fsync`` every journal append, and every change of term or vote, is synced
          to disk (fsync) before PySyncObj goes on, so before a
          follower acknowledges an entry and before the leader counts its own
          copy. The snapshot written at log compaction is fsynced, and so is
          its directory, before it replaces the old one. An acknowledged write
          then survives power loss on any minority of replicas, and on all of
          them at once. It costs one disk sync per append on every replica
          (an append is a batch of commands: consensus.group's group commit).

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

A journal (or ``.meta``) write that fails, on a full disk or an I/O error,
raises ``StorageUnavailable`` inside PySyncObj's tick thread, after the file
was cut back to its last whole record (``consensus.framed_file``). PySyncObj
would log a traceback every tick and go on half-way through whatever it was
doing; ``DurableSyncObj`` catches it where PySyncObj calls the journal
instead. Every message PySyncObj sends about an entry, a term or a vote
follows the journal call that made it durable, so a failed write sends
nothing: a follower does not acknowledge (its leader re-sends, which is the
retry), a voter does not vote, a candidate does not ask for votes. A leader
that cannot append steps down, failing the command it could not append
(``NotLeader``), so that clients go to a replica that can; it may stand for
election again, and its first append as leader is then the retry. The one
line logged, and ``storage_problem()`` for the group's status, say so until a
write succeeds.

Snapshots (the ``.dump``, PySyncObj's gzipped pickle) are read in full before a
group starts (``snapshot_anchors``), so gzip checks its CRC-32 and length: a
damaged or cut one is ``CorruptFile`` and the node refuses to start, where
PySyncObj logged "failed to load full dump" and ran the journal without the
state before it. A snapshot that cannot be written (compaction on a full disk)
has its temporary file removed, and the next try waits
``raft.log_compaction_min_time_s`` instead of forking again on every tick.

PySyncObj offers no hook for any of this, so the journal, serializer and
command queue classes are swapped in while a replica is constructed
(``DurableSyncObj``), the snapshot rename is wrapped (``install_snapshot_sync``)
and the journal is repaired before the group starts. All of it is confined to
this module and ``consensus.journal_file``.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj.pickle as ps_pickle
import pysyncobj.serializer as ps_serializer
import pysyncobj.syncobj as ps_syncobj
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.fast_queue import FastQueue
from pysyncobj.monotonic import monotonic

from consensus.errors import CorruptFile, StorageUnavailable
from consensus.journal_file import Entry, JournalFile
from consensus.raft_log_filter import install_raft_log_filter
from consensus.settings import Durability

log = logging.getLogger(__name__)

_RAFT_STATE = ps_syncobj._RAFT_STATE


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CompactionSafeJournal(JournalFile):
    """A journal that truncates only at a conflict, and whose compaction truncation is atomic.

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

    def __init__(self, journal_file: str, last_applied: Callable[[], int]) -> None:
        super().__init__(journal_file)
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
            entries = self._entries
            if at < len(entries) and entries[at][1] == idx:
                if entries[at][2] == term:
                    self._overwrite_at = at + 1
                    return
                self._truncate_at_conflict(at, term)
            self._overwrite_at = None
        super().add(command, idx, term)

    def _truncate_at_conflict(self, at: int, term: int) -> None:
        _, idx, held_term = self._entries[at]
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
        entries = self._entries
        first, end = entries[0][1], entries[-1][1]
        if last_index > end:
            return True
        if last_index < first:
            return False
        return bool(entries[last_index - first][2] != last_term)

    def _rewrite(self, entries: list[Entry]) -> None:
        """Compaction's truncation (``deleteEntriesTo``) and a snapshot's anchoring: a new file, renamed.

        PySyncObj clears the file and re-adds the remaining entries one by one, which a crash in between
        leaves empty; here a crash leaves either journal, whole.
        """
        self._overwrite_at = None
        super()._rewrite(entries)


class SyncedFileJournal(CompactionSafeJournal):
    """A journal that syncs every change before PySyncObj acts on it (``consensus.journal_file``)."""

    synced = True


def _journal_class(durability: Durability) -> type[CompactionSafeJournal]:
    return SyncedFileJournal if durability is Durability.FSYNC else CompactionSafeJournal


def _anchor(raw: Any) -> Entry:
    if not (isinstance(raw, tuple) and len(raw) == 3 and isinstance(raw[0], bytes)
            and isinstance(raw[1], int) and isinstance(raw[2], int)):
        raise ValueError(f"not a log entry: {raw!r:.80}")
    return raw[0], raw[1], raw[2]


def snapshot_anchors(path: str) -> tuple[Entry, Entry]:
    """The last two entries a snapshot file covers, ``(before last, last)``; ``CorruptFile`` if unreadable.

    PySyncObj's Serializer writes a gzipped pickle of ``(state, last entry, the one before, cluster)``
    (serializer.py ``serialize``, syncobj.py ``__tryLogCompaction``). The whole stream is decompressed,
    so that gzip checks the CRC-32 and length at its end: unpickling alone stops before them.
    """
    with open(path, "rb") as f:
        compressed = f.read()
    try:
        raw = gzip.decompress(compressed)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # cut short; a bad header, CRC or length; bad data
        raise CorruptFile(path, None, f"the snapshot is not a whole gzip stream: {exc}") from None
    try:
        snapshot = ps_pickle.loads(raw)
        return _anchor(snapshot[2]), _anchor(snapshot[1])
    except Exception as exc:  # anything unpickling can raise: its CRC held, so it was written so
        raise CorruptFile(path, None, f"the snapshot is not one PySyncObj wrote: {exc!r:.200}") from None


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
        self.failed_at: float | None = None  # when writing this replica's own snapshot last failed

    def checkSerializing(self) -> tuple[int, Any]:  # noqa: N802 (PySyncObj's name)
        """PySyncObj's answer; a failed snapshot's half-written file is removed, and the failure's time kept.

        The forked child that failed (on a full disk, say) leaves its temporary file behind, holding
        whatever space it got, and PySyncObj forks a new child on the next tick (``DurableSyncObj`` waits).
        """
        state, ident = super().checkSerializing()
        if state == SERIALIZER_STATE.FAILED:
            self.failed_at = monotonic()
            tmp = self._Serializer__fileName + ".tmp"  # PySyncObj's name for a snapshot being written
            if os.path.exists(tmp):
                os.remove(tmp)
        return state, ident

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
            _, (_, index, term) = snapshot_anchors(received)
        except CorruptFile as exc:
            log.error("%s: the leader's snapshot cannot be read: %s", self._Serializer__fileName, exc)
            return "it cannot be read"
        if self._journal.needs_snapshot(index, term):
            return None
        return f"the log already holds or has applied its last entry, {index} (term {term})"


class _CommandQueue(FastQueue):
    """PySyncObj's command queue, remembering the command taken last: the one a failed append was for.

    PySyncObj's leader takes a command off the queue, then appends it (``_checkCommandsToApply``); when the
    append raises, the command's callback would never be called and its client would wait for a timeout.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self.taken: tuple[Any, Any] = (None, None)

    def get_nowait(self) -> Any:
        self.taken = super().get_nowait()
        return self.taken


_construct_lock = threading.Lock()


class DurableSyncObj(ps_syncobj.SyncObj):
    """A PySyncObj replica whose journal, snapshot receiver and command queue are this module's.

    PySyncObj creates them inside ``SyncObj.__init__`` from the names ``createJournal``, ``Serializer``
    and ``FastQueue`` of pysyncobj.syncobj and offers no other hook, so they are swapped while one replica
    is constructed (under a lock: replicas of several groups start in one process). The journal reads
    the replica's last applied index, which ``__init__`` sets right after creating the journal and
    before the tick thread can deliver a message. The factories keep what they made as attributes from
    inside ``__init__``: PySyncObj leaves the attributes it found there out of its snapshots (its
    ``__properies``), and a journal or a queue cannot be pickled.
    """

    def __init__(
        self, self_node: str, other_nodes: list[str], conf: Any, consumers: list[Any], durability: Durability
    ) -> None:
        if conf.journalFile is None or conf.fullDumpFile is None:
            raise ValueError("a replica needs both journalFile and fullDumpFile (DESIGN.md section 5)")
        journal_class = _journal_class(durability)

        def create_journal(journal_file: str) -> CompactionSafeJournal:
            self._journal = journal_class(journal_file, lambda: int(self.raftLastApplied))
            return self._journal

        def create_serializer(*args: Any) -> SnapshotReceiver:
            self._snapshots = SnapshotReceiver(self._journal, *args)
            return self._snapshots

        def create_queue(max_size: int) -> _CommandQueue:
            self._commands = _CommandQueue(max_size)
            return self._commands

        with _construct_lock:
            install_raft_log_filter()
            originals = ps_syncobj.createJournal, ps_syncobj.Serializer, ps_syncobj.FastQueue
            ps_syncobj.createJournal, ps_syncobj.Serializer, ps_syncobj.FastQueue = (
                create_journal, create_serializer, create_queue)
            try:
                super().__init__(self_node, other_nodes, conf=conf, consumers=consumers)
            finally:
                ps_syncobj.createJournal, ps_syncobj.Serializer, ps_syncobj.FastQueue = originals

    def storage_problem(self) -> str | None:
        """Why this replica cannot write its journal now (it neither acknowledges nor leads); None if it can."""
        return self._journal.problem()

    # -- a journal that cannot be written ----------------------------------------------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (PySyncObj's names)
        """PySyncObj's tick; a journal write that failed in it ends the tick here, not in a traceback per tick."""
        try:
            super()._onTick(timeToWait)
        except StorageUnavailable:
            self._cannot_write()

    def _checkCommandsToApply(self) -> None:  # noqa: N802 (PySyncObj's name)
        """A leader's append that failed fails its command (``NotLeader``: nothing was appended)."""
        try:
            super()._checkCommandsToApply()
        except StorageUnavailable:
            _, callback = self._commands.taken
            self._SyncObj__callErrCallback(FAIL_REASON.NOT_LEADER, callback)
            raise

    def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        """Store term and vote before PySyncObj's memory holds them (Raft Figure 2: persistent state is on
        stable storage before responding to RPCs), so a failed store leaves both as they were: PySyncObj
        sets its own copy first, then calls the journal (syncobj.py ``__setCurrentTerm``)."""
        self._journal.setCurrentTerm(term, votedForNodeId)
        super()._SyncObj__setCurrentTerm(term, votedForNodeId)  # the journal's copy is stored: no second write

    def _cannot_write(self) -> None:
        """After a failed journal or meta write: nothing about it was sent (PySyncObj sends after the call).

        A leader or candidate becomes a follower: a leader that cannot append only makes its clients
        wait, and a candidate's term was not stored. It waits a whole election timeout before it may stand
        again, as a follower that just heard from a leader would, so that a replica that can write is
        likelier to win.
        """
        if self._SyncObj__raftState != _RAFT_STATE.FOLLOWER:
            self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
        self._SyncObj__raftElectionDeadline = monotonic() + self._SyncObj__generateRaftTimeout()

    def _SyncObj__tryLogCompaction(self) -> None:  # noqa: N802
        """PySyncObj's compaction, except that after a snapshot failed to be written the next waits
        ``logCompactionMinTime``: PySyncObj would fork a child to write it again on every tick."""
        failed_at = self._snapshots.failed_at
        if failed_at is not None and monotonic() - failed_at < self._SyncObj__conf.logCompactionMinTime:
            return
        super()._SyncObj__tryLogCompaction()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802,N803
        """Anchor the journal at the snapshot first, in one atomic write, then let PySyncObj load it.

        PySyncObj loads the snapshot's state into the replica, then clears the journal and appends the
        snapshot's last two entries (syncobj.py ``__loadDumpFile``). An append that failed there left the
        new state over the old journal and the old last applied index, from which it would apply entries
        the state already holds. So the journal is reset to those two entries before (``reset``: a new file,
        renamed), and PySyncObj, finding it anchored, leaves it alone. A reset that fails leaves
        everything as it was: the leader sends its snapshot again, and at startup the next tick retries.
        """
        try:
            anchors = list(snapshot_anchors(self._SyncObj__conf.fullDumpFile))
        except CorruptFile as exc:  # checked before the group started, and before an install: PySyncObj reports it
            log.error("%s", exc)
        else:
            if clearJournal or self._journal[:2] != anchors:
                self._journal.reset(anchors)
        super()._SyncObj__loadDumpFile(False)

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

        A journal write that fails while handling the message ends the handling: PySyncObj answers (an
        acknowledgement, a vote) only after its journal calls, so nothing is answered, and the sender
        sends again.
        """
        before = self.raftCommitIndex
        try:
            super()._SyncObj__onMessageReceived(node, message)
        except StorageUnavailable:
            self._cannot_write()
            return
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
    """Before a group starts: check its snapshot, and cut a journal that predates it to start at its point.

    Returns how many leading entries were dropped (they are all in the snapshot). A journal that
    already starts at the snapshot point, or holds no trace of it, is left for PySyncObj to handle.
    A snapshot that cannot be read whole, or a damaged journal, is ``CorruptFile``: the group must not
    start without the state it holds.
    """
    if not os.path.isfile(dump_path):
        return 0
    before_last, last = snapshot_anchors(dump_path)
    if not os.path.isfile(journal_path):
        return 0
    journal = _journal_class(durability)(journal_path, lambda: 0)  # nothing is applied before the group starts
    try:
        for i in range(1, len(journal) - 1):
            if journal[i] == before_last and journal[i + 1] == last:
                journal.deleteEntriesTo(i)
                return i
        return 0
    finally:
        journal._destroy()


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
