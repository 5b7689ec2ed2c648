"""A node process's body: its replica groups and its RPC server, in one trio run."""

from __future__ import annotations

import logging
from functools import partial

import trio

from commit.config import COORDINATOR_GROUP, ClusterConfig
from commit.coordinator import CoordinatorState
from commit.service import NodeService
from commit.shard import ShardState
from consensus.group import StateMachine, open_replica_groups
from consensus.rpc import serve_rpc

log = logging.getLogger(__name__)


def _machine_for(group_name: str) -> StateMachine:
    return CoordinatorState() if group_name == COORDINATOR_GROUP else ShardState()


async def serve_node(
    config: ClusterConfig,
    node_id: str,
    *,
    task_status: trio.TaskStatus[NodeService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run node ``node_id`` until cancelled; the replicas stop cleanly on the way out."""
    node = config.node(node_id)
    config.node_dir(node_id).mkdir(parents=True, exist_ok=True)
    token = trio.lowlevel.current_trio_token()
    specs = [(spec, _machine_for(spec.name)) for spec in config.group_specs(node_id)]
    with open_replica_groups(specs, token) as groups:
        service = NodeService(config, node_id, groups)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    serve_rpc,
                    service.router(),
                    node_id=node_id,
                    host=node.host,
                    port=node.rpc_port,
                    settings=config.rpc_settings(),
                )
            )
            log.info(
                "node %s serving RPC on %s:%d, groups %s",
                node_id, node.host, node.rpc_port, ", ".join(groups),
            )
            task_status.started(service)
