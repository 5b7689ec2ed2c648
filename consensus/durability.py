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

PySyncObj offers no hook for either, so ``fsync`` mode swaps in journal
classes while a group is constructed (``journal_factory``) and wraps the
snapshot rename (``install_snapshot_sync``). Both are confined to this module.
"""

from __future__ import annotations

import os
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


class SyncedFileJournal(ps_journal.FileJournal):
    """A FileJournal that syncs every change before PySyncObj acts on it."""

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = _SyncedMetaStorer(journal_file + ".meta")

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def clear(self) -> None:
        super().clear()
        self.flush()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803
        super().deleteEntriesFrom(entryFrom)
        self.flush()


def _create_synced_journal(journal_file: str | None = None) -> Any:
    if journal_file is None:
        return ps_journal.MemoryJournal()
    return SyncedFileJournal(journal_file)


_construct_lock = threading.Lock()


@contextmanager
def journal_factory(durability: Durability) -> Iterator[None]:
    """While constructing a SyncObj, make it create the journal this mode needs."""
    if durability is Durability.OS:
        yield
        return
    with _construct_lock:
        original: Callable[..., Any] = ps_syncobj.createJournal
        ps_syncobj.createJournal = _create_synced_journal
        try:
            yield
        finally:
            ps_syncobj.createJournal = original


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
