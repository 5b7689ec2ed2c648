"""One replica of one Raft group, on PySyncObj, awaited from trio.

PySyncObj is not sans-IO: it runs its own tick thread, owns its sockets and
journal, and calls back on that thread. This module is the only place that
touches it. What the rest of the node sees:

* ``await group.propose(command, session)``: the command is applied on every
  replica by ``StateMachine.apply`` and the result comes back. A proposal can
  be lost or its outcome can be unknown (leader change, timeout): the errors
  say so (``maybe_applied``) and a retry with the same ``SessionRef`` is
  applied at most once (``consensus.sessions``).
* ``await group.read_barrier()``: returns once this replica has applied every
  command committed before the call began, so a read of local state that
  follows is linearizable. Concurrent readers share one barrier entry.
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
from collections.abc import Iterator
from contextlib import contextmanager
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
    def execute(self, session: tuple[int, int, int] | None, command: Any) -> tuple[str, Any]:
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

    @replicated
    def barrier(self) -> None:
        return None


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
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: ClusterError | None = None


_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class _Replica(DurableSyncObj, LimitedTransportSyncObj):
    """A durable replica (``consensus.durability``) on a Raft port with limits (``consensus.raft_transport``)."""


class ReplicaGroup:
    def __init__(self, spec: GroupSpec, machine: StateMachine, token: trio.lowlevel.TrioToken) -> None:
        self.spec = spec
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
        )
        others = [addr for node, addr in spec.members.items() if node != spec.self_id]
        install_snapshot_sync(spec.durability)
        dropped = align_journal_with_snapshot(str(spec.journal_path), str(spec.dump_path), spec.durability)
        if dropped:
            log.warning("%s: journal predated its snapshot (a crash during compaction); "
                        "dropped %d entries already in the snapshot", spec.name, dropped)
        self._syncobj = _Replica(self_addr, others, conf, [self._state], spec.durability)
        self._next_batch = _Batch()
        self._barrier_in_flight = False

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
        kind, value = await self._replicate(self._state.execute, wire_session, command)
        if kind == "err":
            raise error_from_wire(value)
        return value

    async def open_session(self) -> int:
        """A new exactly-once session in this group (``consensus.sessions``); may be lost, then retried."""
        return int(await self._replicate(self._state.open_session))

    async def _replicate(self, method: Any, *args: Any) -> Any:
        """Run a replicated method of the state on every replica; its result, or the fail reason as an error."""
        done = trio.Event()
        box: list[tuple[Any, int]] = []

        def deliver(result: Any, reason: int) -> None:
            box.append((result, reason))
            done.set()

        method(*args, callback=self._deliver_to_trio(deliver))
        await done.wait()
        result, reason = box[0]
        if reason != FAIL_REASON.SUCCESS:
            raise _fail_reason_error(reason, self.name)
        return result

    async def read_barrier(self) -> None:
        batch = self._next_batch
        if not self._barrier_in_flight:
            self._launch_barrier()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _launch_barrier(self) -> None:
        batch = self._next_batch
        self._next_batch = _Batch()
        self._barrier_in_flight = True

        def deliver(_result: Any, reason: int) -> None:
            if reason != FAIL_REASON.SUCCESS:
                batch.error = _fail_reason_error(reason, self.name)
            batch.done.set()
            self._barrier_in_flight = False
            if self._next_batch.done.statistics().tasks_waiting:
                self._launch_barrier()

        self._state.barrier(callback=self._deliver_to_trio(deliver))

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
        self._syncobj.destroy_synchronous()


@contextmanager
def open_replica_groups(
    specs: list[tuple[GroupSpec, StateMachine]], token: trio.lowlevel.TrioToken
) -> Iterator[dict[str, ReplicaGroup]]:
    """Start one replica per spec; stop them all (joining their threads) on exit."""
    groups: dict[str, ReplicaGroup] = {}
    try:
        for spec, machine in specs:
            spec.journal_path.parent.mkdir(parents=True, exist_ok=True)
            groups[spec.name] = ReplicaGroup(spec, machine, token)
        yield groups
    finally:
        for group in groups.values():
            group.close()
