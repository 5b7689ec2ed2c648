"""The RPC methods a node serves, one module per concern.

    kv            kv.get, kv.put, kv.delete, session.open
    transactions  txn.commit, txn.commit_one, txn.status
    participants  shard.prepare, shard.query, shard.decide, shard.inspect, 3pc.join, 3pc.move
    paxos         paxos.phase2a, paxos.phase2b, paxos.learn, paxos.phase1a, paxos.accept, paxos.forget,
                  paxos.learned
    operator      node.status, node.trace, node.compact, coord.epoch
    sagas         saga.start, saga.list, saga.show, saga.retry, saga.skip, saga.compensate
    testing       test.hold, test.transfer_leader, test.fault   (only with transactions.fault_hooks)

The participants' and Paxos methods are sent by nodes only (``NODE_METHODS``):
a caller that proved only the client secret is refused them with
``unauthorized`` (``consensus.auth``: a client is not a node), and the node id
a peer proved is the one its messages are checked against.

Each module's docstring lists its methods' parameters and results. Every
parameter is checked at the edge (``params``), before anything is proposed: a
wrong type or size is ``invalid_request`` and changes nothing. A request for a
group this node does not lead is ``not_leader`` with the leader's id.
"""

from __future__ import annotations

from typing import Any

from commit.node.handlers.base import Handler, NodeParts
from commit.node.handlers.kv import KeyValue
from commit.node.handlers.operator import Operator
from commit.node.handlers.participants import Participants
from commit.node.handlers.sagas import SagaMethods
from commit.node.handlers.paxos import PaxosMessages
from commit.node.handlers.testing import Testing
from commit.node.handlers.transactions import Transactions
from consensus.errors import Unauthorized
from consensus.rpc import current_caller


NODE_METHODS = frozenset({
    "shard.prepare", "shard.decide", "3pc.join", "3pc.move",
    "paxos.phase2a", "paxos.phase2b", "paxos.learn", "paxos.phase1a", "paxos.accept", "paxos.forget",
    "paxos.learned",
})


def _for_nodes_only(method: str, handler: Handler) -> Handler:
    async def checked(params: dict[str, Any]) -> Any:
        if not current_caller().is_node:
            raise Unauthorized(f"{method} is sent by nodes only; this connection proved the client secret")
        return await handler(params)

    return checked


def node_routes(node: NodeParts) -> dict[str, Handler]:
    """Every RPC method of a node, by name (what ``consensus.rpc.serve_rpc`` dispatches on)."""
    routes: dict[str, Handler] = {}
    for handlers in (KeyValue(node), Transactions(node), Participants(node), PaxosMessages(node), Operator(node),
                     SagaMethods(node)):
        routes |= handlers.routes()
    testing = Testing(node, methods=routes.keys())
    routes |= testing.routes()
    return {method: _for_nodes_only(method, h) if method in NODE_METHODS else h for method, h in routes.items()}


__all__ = ["NodeParts", "node_routes"]
