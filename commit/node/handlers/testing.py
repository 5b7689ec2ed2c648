"""Fault injection for tests and scenarios, refused unless ``transactions.fault_hooks`` is on.

    test.hold             {point}              -> {}        stop the next task that reaches a hook point
    test.transfer_leader  {group, to}          -> {}
    test.fault            {op, peer?, method?} -> {faults}  op: cut | heal | drop | undrop | list

``test.fault`` acts on this node's outgoing links only (``commit.node.faults``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from commit.node.faults import OPS
from commit.node.handlers.base import Handler, Handlers, NodeParts
from consensus.errors import InvalidRequest


class Testing(Handlers):
    def __init__(self, node: NodeParts, methods: Collection[str]) -> None:
        super().__init__(node)
        self.known_methods = methods

    def methods(self) -> dict[str, Handler]:
        return {"test.hold": self.hold, "test.transfer_leader": self.transfer_leader, "test.fault": self.fault}

    async def hold(self, params: dict[str, Any]) -> dict[str, Any]:
        point = params.get("point")
        if not isinstance(point, str):
            raise InvalidRequest("point must be a string")
        self.node.hooks.arm(point)
        return {}

    async def transfer_leader(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.node.hooks.enabled:
            raise InvalidRequest("fault hooks are disabled (transactions.fault_hooks = false)")
        group = params.get("group")
        if not isinstance(group, str) or group not in self.node.groups:
            raise InvalidRequest(f"group must name a group hosted here ({', '.join(self.node.groups)})")
        self.leading(group).transfer_leadership(self.check.node_id(params.get("to"), "to"))
        return {}

    async def fault(self, params: dict[str, Any]) -> dict[str, Any]:
        """Cut or heal this node's outgoing links, drop or undrop an outgoing method."""
        faults = self.node.faults
        faults.require_enabled()
        op = params.get("op")
        if op not in OPS:
            raise InvalidRequest(f"op must be one of {', '.join(OPS)}, got {op!r:.40}")
        if op == "cut":
            faults.cut(self._peer(params.get("peer")))
        elif op == "heal":
            faults.heal(self._peer(params["peer"]) if "peer" in params else None)
        elif op == "drop":
            faults.drop(self._rpc_method(params.get("method")))
        elif op == "undrop":
            faults.undrop(self._rpc_method(params["method"]) if "method" in params else None)
        return {"faults": faults.describe()}

    def _peer(self, raw: Any) -> str:
        return self.check.node_id(raw, "peer")

    def _rpc_method(self, raw: Any) -> str:
        if not (isinstance(raw, str) and raw in self.known_methods):
            raise InvalidRequest(f"method must name an RPC method such as shard.prepare, got {raw!r:.40}")
        return raw
