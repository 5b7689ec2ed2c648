"""What operators and tools ask a node: its status, a transaction's trace, compaction, a new epoch.

    node.status   {}          -> {node, groups, transactions, in_doubt, counters, faults?}
    node.trace    {txid}      -> {events}
    node.compact  {}          -> {groups}
    coord.epoch   {session}   -> {epoch}   leader of the coordinator group
"""

from __future__ import annotations

from typing import Any

import trio

from commit.config import COORDINATOR_GROUP
from commit.node.handlers.base import Handler, Handlers
from commit.node.handlers.params import session_of
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.shard import ShardState
from commit.node.storage import storage_problems
from commit.protocols.registry import ONE_PHASE


class Operator(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {"node.status": self.status, "node.trace": self.trace, "node.compact": self.compact,
                "coord.epoch": self.epoch}

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        rows = []
        for group in node.groups.values():
            row = group.status()
            machine = group.machine
            if isinstance(machine, ShardState):
                row["keys"] = machine.live_keys()
                row["prepared"] = len(machine.prepared)
                row["locks"] = len(machine.locks)
                row["decided"] = len(machine.decided)  # until forgotten (docs/PROTOCOLS.md, "Forgetting")
            elif isinstance(machine, CoordinatorState):
                row["epoch"] = machine.epoch
                row["in_flight"] = len(machine.txns)
                row["decided"] = len(machine.decided)
            rows.append(row)
        now = trio.current_time()
        transactions = {name: dict(m.outcomes) for name, m in node.managers.items()}
        transactions[ONE_PHASE.name] = dict(node.one_phase)
        transactions["resolved_in_doubt"] = dict(node.resolver.resolved)
        in_doubt = [row for m in node.managers.values() for row in m.in_doubt(now)]
        in_doubt += node.resolver.in_doubt(now) + node.silence.in_doubt(now)
        counters = {"messages_sent": dict(node.tracer.messages), "forced_writes": dict(node.tracer.forced_writes),
                    "3pc_participant": node.silence.counts()}
        if node.sagas is not None:
            counters["sagas"] = node.sagas.records.counts()
            counters["saga_orchestrator"] = {**node.sagas.counters, "driving": len(node.sagas.runs)}
        status: dict[str, Any] = {"node": node.node_id, "groups": rows, "transactions": transactions,
                                  "in_doubt": in_doubt, "counters": counters}
        storage = storage_problems(node.managers.values(), node.paxos.acceptor)
        if storage:
            status["storage"] = storage
        if node.faults.active():
            status["faults"] = node.faults.describe()
        return status

    async def trace(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"events": self.node.tracer.of(self.check.txid(params, "node.trace"))}

    async def compact(self, params: dict[str, Any]) -> dict[str, Any]:
        for group in self.node.groups.values():
            group.force_log_compaction()
        return {"groups": sorted(self.node.groups)}

    async def epoch(self, params: dict[str, Any]) -> dict[str, Any]:
        session = session_of(params)
        return {"epoch": await self.propose(self.leading(COORDINATOR_GROUP), ("new_epoch",), session)}
