"""The same stream of checkouts under atomic commit and under sagas, in one run: what isolation costs.

    python -m bench.checkout                 # throwaway cluster + the four checkout services as processes
    python -m bench.checkout --quick --json  # the tiny run the test suite makes

Modes, in interleaved rounds so that their ratios hold on a noisy machine: ``atomic:paxos-commit`` and
``atomic:2pc`` (one store transaction over every service's keys), ``saga`` (orchestrated in the cluster),
``choreography`` (events through the services' outboxes) and ``tcc``. Each round runs ``--checkouts``
orders per mode from ``--clients`` concurrent clients while ``--readers`` readers read random orders of
that round (``examples.checkout.checks.read_view``, one read-only transaction each) and count the reads
that saw an intermediate state: money taken but no stock reserved, and so on. ``unflagged`` are those the
semantic lock did not flag (the order was not PENDING): an anomaly a careful reader could not tell.

Every mode gets its own skus, customers and regions, so the audit (``checks.audit``: every order all done
or all undone, and every total conserved) judges each alone. A fraction ``--declined`` of the orders has a
declined card, so compensations (or aborts) are part of the stream.

Crash phase (unless ``--no-crash``): each mode's clients check out for ``--crash-seconds`` while the node that
coordinates it (the ``2pc`` coordinator node for ``atomic:2pc``, the coordinator group's leader for the others) is
killed -9 a third of the way in and restarted ``--outage`` seconds later. Reported: checkouts that ended in
an error, the longest latency, and the longest stretch with no checkout finishing.

Results: a table, ``checkout.json`` and ``checkout.png`` (in ``bench/results/``, or ``--results DIR``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import commit
from bench.harness import histogram
from bench.report import RESULTS, progress, write_report
from commit.client import Database
from commit.config import COORDINATOR_GROUP
from commit.saga.client import SagaClient
from commit.tooling.localcluster import LocalCluster
from commit.tooling.tables import format_table
from examples.checkout import services as svc
from examples.checkout.checks import audit, observe, read_view
from examples.checkout.cluster import ServiceProcesses, checkout_cluster
from examples.checkout.flows import ATOMIC_PREFIX, CHOREOGRAPHY, SAGA_MODE, TCC_MODE, Initial, Order, run_checkout, seed

MODES = (f"{ATOMIC_PREFIX}paxos-commit", f"{ATOMIC_PREFIX}2pc", SAGA_MODE, CHOREOGRAPHY, TCC_MODE)
SAGA_MODES = (SAGA_MODE, CHOREOGRAPHY, TCC_MODE)
COLUMNS = ("mode", "checkouts", "per_s", "p50_ms", "p99_ms", "compensated", "errors", "reads", "intermediate",
           "unflagged", "stock_held_p50_ms", "audit")
CRASH_COLUMNS = ("mode", "killed", "checkouts", "errors", "max_latency_s", "longest_stall_s", "audit")
SKUS, CUSTOMERS, REGIONS = 4, 8, 2
PLENTY = 10**6  # stock, money and couriers enough that only the declined cards refuse
PRICE = 10
CHECKOUT_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
BENCH_SAGAS = {"attempt_timeout_s": 2.0, "initial_interval_s": 0.1, "maximum_interval_s": 1.0}


@dataclass
class Phase:
    """One mode's share of one round: its orders, what each ended as, how long each took."""

    mode: str
    stream: OrderStream
    orders: list[Order] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    ended: dict[str, str] = field(default_factory=dict)  # order id -> completed, compensated, a refusal, error
    finished_at: dict[str, float] = field(default_factory=dict)  # order id -> wall time
    reads: int = 0
    intermediate: int = 0
    unflagged: int = 0
    started: list[str] = field(default_factory=list)


def tag_of(mode: str) -> str:
    return mode.replace(":", "-")


@dataclass
class OrderStream:
    """Orders over one phase's own skus, customers and regions (``label`` makes both ids and names unique),
    so that each phase's audit judges its orders alone."""

    label: str
    declined: float
    rng: random.Random
    count: int = 0

    def __post_init__(self) -> None:
        self.initial = Initial({f"{self.label}-sku-{i}": PLENTY for i in range(SKUS)},
                               {f"{self.label}-customer-{i}": PLENTY for i in range(CUSTOMERS)},
                               {f"{self.label}-region-{i}": PLENTY for i in range(REGIONS)})

    def next(self) -> Order:
        self.count += 1
        pick = self.rng.choice
        return Order(id=f"{self.label}-{self.count}", sku=pick(list(self.initial.skus)), qty=1, amount=PRICE,
                     customer=pick(list(self.initial.customers)), region=pick(list(self.initial.couriers)),
                     card=svc.DECLINED_CARD if self.rng.random() < self.declined else "ok")


async def _checkouts(db: Database, phase: Phase, clients: int, count: int | None = None,
                     until: float | None = None) -> None:
    """Closed loop: each client checks out the stream's next order as soon as its last one ended, until
    ``count`` orders were started or, with ``until``, until that time (trio's clock)."""

    def more() -> bool:
        return len(phase.orders) < count if count is not None else trio.current_time() < (until or 0.0)

    async def client() -> None:
        while more():
            order = phase.stream.next()
            phase.orders.append(order)
            phase.started.append(order.id)
            begun = trio.current_time()
            try:
                phase.ended[order.id] = await run_checkout(db, phase.mode, order, CHECKOUT_TIMEOUT_S)
            except commit.ClusterError as exc:
                phase.ended[order.id] = f"error: {type(exc).__name__}"
            phase.latencies_ms.append((trio.current_time() - begun) * 1000)
            phase.finished_at[order.id] = time.time()

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)


async def _read_while(db: Database, phase: Phase, readers: int, done: trio.Event, rng: random.Random) -> None:
    async def reader() -> None:
        while not done.is_set():
            if not phase.started:
                await trio.sleep(0)
                continue
            try:
                anomaly, flagged = observe(await read_view(db, rng.choice(phase.started)))
            except commit.ClusterError:
                continue
            phase.reads += 1
            if anomaly is not None:
                phase.intermediate += 1
                phase.unflagged += not flagged

    async with trio.open_nursery() as nursery:
        for _ in range(readers):
            nursery.start_soon(reader)


async def seed_phase(db: Database, phase: Phase) -> None:
    initial = phase.stream.initial
    await seed(db, initial.skus, initial.customers, initial.couriers)


async def run_phase(db: Database, phase: Phase, count: int, clients: int, readers: int, rng: random.Random) -> float:
    """``count`` checkouts with readers alongside; the phase's wall time in seconds."""
    await seed_phase(db, phase)
    begun = trio.current_time()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_while, db, phase, readers, done, rng)
        await _checkouts(db, phase, clients, count=count)
        done.set()
    return trio.current_time() - begun


async def settle(db: Database, phase: Phase) -> list[str]:
    """Wait out the sagas an error left running, then audit the phase's orders."""
    if phase.mode in (SAGA_MODE, TCC_MODE):
        sagas = SagaClient(db)
        for order_id, ended in phase.ended.items():
            if ended.startswith("error"):
                phase.ended[order_id] = (await sagas.wait(order_id, SETTLE_TIMEOUT_S))["state"]
    return await audit(db, phase.orders, phase.stream.initial)


async def stock_held_ms(db: Database, phase: Phase) -> list[float]:
    """For each completed order whose stock was reserved (a saga's visible hold): reserve to saga end.

    Atomic commit never shows a reservation; its locks live no longer than the commit (its latency).
    """
    if phase.mode.startswith(ATOMIC_PREFIX):
        return []
    held = []
    for order in phase.orders:
        record = (await db.get(svc.data_key(svc.INVENTORY, svc.STOCK.record_name(order.id)))).value
        if phase.ended.get(order.id) == "completed" and isinstance(record, dict) and order.id in phase.finished_at:
            held.append(max(0.0, (phase.finished_at[order.id] - record["at"]) * 1000))
    return held


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    h = histogram()
    for v in values:
        h.record_value(max(1, int(v * 1000)))  # microseconds
    return h.get_value_at_percentile(q) / 1000


def summarize(mode: str, phases: list[Phase], seconds: float, problems: list[str], held: list[float]) -> dict[str, Any]:
    latencies = [v for p in phases for v in p.latencies_ms]
    ended = [e for p in phases for e in p.ended.values()]
    return {
        "mode": mode, "checkouts": len(ended), "per_s": round(len(ended) / seconds, 1) if seconds else None,
        "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99),
        "completed": sum(e == "completed" for e in ended),
        "compensated": sum(e not in ("completed",) and not e.startswith("error") for e in ended),
        "errors": sum(e.startswith("error") for e in ended),
        "reads": sum(p.reads for p in phases), "intermediate": sum(p.intermediate for p in phases),
        "unflagged": sum(p.unflagged for p in phases), "stock_held_p50_ms": _percentile(held, 50),
        "audit": "ok" if not problems else f"{len(problems)} problems", "problems": problems[:10],
    }


async def coordinator_of(cluster: LocalCluster, mode: str) -> str:
    if mode == f"{ATOMIC_PREFIX}2pc":
        return cluster.config.twopc_coordinator
    return (await cluster.leaders())[COORDINATOR_GROUP]


def longest_stall(begun: float, finishes: list[float], ended: float) -> float:
    marks = [begun, *sorted(finishes), ended]
    return max(b - a for a, b in zip(marks, marks[1:]))


async def crash_phase(cluster: LocalCluster, db: Database, mode: str, args: argparse.Namespace,
                      rng: random.Random) -> dict[str, Any]:
    phase = Phase(mode, OrderStream(f"{tag_of(mode)}-crash", args.declined, rng))
    await seed_phase(db, phase)
    begun = time.time()
    victim = await coordinator_of(cluster, mode)

    async def kill_and_restart() -> None:
        await trio.sleep(args.crash_seconds / 3)
        cluster.kill(victim)
        await trio.sleep(args.outage)
        cluster.start(victim)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_and_restart)
        await _checkouts(db, phase, args.clients, until=trio.current_time() + args.crash_seconds)
    ended = time.time()
    await cluster.wait_ready()
    problems = await settle(db, phase)
    return {"mode": mode, "killed": victim, "checkouts": len(phase.ended),
            "errors": sum(e.startswith("error") for e in phase.ended.values()),
            "max_latency_s": round(max(phase.latencies_ms, default=0) / 1000, 2),
            "longest_stall_s": round(longest_stall(begun, list(phase.finished_at.values()), ended), 2),
            "audit": "ok" if not problems else f"{len(problems)} problems", "problems": problems[:10]}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [r["mode"] for r in rows]
    fig, (latency, anomalies) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(rows))
    latency.bar([i - 0.2 for i in x], [r["p50_ms"] or 0 for r in rows], width=0.4, label="p50")
    latency.bar([i + 0.2 for i in x], [r["p99_ms"] or 0 for r in rows], width=0.4, label="p99")
    latency.set_xticks(list(x), modes, rotation=20)
    latency.set_ylabel("checkout latency (ms)")
    latency.legend()
    anomalies.bar(list(x), [100 * r["intermediate"] / r["reads"] if r["reads"] else 0 for r in rows], label="all")
    anomalies.bar(list(x), [100 * r["unflagged"] / r["reads"] if r["reads"] else 0 for r in rows], label="unflagged")
    anomalies.set_xticks(list(x), modes, rotation=20)
    anomalies.set_ylabel("reads that saw an intermediate state (%)")
    anomalies.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def bench(cluster: LocalCluster, services: ServiceProcesses, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with commit.connect(cluster.config) as db:
        await services.wait_serving(db)
        phases: dict[str, list[Phase]] = {m: [] for m in MODES}
        seconds = {m: 0.0 for m in MODES}
        for round_ in range(args.rounds):
            order_of_modes = MODES[round_ % len(MODES):] + MODES[:round_ % len(MODES)]
            for mode in order_of_modes:
                progress(f"round {round_ + 1}/{args.rounds}: {mode}, {args.checkouts} checkouts, "
                         f"{args.clients} clients, {args.readers} readers ...")
                phase = Phase(mode, OrderStream(f"{tag_of(mode)}-r{round_}", args.declined, rng))
                seconds[mode] += await run_phase(db, phase, args.checkouts, args.clients, args.readers, rng)
                phases[mode].append(phase)
        rows = []
        for mode in MODES:
            problems = [p for phase in phases[mode] for p in await settle(db, phase)]
            held = [h for phase in phases[mode] for h in await stock_held_ms(db, phase)]
            rows.append(summarize(mode, phases[mode], seconds[mode], problems, held))
        crashes = []
        if args.crash:
            for mode in MODES:
                progress(f"crash: {mode}, kill -9 its coordinator for {args.outage}s ...")
                crashes.append(await crash_phase(cluster, db, mode, args, rng))
    return {"rows": rows, "crashes": crashes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkout", description=__doc__.split("\n")[0])
    parser.add_argument("--checkouts", type=int, default=40, help="orders per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--declined", type=float, default=0.2, help="fraction of orders with a declined card")
    parser.add_argument("--crash", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--crash-seconds", type=float, default=6.0, help="how long a crash phase should last")
    parser.add_argument("--outage", type=float, default=2.0, help="how long the killed coordinator stays dead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny: 1 round of 4 checkouts, no crash phase")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where checkout.json and checkout.png go")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.checkouts, args.clients, args.readers, args.crash = 1, 4, 2, 1, False
    with tempfile.TemporaryDirectory(prefix="bench-checkout-") as tmp:
        cluster = checkout_cluster(Path(tmp), sagas=BENCH_SAGAS)
        services = ServiceProcesses(cluster.config, Path(tmp))
        cluster.start_all()
        try:
            trio.run(cluster.wait_ready)
            services.start_all()
            progress(f"started a throwaway 3-node cluster and the checkout services in {tmp}")
            result = trio.run(bench, cluster, services, args)
        finally:
            services.stop()
            cluster.stop()
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "results")}
    write_report("checkout", {"bench": "checkout", "settings": settings, **result}, COLUMNS, args.json, args.results)
    plot(result["rows"], args.results / "checkout.png")
    if not args.json and result["crashes"]:
        print("\nits coordinator (or orchestrator) killed -9 mid-stream, restarted after the outage")
        print(format_table(result["crashes"], CRASH_COLUMNS))
    return 0 if all(r["audit"] == "ok" for r in result["rows"] + result["crashes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
