"""What every handler module shares: the node's parts, and the questions every request asks first.

Does this node lead the group the request is for (else ``not_leader`` with the
leader's id, so the client goes there directly)? Does it coordinate the txid's
protocol? And every wait on Raft is bounded by ``timeouts.request_s``, with the
``Timeout`` saying whether the command may have been applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from commit.config import COORDINATOR_GROUP, ClusterConfig, shard_group
from commit.node.faults import LinkFaults
from commit.node.handlers.params import ParamChecks
from commit.node.hooks import FaultHooks
from commit.node.paxos_roles import PaxosNode
from commit.node.resolver import InDoubtResolver
from commit.node.sagas import SagaOrchestrator
from commit.node.silence_watch import SilenceWatch
from commit.node.state_machines.shard import ShardState
from commit.node.tracing import Tracer
from commit.node.transaction_manager import TransactionManager
from commit.outcomes import ABORTED, COMMITTED
from commit.protocols.registry import Coordinator
from commit.routing import shard_of
from commit.txids import protocol_of
from consensus.errors import InvalidRequest, NotLeader, Timeout, Unauthorized
from consensus.group import ReplicaGroup
from consensus.rpc import current_caller
from consensus.sessions import SessionRef

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class NodeParts:
    """The parts of a running node that requests reach (built by ``commit.node.serve``)."""

    config: ClusterConfig
    node_id: str
    groups: dict[str, ReplicaGroup]
    managers: dict[str, TransactionManager]
    resolver: InDoubtResolver
    silence: SilenceWatch
    hooks: FaultHooks
    faults: LinkFaults
    paxos: PaxosNode
    tracer: Tracer
    sagas: SagaOrchestrator | None  # on the nodes that host the coordinator group
    one_phase: dict[str, int] = field(default_factory=lambda: {COMMITTED: 0, ABORTED: 0})


class Handlers:
    """One concern's RPC methods (``methods``); ``routes`` names them for the RPC server."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.config = node.config
        self.check = ParamChecks(node.config)

    def methods(self) -> dict[str, Handler]:
        raise NotImplementedError

    def routes(self) -> dict[str, Handler]:
        """``methods``, each checking the shape of the whole request before it reads any parameter."""
        return {name: self._shaped(handler) for name, handler in self.methods().items()}

    def _shaped(self, handler: Handler) -> Handler:
        async def shaped(params: dict[str, Any]) -> Any:
            self.check.shape(params)
            return await handler(params)

        return shaped

    def leading(self, name: str) -> ReplicaGroup:
        group = self.node.groups.get(name)
        if group is None:
            raise NotLeader(f"node {self.node.node_id} hosts no replica of {name}", leader=None)
        if not group.is_leader():
            raise NotLeader(f"node {self.node.node_id} does not lead {name}", leader=group.leader_id())
        return group

    def shard_for(self, key: bytes) -> ReplicaGroup:
        return self.leading(shard_group(shard_of(key, self.config.shard_count)))

    def participant(self, params: dict[str, Any], method: str) -> tuple[str, ReplicaGroup]:
        """The txid and the led shard a participant-side request ``method`` is for."""
        txid = self.check.txid(params, method)
        return txid, self.leading(self.check.shard_name(params.get("shard")))

    def manager(self, txid: str) -> TransactionManager:
        """The manager of txid's protocol, if this node is where that protocol's coordinator runs now."""
        spec = protocol_of(txid)
        coordinator = self.config.twopc_coordinator
        if spec.coordinator is Coordinator.NODE and self.node.node_id != coordinator:
            raise NotLeader(f"{spec.name} transactions are coordinated by {coordinator}", leader=coordinator)
        if spec.coordinator is Coordinator.GROUP:
            self.leading(COORDINATOR_GROUP)
        manager = self.node.managers.get(spec.name)
        if manager is None:
            raise InvalidRequest(f"{txid} is not a transaction this node coordinates")
        return manager

    def sent_by(self, claimed: Any, role: str) -> str:
        """The node a message says it comes from (a leader, an acceptor): the node the connection proved.

        Node-to-node messages come only from nodes (``NODE_METHODS``), each bound to the node id whose key
        it proved (``consensus.auth``), so no node speaks for another: an acceptor's vote counts once.
        """
        node_id = self.check.node_id(claimed, role)
        caller = current_caller().node_id
        if node_id != caller:
            raise Unauthorized(f"{role} {node_id!r} is not the node that sent this ({caller})")
        return node_id

    def sent_by_shard_replica(self, shard: str, role: str) -> str:
        """The calling node, which must replicate ``shard`` (a participant's vote comes from its shard).

        Every shard has the same replicas (``shards.members``), so nothing is looked up per message.
        """
        caller = current_caller().node_id
        members = self.config.shard_members
        if caller not in members:
            raise Unauthorized(f"{role} of {shard} must come from one of its replicas {members}, not {caller}")
        return caller

    async def within_request_timeout(self, what: str, work: Callable[[], Awaitable[Any]], maybe_applied: bool) -> Any:
        request_s = self.config.timeouts.request_s
        with trio.move_on_after(request_s):
            return await work()
        raise Timeout(f"{what}: no result within {request_s}s", maybe_applied=maybe_applied)

    async def propose(self, group: ReplicaGroup, command: Any, session: SessionRef | None = None) -> Any:
        return await self.within_request_timeout(group.name, lambda: group.propose(command, session), True)


def shard_state(group: ReplicaGroup) -> ShardState:
    machine = group.machine
    assert isinstance(machine, ShardState)
    return machine
