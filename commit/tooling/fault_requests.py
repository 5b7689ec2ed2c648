"""The ``test.fault`` requests an operator or a test sends: links cut or healed in both directions, methods dropped.

Each node filters only its own outgoing messages (``commit.node.faults``), so one link takes a request
to each of its two ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from commit.config import ClusterConfig
from commit.tooling.admin import node_call
from consensus.errors import ClusterError


def link_requests(op: str, a: str | None, b: str | None,
                  node_ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ``test.fault`` calls, as (node, params), that cut or heal links in both directions.

    ``cut``: a and b both required. ``heal``: a and b heal their link; a alone heals every link of a (on
    a and on every other node of ``node_ids``); neither heals every link on every node of ``node_ids``.
    """
    if op == "cut":
        if a is None or b is None or a == b:
            raise ValueError("cut takes two different nodes")
        return [(a, {"op": "cut", "peer": b}), (b, {"op": "cut", "peer": a})]
    if op != "heal":
        raise ValueError(f"link_requests handles cut and heal, not {op!r}")
    if a is None:
        if b is not None:
            raise ValueError("heal takes no node, one node, or two nodes")
        return [(n, {"op": "heal"}) for n in node_ids]
    if b is None:
        return [(a, {"op": "heal"})] + [(n, {"op": "heal", "peer": a}) for n in node_ids if n != a]
    return [(a, {"op": "heal", "peer": b}), (b, {"op": "heal", "peer": a})]


def operator_requests(op: str, node_ids: Sequence[str], nodes: Sequence[str],
                      method: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The ``test.fault`` calls for ``node.py fault OP [NODE...] [METHOD]``; ValueError names a wrong use.

    ``cut A B`` and ``heal [A [B]]`` act on links (both ends, ``link_requests``); ``drop NODE METHOD`` and
    ``undrop NODE [METHOD]`` on one node's outgoing calls; ``list`` asks every node.
    """
    if op in ("cut", "heal"):
        if len(nodes) > 2:
            raise ValueError(f"{op} takes at most two nodes")
        a, b = (list(nodes) + [None, None])[:2]
        return link_requests(op, a, b, node_ids)
    if op in ("drop", "undrop"):
        if len(nodes) != 1:
            raise ValueError(f"{op} takes one node")
        if op == "drop" and method is None:
            raise ValueError("drop takes a method")
        params: dict[str, Any] = {"op": op}
        if method is not None:
            params["method"] = method
        return [(nodes[0], params)]
    if op == "list":
        return [(n, {"op": "list"}) for n in node_ids]
    raise ValueError(f"unknown fault operation {op!r}")


async def send_fault_requests(config: ClusterConfig,
                              requests: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each node's faults after its requests, in config order; an unreachable node's row has ``error``."""
    results: dict[str, dict[str, Any]] = {}
    for node_id, params in requests:
        try:
            results[node_id] = (await node_call(config, node_id, "test.fault", params))["faults"]
        except (ClusterError, trio.TooSlowError) as exc:
            results[node_id] = {"node": node_id, "error": str(exc) or type(exc).__name__}
    return [results[n.id] for n in config.nodes if n.id in results]
