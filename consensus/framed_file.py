"""Files of checksummed records: ``2pc.log``, ``acceptor.log``, the Raft journals and their ``.meta``.

Format. A file starts with a header line naming the format and what the file holds, e.g.
``raftcommit records 1: raft journal`` and a newline, then records, each

    length (4 bytes, big-endian) | CRC-32 of the payload (4) | CRC-32 of the 8 bytes before it (4) | payload

where the payload is one msgpack value. The header is written with the first record, so an empty file, or
one that holds only the beginning of its header (a crash during the very first append), holds no records.
A file that starts with anything else is of another format (PySyncObj's own journal, a file from before
this format) and is refused: ``CorruptFile`` at byte 0.

Checksum. zlib's CRC-32: in the standard library and in C, it detects every error burst of up to 32 bits
(a flipped byte, four damaged bytes in a row) and any three flipped bits in a record of up to 11 KB
(Hamming distance 4 up to 91607 bits: Koopman, "32-bit cyclic redundancy codes for Internet applications",
DSN 2002), and lets other random damage through with probability 2^-32 per record. CRC-32C is as strong (only faster on CPUs with an
instruction for it) but is not in the standard library; a cryptographic hash would only stop someone who
can write the data directory, who could write well-formed records just as well. The length has its own
checksum: a damaged length is then seen as damage, instead of sending the reader past the end of the file,
where it took the damaged record for a torn last write and dropped every record after it.

Torn tails (``read_records``). A crash can leave the last append incomplete: a prefix of it, or after a
power loss, zeros or stale blocks where it should be. The rule:

* a record whose header or payload runs past the end of the file is torn;
* a record with a wrong checksum (of its header or of its payload) is torn if no whole, valid record
  starts at any later byte of the file; if one does, the file is corrupt at the bad record, and the node
  refuses to start rather than guess (a power loss in the middle of a write of several records can, in
  principle, also leave this: the disk may write pages out of order. It cannot be told apart from damage
  to records that were acknowledged, so it is refused too);
* a record whose checksums hold but whose payload is not msgpack is corrupt (written wrong).

A torn tail is cut off, and the cut synced, so that records appended later do not land behind its remains.
It was never acknowledged: an owner answers only after its append returned (and in ``fsync`` mode was
synced); in ``os`` mode a power loss may also lose acknowledged records, as docs/OPERATIONS.md says.

Appending (``RecordFile.append``) writes whole records or none. A write or sync that fails (ENOSPC, EIO)
is cut back to the end of the last whole record (the cut synced, in a synced file) before the error is raised as
``StorageUnavailable``: the next append starts at a record boundary and a failed append never reaches a
reader. The file logs its first failure once, with what it stops (``consequence``), and its recovery once;
``problem()`` says what is wrong meanwhile, for an operator's status. If even the cut fails, the file takes
no more writes until the process restarts; whatever it holds is then judged by the rules above.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from consensus.errors import CorruptFile, StorageUnavailable

log = logging.getLogger(__name__)

_FORMAT = b"raftcommit records "
_VERSION = b"1"
_HEAD = 12  # length, payload CRC-32, header CRC-32: three 4-byte words
_WORD = 4


def header_of(kind: str) -> bytes:
    """The first line of a file of ``kind`` records."""
    return _FORMAT + _VERSION + b": " + kind.encode() + b"\n"


def encode_record(value: Any) -> bytes:
    payload = msgpack.packb(value)
    head = len(payload).to_bytes(_WORD, "big") + zlib.crc32(payload).to_bytes(_WORD, "big")
    return head + zlib.crc32(head).to_bytes(_WORD, "big") + payload


@dataclass(frozen=True, slots=True)
class Record:
    offset: int  # where the record starts in its file: what a CorruptFile about its value names
    end: int  # where the next record starts
    value: Any


def _valid_at(data: bytes, at: int) -> int | None:
    """The end of the whole, valid record that starts at ``at``, if one does."""
    if len(data) - at < _HEAD:
        return None
    head = data[at:at + 2 * _WORD]
    if zlib.crc32(head) != int.from_bytes(data[at + 2 * _WORD:at + _HEAD], "big"):
        return None
    end = at + _HEAD + int.from_bytes(head[:_WORD], "big")
    if end > len(data) or zlib.crc32(data[at + _HEAD:end]) != int.from_bytes(head[_WORD:], "big"):
        return None
    return end


def _damage_at(data: bytes, at: int) -> str | None:
    """Why the record at ``at`` is not whole and valid; None if it runs past the end (a torn write)."""
    if len(data) - at < _HEAD:
        return None
    head = data[at:at + 2 * _WORD]
    if zlib.crc32(head) != int.from_bytes(data[at + 2 * _WORD:at + _HEAD], "big"):
        return "the record's length fails its checksum"
    if at + _HEAD + int.from_bytes(head[:_WORD], "big") > len(data):
        return None
    return "the record's payload fails its checksum"


def _next_valid(data: bytes, after: int) -> int | None:
    for at in range(after + 1, len(data) - _HEAD + 1):
        if _valid_at(data, at) is not None:
            return at
    return None


def _check_header(path: Path, data: bytes, kind: str) -> int:
    """Where the records start (0 for a file that holds none yet); CorruptFile for another format."""
    header = header_of(kind)
    if data.startswith(header):
        return len(header)
    if len(data) < len(header) and header.startswith(data):
        return 0  # empty, or the first append's header torn: nothing was ever acknowledged
    first = data[:len(header) + 16].split(b"\n")[0]
    if first.startswith(_FORMAT):
        what = f"it is a {first.decode(errors='replace')!r} file, not a {header[:-1].decode()!r} file"
    else:
        what = (f"not a {kind} file of this version (it starts with {data[:24]!r}); files written before "
                "the checksummed format are not readable (docs/OPERATIONS.md, 'Corrupted files and a full disk')")
    raise CorruptFile(path, 0, what)


def read_records(path: Path, kind: str, *, appended: bool = True) -> tuple[list[Record], int]:
    """Every record in ``path``, oldest first, and the offset where the next append goes.

    A torn tail is cut off, and the cut synced. ``CorruptFile`` names the file and the byte where the
    damage starts.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records, end = parse_records(path, data, kind, appended=appended)
    if end < len(data):
        _cut(path, end, len(data))
    return records, end


def parse_records(path: Path, data: bytes, kind: str, *, appended: bool = True) -> tuple[list[Record], int]:
    """The records of ``data``, the contents of ``path``, and where the torn tail starts (``len(data)``
    if there is none); ``read_records`` without the cut.

    ``appended``: a file written by appends may end in a torn tail; one that is always replaced whole
    (a Raft ``.meta``) cannot, so damage anywhere in it is corruption.
    """
    at = _check_header(path, data, kind)
    records: list[Record] = []
    if at == 0:
        return records, 0
    while at < len(data):
        end = _valid_at(data, at)
        if end is None:
            _judge_damage(path, data, at, appended)
            break
        try:
            value = msgpack.unpackb(data[at + _HEAD:end])
        except Exception as exc:  # any msgpack failure: the bytes passed their checksums, so they were written so
            raise CorruptFile(path, at, f"the record is not msgpack although its checksums hold: {exc}") from None
        records.append(Record(at, end, value))
        at = end
    return records, at


def _judge_damage(path: Path, data: bytes, at: int, appended: bool) -> None:
    """Return if the bad record at ``at`` is a torn tail (the module's rule); else raise ``CorruptFile``."""
    damage = _damage_at(data, at)
    if damage is None:
        if not appended:
            raise CorruptFile(path, at, "the record runs past the end of a file that is only ever written whole")
        return
    following = _next_valid(data, at)
    if following is not None:
        raise CorruptFile(path, at, f"{damage}, and a whole record follows at byte {following}: "
                                    "this is not a torn last write")
    if not appended:
        raise CorruptFile(path, at, damage)


def _cut(path: Path, at: int, size: int) -> None:
    log.warning("%s: cut a torn last write at byte %d (%d bytes): a write that never completed", path, at, size - at)
    with open(path, "r+b") as f:
        f.truncate(at)
        f.flush()
        os.fsync(f.fileno())


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _ends(start: int, records: list[bytes]) -> list[int]:
    """The end offset of each of ``records`` written one after the other from ``start``."""
    ends = []
    for record in records:
        start += len(record)
        ends.append(start)
    return ends


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordFile:
    """One open file of records: appends whole records or none, and says when it cannot write.

    ``synced``: appends are synced when their caller asks, and cuts and replacements always are (with the
    directory, for a replacement's rename). ``consequence`` completes the one line logged when writes start
    failing: what this node stops doing until a write succeeds. Appends may come from several threads (the
    ``2pc`` log decides in a worker thread and finishes in the trio thread), so they take a lock.
    """

    def __init__(self, path: Path, kind: str, end: int, *, synced: bool, consequence: str) -> None:
        self.path = path
        self.synced = synced
        self.consequence = consequence
        self._header = header_of(kind)
        self._end = end
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._failed_writes = 0
        self._broken: str | None = None  # why this file takes no more writes until the process restarts

    @property
    def first_record(self) -> int:
        """Where the first record starts once the file has its header."""
        return len(self._header)

    def fileno(self) -> int:
        return self._fd

    @property
    def intact(self) -> bool:
        """Whether the file holds only whole records written here: false once a failed write stayed in it."""
        return self._broken is None

    def append(self, values: Sequence[Any], *, sync: bool) -> list[int]:
        """Write ``values`` as records at the end (synced if ``sync``); the end offset of each.

        ``StorageUnavailable`` if they could not be written: then none of them is in the file.
        """
        records = [encode_record(v) for v in values]
        with self._lock:
            self._check_writable()
            start = self._end
            header = self._header if start == 0 else b""
            data = header + b"".join(records)
            try:
                _write_all(self._fd, data, start)
                if sync:
                    os.fsync(self._fd)
            except OSError as exc:
                self._restore(start, exc)
                raise self._failed(exc) from None
            self._succeeded()
            ends = _ends(start + len(header), records)
            self._end = start + len(data)
            return ends

    def truncate(self, end: int) -> None:
        """Drop every record from offset ``end`` on (the file keeps its header)."""
        with self._lock:
            self._check_writable()
            end = min(self._end, max(end, self.first_record))
            try:
                os.ftruncate(self._fd, end)
                if self.synced:
                    os.fsync(self._fd)
            except OSError as exc:
                raise self._failed(exc) from None
            self._succeeded()
            self._end = end

    def replace(self, values: Sequence[Any]) -> list[int]:
        """Make the file hold exactly ``values``, atomically: a new file renamed over this one.

        Returns the end offset of each record. On ``StorageUnavailable`` the file is as it was.
        """
        records = [encode_record(v) for v in values]
        data = self._header + b"".join(records)
        tmp = self.path.with_name(self.path.name + ".rewrite")
        with self._lock:
            self._check_writable()
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    _write_all(fd, data, 0)
                    if self.synced:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)  # a full disk gets its space back
                raise self._failed(exc) from None
            try:
                fd = os.open(self.path, os.O_RDWR)
            except OSError as exc:  # appends through the old descriptor would go to the replaced file
                self._break(f"it was replaced, and reopening it failed ({exc})")
                raise self._failed(exc) from None
            os.close(self._fd)
            self._fd, self._end = fd, len(data)
            try:
                if self.synced:
                    _fsync_dir(self.path)
            except OSError as exc:  # the new file is in place; only the rename's durability is in doubt
                raise self._failed(exc) from None
            self._succeeded()
        return _ends(len(self._header), records)

    def problem(self) -> str | None:
        """What keeps this file from being written now, for an operator's status; None if nothing."""
        if self._broken is not None:
            return f"cannot write: {self._broken}; restart the node"
        if self._failure is not None:
            return f"cannot write ({self._failure}); {self._failed_writes} write(s) failed, each request tries again"
        return None

    def close(self) -> None:
        os.close(self._fd)

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise StorageUnavailable(f"{self.path}: {self.problem()}")

    def _break(self, why: str) -> None:
        self._broken = why
        log.critical("%s: %s: this file takes no more writes until the node restarts. %s",
                     self.path, why, self.consequence)

    def _restore(self, end: int, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, end)
            if self.synced:
                os.fsync(self._fd)
        except OSError as cut:
            self._break(f"a write failed ({exc}) and cutting it back to byte {end} failed too ({cut})")

    def _failed(self, exc: OSError) -> StorageUnavailable:
        self._failed_writes += 1
        if self._failure is None and self._broken is None:
            log.error("%s: cannot write (%s). %s until a write succeeds; the next request that needs it "
                      "tries again", self.path, exc, self.consequence)
        self._failure = str(exc)
        return StorageUnavailable(f"{self.path}: cannot write: {exc}")

    def _succeeded(self) -> None:
        if self._failure is not None:
            log.warning("%s: writable again, after %d failed write(s)", self.path, self._failed_writes)
            self._failure = None
            self._failed_writes = 0


def open_record_file(
    path: Path, kind: str, *, synced: bool, consequence: str, appended: bool = True
) -> tuple[RecordFile, list[Record]]:
    """Read ``path`` (cutting a torn tail, ``CorruptFile`` for damage) and open it for appends."""
    records, end = read_records(path, kind, appended=appended)
    return RecordFile(path, kind, end, synced=synced, consequence=consequence), records
