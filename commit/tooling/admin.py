"""Operator queries over every node of a cluster: status, and waiting for leaders.

Unlike the client library these talk to each node individually, because an
operator wants to see the node that is down, not be routed around it. Every
network wait is bounded by ``timeouts.connect_s`` + ``timeouts.request_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from commit.config import ClusterConfig
from consensus.errors import ClusterError
from consensus.rpc import open_rpc_client

STATUS_COLUMNS = ("node", "group", "role", "leader", "term", "commit_index", "applied_index", "reachable")
TXN_COLUMNS = ("node", "protocol", "committed", "aborted")
IN_DOUBT_COLUMNS = ("node", "txid", "protocol", "participants", "state", "age_s")
COUNTER_COLUMNS = ("node", "counter", "count")


async def node_call(
    config: ClusterConfig, node_id: str, method: str, params: dict[str, Any], *, as_node: str | None = None
) -> Any:
    """One RPC to one node, as a client (or, for tests of node-to-node messages, as node ``as_node``).

    Raises ClusterError or trio.TooSlowError.
    """
    node = config.node(node_id)
    with trio.fail_after(config.timeouts.connect_s + config.timeouts.request_s):
        async with open_rpc_client(
            node.host, node.rpc_port, settings=config.rpc_settings(as_node), expect_node=node_id
        ) as conn:
            return await conn.call(method, params)


async def _node_report(config: ClusterConfig, node_id: str) -> dict[str, Any]:
    try:
        reply = await node_call(config, node_id, "node.status", {})
    except (ClusterError, trio.TooSlowError) as exc:
        error = str(exc) or type(exc).__name__
        groups = [
            {"node": node_id, "group": g.name, "reachable": False, "error": error}
            for g in config.groups()
            if node_id in g.members
        ]
        return {"groups": groups, "transactions": [], "in_doubt": [], "counters": []}
    transactions = [
        {"node": node_id, "protocol": protocol, **counts}
        for protocol, counts in reply.get("transactions", {}).items()
    ]
    in_doubt = [{"node": node_id, **row} for row in reply.get("in_doubt", [])]
    groups = [dict(row, reachable=True) for row in reply["groups"]]
    counters = reply.get("counters", {})
    counter_rows = [
        {"node": node_id, "counter": f"{family}.{kind}", "count": count}
        for family, by_kind in counters.items() for kind, count in sorted(by_kind.items())
    ]
    return {"groups": groups, "transactions": transactions, "in_doubt": in_doubt, "counters": counter_rows}


async def cluster_report(config: ClusterConfig) -> dict[str, list[dict[str, Any]]]:
    """Every node queried concurrently: group replica rows, transaction counters, in-doubt transactions."""
    results: dict[str, dict[str, Any]] = {}

    async def collect(node_id: str) -> None:
        results[node_id] = await _node_report(config, node_id)

    async with trio.open_nursery() as nursery:
        for node in config.nodes:
            nursery.start_soon(collect, node.id)
    return {
        part: [row for node in config.nodes for row in results[node.id][part]]
        for part in ("groups", "transactions", "in_doubt", "counters")
    }


async def cluster_status(config: ClusterConfig) -> list[dict[str, Any]]:
    """One row per group replica."""
    return (await cluster_report(config))["groups"]


def leaderless_groups(rows: list[dict[str, Any]], config: ClusterConfig) -> list[str]:
    """Groups for which no reachable replica reports itself as leader."""
    led = {row["group"] for row in rows if row.get("reachable") and row.get("role") == "leader"}
    return [g.name for g in config.groups() if g.name not in led]


async def wait_for_leaders(
    config: ClusterConfig, progress: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    """Poll until every group has a leader; raises trio.TooSlowError after ``timeouts.startup_s``."""
    with trio.fail_after(config.timeouts.startup_s):
        last = ""
        while True:
            rows = await cluster_status(config)
            missing = leaderless_groups(rows, config)
            if not missing:
                return rows
            line = f"waiting for a leader in: {', '.join(missing)}"
            if line != last:
                progress(line)
                last = line
            await trio.sleep(0.2)


async def transaction_trace(config: ClusterConfig, txid: str) -> list[dict[str, Any]]:
    """Every node's record of txid's protocol messages and forced writes (unreachable nodes skipped)."""
    events: list[dict[str, Any]] = []

    async def collect(node_id: str) -> None:
        try:
            events.extend((await node_call(config, node_id, "node.trace", {"txid": txid}))["events"])
        except (ClusterError, trio.TooSlowError):
            pass

    async with trio.open_nursery() as nursery:
        for node in config.nodes:
            nursery.start_soon(collect, node.id)
    return sorted(events, key=lambda e: e["t"])
