"""Benchmark workloads: one operation per call, run in closed loops by ``bench.harness``.

Each workload is ``async def op(db, state, params, client, i)``; an optional
setup ``async def setup(db, params, tag) -> state`` runs once per client
process. Registered by name so worker processes can find them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import commit
from commit.routing import keys_on_each_shard

KEYS_PER_CLIENT = 1000


async def kv_put(db: commit.Database, state: Any, params: dict[str, Any], client: str, i: int) -> None:
    await db.put(f"{client}-{i % KEYS_PER_CLIENT}", i)


async def kv_get(db: commit.Database, state: Any, params: dict[str, Any], client: str, i: int) -> None:
    await db.get(f"{client}-{i % KEYS_PER_CLIENT}")


async def transfer_setup(db: commit.Database, params: dict[str, Any], tag: str) -> list[list[str]]:
    accounts = keys_on_each_shard(f"{params['prefix']}{tag}-", params["accounts_per_shard"], db.config.shard_count)
    for shard in accounts:
        for name in shard:
            await db.put(name, params["start_balance"])
    return accounts


async def transfer(db: commit.Database, accounts: list[list[str]], params: dict[str, Any], client: str,
                   i: int) -> None:
    """One attempt of a transfer touching ``params['shards']`` shards: a conflict is an abort, not retried."""
    rng = random.Random(f"{client}-{i}")
    shards = rng.sample(range(len(accounts)), params["shards"])
    names = [rng.choice(accounts[s]) for s in shards]
    tx = commit.Transaction(db, params["protocol"])
    balances = [(await tx.get(n)).value for n in names]
    amount = rng.randint(1, 10)
    tx.put(names[0], balances[0] - amount * (len(names) - 1))
    for name, balance in zip(names[1:], balances[1:]):
        tx.put(name, balance + amount)
    await tx.commit()


Op = Callable[[commit.Database, Any, dict[str, Any], str, int], Awaitable[None]]
REGISTRY: dict[str, Op] = {"kv.put": kv_put, "kv.get": kv_get, "txn.transfer": transfer}
SETUP: dict[str, Callable[[commit.Database, dict[str, Any], str], Awaitable[Any]]] = {
    "txn.transfer": transfer_setup,
}
