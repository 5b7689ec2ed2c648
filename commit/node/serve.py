"""A node process's body: its replica groups, its transaction managers, its RPC server, in one trio run.

Tasks the node runs, all in one nursery (nothing in the background that
outlives ``serve_node``):

* the RPC server;
* the in-doubt resolver for the shards this node leads;
* the 3PC silence watch for the same shards (``commit.termination``);
* the coordinator-group watcher: when this node becomes the group's leader,
  it resumes every ``raft-2pc`` transaction the old leader left in flight;
* on the ``2pc`` coordinator node, the transactions its log says were decided
  but not yet acknowledged by every shard are resumed at start;
* the forgetter (``commit.node.forgetting``): every ``limits.forget_interval_s``
  the finished transactions older than ``limits.forget_after_s`` are forgotten
  from the groups this node leads, its ``2pc.log``, its managers and its acceptor;
* on the coordinator group's nodes, the saga orchestrator's watch: the leader
  drives every active saga (``commit.node.sagas``); services are called as a
  client (they accept the client secret, never a node's key).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from commit.client import connect
from commit.config import COORDINATOR_GROUP, ClusterConfig, ConfigError
from commit.node.decision_log import DecisionLog
from commit.node.decision_stores import LocalLogStore, RaftStore
from commit.node.faults import LinkFaults
from commit.node.forgetting import Forgetter
from commit.node.handlers import NodeParts, node_routes
from commit.node.hooks import FaultHooks
from commit.node.paxos_roles import PaxosNode
from commit.node.peers import Peers
from commit.node.resolver import InDoubtResolver
from commit.node.sagas import SagaOrchestrator
from commit.node.silence_watch import SilenceWatch
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.shard import ShardState
from commit.node.tracing import Tracer
from commit.node.transaction_manager import PaxosSetup, TransactionManager, recover_in_flight
from commit.outcomes import ABORTED, PREPARED
from commit.protocols.mutants import Mutant
from commit.protocols.registry import PROTOCOLS, Coordinator, DecisionStore, ProtocolSpec
from commit.saga.remote import open_service_connections
from commit.txids import created_ms
from consensus.acceptor import Acceptor
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup, StateMachine, open_replica_groups
from consensus.rpc import serve_rpc
from consensus.settings import Compaction

log = logging.getLogger(__name__)

LEADERSHIP_POLL_S = 0.1


def _instance_stamp(instance: Any) -> int:
    """A Paxos Commit instance ``(txid, shard)`` is forgotten in the order of its txid's creation."""
    return created_ms(instance[0])


def _machine_for(group_name: str, config: ClusterConfig) -> StateMachine:
    cap = config.limits.max_remembered_transactions  # every replica reads the same cluster.toml: deterministic caps
    if group_name == COORDINATOR_GROUP:
        return CoordinatorState(cap, config.sagas)
    return ShardState(cap, read_skips_lock=config.transactions.mutant == Mutant.READ_SKIPS_LOCK.value)


async def _watch_coordinator_leadership(manager: TransactionManager, group: ReplicaGroup) -> None:
    leading = False
    while True:
        now_leading = group.is_leader()
        if now_leading and not leading:
            try:
                with trio.fail_after(5):
                    resumed = await recover_in_flight(manager, group)
                log.info("leading %s: resumed %d in-flight raft-2pc transactions", group.name, resumed)
            except (ClusterError, trio.TooSlowError) as exc:
                log.warning("leading %s, but could not read its records yet: %r", group.name, exc)
                now_leading = False
        leading = now_leading
        await trio.sleep(LEADERSHIP_POLL_S)


async def serve_node(
    config: ClusterConfig,
    node_id: str,
    *,
    task_status: trio.TaskStatus[NodeParts] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run node ``node_id`` until cancelled; the replicas stop cleanly on the way out."""
    node = config.node(node_id)
    if config.secret is None or config.peer_secret is None:
        raise ConfigError(f"{config.path}: node {node_id} has no cluster secrets; it never serves "
                          "unauthenticated ports (start it with node.py, which makes them: commit.credentials)")
    config.node_dir(node_id).mkdir(parents=True, exist_ok=True)
    token = trio.lowlevel.current_trio_token()
    specs = [(spec, _machine_for(spec.name, config)) for spec in config.group_specs(node_id)]
    txn = config.transactions
    hooks = FaultHooks(txn.fault_hooks)
    faults = LinkFaults(node_id, txn.fault_hooks)
    tracer = Tracer(node_id, config.limits.max_traced_transactions)
    acceptors = config.coordinator_members
    with open_replica_groups(specs, token) as groups:
        async with connect(config, as_node=node_id) as peer_db, connect(config) as client_db, \
                open_service_connections(client_db) as services, trio.open_nursery() as nursery:
            if faults.enabled:
                peer_db.lose = faults.lost  # this node's outgoing node-to-node messages only
            peers = Peers(peer_db, tracer)

            def manager(spec: ProtocolSpec | None, store: LocalLogStore | RaftStore | None = None,
                        paxos: PaxosSetup | None = None) -> TransactionManager:
                return TransactionManager(
                    spec, store, peers, node_id=node_id, vote_timeout_s=txn.vote_timeout_s,
                    resend_s=txn.decision_resend_s, persist_timeout_s=config.timeouts.request_s,
                    hooks=hooks, tracer=tracer, nursery=nursery,
                    max_remembered=config.limits.max_remembered_transactions, paxos=paxos,
                )

            managers: dict[str, TransactionManager] = {}
            coord = groups.get(COORDINATOR_GROUP)
            acceptor = None
            limits = config.limits
            compaction = Compaction(limits.compact_dead_share, limits.compact_min_dead_records)
            decision_log = None
            if coord is not None:
                acceptor = Acceptor(node_id, config.node_dir(node_id) / "acceptor.log", config.durability,
                                    values=(PREPARED, ABORTED),  # a Paxos Commit instance's values
                                    stamp=_instance_stamp, compaction=compaction)
            for spec in PROTOCOLS.values():
                here = {Coordinator.GROUP: coord is not None, Coordinator.NODE: node_id == config.twopc_coordinator}
                if not here.get(spec.coordinator, False):
                    continue
                if spec.decision_store is DecisionStore.RAFT:
                    assert coord is not None
                    managers[spec.name] = manager(spec, RaftStore(coord))
                    nursery.start_soon(_watch_coordinator_leadership, managers[spec.name], coord)
                elif spec.decision_store is DecisionStore.LOG:
                    decision_log = DecisionLog(config.node_dir(node_id) / "2pc.log", compaction)
                    managers[spec.name] = manager(spec, LocalLogStore(decision_log))
                    for txid, logged in decision_log.unfinished():
                        managers[spec.name].resume(txid, logged.participants, logged.outcome)
                elif spec.acceptors:
                    assert coord is not None
                    managers[spec.name] = manager(
                        spec, paxos=PaxosSetup(acceptors, acceptors.index(node_id), coord.term, coord.is_leader,
                                                  Mutant(txn.mutant)))
                else:
                    managers[spec.name] = manager(spec)
            shards = {name: g for name, g in groups.items() if name != COORDINATOR_GROUP}
            silence = SilenceWatch(
                shards, manager(None), wait_s=txn.three_phase_wait_s,
                stagger_s=txn.three_phase_stagger_s, interval_s=txn.resolve_interval_s,
            )
            nursery.start_soon(silence.run)
            resolver = InDoubtResolver(
                shards, peers, timeout_s=txn.in_doubt_timeout_s, interval_s=txn.resolve_interval_s,
                ask_timeout_s=config.timeouts.request_s, fanout=txn.resolve_fanout,
            )
            nursery.start_soon(resolver.run)
            paxos_node = PaxosNode(node_id, acceptor, acceptors, peers, tracer, shards,
                                   txn.vote_timeout_s, nursery, config.limits.max_pending_bundles)
            forgetter = Forgetter(limits, groups, managers, decision_log, acceptor, paxos_node)
            nursery.start_soon(forgetter.run)
            orchestrator = None
            if coord is not None:
                orchestrator = SagaOrchestrator(coord, services, config.sagas, config.timeouts.request_s,
                                                config.limits.max_reason_chars, nursery)
                nursery.start_soon(orchestrator.watch)
            parts = NodeParts(config, node_id, groups, managers, resolver, silence, hooks, faults, paxos_node, tracer,
                              orchestrator)
            await nursery.start(
                partial(
                    serve_rpc, node_routes(parts), node_id=node_id, host=node.host,
                    port=node.rpc_port, settings=config.rpc_settings(as_node=node_id),
                )
            )
            log.info(
                "node %s serving RPC on %s:%d, groups %s, coordinating %s",
                node_id, node.host, node.rpc_port, ", ".join(groups), ", ".join(managers) or "nothing",
            )
            task_status.started(parts)
