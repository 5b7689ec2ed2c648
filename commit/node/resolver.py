"""The participant side of recovery: prepared transactions that wait too long ask for their outcome.

A shard that voted yes may not decide on its own (that is what makes 2PC
atomic, and what makes it block). So the leader of each shard this node
hosts looks, every ``transactions.resolve_interval_s``, at the transactions
prepared there; one older than ``in_doubt_timeout_s`` (as seen by this
leader) asks its authority (``Peers.status``). A decided answer is applied
as the shard's ``commit`` or ``abort`` command; "pending" or no answer
leaves it prepared, locks held, to ask again next round.

A read that meets a prepared writer's lock uses ``resolve`` too, after a
short wait, so a reader never sees half of a transaction.

Questions run concurrently, each in its own task, at most
``transactions.resolve_fanout`` at a time per authority (the protocol that
decides the txid: the 2pc coordinator node, the coordinator group, ...).
A question can take up to its ask timeout when its authority is down, so
one unreachable authority must never queue the others behind it (issue 9.3:
a Paxos Commit transfer waited 75 s behind five 2pc transactions whose
coordinator was dead).

3PC transactions are left to ``commit.termination``: a 3PC participant does
not wait for its coordinator's answer, it terminates without it.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from commit.node.peers import Peers
from commit.node.state_machines.shard import ShardState
from commit.outcomes import ABORTED, COMMITTED
from commit.status import status
from commit.txids import protocol_of
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)


class InDoubtResolver:
    def __init__(self, shards: dict[str, ReplicaGroup], peers: Peers, *, timeout_s: float, interval_s: float,
                 ask_timeout_s: float, fanout: int) -> None:
        self.shards = shards
        self.peers = peers
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.ask_timeout_s = ask_timeout_s
        self.fanout = fanout
        self.first_seen: dict[tuple[str, str], float] = {}
        self.resolved: dict[str, int] = {COMMITTED: 0, ABORTED: 0}
        self._asking: set[tuple[str, str]] = set()
        self._limits: dict[str, trio.CapacityLimiter] = {}

    def _prepared(self, group: ReplicaGroup) -> list[str]:
        machine = group.machine
        assert isinstance(machine, ShardState)
        return list(machine.prepared)

    async def resolve(self, group: ReplicaGroup, txid: str) -> str:
        """Ask txid's authority for the outcome; apply it here if decided. Returns what was learned."""
        machine = group.machine
        assert isinstance(machine, ShardState)
        prepared = machine.prepared.get(txid)
        participants = prepared.participants if prepared is not None else ()
        with trio.move_on_after(self.ask_timeout_s):
            try:
                outcome = await status(self.peers.db, txid, participants)
            except ClusterError as exc:
                log.info("%s in doubt on %s: authority unreachable: %s", txid, group.name, exc)
                return "unreachable"
            if outcome in (COMMITTED, ABORTED):
                await group.propose(("commit" if outcome == COMMITTED else "abort", txid))
                self.resolved[outcome] += 1
                log.info("%s in doubt on %s: resolved %s", txid, group.name, outcome)
            return outcome
        log.info("%s in doubt on %s: no answer from its authority within %ss", txid, group.name, self.ask_timeout_s)
        return "unreachable"

    async def run(self) -> None:
        async with trio.open_nursery() as questions:
            while True:
                await trio.sleep(self.interval_s)
                self._ask_about_old_ones(questions)

    def _ask_about_old_ones(self, questions: trio.Nursery) -> None:
        """Start a question for every transaction in doubt for ``timeout_s`` that is not being asked about."""
        now = trio.current_time()
        seen: set[tuple[str, str]] = set()
        for name, group in self.shards.items():
            if not group.is_leader():
                continue
            for txid in self._prepared(group):
                if protocol_of(txid).participants_terminate:
                    continue  # commit.node.silence_watch finishes it
                key = (name, txid)
                seen.add(key)
                first = self.first_seen.setdefault(key, now)
                if now - first >= self.timeout_s and key not in self._asking:
                    self._asking.add(key)
                    questions.start_soon(self._ask, group, txid, key)
        for key in [k for k in self.first_seen if k not in seen]:
            del self.first_seen[key]

    async def _ask(self, group: ReplicaGroup, txid: str, key: tuple[str, str]) -> None:
        limit = self._limits.setdefault(protocol_of(txid).name, trio.CapacityLimiter(self.fanout))
        try:
            async with limit:
                await self.resolve(group, txid)
        except ClusterError as exc:
            log.info("%s on %s: could not apply the outcome: %s", txid, group.name, exc)
        finally:
            self._asking.discard(key)

    def in_doubt(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "txid": txid,
                "protocol": protocol_of(txid).name,
                "participants": shard,
                "state": "participant:prepared",
                "age_s": round(now - first, 3),
            }
            for (shard, txid), first in self.first_seen.items()
        ]
