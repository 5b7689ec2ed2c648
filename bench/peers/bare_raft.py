"""Bare PySyncObj: the ceiling of our substrate, a plain replicated dict with nothing of ours on it.

Three PySyncObj 0.3.17 replicas, each a process on free loopback ports, replicate one stock
``ReplDict`` with the Raft settings our nodes use (``consensus.settings.RaftSettings``'s defaults,
which cluster.toml's ``[raft]`` repeats: ``appendEntriesUseBatch`` off, the same election and
leader-fallback timeouts, the same log compaction thresholds, a journal and a snapshot file, forked
compaction). Each replica also serves a small client protocol on trio: msgpack ``[id, op, *args]``
requests, answered ``[id, *result]``, pipelined on a connection.

Client processes are spawned and hold trio tasks as in ``bench.harness``, and each process pipelines
all its tasks over one connection to the leader, as our client does per node. An operation is one
``ReplDict.set(key, value)``: the request reaches the leader, PySyncObj appends it to its journal,
replicates it to the followers, commits it when a majority has it, applies it, calls back, and the
leader answers. So the figure includes a client round trip and PySyncObj's own replication, and
excludes everything this store adds: authenticated RPC and HMAC-signed Raft frames, exactly-once
sessions, shard routing, the durability hooks and journal of ``consensus.durability``. The journal
is PySyncObj's stock mmap file in a temporary directory, never synced: the guarantee of our
durability ``os`` (an acknowledged set survives kill -9, not power loss). It is stock PySyncObj,
bugs included: under load its followers truncate and re-append entries they had already applied
when the leader re-sends them (the bug ``consensus.durability`` fixes for our nodes), which the
figure includes; the line it logs each time is dropped (``TRUNCATION_LINE``).

Each phase starts fresh replicas, so every phase starts from an empty log.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

from bench.peers import Op, PeerError, closed_loop, free_ports, run_client_processes
from bench.workloads import KEYS_PER_CLIENT
from consensus.settings import RaftSettings

HOST = "127.0.0.1"
REPLICAS = 3
LEADER_WITHIN_S = 30.0
LEADER_POLL_S = 0.1
REQUEST_TIMEOUT_S = 5.0  # as our nodes' timeouts.request_s: a set not replicated by then is an error
STOP_GRACE_S = 5.0
# Stock PySyncObj 0.3.17 followers drop entries they already applied when a leader re-sends them, and log
# this line each time (consensus.durability's CompactionSafeJournal is our fix). Under load it comes
# many times a second; it is the substrate's known bug, not news, so replicas drop that one line.
TRUNCATION_LINE = "truncating already-applied log entries"


class _DropTruncationLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TRUNCATION_LINE)


def _conf(raft: RaftSettings, self_addr: str, journal: Path) -> SyncObjConf:
    """PySyncObj's settings as ``consensus.group`` derives them from ``RaftSettings``, with no password."""
    return SyncObjConf(
        bindAddress=self_addr,
        journalFile=str(journal.with_suffix(".journal")),
        fullDumpFile=str(journal.with_suffix(".dump")),
        useFork=True,
        **raft.syncobj_options(),
    )


async def _serve_connection(stream: trio.SocketStream, store: ReplDict, syncobj: SyncObj) -> None:
    """Answer one client connection's requests; a set is answered from PySyncObj's callback."""
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[bytes](math.inf)

    def answer(frame: list[Any]) -> None:
        """Queue ``frame`` for the writer; safe from PySyncObj's thread, where set callbacks run."""
        try:
            token.run_sync_soon(send.send_nowait, msgpack.packb(frame))
        except trio.RunFinishedError:
            pass

    async def writer() -> None:
        try:
            async for frame in receive:
                await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; its sets still replicate

    unpacker = msgpack.Unpacker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        try:
            async for data in stream:
                unpacker.feed(data)
                for request_id, op, *args in unpacker:
                    if op == "set":
                        store.set(*args, callback=lambda _result, error, rid=request_id:
                                  answer([rid, error == FAIL_REASON.SUCCESS, error]))
                    elif op == "leader":
                        leader = syncobj._getLeader()
                        answer([request_id, None if leader is None else getattr(leader, "id", str(leader))])
        except trio.BrokenResourceError:
            pass
        nursery.cancel_scope.cancel()


async def _replica(index: int, raft_addrs: list[str], client_ports: list[int], data: str) -> None:
    store = ReplDict()
    others = [a for i, a in enumerate(raft_addrs) if i != index]
    syncobj = SyncObj(raft_addrs[index], others, _conf(RaftSettings(), raft_addrs[index], Path(data) / f"r{index}"),
                      consumers=[store])
    await trio.serve_tcp(lambda stream: _serve_connection(stream, store, syncobj), client_ports[index], host=HOST)


def _replica_process(index: int, raft_addrs: list[str], client_ports: list[int], data: str) -> None:
    logging.getLogger("pysyncobj.syncobj").addFilter(_DropTruncationLines())
    trio.run(_replica, index, raft_addrs, client_ports, data)


class _Pending:
    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: list[Any] | None = None


class _Pipe:
    """One pipelined connection: every task's requests on it, answers matched to requests by id."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._broken: str | None = None

    async def read_answers(self) -> None:
        """Hand each answer to its request until the connection closes; then fail every request in flight."""
        unpacker = msgpack.Unpacker()
        try:
            async for data in self._stream:
                unpacker.feed(data)
                for request_id, *answer in unpacker:
                    if (pending := self._pending.get(request_id)) is not None:
                        pending.answer = answer
                        pending.done.set()
            self._broken = "the replica closed the connection"
        except trio.BrokenResourceError as exc:
            self._broken = repr(exc)
        for pending in self._pending.values():
            pending.done.set()

    async def call(self, *request: Any) -> list[Any]:
        """Send ``request`` and wait for its answer; ``PeerError`` on a broken connection or after the timeout."""
        if self._broken is not None:
            raise PeerError(self._broken)
        request_id = self._next_id
        self._next_id += 1
        pending = self._pending[request_id] = _Pending()
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                async with self._send_lock:
                    await self._stream.send_all(msgpack.packb([request_id, *request]))
                await pending.done.wait()
        except trio.TooSlowError:
            raise PeerError(f"{request[0]}: no answer within {REQUEST_TIMEOUT_S} s") from None
        except trio.BrokenResourceError as exc:
            raise PeerError(repr(exc)) from exc
        finally:
            del self._pending[request_id]
        if pending.answer is None:
            raise PeerError(self._broken or "no answer")
        return pending.answer


async def _run_clients(port: int, tasks: int, seconds: float, warmup_s: float, tag: str,
                       barrier: Any) -> dict[str, Any]:
    async with await trio.open_tcp_stream(HOST, port) as stream, trio.open_nursery() as nursery:
        pipe = _Pipe(stream)
        nursery.start_soon(pipe.read_answers)

        async def put(task: int, i: int) -> None:
            ok, reason = await pipe.call("set", f"{tag}-{task}-{i % KEYS_PER_CLIENT}", i)
            if not ok:
                raise PeerError(f"set failed: PySyncObj FAIL_REASON {reason}")

        op: Op = put
        result = await closed_loop(tasks, op, seconds, warmup_s, barrier)
        nursery.cancel_scope.cancel()
    return result


async def _named_leader(port: int) -> str | None:
    """The Raft address the replica at ``port`` takes for the leader; None if none or no answer yet."""
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            async with await trio.open_tcp_stream(HOST, port) as stream:
                await stream.send_all(msgpack.packb([0, "leader"]))
                unpacker = msgpack.Unpacker()
                async for data in stream:
                    unpacker.feed(data)
                    for _request_id, leader in unpacker:
                        return str(leader) if leader is not None else None
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        pass
    return None


async def _leader_port(client_ports: list[int], raft_addrs: list[str], replicas: list[Any]) -> int:
    """The client port of the replica that leads, once every replica answers and names it."""
    until = trio.current_time() + LEADER_WITHIN_S
    while trio.current_time() < until:
        if any(p.exitcode is not None for p in replicas):
            raise RuntimeError(f"a PySyncObj replica exited with {[p.exitcode for p in replicas]}")
        named = {await _named_leader(port) for port in client_ports}
        if len(named) == 1 and (leader := named.pop()) in raft_addrs:
            return client_ports[raft_addrs.index(leader)]
        await trio.sleep(LEADER_POLL_S)
    raise RuntimeError(f"the PySyncObj replicas agreed on no leader within {LEADER_WITHIN_S} s")


@contextmanager
def _bare_cluster() -> Iterator[int]:
    """Three fresh replicas with journals in a temporary directory; yields the leader's client port."""
    ports = free_ports(HOST, 2 * REPLICAS)
    raft_addrs = [f"{HOST}:{p}" for p in ports[:REPLICAS]]
    client_ports = ports[REPLICAS:]
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-bare-raft-") as data:
        replicas = [ctx.Process(target=_replica_process, args=(i, raft_addrs, client_ports, data))
                    for i in range(REPLICAS)]
        for p in replicas:
            p.start()
        try:
            yield trio.run(_leader_port, client_ports, raft_addrs, replicas)
        finally:
            for p in replicas:
                p.terminate()
            for p in replicas:
                p.join(timeout=STOP_GRACE_S)
                if p.is_alive():
                    p.kill()
                    p.join()


def run_bare_phase(clients: int, procs: int, seconds: float, warmup_s: float = 0.0) -> dict[str, Any]:
    """Closed-loop sets against 3 fresh bare PySyncObj replicas; the keys of ``bench.harness.run_phase``.

    Comparable to ``kv.put``: each operation sets one of ``KEYS_PER_CLIENT`` keys per task to an int.
    """
    tag = f"bare-put{clients}-{os.getpid()}-{time.monotonic_ns()}"
    with _bare_cluster() as port:
        return run_client_processes(_run_clients, (port,), clients, procs, seconds, warmup_s, tag)
