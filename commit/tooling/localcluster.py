"""Launching real node processes: for ``node.py up``, the tests and the benchmarks.

``spawn_node`` starts one ``node.py start`` process. ``LocalCluster`` writes a
throwaway cluster.toml on free loopback ports (the same settings as the
default cluster.toml unless told otherwise) and starts, kills -9, pauses and
restarts its nodes. Everything is real: processes, TCP, files. With
``transactions.fault_hooks`` on, it also cuts and heals the nodes' RPC links,
drops RPC methods and holds coordinators (``commit.node.faults``, ``commit.node.hooks``).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from commit.tooling.admin import (
    cluster_report,
    cluster_status,
    node_call,
    transaction_trace,
    wait_for_leaders,
)
from commit.config import COORDINATOR_GROUP, ClusterConfig, load_config, shard_group
from commit.protocols.registry import PROTOCOLS, Coordinator
from commit.tooling.fault_requests import link_requests
from commit.routing import shard_of
from commit.transaction import Transaction
from commit.tooling.traces import summarize
from consensus.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: node.py lives there


def spawn_node(config: ClusterConfig, node_id: str, *, detach: bool = False) -> subprocess.Popen[bytes]:
    """Start ``node.py start NODE_ID``; its stdout and stderr go to its node.log."""
    config.node_dir(node_id).mkdir(parents=True, exist_ok=True)
    with open(config.node_log(node_id), "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "node.py"), "--config", str(config.path), "start", node_id],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=detach,
        )


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_block(count: int, rng: random.Random) -> int:
    """A base port such that ``base .. base+count-1`` are all free now."""
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if _ports_free(list(range(base, base + count))):
            return base
    raise RuntimeError("no free block of loopback ports")


def render_config(
    data_dir: Path,
    node_ids: list[str],
    base_port: int,
    *,
    shards: int = 3,
    secret: str | None = None,
    durability: str = "os",
    raft: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    transactions: dict[str, Any] | None = None,
    sagas: dict[str, Any] | None = None,
    coordinator_members: list[str] | None = None,
    shard_members: list[str] | None = None,
    hosts: list[str] | None = None,
) -> str:
    stride = 1 + (1 + shards)
    lines = ["[cluster]", f'data_dir = "{data_dir}"', f'durability = "{durability}"']
    if secret is not None:
        lines.append(f'secret = "{secret}"')
    for i, node_id in enumerate(node_ids):
        rpc = base_port + i * stride
        host = hosts[i] if hosts else "127.0.0.1"
        lines += ["", "[[nodes]]", f'id = "{node_id}"', f'host = "{host}"',
                  f"rpc_port = {rpc}", f"raft_port = {rpc + 1}"]
    def members(ids: list[str] | None) -> str:
        return ", ".join(f'"{n}"' for n in (ids or node_ids))

    lines += ["", "[coordinator]", f"members = [{members(coordinator_members)}]",
              "", "[shards]", f"count = {shards}", f"members = [{members(shard_members)}]"]
    tables = (("raft", raft), ("timeouts", timeouts), ("limits", limits), ("transactions", transactions),
              ("sagas", sagas))
    for table, values in tables:
        if values:
            lines += ["", f"[{table}]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def commit_in_background(tx: Transaction, nursery: trio.Nursery) -> None:
    """Commit ``tx`` in ``nursery``, ignoring its error: for tests whose coordinator dies under the commit."""

    async def commit_and_ignore() -> None:
        try:
            await tx.commit()
        except ClusterError:
            pass

    nursery.start_soon(commit_and_ignore)


def _returns(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate


@dataclass
class LocalCluster:
    """A cluster of real node processes; call ``stop()`` (or use the fixture) to clean up."""

    root: Path
    node_ids: list[str] = field(default_factory=lambda: ["n1", "n2", "n3"])
    shards: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed or None)  # fresh ports for each cluster, not the last one's
        base = free_port_block(len(self.node_ids) * (2 + self.shards), rng)
        self.config_path = self.root / "cluster.toml"
        self.config_path.write_text(
            render_config(self.root / "data", self.node_ids, base, shards=self.shards, **self.options)
        )
        self.config: ClusterConfig = load_config(self.config_path).with_secrets()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node_id: str) -> None:
        if self.alive(node_id):
            raise RuntimeError(f"{node_id} is already running")
        self.procs[node_id] = spawn_node(self.config, node_id)

    def start_all(self) -> None:
        for node_id in self.node_ids:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """kill -9: no clean shutdown, nothing flushed beyond what the node already wrote."""
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def pause(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()

    async def wait_ready(self) -> list[dict[str, Any]]:
        """Until every group has a leader and every node this cluster runs answers."""
        await wait_for_leaders(self.config)

        async def all_reachable() -> list[dict[str, Any]]:
            report = await cluster_report(self.config)
            running = {n for n in self.node_ids if self.alive(n)}
            # a node that hosts no group (a dedicated coordinator) still reports its transactions
            answered = {r["node"] for r in report["groups"] if r.get("reachable")}
            answered |= {r["node"] for r in report["transactions"]}
            return report["groups"] if running <= answered else []

        return await self.wait_until(all_reachable, self.config.timeouts.startup_s, "every running node to answer")

    async def status(self) -> list[dict[str, Any]]:
        return await cluster_status(self.config)

    async def leaders(self) -> dict[str, str]:
        """group -> node id of its leader, from the replicas that call themselves leader."""
        rows = await self.status()
        return {r["group"]: r["node"] for r in rows if r.get("reachable") and r.get("role") == "leader"}

    async def call(self, node_id: str, method: str, params: dict[str, Any], *, as_node: str | None = None) -> Any:
        """One RPC to ``node_id``, as a client, or as node ``as_node`` (proving its key)."""
        return await node_call(self.config, node_id, method, params, as_node=as_node)

    # -- fault injection (needs transactions.fault_hooks; RPC traffic only, never Raft: see commit.faults) --

    async def cut(self, a: str, b: str) -> None:
        """Lose every node-to-node RPC message between ``a`` and ``b``, both ways (both nodes are told)."""
        for node_id, params in link_requests("cut", a, b, self.node_ids):
            await self.call(node_id, "test.fault", params)

    async def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore the a-b link; with ``a`` alone every link of a; with neither every link on every running node.

        Links only: methods dropped with ``drop`` stay dropped (see ``undrop``).
        """
        running = [n for n in self.node_ids if self.alive(n)]
        for node_id, params in link_requests("heal", a, b, running):
            await self.call(node_id, "test.fault", params)

    async def partition(self, side_a: list[str], side_b: list[str]) -> None:
        """Cut every link between a node of ``side_a`` and a node of ``side_b``."""
        for a in side_a:
            for b in side_b:
                await self.cut(a, b)

    async def drop(self, node_id: str, method: str) -> None:
        """``node_id`` loses every ``method`` call it sends (e.g. ``shard.prepare``), to any node."""
        await self.call(node_id, "test.fault", {"op": "drop", "method": method})

    async def undrop(self, node_id: str, method: str | None = None) -> None:
        """``node_id`` sends ``method`` again; every method it drops when ``method`` is None."""
        params: dict[str, Any] = {"op": "undrop"}
        if method is not None:
            params["method"] = method
        await self.call(node_id, "test.fault", params)

    async def hold(self, node_id: str, point: str) -> None:
        """Arm a hold point on ``node_id`` (``commit.coordinating.HOLD_POINTS``): it freezes there."""
        await self.call(node_id, "test.hold", {"point": point})

    async def faults(self) -> dict[str, dict[str, Any]]:
        """Each running node's link faults: cut peers, dropped methods, messages lost so far."""
        return {n: (await self.call(n, "test.fault", {"op": "list"}))["faults"]
                for n in self.node_ids if self.alive(n)}

    async def coordinator_of(self, protocol: str) -> str:
        """The node that coordinates ``protocol``'s transactions now (the coordinator group's leader moves)."""
        if PROTOCOLS[protocol].coordinator is Coordinator.NODE:
            return self.config.twopc_coordinator
        return (await self.leaders())[COORDINATOR_GROUP]

    async def shard_leader_rows(self) -> dict[str, dict[str, Any]]:
        """Each shard's status row as its leader reports it (keys, prepared transactions, locks)."""
        rows = await self.status()
        return {r["group"]: r for r in rows if r.get("role") == "leader" and r["group"].startswith("shard-")}

    async def wait_unlocked(self, within_s: float) -> None:
        """Until every shard leader holds no prepared transaction and no lock."""

        async def clean() -> bool:
            rows = await self.shard_leader_rows()
            return len(rows) == self.shards and all(r["prepared"] == 0 and r["locks"] == 0 for r in rows.values())

        await self.wait_until(clean, within_s, "every shard to hold no prepared transaction and no lock")

    async def held_transfer(self, db: Any, protocol: str, point: str | None, src: str, dst: str) -> Transaction:
        """Put src = 100 and dst = 0, arm ``point`` (if any) on the protocol's coordinator, and return a
        transaction that moves 30 from src to dst, read and written but not committed yet.

        Needs ``transactions.fault_hooks`` when a point is given.
        """
        await db.put(src, 100)
        await db.put(dst, 0)
        if point is not None:
            await self.call(await self.coordinator_of(protocol), "test.hold", {"point": point})
        tx = Transaction(db, protocol)
        tx.put(src, (await tx.get(src)).value - 30)
        tx.put(dst, (await tx.get(dst)).value + 30)
        return tx

    async def start_held_transfer(
        self, db: Any, protocol: str, point: str | None, src: str, dst: str, nursery: trio.Nursery,
        until_prepared: bool = True,
    ) -> Any:
        """``held_transfer``, committed in ``nursery``; returns once both shards prepared it.

        With ``until_prepared=False`` it returns once the commit is under way (Faster Paxos Commit's
        participants may learn the outcome and finish before anyone could see them prepared).

        The commit's error (the coordinator is meant to die under it) is ignored: callers judge the
        outcome from the shards.
        """
        tx = await self.held_transfer(db, protocol, point, src, dst)
        commit_in_background(tx, nursery)
        shards = sorted({shard_group(shard_of(k.encode(), self.shards)) for k in (src, dst)})

        async def prepared() -> bool:
            if tx.txid is None:
                return False
            try:
                states = [await self.shard_state(tx.txid, shard) for shard in shards]
            except (ClusterError, KeyError, trio.TooSlowError):
                return False  # a shard without a leader just now
            return states == ["prepared"] * len(shards)

        if until_prepared:
            await self.wait_until(prepared, 10, "both participants to be prepared")
        else:
            await self.wait_until(_returns(lambda: tx.txid is not None), 10, "the commit to start")
        return tx

    async def shard_state(self, txid: str, shard: str) -> str:
        """The shard's own record of txid (prepared, committed, aborted or unknown), read without fencing it."""
        leader = (await self.leaders())[shard]
        return (await self.call(leader, "shard.inspect", {"txid": txid, "shard": shard}))["state"]

    async def place_leaders(self, placement: dict[str, str], within_s: float = 20.0) -> None:
        """Move each group's leadership to the given node (needs ``transactions.fault_hooks``).

        Demonstrations need to know which node acts for which shard; Raft elections are random, so
        this asks each current leader to hand over (PySyncObj's transferLeadership) until it holds.
        """

        async def placed() -> bool:
            leaders = await self.leaders()
            wrong = {g: n for g, n in placement.items() if leaders.get(g) != n}
            for group, node in wrong.items():
                current = leaders.get(group)
                if current is not None:
                    try:
                        await self.call(current, "test.transfer_leader", {"group": group, "to": node})
                    except ClusterError:
                        pass  # not caught up yet, or leadership moved meanwhile: ask again next round
            return not wrong

        await self.wait_until(placed, within_s, f"leaders placed as {placement}")

    async def settled_trace(self, txid: str, within_s: float = 10.0) -> dict[str, Any]:
        """txid's trace summary once it stopped growing for half a second (decisions land after the reply)."""
        last: dict[str, Any] = {}
        with trio.move_on_after(within_s):
            while True:
                summary = summarize(await transaction_trace(self.config, txid))
                if summary == last and summary["messages"]:
                    return summary
                last = summary
                await trio.sleep(0.5)
        return last

    async def wait_until(self, predicate: Any, timeout_s: float, what: str) -> Any:
        with trio.move_on_after(timeout_s):
            while True:
                value = await predicate()
                if value:
                    return value
                await trio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
