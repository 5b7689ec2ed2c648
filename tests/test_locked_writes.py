"""Single-key writes on keys that transactions lock (issue 9.2): a put or delete waits the lock out."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio

import commit
from commit.config import ClusterConfig
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard

pytestmark = pytest.mark.cluster


def with_deadline(config: ClusterConfig, deadline_s: float) -> ClusterConfig:
    return dataclasses.replace(config, timeouts=dataclasses.replace(config.timeouts, client_deadline_s=deadline_s))


@pytest.mark.parametrize("write", ["put", "delete"])
async def test_a_write_on_a_locked_key_succeeds_once_the_lock_is_released(
    hook_cluster: LocalCluster, write: str
) -> None:
    """A raft-2pc transfer holds its locks until its coordinator dies and a new leader finishes it."""
    cluster = hook_cluster
    src, dst = [k[0] for k in keys_on_each_shard(f"locked-{write}-", 1, 3)[:2]]
    leader = (await cluster.leaders())["coord"]
    async with commit.connect(cluster.config) as db, trio.open_nursery() as committer:
        tx = await cluster.start_held_transfer(db, "raft-2pc", "coordinator.after_votes", src, dst, committer)
        async with commit.connect(with_deadline(cluster.config, 15.0)) as writer:
            async with trio.open_nursery() as nursery:
                results: list[int] = []

                async def write_it() -> None:
                    if write == "put":
                        results.append(await writer.put(src, "written"))
                    else:
                        results.append(await writer.delete(src))

                nursery.start_soon(write_it)
                await trio.sleep(1.0)  # the write meets the lock and waits
                assert not results
                cluster.kill(leader)  # a new coordinator-group leader finishes the transfer
            committer.cancel_scope.cancel()
        assert await db.status(tx.txid) == "committed"
        assert await db.get(src) == (("written", results[0], True) if write == "put" else (None, results[0], False))


async def test_no_single_key_write_fails_under_a_transfer_load(shared_cluster: LocalCluster, seed: int) -> None:
    """Transfers lock the accounts over and over; puts and deletes on the same accounts all get through."""
    rng = random.Random(seed)
    accounts = [k for keys in keys_on_each_shard("hot-", 2, 3) for k in keys]
    failures: list[BaseException] = []
    writes = 0
    committed = 0
    config = shared_cluster.config
    async with commit.connect(config) as db, commit.connect(with_deadline(config, 5.0)) as writer:
        for account in accounts:
            await db.put(account, 1000)

        @commit.transactional
        async def transfer(tx: commit.Transaction, a: str, b: str) -> None:
            tx.put(a, ((await tx.get(a)).value or 0) - 1)
            tx.put(b, ((await tx.get(b)).value or 0) + 1)

        async def transfers(client_rng: random.Random) -> None:
            nonlocal committed
            while True:
                a, b = client_rng.sample(accounts, 2)
                await transfer(db, a, b)
                committed += 1

        async def single_key_writes(client_rng: random.Random) -> None:
            nonlocal writes
            while True:
                account = client_rng.choice(accounts)
                try:
                    if client_rng.random() < 0.8:
                        await writer.put(account, 1000)
                    else:
                        await writer.delete(account)
                    writes += 1
                except commit.ClusterError as exc:
                    failures.append(exc)
                await trio.sleep(client_rng.uniform(0, 0.1))  # locks come and go between the writes

        with trio.move_on_after(8):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(transfers, random.Random(rng.random()))
                for _ in range(4):
                    nursery.start_soon(single_key_writes, random.Random(rng.random()))
    print(f"{committed} transfers committed, {writes} single-key writes, {len(failures)} failed")
    assert committed > 0 and writes > 0
    assert not failures, failures[:3]
