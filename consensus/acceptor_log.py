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

Forgetting: two more kinds of record, ``["finished", [instance, ...]]`` (every
participant acknowledged these instances' outcome, so they may be forgotten
once older than the horizon) and ``["horizon", stamp]`` (instances stamped below
it that the log does not hold were forgotten). ``compact`` rewrites the file
with what the acceptor still holds (``RecordFile.replace``: a new file, synced
in ``fsync`` mode, renamed over the old one, the directory synced), in the
flusher's turn, so that no batch is appended to the old file after the new
one's contents were taken.

The file is one of ``consensus.framed_file``'s: every record has a checksum,
a torn last write is cut on load and damage anywhere else is ``CorruptFile``,
as is a record that is not an acceptor's (an instance, ballots as the
acceptor keeps them, a value only with its ballot, one of ``values`` when the
caller says which). A batch that cannot be written (a full disk) leaves no
trace in the file, and every caller waiting on it gets ``StorageUnavailable``:
none of them may answer as if its promise or acceptance were durable.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
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
        self.records: list[list[Any]] = []
        self.replacement: Callable[[], list[list[Any]]] | None = None  # the whole file, taken when written
        self.done = trio.Event()
        self.error: BaseException | None = None


def _checked(path: Path, offset: int, value: Any, values: Collection[Any] | None) -> Record | list[Any]:
    """A record as written by ``persist``, ``finish`` or ``compact``, or ``CorruptFile`` naming where it is."""
    match value:
        case ["horizon", int()]:
            return value
        case ["finished", list() as instances] if all(isinstance(i, list) for i in instances):
            return value
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
        self.horizon = 0
        self.finished: list[list[Any]] = []  # instances whose participants all acknowledged the outcome
        self._records: list[Record] = []
        for record in records:
            match _checked(path, record.offset, record.value, values):
                case ["horizon", int() as horizon]:
                    self.horizon = max(self.horizon, horizon)
                case ["finished", list() as instances]:
                    self.finished.extend(instances)
                case checked:
                    self._records.append(checked)  # type: ignore[arg-type]
        self.written = len(records)  # records in the file, live or dead: what compaction weighs

    def load(self) -> list[Record]:
        """Every instance record on disk when the log was opened, oldest first (a torn tail was cut off)."""
        return list(self._records)

    def problem(self) -> str | None:
        """Why the log cannot be written now, for the node's status; None if it can."""
        return self._file.problem()

    async def persist(self, records: list[Record]) -> None:
        """Make ``records`` durable (in the next group-committed write); ``StorageUnavailable`` if not."""
        self._next.records.extend(list(r) for r in records)
        await self._submit(self._next)

    async def finish(self, instances: list[list[Any]]) -> None:
        """Record that every participant acknowledged these instances' outcome (they may be forgotten)."""
        self._next.records.append(["finished", instances])
        await self._submit(self._next)

    async def compact(self, live: Callable[[], list[list[Any]]]) -> None:
        """Replace the file with ``live()`` (taken in the flusher's turn, before the next batch's appends)."""
        self._next.replacement = live
        await self._submit(self._next)

    async def _submit(self, batch: _Batch) -> None:
        if self._flushing:
            await batch.done.wait()
        else:
            self._flushing = True
            try:
                with trio.CancelScope(shield=True):
                    while self._next.records or self._next.replacement is not None:
                        await self._flush(self._next)
            finally:
                self._flushing = False
        if batch.error is not None:
            raise batch.error

    async def _flush(self, batch: _Batch) -> None:
        self._next = _Batch()
        try:
            if batch.replacement is not None:
                await self._io(self._replace, batch.replacement())  # taken here: the state is the loop's
            if batch.records:
                await self._io(self._write, batch.records)
                self.forced_writes += 1
        except Exception as exc:  # every waiter of this batch learns it failed; nobody hangs
            batch.error = exc
        batch.done.set()

    async def _io(self, write: Callable[[list[list[Any]]], None], records: list[list[Any]]) -> None:
        if self.durability is Durability.FSYNC:
            await trio.to_thread.run_sync(write, records)  # a disk sync: off the event loop
        else:
            write(records)  # into the page cache: cheaper than a thread hop
            await trio.lowlevel.checkpoint()

    def _write(self, records: list[list[Any]]) -> None:
        self._file.append(records, sync=self.durability is Durability.FSYNC)
        self.written += len(records)

    def _replace(self, records: list[list[Any]]) -> None:
        self._file.replace(records)
        self.written = len(records)

    def close(self) -> None:
        self._file.close()
