"""The bank workload the transaction tests share: concurrent transfers plus an auditor.

Transfers move money between accounts on different shards and an auditor sums every account in one
transaction; under a correct commit protocol the total never changes, in any audit or at the end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

import commit


@commit.transactional
async def transfer(tx: commit.Transaction, src: str, dst: str, amount: int) -> None:
    a = (await tx.get(src)).value
    b = (await tx.get(dst)).value
    tx.put(src, a - amount)
    tx.put(dst, b + amount)


@dataclass
class BankRun:
    transfers: int = 0
    audits: list[int] = field(default_factory=list)
    balances: list[int] = field(default_factory=list)


async def run_bank(db: commit.Database, accounts: list[str], protocol: str, rng: random.Random, *,
                   clients: int, transfers_each: int, audits: int, start_balance: int) -> BankRun:
    """Fund every account, run the clients and the auditor concurrently, and read the final balances."""
    run = BankRun()
    for account in accounts:
        await db.put(account, start_balance)

    async def client() -> None:
        local = random.Random(rng.random())
        for _ in range(transfers_each):
            src, dst = local.sample(accounts, 2)
            await db.run(transfer, src, dst, local.randint(1, 20), protocol=protocol)
            run.transfers += 1

    async def audit(tx: commit.Transaction) -> int:
        return sum([(await tx.get(a)).value for a in accounts])

    async def auditor() -> None:
        for _ in range(audits):
            run.audits.append(await db.run(audit, protocol=protocol))

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
        nursery.start_soon(auditor)
    run.balances = [(await db.get(a)).value for a in accounts]
    return run
