"""When a node forgets: every ``limits.forget_interval_s``, each table it keeps is moved to one horizon.

The horizon is this node's clock minus ``limits.forget_after_s``, in milliseconds, the unit of a txid's
creation time (``commit.txids.created_ms``). Each table forgets only what is both finished and made before
it (docs/PROTOCOLS.md, "Forgetting"):

* the groups this node leads get one ``("forget", horizon)`` entry each, when their state holds anything
  below it (``ShardState``, ``CoordinatorState``): every replica forgets the same entries, and Raft
  snapshots carry only what is left (Ongaro's thesis, chapter 5);
* the ``2pc`` decision log drops decisions whose every participant acknowledged them, and is compacted
  (``DecisionLog.forget``);
* each transaction manager drops its cached outcomes and fingerprints;
* a Paxos Commit leader tells every acceptor which transactions every participant acknowledged
  (``paxos.forget``, in batches of ``limits.max_forget_batch``, each sent once), and a Faster Paxos Commit
  participant which outcomes it learned and applied (``paxos.learned``: that leader hears no
  acknowledgement); this node's acceptor forgets the finished instances below the horizon, and is
  compacted (``Acceptor.forget``).

The retention is what keeps a late message harmless without a round of agreement: a txid made before
the horizon that a table does not hold is answered "forgotten", so a client whose clock is behind the
nodes' by more than ``forget_after_s``, or a commit delayed that long, is refused rather than run. Each
part is tried on its own: a group without a quorum or a log on a full disk is tried again next time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from commit.config import Limits
from commit.node.decision_log import DecisionLog
from commit.node.paxos_roles import PaxosNode
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.shard import ShardState
from commit.node.transaction_manager import TransactionManager
from consensus.acceptor import Acceptor
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)


def horizon_now(forget_after_s: float) -> int:
    """The horizon at this moment: txids made before it are forgotten once finished."""
    return int((time.time() - forget_after_s) * 1000)


class Forgetter:
    def __init__(self, limits: Limits, groups: Mapping[str, ReplicaGroup], managers: Mapping[str, TransactionManager],
                 decision_log: DecisionLog | None, acceptor: Acceptor | None, paxos: PaxosNode) -> None:
        self.limits = limits
        self.groups = groups
        self.managers = managers
        self.decision_log = decision_log
        self.acceptor = acceptor
        self.paxos = paxos

    async def run(self) -> None:
        while True:
            await trio.sleep(self.limits.forget_interval_s)
            await self.forget(horizon_now(self.limits.forget_after_s))

    async def forget(self, horizon: int) -> None:
        """Move every table of this node to ``horizon`` (each failure logged, and retried next time)."""
        for name, group in self.groups.items():
            machine = group.machine
            assert isinstance(machine, (ShardState, CoordinatorState))
            if group.is_leader() and machine.decided.due(horizon):
                await self._tried(name, group.propose(("forget", horizon)))
        for manager in self.managers.values():
            manager.forget(horizon)
            await self._tell_acceptors(manager.acknowledged, "paxos.forget", "finished", self.paxos.on_forget)
        await self._tell_acceptors(self.paxos.learned, "paxos.learned", "learned", self.paxos.on_learned)
        if self.decision_log is not None:
            await self._tried("2pc.log", trio.to_thread.run_sync(self.decision_log.forget, horizon))
        if self.acceptor is not None:
            await self._tried("acceptor.log", self.acceptor.forget(horizon))

    async def _tell_acceptors(self, pending: list[Any], method: str, key: str,
                              here: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Tell every acceptor a batch of ``pending`` (transactions, or participants of them, whose outcome
        every participant, or that participant, has), ``here`` for this node's own acceptor.

        Each batch is sent once: an acceptor that misses it keeps those instances (safe, and only memory),
        rather than this node keeping an ever longer list for an acceptor that may be gone.
        """
        batch = pending[:self.limits.max_forget_batch]
        del pending[:len(batch)]
        if not batch:
            return
        params = {"leader": self.paxos.node_id, key: [[*entry[:-1], list(entry[-1])] for entry in batch]}
        for acceptor in self.paxos.acceptor_ids:
            if acceptor == self.paxos.node_id and self.paxos.acceptor is not None:
                await self._tried(f"{method} here", here(batch))
                continue
            with trio.move_on_after(self.limits.forget_interval_s):
                await self._tried(f"{method} to {acceptor}", self.paxos.peers.call_node(acceptor, method, params))

    @staticmethod
    async def _tried(what: str, work: Awaitable[Any]) -> None:
        try:
            await work
        except ClusterError as exc:
            log.info("%s: not forgotten this time: %s", what, exc)
