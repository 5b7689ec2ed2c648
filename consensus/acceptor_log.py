"""An acceptor's durable memory: an append-only file, written with group commit.

An acceptor must make a promise or an acceptance durable before it answers
(otherwise a restart could make it break the promise). Each record is one
instance's ``(promised, accepted ballot, accepted value)``; the last record of
an instance wins on load. Durability follows the cluster setting
(``consensus.durability``): ``os`` writes to the page cache (survives kill -9),
``fsync`` also syncs the file.

Group commit: callers that arrive while a write is in progress join the next
batch, and one caller writes the whole batch with a single write (and sync),
so under load many acceptances share one forced write. The write itself is
shielded from cancellation: a batch is either fully handed to the OS or the
callers waiting on it are told it failed.

The file is one of ``consensus.framed_file``'s: every record has a checksum,
a torn last write is cut on load and damage anywhere else is ``CorruptFile``,
as is a record that is not an acceptor's (an instance, ballots as the
acceptor keeps them, a value only with its ballot, one of ``values`` when the
caller says which). A batch that cannot be written (a full disk) leaves no
trace in the file, and every caller waiting on it gets ``StorageUnavailable``:
none of them may answer as if its promise or acceptance were durable.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import trio

from consensus.errors import CorruptFile
from consensus.framed_file import open_record_file
from consensus.paxos import ballot_of
from consensus.settings import Durability

Record = tuple[Any, Any, Any, Any]  # instance, promised, accepted ballot, accepted value

KIND = "paxos acceptor log"


class _Batch:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


def _checked(path: Path, offset: int, value: Any, values: Collection[Any] | None) -> Record:
    """A record as written by ``persist``, or ``CorruptFile`` naming where it is."""
    match value:
        case [list() as instance, promised, accepted_ballot, accepted]:
            try:
                ballot_of(promised)
                if accepted_ballot is not None:
                    ballot_of(accepted_ballot)
            except ValueError as exc:
                raise CorruptFile(path, offset, f"not an acceptor's record: {exc}") from None
            if (accepted_ballot is None) != (accepted is None):
                raise CorruptFile(path, offset, f"a value without its ballot, or a ballot without its value: {value!r:.80}")
            if accepted is not None and values is not None and accepted not in values:
                raise CorruptFile(path, offset, f"accepted value {accepted!r:.40} is not one of {sorted(values)}")
            return instance, promised, accepted_ballot, accepted
        case _:
            raise CorruptFile(path, offset, f"not an acceptor's record: {value!r:.80}")


class AcceptorLog:
    """``values``: what an acceptor may accept, when its caller knows (checked on load); None: anything."""

    def __init__(self, path: Path, durability: Durability, values: Collection[Any] | None = None) -> None:
        self.path = path
        self.durability = durability
        self.forced_writes = 0
        self._next = _Batch()
        self._flushing = False
        self._file, records = open_record_file(
            path, KIND, synced=durability is Durability.FSYNC,
            consequence="This node's Paxos acceptor answers no promise and no acceptance")
        self._records = [_checked(path, r.offset, r.value, values) for r in records]

    def load(self) -> list[Record]:
        """Every record on disk when the log was opened, oldest first (a torn tail was cut off)."""
        return list(self._records)

    def problem(self) -> str | None:
        """Why the log cannot be written now, for the node's status; None if it can."""
        return self._file.problem()

    async def persist(self, records: list[Record]) -> None:
        batch = self._next
        batch.records.extend(records)
        if self._flushing:
            await batch.done.wait()
        else:
            self._flushing = True
            try:
                with trio.CancelScope(shield=True):
                    while self._next.records:
                        await self._flush(self._next)
            finally:
                self._flushing = False
        if batch.error is not None:
            raise batch.error

    async def _flush(self, batch: _Batch) -> None:
        self._next = _Batch()
        try:
            records = [list(r) for r in batch.records]
            if self.durability is Durability.FSYNC:
                await trio.to_thread.run_sync(self._write, records)  # a disk sync: off the event loop
            else:
                self._write(records)  # into the page cache: cheaper than a thread hop
                await trio.lowlevel.checkpoint()
            self.forced_writes += 1
        except Exception as exc:  # every waiter of this batch learns it failed; nobody hangs
            batch.error = exc
        batch.done.set()

    def _write(self, records: list[list[Any]]) -> None:
        self._file.append(records, sync=self.durability is Durability.FSYNC)

    def close(self) -> None:
        self._file.close()
