"""Thousands of random and mutated messages to every method of real nodes, while transfers run under every protocol.

Two kinds of sender, at once:

* a **client** (it proved the client secret): every method, with valid-looking
  parameters mutated at random, the txids of transfers still in flight among
  them. Node-to-node methods must refuse it; the others must answer a clear
  error or a harmless result;
* a **node** (it proved a node key): the node-to-node methods, mutated, for
  txids of its own. Nodes are trusted not to lie (docs/SECURITY.md), but no
  message, however malformed, may end a node or wedge it.

Plus raw garbage on the RPC and Raft ports. Afterwards every node is up, every
group has a leader, a canary key is unchanged, the bank's total is intact (so
every transfer stayed atomic), and no request was answered ``internal`` (an
unexpected exception in a handler). ``FUZZ_MESSAGES`` sets the number of
messages; the seed is printed (``TEST_SEED`` replays it).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import commit
from commit.config import load_config, shard_group
from commit.node.handlers import NODE_METHODS, node_routes
from commit.protocols.registry import NAMES as PROTOCOLS
from commit.routing import keys_on_each_shard
from commit.tooling.localcluster import LocalCluster
from commit.transaction import Transaction
from commit.txids import new_txid
from consensus.errors import ClusterError, InternalError
from consensus.rpc import RpcClient, open_rpc_client
from tests.conftest import _started
from tests.raw_messages import send_bytes_and_hang_up

pytestmark = pytest.mark.cluster

MESSAGES = int(os.environ.get("FUZZ_MESSAGES", "3000"))
SENDERS = 4
CANARY = "fuzz-canary"
START_BALANCE = 1000
MULTI_SHARD = sorted(p for p in PROTOCOLS if p != "1pc")


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("fuzz"))


def test_the_fuzzer_knows_every_method() -> None:
    """If a method is added, the fuzzer must learn how to call it (a template below)."""
    cluster_like = SimpleNamespace(config=load_config(Path(__file__).parent.parent / "cluster.toml"),
                                   node_id="n1", paxos=SimpleNamespace())
    assert set(node_routes(cluster_like)) == set(_templates(random.Random(0), [], ["k"]))  # type: ignore[arg-type]


def _shards() -> list[str]:
    return [shard_group(i) for i in range(3)]


def _templates(rng: random.Random, live: list[tuple[str, tuple[str, ...]]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """A plausible request for every method; txids are live transfers' (when there are any) or fresh ones."""
    shards = _shards()
    protocol = rng.choice(MULTI_SHARD)
    participants = tuple(sorted(rng.sample(shards, 2)))
    txid, participants = rng.choice(live) if live and rng.random() < 0.6 else (
        new_txid(protocol, participants), participants)
    shard = participants[0]
    key = rng.choice(keys).encode()
    ballot = [rng.choice([0, 1, 2]), rng.choice([0, 1]), rng.choice([0, 1, 2])]
    session = [rng.choice([1, 2, 10**6]), rng.choice([1, 2, 3]), 1]
    node = rng.choice(["n1", "n2", "n3"])
    return {
        "kv.get": {"key": key},
        "kv.put": {"key": key, "value": b"\x01", "session": session},
        "kv.delete": {"key": key, "session": session},
        "session.open": {"group": shard},
        "txn.commit": {"txid": txid, "participants": {s: {"reads": [], "writes": [[key, b"\x02"]]} for s in participants}},
        "txn.commit_one": {"txid": new_txid("1pc", shard=shard), "shard": shard, "reads": [[key, 1]],
                           "writes": [[key, b"\x03"]]},
        "txn.status": {"txid": txid, "participants": list(participants)},
        "shard.prepare": {"txid": txid, "shard": shard, "reads": [], "writes": [[key, b"\x04"]],
                          "participants": list(participants), "leader": node, "hop": 1},
        "shard.query": {"txid": txid, "shard": shard},
        "shard.decide": {"txid": txid, "shard": shard, "outcome": rng.choice(["committed", "aborted"])},
        "shard.inspect": {"txid": txid, "shard": shard},
        "3pc.join": {"txid": txid, "shard": shard, "round": ballot[:2], "leader": node, "hop": 1},
        "3pc.move": {"txid": txid, "shard": shard, "round": ballot[:2], "target": "precommitted", "leader": node,
                     "hop": 1},
        "paxos.phase2a": {"txid": txid, "shard": shard, "value": "prepared", "participants": list(participants),
                          "leader": node, "fast": rng.random() < 0.5, "hop": 1},
        "paxos.phase2b": {"txid": txid, "acceptor": node, "ballot": ballot,
                          "values": {s: "prepared" for s in participants}, "hop": 2},
        "paxos.learn": {"txid": txid, "shard": shard, "acceptor": node, "ballot": [0, 0, 0],
                        "values": {s: "prepared" for s in participants}, "participants": list(participants), "hop": 2},
        "paxos.phase1a": {"txid": txid, "ballot": ballot, "participants": list(participants),
                          "instances": list(participants)},
        "paxos.accept": {"txid": txid, "ballot": ballot, "values": {s: "aborted" for s in participants}},
        "paxos.forget": {"leader": node, "finished": [[txid, list(participants)]]},
        "paxos.learned": {"learned": [[txid, shard, list(participants)]]},
        "node.status": {},
        "node.trace": {"txid": txid},
        "node.compact": {},
        "coord.epoch": {"session": session},
        "test.hold": {"step": "coordinator.after_votes", "txid": txid},
        "test.transfer_leader": {"group": shard, "to": node},
        "test.fault": {"op": "cut", "peer": node},
        "saga.start": {"saga": f"fuzz-{rng.randrange(4)}", "definition": {"mode": rng.choice(["saga", "tcc"]), "steps": [
            {"name": "a", "service": "nobody", "action": "do", "compensation": "undo", "confirm": "ok",
             "retry": {"maximum_attempts": 1}, "compensation_retry": {"maximum_attempts": 1}}]}},
        "saga.list": {"state": rng.choice(["running", "stuck"]), "limit": 5},
        "saga.show": {"saga": f"fuzz-{rng.randrange(4)}"},
        "saga.retry": {"saga": f"fuzz-{rng.randrange(4)}", "step": "a"},
        "saga.skip": {"saga": f"fuzz-{rng.randrange(4)}"},
        "saga.compensate": {"saga": f"fuzz-{rng.randrange(4)}"},
    }


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(16)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if pick == 3:
        return rng.choice([0.5, -1e308, math.inf, -math.inf, math.nan])
    if pick == 4:
        return "".join(rng.choice("abc:.-\x00é") for _ in range(rng.choice([0, 1, 8, 40])))
    if pick == 5:
        return os.urandom(rng.choice([0, 1, 16, 2000]))
    if pick == 6:
        return rng.choice(["2pc", "paxos-commit", "1pc", "3pc", "raft-2pc"]) + ":" + os.urandom(16).hex()
    if pick == 7:
        return new_txid(rng.choice(MULTI_SHARD), rng.sample(_shards(), rng.randint(0, 3)))
    if pick == 8:
        return new_txid("1pc", shard=rng.choice(_shards()))
    if pick == 9:
        return rng.choice(_shards() + ["coord", "shard-99", ""])
    if pick == 10:
        return rng.choice(["committed", "aborted", "prepared", "pending", "unknown", "precommitted", "yes"])
    if pick == 11:
        nested: Any = 1
        for _ in range(rng.choice([2, 50, 200])):
            nested = [nested]
        return nested
    if pick == 12 and depth < 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if pick == 13 and depth < 3:
        return {rng.choice(["a", "shard-0", "txid", "x"]): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if pick == 14:
        return [rng.randrange(3) for _ in range(rng.randint(0, 4))]
    return rng.choice(["n1", "n2", "n3", "n9"])


def _mutate(params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    params = dict(params)
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(4)
        if action == 0 and params:
            params.pop(rng.choice(list(params)))
        elif action == 1:
            params[rng.choice(["extra", "txid", "shard", "ballot", "values"])] = _random_value(rng)
        elif params:
            field = rng.choice(list(params))
            value = params[field]
            if isinstance(value, dict) and value and action == 2:
                inner = dict(value)
                inner[rng.choice(list(inner))] = _random_value(rng)
                params[field] = inner
            else:
                params[field] = _random_value(rng)
    return params


class _Senders:
    """One connection per (node, identity), re-opened when the node closes it for a bad frame."""

    def __init__(self, cluster: LocalCluster, nursery: trio.Nursery) -> None:
        self.cluster = cluster
        self.nursery = nursery
        self.conns: dict[tuple[str, str | None], RpcClient] = {}
        self.answers: Counter[str] = Counter()
        self.internal: list[str] = []

    async def send(self, to: str, as_node: str | None, method: str, params: dict[str, Any]) -> None:
        config = self.cluster.config
        try:
            with trio.fail_after(config.timeouts.connect_s + config.timeouts.request_s + 2):
                conn = self.conns.get((to, as_node))
                if conn is None or conn.closed:
                    conn = self.conns[(to, as_node)] = await self.nursery.start(self._open, to, as_node)
                await conn.call(method, params)
            self.answers["ok"] += 1
        except InternalError as exc:
            self.internal.append(f"{method} {str(params)[:300]} -> {exc.message}")
        except ClusterError as exc:
            self.answers[exc.code] += 1
        except trio.TooSlowError:
            self.answers["no answer in time"] += 1

    async def _open(self, to: str, as_node: str | None, task_status: trio.TaskStatus[RpcClient]) -> None:
        node = self.cluster.config.node(to)
        settings = self.cluster.config.rpc_settings(as_node)
        async with open_rpc_client(node.host, node.rpc_port, settings=settings, expect_node=to) as conn:
            task_status.started(conn)
            await trio.sleep_forever()


async def _garbage(cluster: LocalCluster, rng: random.Random) -> None:
    """Random bytes at every RPC and Raft port: each connection is dropped, nothing else happens."""
    config = cluster.config
    ports = [n.rpc_port for n in config.nodes] + [n.raft_port + g.index for n in config.nodes for g in config.groups()]
    for port in ports:
        for blob in (os.urandom(rng.randint(1, 64)), b"\xff\xff\xff\x7f" + os.urandom(32), b"\x00\x00\x00\x05hello"):
            await send_bytes_and_hang_up(port, blob, wait_s=0.05)


async def _transfers(db: commit.Database, accounts: list[str], protocol: str, rng: random.Random,
                     live: list[tuple[str, tuple[str, ...]]], stop: trio.Event, done: Counter[str]) -> None:
    """Transfers whose txids the fuzzer reuses while they are in flight."""
    while not stop.is_set():
        src, dst = rng.sample(accounts, 2)
        tx = Transaction(db, protocol)
        try:
            a = (await tx.get(src)).value
            b = (await tx.get(dst)).value
            tx.put(src, a - 1)
            tx.put(dst, b + 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tx.commit)
                while tx.txid is None:
                    await trio.sleep(0)
                live.append((tx.txid, tx.participants))
                del live[:-50]
            done[protocol] += 1
        except* ClusterError:
            done["failed or unknown"] += 1


async def test_hostile_messages_never_end_a_node_or_break_a_transaction(fuzz_cluster: LocalCluster, seed: int) -> None:
    cluster = fuzz_cluster
    rng = random.Random(seed)
    per_shard = keys_on_each_shard(f"fuzz-{seed}-", 2, cluster.config.shard_count)
    accounts = [k for keys in per_shard for k in keys]
    fuzz_keys = [f"fuzz-victim-{i}" for i in range(6)]
    live: list[tuple[str, tuple[str, ...]]] = []
    done: Counter[str] = Counter()
    async with commit.connect(cluster.config) as db:
        canary_version = await db.put(CANARY, "untouched")
        for account in accounts:
            await db.put(account, START_BALANCE)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for protocol in MULTI_SHARD:
                nursery.start_soon(_transfers, db, accounts, protocol, random.Random(rng.random()), live, stop, done)
            async with trio.open_nursery() as connections:
                senders = _Senders(cluster, connections)

                async def fuzz(worker: random.Random, count: int) -> None:
                    for _ in range(count):
                        as_node = worker.choice([None, None, "n1", "n2", "n3"])
                        templates = _templates(worker, live if as_node is None else [], fuzz_keys)
                        methods = sorted(templates) if as_node is None else sorted(NODE_METHODS)
                        method = worker.choice(methods)
                        params = templates[method] if worker.random() < 0.15 else _mutate(templates[method], worker)
                        await senders.send(worker.choice(cluster.node_ids), as_node, method, params)

                async with trio.open_nursery() as fuzzers:
                    for _ in range(SENDERS):
                        fuzzers.start_soon(fuzz, random.Random(rng.random()), MESSAGES // SENDERS)
                    fuzzers.start_soon(_garbage, cluster, random.Random(rng.random()))
                connections.cancel_scope.cancel()
            stop.set()
        print(f"seed {seed}: {MESSAGES} messages, answers {dict(senders.answers)}; transfers {dict(done)}")
        assert not senders.internal, "requests answered 'internal':\n" + "\n".join(senders.internal[:20])
        assert all(cluster.alive(n) for n in cluster.node_ids), "a node died"
        rows = await cluster.wait_ready()
        assert {r["group"] for r in rows if r.get("role") == "leader"} == {g.name for g in cluster.config.groups()}
        await cluster.wait_unlocked(within_s=20)
        assert await db.get(CANARY) == ("untouched", canary_version, True)
        balances = [(await db.get(a)).value for a in accounts]
        assert sum(balances) == START_BALANCE * len(accounts), balances
        assert sum(v for k, v in done.items() if k in PROTOCOLS) > 0, "no transfer committed"
