"""One replica of one Raft group, on PySyncObj, awaited from trio.

PySyncObj is not sans-IO: it runs on a tick thread (the node's one ticker,
``consensus.ticker``, or its own), owns its sockets and journal, and calls back
on that thread. This module and the ticker are the only places that touch it.
What the rest of the node sees:

* ``await group.propose(command, session)``: the command is applied on every
  replica by ``StateMachine.apply`` and the result comes back. A proposal can
  be lost or its outcome can be unknown (leader change, timeout): the errors
  say so (``maybe_applied``) and a retry with the same ``SessionRef`` is
  applied at most once (``consensus.sessions``).
* ``await group.read_barrier()``: returns once this replica has applied every
  command committed before the call began, so a read of local state that
  follows is linearizable.

Group commit: a group has at most one proposal in flight. Commands and
barriers that arrive meanwhile join the batch forming behind it (at most
``raft.max_batch_commands`` commands, and ``max_batch_bytes``), and the whole
batch goes to Raft as one entry when the one in flight is answered; its apply
runs each command in order, each under its own session. A command alone
never waits, and under load one entry, one journal append (one disk sync in
``fsync`` mode, on every replica) and one round of AppendEntries serve many
commands. A barrier is a batch's entry too, so readers ride on the writes
(an empty batch when no command came). The cost: a batch's commands share
its fate, so when Raft refuses the entry (a leader change) every one of them
gets the same error, each with the same ``maybe_applied``.
* ``group.status()``: role, leader, term, commit and applied index.

Callers bound every await with a cancel scope (trio style); a cancelled
proposal may still be applied.

Rules PySyncObj imposes on the replicated state, learned the hard way (see
DESIGN.md section 5): the replicated method never raises (an exception wedges
every replica), it is deterministic, and the state is kept in a
``SyncObjConsumer`` whose attributes are set in ``__init__`` so that snapshots
include them and the tick thread never sees a half-built object.
"""

from __future__ import annotations

import logging
import pickle
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

import trio
from pysyncobj import FAIL_REASON, SyncObjConsumer, replicated

from consensus.durability import DurableSyncObj, align_journal_with_snapshot, install_snapshot_sync
from consensus.errors import (
    ClusterError,
    InternalError,
    InvalidRequest,
    NotLeader,
    Unavailable,
    error_from_wire,
)
from consensus.raft_transport import LimitedTransportConf, LimitedTransportSyncObj
from consensus.sessions import SessionRef, SessionTable
from consensus.settings import GroupSpec
from consensus.ticker import OwnTickThread, Ticker, open_ticker

log = logging.getLogger(__name__)


class StateMachine(Protocol):
    """A deterministic, picklable state machine replicated by a group.

    ``apply`` may raise ``ClusterError`` to reject a command; the rejection is
    then the command's (replicated, deterministic) result.
    """

    def apply(self, command: Any) -> Any: ...


class _ReplicatedState(SyncObjConsumer):
    def __init__(self, machine: StateMachine, max_sessions: int, max_results_per_session: int) -> None:
        super().__init__()
        self.machine = machine
        self.sessions = SessionTable(max_sessions, max_results_per_session)

    @replicated
    def execute_batch(self, items: list[tuple[tuple[int, int, int] | None, Any]]) -> list[tuple[str, Any]]:
        """Apply a batch's commands in order, each under its own session: one Raft entry, many results.

        An empty batch is a read barrier that no command joined.
        """
        return [self._execute(session, command) for session, command in items]

    def _execute(self, session: tuple[int, int, int] | None, command: Any) -> tuple[str, Any]:
        try:
            if session is None:
                return self._apply(command)
            return self.sessions.run(SessionRef(*session), lambda: self._apply(command))
        except Exception as exc:  # never let a replicated method raise: it wedges the group
            log.exception("state machine failed on %r", command)
            return "err", InternalError(f"state machine failed: {exc!r}").to_wire()

    def _apply(self, command: Any) -> tuple[str, Any]:
        try:
            return "ok", self.machine.apply(command)
        except ClusterError as exc:
            return "err", exc.to_wire()

    @replicated
    def open_session(self) -> int:
        return self.sessions.open()


def _fail_reason_error(reason: int, group: str) -> ClusterError:
    if reason == FAIL_REASON.NOT_LEADER:
        return NotLeader(f"group {group}: leader changed before the command was accepted")
    if reason in (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME):
        return Unavailable(
            f"group {group}: leader changed while replicating; outcome unknown", maybe_applied=True
        )
    if reason == FAIL_REASON.DISCARDED:
        return Unavailable(f"group {group}: command discarded by a new leader")
    if reason == FAIL_REASON.QUEUE_FULL:
        return Unavailable(f"group {group}: command queue full")
    return Unavailable(f"group {group}: no leader (reason {reason})")


class _Batch:
    """Commands that go to Raft as one entry (``_ReplicatedState.execute_batch``), and who waits for it."""

    __slots__ = ("items", "size", "done", "results", "error", "launched_at")

    def __init__(self) -> None:
        self.items: list[tuple[tuple[int, int, int] | None, Any]] = []
        self.size = 0  # the items' pickled bytes
        self.done = trio.Event()
        self.results: list[tuple[str, Any]] = []
        self.error: ClusterError | None = None
        self.launched_at = 0.0

    def settle(self, results: list[tuple[str, Any]] | None, error: ClusterError | None) -> None:
        self.results = results or []
        self.error = error
        self.done.set()


_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class _Replica(DurableSyncObj, LimitedTransportSyncObj):
    """A durable replica (``consensus.durability``) on a Raft port with limits (``consensus.raft_transport``)."""


class ReplicaGroup:
    def __init__(self, spec: GroupSpec, machine: StateMachine, token: trio.lowlevel.TrioToken,
                 ticker: Ticker | None = None) -> None:
        """``ticker``: the node's one tick thread (``open_replica_groups``, ``consensus.ticker``); without
        one, the replica runs on PySyncObj's own tick thread."""
        self.spec = spec
        self._ticking: Ticker | OwnTickThread = ticker if ticker is not None else OwnTickThread(spec.raft.poller)
        self._token = token
        self._addr_to_id = {addr: node for node, addr in spec.members.items()}
        self._state = _ReplicatedState(machine, spec.raft.max_sessions, spec.max_results_per_session)
        raft = spec.raft
        self_addr = spec.members[spec.self_id]
        conf = LimitedTransportConf(
            transport_limits=spec.transport,
            bindAddress=self_addr,  # PySyncObj would listen on 0.0.0.0 (transport.py _createServer)
            journalFile=str(spec.journal_path),
            fullDumpFile=str(spec.dump_path),
            password=spec.password,
            useFork=True,
            **raft.syncobj_options(),
            **self._ticking.conf_options(),
        )
        others = [addr for node, addr in spec.members.items() if node != spec.self_id]
        install_snapshot_sync(spec.durability)
        dropped = align_journal_with_snapshot(str(spec.journal_path), str(spec.dump_path), spec.durability)
        if dropped:
            log.warning("%s: journal predated its snapshot (a crash during compaction); "
                        "dropped %d entries already in the snapshot", spec.name, dropped)
        self._syncobj = self._ticking.start(lambda: _Replica(self_addr, others, conf, [self._state], spec.durability))
        self._queue: deque[_Batch] = deque([_Batch()])  # the tail forms while the one in flight replicates
        self._in_flight: _Batch | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def machine(self) -> StateMachine:
        """The local replica's state; read it only after ``read_barrier`` for linearizability."""
        return self._state.machine

    def term(self) -> int:
        """This replica's current Raft term (durable: it never goes back, even across restarts)."""
        return int(self._syncobj.raftCurrentTerm)

    def is_leader(self) -> bool:
        """Local, possibly stale view; safe for routing, not for reads."""
        return bool(self._syncobj._isLeader())

    def leader_id(self) -> str | None:
        leader = self._syncobj._getLeader()
        if leader is None:
            return None
        return self._addr_to_id.get(leader.id if hasattr(leader, "id") else str(leader))

    def _deliver_to_trio(self, deliver: Any) -> Any:
        """A PySyncObj callback that hands ``(result, reason)`` to ``deliver`` on the trio thread."""
        token = self._token

        def on_result(result: Any, reason: int) -> None:
            try:
                token.run_sync_soon(deliver, result, reason)
            except trio.RunFinishedError:
                pass

        return on_result

    async def propose(self, command: Any, session: SessionRef | None = None) -> Any:
        wire_session = (session.session_id, session.seq, session.low_water) if session else None
        item = (wire_session, command)
        if self.spec.raft.group_commit:
            batch = self._batch_for(len(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)))
            index = len(batch.items)
            batch.items.append(item)
            await self._settled(batch)
        else:
            batch, index = _Batch(), 0
            batch.items.append(item)
            await self._alone(batch)
        kind, value = batch.results[index]
        if kind == "err":
            raise error_from_wire(value)
        return value

    async def open_session(self) -> int:
        """A new exactly-once session in this group (``consensus.sessions``); may be lost, then retried."""
        done = trio.Event()
        box: list[tuple[Any, int]] = []

        def deliver(result: Any, reason: int) -> None:
            box.append((result, reason))
            done.set()

        self._state.open_session(callback=self._deliver_to_trio(deliver))
        await done.wait()
        result, reason = box[0]
        if reason != FAIL_REASON.SUCCESS:
            raise _fail_reason_error(reason, self.name)
        return int(result)

    async def read_barrier(self) -> None:
        """Wait for the next batch to be applied: it was proposed after this call began."""
        if self.spec.raft.group_commit:
            await self._settled(self._queue[-1])
        else:
            await self._alone(_Batch())

    def _batch_for(self, size: int) -> _Batch:
        """The batch still forming at the queue's tail, or a new one there if this command would overfill it."""
        batch = self._queue[-1]
        if batch.items and (len(batch.items) >= self.spec.raft.max_batch_commands
                            or batch.size + size > self.spec.max_batch_bytes):
            batch = _Batch()
            self._queue.append(batch)
        batch.size += size
        return batch

    async def _settled(self, batch: _Batch) -> None:
        """Launch the queue's head if nothing is in flight, then wait for ``batch``.

        PySyncObj may never call back (a forwarded command whose leader vanished without a leader change
        this replica saw, an entry overtaken by a snapshot): a batch in flight longer than
        ``raft.proposal_timeout_s`` is given up as maybe applied, so the queue behind it moves on.
        """
        if self._in_flight is None:
            self._launch_next()
        timeout = self.spec.raft.proposal_timeout_s
        while not batch.done.is_set():
            with trio.move_on_after(timeout):
                await batch.done.wait()
            flying = self._in_flight
            if flying is not None and trio.current_time() - flying.launched_at >= timeout:
                self._finish(flying, None, self._unanswered())
        if batch.error is not None:
            raise batch.error

    async def _alone(self, batch: _Batch) -> None:
        """Without group commit (``raft.group_commit = false``, to measure what it buys): ``batch`` is
        proposed at once as its own entry, however many are in flight."""
        self._submit(batch, batch.settle)
        with trio.move_on_after(self.spec.raft.proposal_timeout_s):
            await batch.done.wait()
        if not batch.done.is_set():
            raise self._unanswered()
        if batch.error is not None:
            raise batch.error

    def _unanswered(self) -> Unavailable:
        return Unavailable(f"group {self.name}: no answer from Raft within raft.proposal_timeout_s = "
                           f"{self.spec.raft.proposal_timeout_s} s; outcome unknown", maybe_applied=True)

    def _submit(self, batch: _Batch, answered: Callable[[Any, ClusterError | None], None]) -> None:
        """Propose ``batch`` as one entry; ``answered(results, error)`` on the trio thread when Raft answers."""

        def deliver(results: Any, reason: int) -> None:
            answered(results, None if reason == FAIL_REASON.SUCCESS else _fail_reason_error(reason, self.name))

        self._state.execute_batch(batch.items, callback=self._deliver_to_trio(deliver))

    def _launch_next(self) -> None:
        """Propose the queue's head as one entry; the next one forms while it is in flight."""
        batch = self._queue.popleft()
        if not self._queue:
            self._queue.append(_Batch())
        self._in_flight = batch
        batch.launched_at = trio.current_time()

        def answered(results: Any, error: ClusterError | None) -> None:
            if batch is self._in_flight:  # not given up meanwhile
                self._finish(batch, results, error)

        self._submit(batch, answered)

    def _finish(self, batch: _Batch, results: list[tuple[str, Any]] | None, error: ClusterError | None) -> None:
        batch.settle(results, error)
        self._in_flight = None
        head = self._queue[0]
        if head.items or head.done.statistics().tasks_waiting:
            self._launch_next()

    def status(self) -> dict[str, Any]:
        so = self._syncobj
        return {
            "group": self.name,
            "node": self.spec.self_id,
            "role": _ROLES.get(getattr(so, "_SyncObj__raftState", -1), "unknown"),
            "leader": self.leader_id(),
            "term": so.raftCurrentTerm,
            "commit_index": so.raftCommitIndex,
            "applied_index": so.raftLastApplied,
            "has_quorum": bool(so.hasQuorum),
            "log_entries": so._getRaftLogSize(),
            "sessions": len(self._state.sessions),
            "storage": self._syncobj.storage_problem(),  # why this replica cannot write its journal now; None if it can
        }

    def force_log_compaction(self) -> None:
        self._syncobj.forceLogCompaction()

    def transfer_leadership(self, node_id: str) -> None:
        """Ask this (leading) replica to hand leadership to ``node_id``; best effort, check ``leader_id``.

        For tests and demonstrations that need a group led from a given node. PySyncObj refuses when
        the target is not fully caught up; the caller polls and asks again.
        """
        if node_id not in self.spec.members or node_id == self.spec.self_id:
            raise InvalidRequest(f"{self.name}: {node_id!r} is not another member of the group")
        self._syncobj.transferLeadership(self.spec.members[node_id])

    def close(self) -> None:
        """Destroy the replica (its sockets and journal closed) on its tick thread, or join PySyncObj's."""
        self._ticking.stop(self._syncobj)


@contextmanager
def open_replica_groups(
    specs: list[tuple[GroupSpec, StateMachine]], token: trio.lowlevel.TrioToken
) -> Iterator[dict[str, ReplicaGroup]]:
    """Start one replica per spec; stop them all (joining their threads) on exit.

    Replicas whose ``raft.one_tick_thread`` is set (the node's ``[raft]``, the same in every spec) share
    one tick thread and its poller (``consensus.ticker``), opened first and joined last.
    """
    shared = [spec.raft for spec, _ in specs if spec.raft.one_tick_thread]
    with ExitStack() as stack:
        ticker = stack.enter_context(open_ticker(shared[0].poller)) if shared else None
        groups: dict[str, ReplicaGroup] = {}
        try:
            for spec, machine in specs:
                spec.journal_path.parent.mkdir(parents=True, exist_ok=True)
                groups[spec.name] = ReplicaGroup(spec, machine, token, ticker if spec.raft.one_tick_thread else None)
            yield groups
        finally:
            for group in groups.values():
                group.close()
