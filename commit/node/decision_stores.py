"""Where a 2PC coordinator keeps its decisions, which is the whole difference between ``2pc`` and ``raft-2pc``.

* ``LocalLogStore`` (``2pc``): the decision is forced to this node's ``DecisionLog``. Only the configured
  coordinator node runs it, and while that node is down its participants block.
* ``RaftStore`` (``raft-2pc``): ``begin`` and the compare-and-set ``decide`` are entries of the
  coordinator group; the group's leader runs the coordinator, and a new leader resumes every transaction
  it finds in flight (``commit.node.transaction_manager.recover_in_flight``).

Paxos Commit needs no store: its acceptors hold the outcome. 3PC keeps none: its participants' states are
the whole record.

Presumed abort (Mohan, Lindsay & Obermarck, "Transaction Management in the R* Distributed Database
Management System", ACM TODS 11(4), 1986): a coordinator with no record of a transaction answers
"aborted", and must then never commit it. ``RaftStore`` fences such a txid in the coordinator group (a
bounded, replicated table). ``LocalLogStore`` keeps no fence of its own: its ``status`` says None for a
txid it has no record of, and the transaction manager asks the participants, who fence it themselves, or,
when every one of them prepared it, makes the abort durable with ``decide``. Either way the fence outlives
a restart of the coordinator, and a question about a txid nobody ran costs the log nothing.

Forgetting (docs/PROTOCOLS.md, "Forgetting"): both stores drop a finished transaction once its txid is
older than their horizon, and ``forgotten`` says when "no record" means "maybe decided, and forgotten"
rather than "never decided": such a txid is answered ``forgotten``, never presumed aborted, and never run
again.
"""

from __future__ import annotations

from typing import Protocol

import trio

from commit.node.decision_log import DecisionLog
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PENDING
from consensus.errors import StorageUnavailable
from consensus.group import ReplicaGroup


class DecisionStore(Protocol):
    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None: ...

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str: ...

    async def finish(self, txid: str) -> None: ...

    async def status(self, txid: str, active: bool) -> str | None:
        """The outcome, ``pending``, ``forgotten``, or None: no record here and no core drives it (ask the
        participants; presumed abort may then decide it)."""

    def outcome_of(self, txid: str) -> str | None:
        """The decided outcome in this node's copy of the store, read without writing anything."""

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None: ...

    def forgotten(self, txid: str) -> bool:
        """Whether this node's copy of the store may have decided txid and forgotten it (no record, too old)."""


class LocalLogStore:
    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log
        self._deciding: dict[str, trio.Event] = {}

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None:
        return None

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        """Force the decision to the log; the first one logged wins.

        A core and a status question may decide one txid at once, and the log's check for an earlier
        decision and its append run in a thread: the second waits for the first instead of racing it.
        """
        while (deciding := self._deciding.get(txid)) is not None:
            await deciding.wait()
        logged = self.outcome_of(txid)
        if logged is not None:
            return logged
        done = self._deciding[txid] = trio.Event()
        try:
            return await trio.to_thread.run_sync(self.log.decide, txid, outcome, participants)
        finally:
            del self._deciding[txid]
            done.set()

    async def finish(self, txid: str) -> None:
        self.log.finish(txid)

    async def status(self, txid: str, active: bool) -> str | None:
        logged = self.outcome_of(txid)
        if logged is not None:
            return logged
        if active:
            return PENDING
        if self.log.forgotten(txid):
            return FORGOTTEN
        if not self.log.intact():  # a failed decision stayed in the file: the restart may read it as made
            raise StorageUnavailable(f"{txid}: {self.log.path}: {self.log.problem()}; "
                                     "no transaction is presumed aborted until then")
        return None

    def outcome_of(self, txid: str) -> str | None:
        logged = self.log.decisions.get(txid)
        return logged.outcome if logged is not None else None

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        return None  # nothing is recorded before the decision: an undecided txid is presumed aborted

    def forgotten(self, txid: str) -> bool:
        return self.log.forgotten(txid)


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

    async def status(self, txid: str, active: bool) -> str | None:
        return await self.group.propose(("fence", txid))

    def outcome_of(self, txid: str) -> str | None:
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        outcome = machine.outcome_of(txid)
        return outcome if outcome in (COMMITTED, ABORTED) else None

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        """The participants of txid's begin record, if it is still in flight here (after a status question)."""
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        record = machine.txns.get(txid)
        return record.participants if record is not None and record.outcome is None else None

    def forgotten(self, txid: str) -> bool:
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        return machine.outcome_of(txid) == FORGOTTEN
