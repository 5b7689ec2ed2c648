"""Benchmark workloads: one operation per call, run in closed or open loops by ``bench.harness``.

Each workload is ``async def op(db, state, params, client, i)``; an optional
setup ``async def setup(db, params, tag) -> state`` runs once per client
process. Registered by name so worker processes can find them.

An operation is one attempt: ``commit.Conflict`` out of it is an abort, for
the harness to count. The transactional workloads take ``retry=True`` to
run each operation through ``db.run`` instead (retried on conflict, as an
application would); their state is a ``Counters``, whose ``retries`` (the
attempts after each operation's first) the harness sums over the processes.

An operation is a function of ``(client, i)`` and what it reads: it seeds its
random choices from them, as ``transfer`` does, so a run can be replayed.

The keyspaces of ``bank``, ``ycsb`` and ``neworder`` are shared by all the
client processes (named by ``prefix``, not by the process), so contention is
that of all the clients. Their rows are loaded by every process's setup
unless a marker row says the same rows are loaded already: idempotent, since
a row's initial value depends only on the parameters, and bounded by
``MAX_LOADED_ROWS``, ``LOAD_TASKS`` puts in flight at a time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

import commit
from bench.keys import DISTRIBUTIONS, generator
from commit.protocols.registry import PROTOCOLS
from commit.routing import keys_on_each_shard

KEYS_PER_CLIENT = 1000
MAX_LOADED_ROWS = 200_000  # what a setup may load: about a minute of puts at README's 64-client rate
LOAD_TASKS = 32  # puts in flight while loading
MAX_TRANSFER = 10  # bank: amounts are 1..MAX_TRANSFER


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


# ---------------------------------------------------------------------------------------------------------
# What the workloads below share: parameters, retries, loading.

@dataclass
class Counters:
    """The part of a workload's state the harness reads: attempts beyond each operation's first."""

    retries: int = 0


@dataclass(frozen=True)
class TxParams:
    """Parameters of every transactional workload: the commit protocol (None: the cluster's default), retry."""

    protocol: str | None = None
    retry: bool = False

    def __post_init__(self) -> None:
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")


P = TypeVar("P", bound=TxParams)


def parse(kind: type[P], params: dict[str, Any]) -> P:
    """``params`` as ``kind``, its defaults filled in; ValueError for a name it does not have (a typo)."""
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for {kind.__name__}; "
                         f"known: {', '.join(sorted(names))}")
    return kind(**params)


Body = Callable[[commit.Transaction], Awaitable[None]]


async def transact(db: commit.Database, counters: Counters, params: TxParams, body: Body) -> None:
    """``body`` in one transaction attempt, or with ``params.retry`` under ``db.run``, its retries counted."""
    if not params.retry:
        tx = commit.Transaction(db, params.protocol)
        await body(tx)
        await tx.commit()
        return
    attempts = 0

    async def counted(tx: commit.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            counters.retries += 1
        await body(tx)

    await db.run(counted, protocol=params.protocol)


async def load_once(db: commit.Database, marker: str, spec: dict[str, Any], rows: list[tuple[str, Any]]) -> None:
    """Put ``rows``, then ``marker`` = ``spec``; nothing if the marker already says ``spec``."""
    if len(rows) > MAX_LOADED_ROWS:
        raise ValueError(f"{len(rows)} rows to load; at most {MAX_LOADED_ROWS}")
    if (await db.get(marker)).value == spec:
        return

    async def stripe(first: int) -> None:
        for key, value in rows[first::LOAD_TASKS]:
            await db.put(key, value)

    async with trio.open_nursery() as nursery:
        for first in range(LOAD_TASKS):
            nursery.start_soon(stripe, first)
    await db.put(marker, spec)


def on_shard(name: str, shard: int, shard_count: int) -> str:
    """The first key ``name~n`` that lands on ``shard``: a row placed with its warehouse (or account)."""
    return keys_on_each_shard(f"{name}~", 1, shard_count)[shard][0]


# ---------------------------------------------------------------------------------------------------------
# bank: transfers between two accounts, a fraction of them across shards.

@dataclass(frozen=True)
class BankParams(TxParams):
    cross_shard: float = 0.5  # the fraction of transfers between two shards; the rest are one-shard (1PC)
    accounts_per_shard: int = 100
    start_balance: int = 1000
    prefix: str = "bank-"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.cross_shard <= 1.0:
            raise ValueError(f"cross_shard is a fraction, got {self.cross_shard}")
        if self.accounts_per_shard < 2:
            raise ValueError("a one-shard transfer needs two accounts on a shard: accounts_per_shard >= 2")


@dataclass
class BankState(Counters):
    params: BankParams = field(default_factory=BankParams)
    accounts: list[list[str]] = field(default_factory=list)


async def bank_setup(db: commit.Database, params: dict[str, Any], tag: str) -> BankState:
    p = parse(BankParams, params)
    if p.cross_shard > 0 and db.config.shard_count < 2:
        raise ValueError(f"cross-shard transfers need two shards; the cluster has {db.config.shard_count}")
    accounts = keys_on_each_shard(f"{p.prefix}acct", p.accounts_per_shard, db.config.shard_count)
    spec = {"workload": "bank", "accounts_per_shard": p.accounts_per_shard, "start_balance": p.start_balance,
            "shards": db.config.shard_count}
    await load_once(db, f"{p.prefix}loaded", spec, [(a, p.start_balance) for shard in accounts for a in shard])
    return BankState(params=p, accounts=accounts)


async def bank(db: commit.Database, state: BankState, params: dict[str, Any], client: str, i: int) -> None:
    """Move 1..MAX_TRANSFER between two accounts: on two shards with probability ``cross_shard``, else on one.

    The debit-credit shape of TPC-B and of CockroachDB's ``workload bank``; the sum of the balances is kept.
    """
    rng = random.Random(f"{client}-{i}")
    accounts = state.accounts
    if rng.random() < state.params.cross_shard:
        first, second = rng.sample(range(len(accounts)), 2)
        src, dst = rng.choice(accounts[first]), rng.choice(accounts[second])
    else:
        src, dst = rng.sample(accounts[rng.randrange(len(accounts))], 2)
    amount = rng.randint(1, MAX_TRANSFER)

    async def body(tx: commit.Transaction) -> None:
        tx.put(src, (await tx.get(src)).value - amount)
        tx.put(dst, (await tx.get(dst)).value + amount)

    await transact(db, state, state.params, body)


# ---------------------------------------------------------------------------------------------------------
# ycsb: YCSB's core workloads A, B and F (Cooper et al., "Benchmarking Cloud Serving Systems with YCSB",
# SoCC 2010; the proportions of workloads/workloada, workloadb and workloadf).

READ, UPDATE, READ_MODIFY_WRITE = "read", "update", "rmw"
YCSB_MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "A": ((READ, 0.5), (UPDATE, 0.5)),  # update heavy: a session store recording recent actions
    "B": ((READ, 0.95), (UPDATE, 0.05)),  # read mostly: photo tagging
    "F": ((READ, 0.5), (READ_MODIFY_WRITE, 0.5)),  # read-modify-write: a user database
}
YCSB_RECORDS = 1000  # YCSB's default recordcount
YCSB_VALUE_BYTES = 100  # YCSB's fieldlength (YCSB has 10 such fields a record; here one value)


@dataclass(frozen=True)
class YcsbParams(TxParams):
    mix: str = "A"
    distribution: str = "zipfian"
    records: int = YCSB_RECORDS
    value_bytes: int = YCSB_VALUE_BYTES
    prefix: str = "ycsb-"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mix not in YCSB_MIXES:
            raise ValueError(f"unknown YCSB mix {self.mix!r}; choose one of {', '.join(YCSB_MIXES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
        if not 1 <= self.records <= MAX_LOADED_ROWS:
            raise ValueError(f"records must be 1..{MAX_LOADED_ROWS}, got {self.records}")
        if self.value_bytes < 0:
            raise ValueError(f"value_bytes must not be negative, got {self.value_bytes}")


@dataclass
class YcsbState(Counters):
    params: YcsbParams = field(default_factory=YcsbParams)


def ycsb_key(prefix: str, record: int) -> str:
    return f"{prefix}user{record}"


async def ycsb_setup(db: commit.Database, params: dict[str, Any], tag: str) -> YcsbState:
    p = parse(YcsbParams, params)
    spec = {"workload": "ycsb", "records": p.records, "value_bytes": p.value_bytes}
    rows = [(key, random.Random(key).randbytes(p.value_bytes))
            for key in (ycsb_key(p.prefix, r) for r in range(p.records))]
    await load_once(db, f"{p.prefix}loaded", spec, rows)
    return YcsbState(params=p)


async def ycsb(db: commit.Database, state: YcsbState, params: dict[str, Any], client: str, i: int) -> None:
    """One YCSB operation of the mix: a read, a blind update, or a read-modify-write in one transaction."""
    p = state.params
    rng = random.Random(f"{client}-{i}")
    kinds, shares = zip(*YCSB_MIXES[p.mix])
    kind = rng.choices(kinds, shares)[0]
    # A seed of its own: a generator seeded like rng would draw from the number that chose ``kind``.
    key = ycsb_key(p.prefix, generator(p.distribution, p.records, f"{client}-{i}-key").next())
    if kind == READ:
        await db.get(key)
        return
    value = rng.randbytes(p.value_bytes)
    if kind == UPDATE:
        await db.put(key, value)
        return

    async def body(tx: commit.Transaction) -> None:
        await tx.get(key)
        tx.put(key, value)

    await transact(db, state, p, body)


# ---------------------------------------------------------------------------------------------------------
# kshard: a write-only transaction on exactly k shards: how a commit's cost grows with its participants.

MAX_K_SHARDS = 5


@dataclass(frozen=True)
class KShardParams(TxParams):
    k: int = 2
    keys_per_shard: int = 100
    prefix: str = "kshard-"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= MAX_K_SHARDS:
            raise ValueError(f"k must be 1..{MAX_K_SHARDS}, got {self.k}")
        if self.keys_per_shard < 1:
            raise ValueError(f"keys_per_shard must be positive, got {self.keys_per_shard}")


@dataclass
class KShardState(Counters):
    params: KShardParams = field(default_factory=KShardParams)
    keys: list[list[str]] = field(default_factory=list)


async def kshard_setup(db: commit.Database, params: dict[str, Any], tag: str) -> KShardState:
    p = parse(KShardParams, params)
    if p.k > db.config.shard_count:
        raise ValueError(f"k={p.k} shards, but the cluster has {db.config.shard_count}")
    return KShardState(params=p, keys=keys_on_each_shard(p.prefix, p.keys_per_shard, db.config.shard_count))


async def kshard(db: commit.Database, state: KShardState, params: dict[str, Any], client: str, i: int) -> None:
    """Blind writes of one key on each of ``k`` shards: no reads, so only lock conflicts abort it."""
    rng = random.Random(f"{client}-{i}")
    keys = [rng.choice(state.keys[s]) for s in rng.sample(range(len(state.keys)), state.params.k)]
    value = f"{client}-{i}"

    async def body(tx: commit.Transaction) -> None:
        for key in keys:
            tx.put(key, value)

    await transact(db, state, state.params, body)


# ---------------------------------------------------------------------------------------------------------
# neworder: TPC-C's New-Order transaction (TPC Benchmark C, revision 5.11, clause 2.4), scaled down and
# simplified: no WAREHOUSE, CUSTOMER, ITEM or NEW-ORDER rows (read-only or insert-only, so no contention),
# items uniform (not NURand, clause 2.1.6), no 1% of rolled-back orders. A warehouse's rows all live on one
# shard, warehouse w on shard w % shard_count, so an order with a remote line is cross-shard.

DISTRICTS_PER_WAREHOUSE = 10  # clause 1.2.1: 10 districts a warehouse
MIN_LINES, MAX_LINES = 5, 15  # clause 2.4.1.3: ol_cnt random within [5 .. 15]
MAX_QUANTITY = 10  # clause 2.4.1.5: ol_quantity random within [1 .. 10]
MIN_STOCK, MAX_STOCK = 10, 100  # clause 4.3.3.1: s_quantity random within [10 .. 100]
RESTOCK_BELOW, RESTOCK = 10, 91  # clause 2.4.2.2: quantity left below 10 gets 91 added
FIRST_ORDER_ID = 3001  # clause 4.3.3.1: d_next_o_id = 3,001 (3,000 orders loaded per district)
ITEMS = 1000  # stock rows a warehouse; TPC-C has 100,000 (clause 1.2.1), scaled down to load in seconds
REMOTE_FRACTION = 0.1  # TPC-C: 1% of lines remote, so about 10% of orders have one


@dataclass(frozen=True)
class NewOrderParams(TxParams):
    warehouses: int = 4
    remote_fraction: float = REMOTE_FRACTION  # the orders with one line supplied by a remote warehouse
    items: int = ITEMS
    prefix: str = "neworder-"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warehouses < 1:
            raise ValueError(f"warehouses must be positive, got {self.warehouses}")
        if not 0.0 <= self.remote_fraction <= 1.0:
            raise ValueError(f"remote_fraction is a fraction, got {self.remote_fraction}")
        if self.items < MAX_LINES:
            raise ValueError(f"an order has up to {MAX_LINES} distinct items: items >= {MAX_LINES}")


@dataclass
class NewOrderState(Counters):
    params: NewOrderParams = field(default_factory=NewOrderParams)
    shard_count: int = 1
    districts: list[list[str]] = field(default_factory=list)  # [warehouse][district] -> key
    stock: list[list[str]] = field(default_factory=list)  # [warehouse][item] -> key
    remote: list[list[int]] = field(default_factory=list)  # [warehouse] -> warehouses on other shards

    def row(self, warehouse: int, name: str) -> str:
        """The key of ``name`` in ``warehouse``, on the warehouse's shard."""
        return on_shard(f"{self.params.prefix}w{warehouse}-{name}", warehouse % self.shard_count, self.shard_count)


async def neworder_setup(db: commit.Database, params: dict[str, Any], tag: str) -> NewOrderState:
    p = parse(NewOrderParams, params)
    shards = db.config.shard_count
    state = NewOrderState(params=p, shard_count=shards)
    state.districts = [[state.row(w, f"d{d}") for d in range(DISTRICTS_PER_WAREHOUSE)] for w in range(p.warehouses)]
    state.stock = [[state.row(w, f"s{item}") for item in range(p.items)] for w in range(p.warehouses)]
    state.remote = [[v for v in range(p.warehouses) if v % shards != w % shards] for w in range(p.warehouses)]
    rows: list[tuple[str, Any]] = [(key, {"next_o_id": FIRST_ORDER_ID}) for keys in state.districts for key in keys]
    rows += [(key, {"qty": random.Random(key).randint(MIN_STOCK, MAX_STOCK), "ytd": 0, "orders": 0, "remote": 0})
             for keys in state.stock for key in keys]
    spec = {"workload": "neworder", "warehouses": p.warehouses, "items": p.items, "shards": shards}
    await load_once(db, f"{p.prefix}loaded", spec, rows)
    return state


async def neworder(db: commit.Database, state: NewOrderState, params: dict[str, Any], client: str, i: int) -> None:
    """One New-Order: take the district's next order id, take stock of 5-15 items, insert the order and lines.

    With probability ``remote_fraction`` one line is supplied by a warehouse on another shard (clause
    2.4.1.5 makes each line remote with 1%; one line per order keeps the cross-shard fraction a parameter).
    """
    p = state.params
    rng = random.Random(f"{client}-{i}")
    home = rng.randrange(p.warehouses)
    district = rng.randrange(DISTRICTS_PER_WAREHOUSE)
    count = rng.randint(MIN_LINES, MAX_LINES)
    items = rng.sample(range(p.items), count)
    quantities = [rng.randint(1, MAX_QUANTITY) for _ in items]
    supply = [home] * count
    if state.remote[home] and rng.random() < p.remote_fraction:
        supply[rng.randrange(count)] = rng.choice(state.remote[home])

    async def body(tx: commit.Transaction) -> None:
        district_key = state.districts[home][district]
        order_id = (await tx.get(district_key)).value["next_o_id"]
        tx.put(district_key, {"next_o_id": order_id + 1})
        order = f"d{district}-o{order_id}"
        for line, (item, quantity, warehouse) in enumerate(zip(items, quantities, supply)):
            stock_key = state.stock[warehouse][item]
            stock = (await tx.get(stock_key)).value
            left = stock["qty"] - quantity
            tx.put(stock_key, {"qty": left if left >= RESTOCK_BELOW else left + RESTOCK,
                               "ytd": stock["ytd"] + quantity, "orders": stock["orders"] + 1,
                               "remote": stock["remote"] + (warehouse != home)})
            tx.put(state.row(home, f"{order}-l{line}"), {"item": item, "supply_w": warehouse, "qty": quantity})
        tx.put(state.row(home, order), {"lines": count, "all_local": supply == [home] * count})

    await transact(db, state, p, body)


Op = Callable[[commit.Database, Any, dict[str, Any], str, int], Awaitable[None]]
REGISTRY: dict[str, Op] = {"kv.put": kv_put, "kv.get": kv_get, "txn.transfer": transfer, "bank": bank, "ycsb": ycsb,
                           "kshard": kshard, "neworder": neworder}
SETUP: dict[str, Callable[[commit.Database, dict[str, Any], str], Awaitable[Any]]] = {
    "txn.transfer": transfer_setup, "bank": bank_setup, "ycsb": ycsb_setup, "kshard": kshard_setup,
    "neworder": neworder_setup,
}
