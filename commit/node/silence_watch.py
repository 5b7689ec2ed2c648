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

from commit.node.driver import calls_of, carry_out
from commit.node.transaction_manager import TransactionManager
from commit.outcomes import ABORTED
from commit.protocols import three_phase as three
from commit.node.state_machines.shard import ShardState
from commit.txids import protocol_of
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)


class SilenceWatch:
    """Runs the shards' ``SilenceTimer`` on this node's shard leaders, and carries out what it decides."""

    def __init__(self, shards: dict[str, ReplicaGroup], terminators: TransactionManager, *, wait_s: float,
                 stagger_s: float, interval_s: float) -> None:
        self.shards = shards
        self.terminators = terminators
        self.timer = three.SilenceTimer(wait_s, stagger_s)
        self.interval_s = interval_s
        self.unilateral_aborts = 0
        self.terminations = 0

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            held: set[tuple[str, str]] = set()
            for name, group in self.shards.items():
                if group.is_leader():
                    for txid in self._three_phase_prepared(group):
                        held.add((name, txid))
                        await self._look_at(group, txid)
            self.timer.forget_all_but(held)

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
            for (shard, txid), (since, phase, promised) in self.timer.last_change.items()
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
        effects = self.timer.observe(group.name, txid, prepared.phase, prepared.promised,
                                     prepared.participants or (group.name,), protocol_of(txid).quorum,
                                     trio.current_time())
        await carry_out(calls_of(effects), self, None)

    # -- executors (commit.node.driver.EXECUTORS names them) ---------------------------------------

    async def abort_alone(self, _: None, effect: three.AbortAlone) -> None:
        group = self.shards[effect.shard]
        try:
            state, _ = await group.propose(("3pc_timeout_abort", effect.txid))
        except ClusterError as exc:
            log.info("%s on %s: could not abort after the coordinator went quiet: %s", effect.txid, group.name, exc)
            return
        if state == ABORTED:
            self.unilateral_aborts += 1
            log.info("%s on %s: coordinator quiet while waiting: aborted on its own", effect.txid, group.name)

    async def terminate(self, _: None, effect: three.Terminate) -> None:
        if self.terminators.terminate(effect.txid, effect.participants, effect.round, effect.quorum):
            self.terminations += 1
            log.info("%s on %s: coordinator quiet: terminating at round %s", effect.txid, effect.shard,
                     list(effect.round))
