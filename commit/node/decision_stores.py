"""Where a 2PC coordinator keeps its decisions, which is the whole difference between ``2pc`` and ``raft-2pc``.

* ``LocalLogStore`` (``2pc``): the decision is forced to this node's ``DecisionLog``. Only the configured
  coordinator node runs it, and while that node is down its participants block.
* ``RaftStore`` (``raft-2pc``): ``begin`` and the compare-and-set ``decide`` are entries of the
  coordinator group; the group's leader runs the coordinator, and a new leader resumes every transaction
  it finds in flight (``commit.node.transaction_manager.recover_in_flight``).

Paxos Commit needs no store: its acceptors hold the outcome. 3PC keeps none: its participants' states are
the whole record.
"""

from __future__ import annotations

from typing import Protocol

import trio

from commit.node.decision_log import DecisionLog
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.outcomes import ABORTED, PENDING
from consensus.group import ReplicaGroup


class DecisionStore(Protocol):
    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None: ...

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str: ...

    async def finish(self, txid: str) -> None: ...

    async def status(self, txid: str, active: bool) -> str: ...

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None: ...


class LocalLogStore:
    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log
        self.presumed_aborted: set[str] = set()

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None:
        return None

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        if txid in self.presumed_aborted:
            return ABORTED
        return await trio.to_thread.run_sync(self.log.decide, txid, outcome, participants)

    async def finish(self, txid: str) -> None:
        self.log.finish(txid)

    async def status(self, txid: str, active: bool) -> str:
        logged = self.log.decisions.get(txid)
        if logged is not None:
            return logged.outcome
        if active:
            return PENDING
        self.presumed_aborted.add(txid)  # never decide commit for it from now on
        return ABORTED

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        return None  # nothing is recorded before the decision: an undecided txid is presumed aborted


class RaftStore:
    def __init__(self, group: ReplicaGroup) -> None:
        self.group = group

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None:
        result = await self.group.propose(("begin", txid, participants))
        return None if result == PENDING else result

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        return await self.group.propose(("decide", txid, outcome))

    async def finish(self, txid: str) -> None:
        await self.group.propose(("finish", txid))

    async def status(self, txid: str, active: bool) -> str:
        return await self.group.propose(("fence", txid))

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        """The participants of txid's begin record, if it is still in flight here (after a status question)."""
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        record = machine.txns.get(txid)
        return record.participants if record is not None and record.outcome is None else None
