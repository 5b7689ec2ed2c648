"""A full disk (or an I/O error) while a node appends to its files: the node stays up and answers nothing wrong.

Unit tests make the disk full by replacing ``os.pwrite`` (every record write goes through it) with one that
writes what fits and then fails with ENOSPC, as a real full disk does to a long write. The last test mounts
a real, tiny tmpfs under one node of a real cluster (root only), fills it, and frees it again.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import TCPNode

import commit
from commit.node.decision_log import DecisionLog
from commit.node.decision_stores import LocalLogStore
from commit.node.storage import storage_problems
from commit.tooling.localcluster import LocalCluster, free_port_block
from consensus.acceptor import Acceptor
from consensus.acceptor_log import AcceptorLog
from consensus.durability import DurableSyncObj, SyncedFileJournal
from consensus.errors import ClusterError, StorageUnavailable
from consensus.journal_file import JournalFile
from consensus.paxos import BALLOT_ZERO, InstanceState
from consensus.settings import Durability

A = "2pc:" + "a" * 32
B = "2pc:" + "b" * 32
PARTS = ("shard-0", "shard-1")
FAILED = "cannot write"


class FullDisk:
    """``os.pwrite``, ``os.fsync`` and ``os.ftruncate`` as a disk that is full, or failing, for some files.

    ``free``: bytes left for the files ``affects`` picks (None: plenty). A write that does not fit writes
    what fits and then fails with ENOSPC. ``failing_syncs``: how many of the next syncs of those files fail
    with EIO. ``cut_error``: errno that a truncation of them fails with (None: it works).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, affects: Callable[[str], bool]) -> None:
        self.free: int | None = None
        self.failing_syncs = 0
        self.cut_error: int | None = None
        real_pwrite, real_fsync, real_ftruncate = os.pwrite, os.fsync, os.ftruncate

        def affected(fd: int) -> bool:
            return affects(os.readlink(f"/proc/self/fd/{fd}"))

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if self.free is None or not affected(fd):
                return real_pwrite(fd, data, offset)
            if self.free == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = real_pwrite(fd, bytes(data)[:self.free], offset)
            self.free -= written
            return written

        def fsync(fd: int) -> None:
            if self.failing_syncs and affected(fd):
                self.failing_syncs -= 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        def ftruncate(fd: int, length: int) -> None:
            if self.cut_error is not None and affected(fd):
                raise OSError(self.cut_error, os.strerror(self.cut_error))
            real_ftruncate(fd, length)

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "ftruncate", ftruncate)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    return FullDisk(monkeypatch, lambda path: path.startswith(str(tmp_path)))


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and FAILED in r.getMessage()]


# -- the 2pc decision log ----------------------------------------------------------------------------------


async def test_a_decision_that_cannot_be_forced_leaves_no_trace_and_the_next_one_works(
    tmp_path: Path, disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "2pc.log"
    log = DecisionLog(path)
    log.decide(A, "committed", PARTS)
    size = path.stat().st_size
    disk.free = 7  # the record's first 7 bytes fit
    store = LocalLogStore(log)
    for _ in range(5):
        with pytest.raises(StorageUnavailable, match=r"2pc\.log: cannot write: \[Errno 28\]"):
            await store.decide(B, "committed", PARTS)
    assert path.stat().st_size == size  # the 7 bytes were cut back
    assert B not in log.decisions and log.forced_writes == 1  # not decided: nobody heard it, it may abort
    assert len(failures(caplog)) == 1  # one line for five failures, not one each
    assert "The 2pc coordinator decides no transaction" in failures(caplog)[0]
    assert storage_problems([], None) == {}
    assert log.problem() is not None and "5 write(s) failed" in log.problem()
    disk.free = None
    assert log.decide("2pc:" + "c" * 32, "aborted", PARTS) == "aborted"
    assert log.problem() is None and "writable again, after 5 failed write(s)" in caplog.text
    log.close()
    again = DecisionLog(path)
    assert set(again.decisions) == {A, "2pc:" + "c" * 32}
    again.close()


async def test_a_failed_decision_that_cannot_be_cut_back_is_never_presumed_aborted(
    tmp_path: Path, disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "2pc.log"
    log = DecisionLog(path)
    log.decide(A, "committed", PARTS)
    disk.failing_syncs = 1  # the write lands, its sync fails: it may or may not be on disk
    disk.cut_error = errno.EIO
    store = LocalLogStore(log)
    with pytest.raises(StorageUnavailable):
        await store.decide(B, "committed", PARTS)
    assert B not in log.decisions
    with pytest.raises(StorageUnavailable, match="restart the node"):
        await store.status(B, active=False)  # at restart B may be read back as committed
    with pytest.raises(StorageUnavailable):
        log.decide("2pc:" + "c" * 32, "aborted", PARTS)  # no more writes: the file holds a record it denied
    assert "takes no more writes until the node restarts" in caplog.text
    log.close()


def test_a_finish_record_that_cannot_be_written_leaves_the_decision_unfinished(tmp_path: Path, disk: FullDisk) -> None:
    log = DecisionLog(tmp_path / "2pc.log")
    log.decide(A, "committed", PARTS)
    disk.free = 0
    with pytest.raises(StorageUnavailable):
        log.finish(A)
    assert [txid for txid, _ in log.unfinished()] == [A]  # resumed after a restart: the decision is re-sent
    disk.free = None
    log.finish(A)
    assert log.unfinished() == []
    log.close()


# -- the Paxos acceptor ------------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", list(Durability))
async def test_every_caller_of_a_batch_that_cannot_be_written_is_told_and_the_file_keeps_nothing(
    tmp_path: Path, disk: FullDisk, durability: Durability
) -> None:
    path = tmp_path / "acceptor.log"
    log = AcceptorLog(path, durability)
    await log.persist([(["t", "s0"], [1, 0, 1], [1, 0, 1], "prepared")])
    size = path.stat().st_size
    disk.free = 30
    errors: dict[int, BaseException | None] = {}

    async def one(i: int) -> None:
        try:
            await log.persist([(["u", f"s{i}"], [1, 0, 1], [1, 0, 1], "prepared")])
            errors[i] = None
        except StorageUnavailable as exc:
            errors[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i)
    assert all(isinstance(e, StorageUnavailable) for e in errors.values()) and len(errors) == 6
    assert path.stat().st_size == size
    disk.free = None
    await log.persist([(["v", "s0"], [1, 0, 1], None, None)])
    log.close()
    assert [r[0] for r in AcceptorLog(path, durability).load()] == [["t", "s0"], ["v", "s0"]]


async def test_an_acceptor_answers_nothing_it_could_not_make_durable_and_writes_it_with_the_next_answer(
    tmp_path: Path, disk: FullDisk
) -> None:
    path = tmp_path / "acceptor.log"
    acceptor = Acceptor("a0", path, Durability.FSYNC)
    i0 = ("t", "s0")
    disk.free = 0
    with pytest.raises(StorageUnavailable):
        await acceptor.accept(BALLOT_ZERO, {i0: "prepared"})  # no 2b may leave: the caller gets the error
    with pytest.raises(StorageUnavailable):
        await acceptor.promise((1, 0, 1), [i0])  # nor a 1b that reveals the acceptance
    disk.free = None
    promised, accepted, _ = await acceptor.promise((1, 0, 2), [i0])
    assert promised and accepted == {i0: (BALLOT_ZERO, "prepared")}
    acceptor.log.close()
    restarted = Acceptor("a0", path, Durability.FSYNC)  # what it revealed is what it holds after a restart
    assert restarted.state.get(i0) == InstanceState((1, 0, 2), BALLOT_ZERO, "prepared")
    assert storage_problems([], restarted) == {}
    restarted.log.close()


# -- the Raft journal --------------------------------------------------------------------------------------


def entry(i: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"\x01", i, term)  # PySyncObj's NO_OP command type: nothing for a state machine to apply


@pytest.mark.parametrize("failure", ["ENOSPC mid-record", "EIO on sync"])
def test_a_journal_append_that_fails_changes_neither_memory_nor_file(
    tmp_path: Path, disk: FullDisk, failure: str
) -> None:
    path = tmp_path / "g.journal"
    journal = SyncedFileJournal(str(path), lambda: 0)
    for i in range(1, 6):
        journal.add(*entry(i))
    size = path.stat().st_size
    for _ in range(3):
        if failure == "EIO on sync":
            disk.failing_syncs = 1  # the append's sync; the sync of the cut after it works
        else:
            disk.free = 9
        with pytest.raises(StorageUnavailable):
            journal.add(*entry(6))
    assert len(journal) == 5 and path.stat().st_size == size
    assert journal.problem() is not None and "g.journal: cannot write" in journal.problem()
    disk.free = None
    journal.add(*entry(6))  # the retry, as the leader's next message makes it
    assert journal.problem() is None
    journal._destroy()
    again = JournalFile(str(path))
    assert [again[i] for i in range(len(again))] == [entry(i) for i in range(1, 7)]
    again._destroy()


def test_a_term_that_cannot_be_stored_is_not_taken(tmp_path: Path, disk: FullDisk) -> None:
    journal = JournalFile(str(tmp_path / "g.journal"))
    journal.setCurrentTerm(3, None)
    disk.free = 0
    with pytest.raises(StorageUnavailable):
        journal.setCurrentTerm(4, "127.0.0.1:2")
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (3, None)
    assert not list(tmp_path.glob("*.rewrite"))  # the half-written new meta is removed: its space comes back
    journal._destroy()


@pytest.fixture
def follower(tmp_path: Path, seed: int) -> Iterator[tuple[Any, TCPNode, list[dict[str, Any]]]]:
    """A never-ticked follower whose journal holds entries 1..10 of term 1, and what it sends."""
    journal = JournalFile(str(tmp_path / "g.journal"))
    for i in range(1, 11):
        journal.add(*entry(i))
    journal._destroy()
    base = free_port_block(2, random.Random(seed))
    conf = SyncObjConf(autoTick=False, journalFile=str(tmp_path / "g.journal"), fullDumpFile=str(tmp_path / "g.dump"))
    so = DurableSyncObj(f"127.0.0.1:{base}", [f"127.0.0.1:{base + 1}"], conf, [], Durability.OS)
    sent: list[dict[str, Any]] = []
    so._SyncObj__transport.send = lambda node, message: sent.append(message)
    try:
        yield so, TCPNode(f"127.0.0.1:{base + 1}"), sent
    finally:
        so.destroy()


def acks(sent: list[dict[str, Any]]) -> list[int]:
    return [m["next_node_idx"] for m in sent if m["type"] == "next_node_idx" and m["success"]]


def test_a_follower_that_cannot_append_acknowledges_nothing_until_it_can(
    follower: tuple[Any, TCPNode, list[dict[str, Any]]], disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    so, leader, sent = follower
    message = {"type": "append_entries", "term": 1, "commit_index": 10, "prevLogIdx": 10, "prevLogTerm": 1,
               "entries": [entry(11), entry(12)]}
    disk.free = 20  # entry 11 fits, entry 12 does not
    for _ in range(4):  # the leader re-sends
        so._SyncObj__onMessageReceived(leader, dict(message))
    assert acks(sent) == []
    assert so._getRaftLogSize() == 11  # entry 11 was written whole; 12 never joined the log
    assert "Traceback" not in caplog.text and len(failures(caplog)) == 1
    assert "stops acknowledging entries" in failures(caplog)[0]
    assert so.storage_problem() is not None
    disk.free = None
    so._SyncObj__onMessageReceived(leader, dict(message))
    assert acks(sent) == [13] and so._getRaftLogSize() == 12 and so.storage_problem() is None


class Counter(SyncObjConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    @replicated
    def add(self, amount: int) -> int:
        self.value += amount
        return self.value


def tick_until(so: Any, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"no {what} within 10s"
        so.doTick(0.01)


def test_a_leader_that_cannot_append_fails_the_command_steps_down_and_leads_again_once_it_can(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FullDisk(monkeypatch, lambda path: path.endswith("g.journal"))  # the journal: the meta still works
    base = free_port_block(1, random.Random(seed))
    conf = SyncObjConf(autoTick=False, journalFile=str(tmp_path / "g.journal"), fullDumpFile=str(tmp_path / "g.dump"),
                       appendEntriesPeriod=0.01, raftMinTimeout=0.05, raftMaxTimeout=0.1)
    counter = Counter()
    so = DurableSyncObj(f"127.0.0.1:{base}", [], conf, [counter], Durability.OS)
    try:
        tick_until(so, so._isLeader, "leader")
        results: list[tuple[Any, int]] = []
        counter.add(1, callback=lambda result, reason: results.append((result, reason)))
        tick_until(so, lambda: bool(results), "result")
        assert results == [(1, FAIL_REASON.SUCCESS)]
        disk.free = 0
        counter.add(10, callback=lambda result, reason: results.append((result, reason)))
        tick_until(so, lambda: len(results) == 2, "failed command")
        assert results[1] == (None, FAIL_REASON.NOT_LEADER) and not so._isLeader()
        for _ in range(30):
            so.doTick(0.01)  # it stands again, wins (alone), cannot append its no-op, steps down: no traceback
        assert "Traceback" not in caplog.text and len(failures(caplog)) == 1
        disk.free = None
        tick_until(so, so._isLeader, "leader again")
        counter.add(100, callback=lambda result, reason: results.append((result, reason)))
        tick_until(so, lambda: len(results) == 3, "result")
        assert results[2] == (101, FAIL_REASON.SUCCESS) and counter.value == 101
    finally:
        so.destroy()


# -- a real node on a real full disk -----------------------------------------------------------------------


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


class Filler:
    """Keeps the file system of ``where`` full: a thread takes every byte that comes free, as other writers
    on a real full disk do. Without it a tmpfs is leaky: each rename over a file (a ``.meta`` replaced)
    frees a page that the next append of a journal may get."""

    def __init__(self, where: Path) -> None:
        self.path = where / "filler"
        self._stop = threading.Event()
        self._file = open(self.path, "wb", buffering=0)
        self._fill()
        self._thread = threading.Thread(target=self._keep_full, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    self._file.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def _keep_full(self) -> None:
        while not self._stop.wait(0.002):
            self._fill()

    def free(self) -> None:
        self._stop.set()
        self._thread.join()
        self._file.close()
        self.path.unlink()


async def test_a_node_on_a_full_disk_stays_up_answers_nothing_wrong_and_recovers(tmp_path: Path) -> None:
    node_dir = tmp_path / "data" / "n1"
    mount_tmpfs(node_dir, "8m")
    outside = tmp_path / "n1.log"
    outside.touch()
    (node_dir / "node.log").symlink_to(outside)  # the log tells what happened: keep it off the full disk
    cluster = LocalCluster(tmp_path)
    value = "v" * 1024  # every append crosses into a page of the tmpfs that is not there
    try:
        cluster.start_all()
        await cluster.wait_ready()
        async with commit.connect(cluster.config) as db:
            written = {f"before{i}": i for i in range(20)}
            for key, v in written.items():
                await db.put(key, v)
            filler = Filler(node_dir)
            started = trio.current_time()
            for i in range(60):
                written[f"full{i}"] = [i, value]
                await db.put(f"full{i}", [i, value])
            print(f"60 puts with n1's disk full took {trio.current_time() - started:.1f}s")
            for key, v in written.items():
                assert (await db.get(key)).value == v
            assert cluster.alive("n1")
            rows = [r for r in await cluster.status() if r["node"] == "n1"]
            assert rows and all(r.get("reachable") for r in rows)  # n1 answers its status
            assert any(r.get("storage") for r in rows), rows  # ... and says which replica cannot write
            text = outside.read_text()
            failed = [line for line in text.splitlines() if "ERROR consensus.framed_file" in line and FAILED in line]
            print(f"{len(failed)} lines about writes that failed:", *failed, sep="\n")
            assert failed and "Traceback" not in text
            assert len(failed) <= 2 * len(list(node_dir.glob("*.journal*")))  # per file, not per write

            filler.free()
            cluster.kill("n2")  # from here on nothing commits without n1: it must be acknowledging again
            for i in range(10):
                written[f"after{i}"] = i
                await db.put(f"after{i}", i)
            for key, v in written.items():
                assert (await db.get(key)).value == v
            assert "writable again" in outside.read_text()
    finally:
        cluster.stop()
        subprocess.run(["umount", "-l", str(node_dir)], check=False)
        shutil.rmtree(node_dir, ignore_errors=True)


def test_an_unwritable_store_is_reported_by_path(tmp_path: Path, disk: FullDisk) -> None:
    log = DecisionLog(tmp_path / "2pc.log")
    disk.free = 0
    with pytest.raises(ClusterError):
        log.decide(A, "committed", PARTS)

    class Manager:
        store = LocalLogStore(log)

    problems = storage_problems([Manager()], None)  # type: ignore[list-item]
    assert list(problems) == [str(tmp_path / "2pc.log")] and "No space left on device" in problems[str(tmp_path / "2pc.log")]
    log.close()
