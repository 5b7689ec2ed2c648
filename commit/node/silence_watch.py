"""The participant side of Three-Phase Commit: what a shard does when its coordinator goes quiet.

3PC participants do not wait for their coordinator to come back (that is
the point of the third phase). The leader of each shard this node hosts
looks, every ``transactions.resolve_interval_s``, at the 3PC transactions
prepared there. One whose state (phase and promised round) has not changed
for ``three_phase_wait_s`` plus ``three_phase_stagger_s`` times the shard's
place among the participants acts by ``three_phase.on_silence``: a plain
``waiting`` participant aborts on its own; every other one starts Skeen's
termination protocol as the new coordinator at a round of its own
(``TransactionManager.terminate``). The stagger makes the lowest-numbered
live participant terminate first, which is how the participants elect one;
a terminator superseded by a higher round gives up, and the participant
tries again after the next quiet period.

This is where 3PC's assumption bites: "quiet" is a timeout, not a perfect
failure detector, so a partitioned coordinator looks crashed.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from commit.node.coordinators import TransactionManager
from commit.protocols import three_phase as three
from commit.node.state_machines.shard import ShardState
from commit.txids import protocol_of
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)


class SilenceWatch:
    def __init__(self, shards: dict[str, ReplicaGroup], terminators: TransactionManager, *, wait_s: float,
                 stagger_s: float, interval_s: float) -> None:
        self.shards = shards
        self.terminators = terminators
        self.wait_s = wait_s
        self.stagger_s = stagger_s
        self.interval_s = interval_s
        self.last_change: dict[tuple[str, str], tuple[float, str, three.Round]] = {}
        self.unilateral_aborts = 0
        self.terminations = 0

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            seen: set[tuple[str, str]] = set()
            for name, group in self.shards.items():
                if group.is_leader():
                    for txid in self._three_phase_prepared(group):
                        seen.add((name, txid))
                        await self._look_at(group, txid)
            for key in [k for k in self.last_change if k not in seen]:
                del self.last_change[key]

    def counts(self) -> dict[str, int]:
        return {"aborted_alone": self.unilateral_aborts, "terminations": self.terminations}

    def in_doubt(self, now: float) -> list[dict[str, Any]]:
        """3PC transactions prepared at the shards this node leads, with how long their state stood still."""
        return [
            {
                "txid": txid,
                "protocol": protocol_of(txid).name,
                "participants": shard,
                "state": f"participant:{phase}" + (f" round {list(promised)}" if promised != (0, 0) else ""),
                "age_s": round(now - since, 3),
            }
            for (shard, txid), (since, phase, promised) in self.last_change.items()
        ]

    def _three_phase_prepared(self, group: ReplicaGroup) -> list[str]:
        machine = group.machine
        assert isinstance(machine, ShardState)
        return [txid for txid in machine.prepared if protocol_of(txid).participants_terminate]

    async def _look_at(self, group: ReplicaGroup, txid: str) -> None:
        machine = group.machine
        assert isinstance(machine, ShardState)
        prepared = machine.prepared.get(txid)
        if prepared is None or txid in self.terminators.active:
            return
        now = trio.current_time()
        key = (group.name, txid)
        since, phase, promised = self.last_change.get(key, (now, "", three.COORDINATOR_ROUND))
        if (phase, promised) != (prepared.phase, prepared.promised):
            self.last_change[key] = (now, prepared.phase, prepared.promised)
            return
        participants = prepared.participants or (group.name,)
        index = participants.index(group.name) if group.name in participants else len(participants)
        if now - since < self.wait_s + index * self.stagger_s:
            return
        self.last_change[key] = (now, phase, promised)  # the next try waits a full quiet period again
        quorum = protocol_of(txid).quorum
        if three.on_silence(prepared.phase, prepared.promised, quorum) == "abort":
            try:
                state, _ = await group.propose(("3pc_timeout_abort", txid))
            except ClusterError as exc:
                log.info("%s on %s: could not abort after the coordinator went quiet: %s", txid, group.name, exc)
                return
            if state == three.ABORTED:
                self.unilateral_aborts += 1
                log.info("%s on %s: coordinator quiet while waiting: aborted on its own", txid, group.name)
            return
        round_ = three.next_round(prepared.promised, index)
        if self.terminators.terminate(txid, participants, round_, quorum):
            self.terminations += 1
            log.info("%s on %s: coordinator quiet while %s: terminating at round %s", txid, group.name,
                     prepared.phase, list(round_))
