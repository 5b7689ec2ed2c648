"""The chaos workloads: clients that drive the store and record every operation into a ``History``.

Three, as in Jepsen's etcd and CockroachDB tests:

* ``bank``: transfers between accounts on different shards, and reads of every balance in one
  transaction (``chaos.checkers.bank``);
* ``list-append``: Elle's workload, transactions of reads and appends over a few keys, each appended
  value unique per key, so that reads reveal each key's version order (``chaos.checkers.list_append``); a
  transaction of one read is a plain single-key read (``db.get``, no commit), which must be linearizable;
* ``set``: inserts of unique elements, then one read of every element tried (``chaos.checkers.sets``).

Joined by '+' (``bank+list-append``), a run interleaves several in one history.

How an outcome is recorded (Jepsen's rule): ``ok`` it happened, ``fail`` it certainly did not (the
error says it cannot have been applied), ``info`` for everything else, a timeout or ``CommitUnknown``
included: it may have happened, now or later. A client whose operation ended ``info`` goes on under a new
process id, so that no process has two operations open at once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

import commit
from chaos.history import History
from consensus.errors import ClusterError

ACCOUNT_BALANCE = 100
MAX_TRANSFER = 10
LIST_KEYS = 8  # list-append keys in use at once, by default ...
APPENDS_PER_KEY = 32  # ... each retired after this many appends, so reads stay short (Elle's key rotation)
MAX_MICRO_OPS = 4
PROGRESS_EVERY_S = 5.0
BANK_READS = 0.2  # the share of bank operations that read every balance


def outcome(exc: BaseException) -> str:
    """``fail`` when the error says nothing was applied, ``info`` when it may have been."""
    if isinstance(exc, ClusterError) and not exc.maybe_applied:
        return "fail"
    return "info"


@dataclass
class Processes:
    """Process ids for the clients: a client moves to a fresh one after an ``info``."""

    next_id: int = 0

    def fresh(self) -> int:
        self.next_id += 1
        return self.next_id - 1


async def record(history: History, process: int, f: str, value: Any,
                 call: Callable[[], Awaitable[Any]], timeout_s: float) -> str:
    """Invoke, run ``call`` for at most ``timeout_s``, complete; returns the completion's type."""
    invoked = history.invoke(process, f, value)
    try:
        with trio.fail_after(timeout_s):
            result = await call()
    except trio.TooSlowError:
        history.complete(invoked, "info", error="timeout")
        return "info"
    except ClusterError as exc:
        kind = outcome(exc)
        history.complete(invoked, kind, error=f"{type(exc).__name__}: {exc.message}")
        return kind
    history.complete(invoked, "ok", result)
    return "ok"


@dataclass
class Workload:
    """A run's workload: one of ``KINDS``, or several joined by '+' (``bank+list-append``), whose
    operations interleave in one history; each checker reads its own operations (``chaos.runner.check``)."""

    name: str
    protocol: str
    rng: random.Random
    op_timeout_s: float
    accounts: list[str] = field(default_factory=list)
    appended: dict[str, int] = field(default_factory=dict)  # list-append: key -> values appended so far
    retired: int = 0
    elements: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.name.split("+"))

    @property
    def total(self) -> int:
        return ACCOUNT_BALANCE * len(self.accounts)

    async def setup(self, db: commit.Database, accounts: int, keys: int = LIST_KEYS) -> None:
        if "bank" in self.kinds:
            self.accounts = [f"acct-{i}" for i in range(accounts)]
            for account in self.accounts:
                await db.put(account, ACCOUNT_BALANCE)
        if "list-append" in self.kinds:
            self.appended = {f"list-{i}": 0 for i in range(keys)}
            self.retired = keys

    def next_op(self) -> tuple[str, Any]:
        """The next operation's name and its invoke value."""
        kind = self.rng.choice(self.kinds)
        if kind == "bank":
            if self.rng.random() < BANK_READS:
                return "read", None
            src, dst = self.rng.sample(self.accounts, 2)
            return "transfer", {"from": src, "to": dst, "amount": self.rng.randint(1, MAX_TRANSFER)}
        if kind == "set":
            self.elements += 1
            return "add", self.elements - 1
        micro: list[list[Any]] = []
        for _ in range(self.rng.randint(1, MAX_MICRO_OPS)):
            key = self.rng.choice(sorted(self.appended))
            if self.rng.random() < 0.5:
                micro.append(["r", key, None])
            else:
                self.appended[key] += 1
                micro.append(["append", key, self.appended[key]])
                if self.appended[key] >= APPENDS_PER_KEY:
                    del self.appended[key]
                    self.appended[f"list-{self.retired}"] = 0
                    self.retired += 1
        return "txn", micro

    def call(self, db: commit.Database, f: str, value: Any) -> Callable[[], Awaitable[Any]]:
        """The operation as one call to the store, returning what the history records at ``ok``."""
        if f == "transfer":
            return lambda: db.run(_transfer, value["from"], value["to"], value["amount"], protocol=self.protocol)
        if f == "read":
            return lambda: db.run(_balances, self.accounts, protocol=self.protocol)
        if f == "add":
            return lambda: db.put(f"set-{value}", value)
        if len(value) == 1 and value[0][0] == "r":  # one read alone: a linearizable single-key read, no commit
            return lambda: _single_read(db, value[0][1])
        return lambda: db.run(_micro_ops, value, protocol=self.protocol)

    def final_reads(self, db: commit.Database, history: History) -> list[tuple[str, Any, Callable[[], Awaitable[Any]]]]:
        """The reads a checker needs at the end, as (f, invoke value, call): every balance, every element
        tried, and for list-append one single-key read per key, each its own operation (a read of one key
        is linearizable; several together are not one transaction, so they are not recorded as one)."""
        reads: list[tuple[str, Any, Callable[[], Awaitable[Any]]]] = []
        if "bank" in self.kinds:
            reads.append(("read", None, self.call(db, "read", None)))
        if "set" in self.kinds:
            async def present() -> list[int]:
                return [e for e in range(self.elements) if (await db.get(f"set-{e}")).exists]
            reads.append(("read", None, present))
        if "list-append" in self.kinds:
            for key in sorted({key for op in history.ops if op.f == "txn" for _f, key, _v in op.value}):
                reads.append(("txn", [["r", key, None]], self.call(db, "txn", [["r", key, None]])))
        return reads


async def _transfer(tx: commit.Transaction, src: str, dst: str, amount: int) -> None:
    a = (await tx.get(src)).value
    b = (await tx.get(dst)).value
    if a < amount:
        return  # no overdraft: the transfer commits as a no-op, as Jepsen's bank does
    tx.put(src, a - amount)
    tx.put(dst, b + amount)


async def _balances(tx: commit.Transaction, accounts: list[str]) -> dict[str, int]:
    return {a: (await tx.get(a)).value for a in accounts}


async def _single_read(db: commit.Database, key: str) -> list[list[Any]]:
    return [["r", key, (await db.get(key)).value or []]]


async def _micro_ops(tx: commit.Transaction, micro: list[list[Any]]) -> list[list[Any]]:
    done = []
    for f, key, value in micro:
        current = (await tx.get(key)).value or []
        if f == "r":
            done.append([f, key, list(current)])
        else:
            tx.put(key, [*current, value])
            done.append([f, key, value])
    return done


async def run_clients(db: commit.Database, workload: Workload, history: History, *, clients: int,
                      seconds: float, operations: int = 0, progress: Callable[[str], None] = lambda line: None,
                      every_s: float = PROGRESS_EVERY_S) -> None:
    """``clients`` concurrent clients issue operations for ``seconds``, or until ``operations`` were issued."""
    processes = Processes()
    deadline = trio.current_time() + seconds
    issued = 0

    def more() -> bool:
        return trio.current_time() < deadline and (not operations or issued < operations)

    async def client() -> None:
        nonlocal issued
        process = processes.fresh()
        while more():
            issued += 1
            f, value = workload.next_op()
            kind = await record(history, process, f, value, workload.call(db, f, value), workload.op_timeout_s)
            if kind == "info":
                process = processes.fresh()

    async def report() -> None:
        while True:
            await trio.sleep(every_s)
            done = Counter(op.type for op in history.ops if op.type != "invoke")
            progress(f"  {issued} issued: {done['ok']} ok, {done['fail']} fail, {done['info']} info")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        async with trio.open_nursery() as running:
            for _ in range(clients):
                running.start_soon(client)
        nursery.cancel_scope.cancel()
