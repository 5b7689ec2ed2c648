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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from consensus.framed_file import read_frames
from consensus.settings import Durability
from consensus.wire import encode_frame

_MAX_RECORD = 1 << 20

Record = tuple[Any, Any, Any, Any]  # instance, promised, accepted ballot, accepted value


class _Batch:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


class AcceptorLog:
    def __init__(self, path: Path, durability: Durability) -> None:
        self.path = path
        self.durability = durability
        self.forced_writes = 0
        self._next = _Batch()
        self._flushing = False
        self._file = open(path, "ab")

    def load(self) -> list[Record]:
        """Every record on disk, oldest first; a torn tail (a crash mid-write) is cut off."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in read_frames(self.path, _MAX_RECORD)
            if isinstance(r, list) and len(r) == 4
        ]

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
            data = b"".join(encode_frame(list(r), _MAX_RECORD) for r in batch.records)
            if self.durability is Durability.FSYNC:
                await trio.to_thread.run_sync(self._write, data)  # a disk sync: off the event loop
            else:
                self._write(data)  # into the page cache: cheaper than a thread hop
                await trio.lowlevel.checkpoint()
            self.forced_writes += 1
        except Exception as exc:  # every waiter of this batch learns it failed; nobody hangs
            batch.error = exc
        batch.done.set()

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        if self.durability is Durability.FSYNC:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
