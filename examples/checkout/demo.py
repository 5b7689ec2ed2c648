"""``python -m examples.checkout.demo``: the checkout, four ways, succeeding and failing, on a throwaway cluster.

It starts three nodes under a temporary directory and the four services as processes of their own, runs one
order per (way, scenario), prints what happened to each (a saga's history as its timeline, a choreography's
events from the services' outboxes; an atomic checkout has no history, only its outcome), audits every order
and stops everything. Scenarios: a success, each business failure (out of stock, a declined card, no courier)
and a slow payment service, which times out once and is retried (not for the atomic ways: no service runs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import trio

import commit
from commit.client import Database
from commit.saga.client import SagaClient
from commit.tooling.saga_views import TIMELINE_COLUMNS, timeline_rows
from commit.tooling.tables import format_table
from examples.checkout import services as svc
from examples.checkout.checks import audit, emitted_events
from examples.checkout.cluster import QUICK_SAGAS, ServiceProcesses, checkout_cluster
from examples.checkout.flows import ATOMIC_PREFIX, CHOREOGRAPHY, SAGA_MODE, TCC_MODE, Order, run_checkout, seed

MODES = (SAGA_MODE, TCC_MODE, CHOREOGRAPHY, f"{ATOMIC_PREFIX}paxos-commit", f"{ATOMIC_PREFIX}2pc")
SKU, CUSTOMER, REGION, NOWHERE = "book", "ada", "north", "nowhere"
STOCK, BALANCE, COURIERS = 100, 10_000, 50
QTY, PRICE = 1, 30
SLOW_S = 2 * QUICK_SAGAS["attempt_timeout_s"]  # longer than an attempt may take: the first call times out
RUN_TIMEOUT_S = 30.0
EVENT_COLUMNS = ("service", "n", "event", "error")

SCENARIOS: dict[str, Callable[[Order], Order]] = {
    "success": lambda o: o,
    "out of stock": lambda o: replace(o, qty=STOCK + 1),
    "card declined": lambda o: replace(o, card=svc.DECLINED_CARD),
    "no courier": lambda o: replace(o, region=NOWHERE),
    "slow payment": lambda o: replace(o, slow={"service": svc.PAYMENT, "s": SLOW_S}),
}
SERVICE_SCENARIOS = ("slow payment",)  # only where a service runs the step


def progress(line: str) -> None:
    print(f"[demo] {line}", flush=True)


async def show(db: Database, mode: str, order: Order) -> None:
    if mode in (SAGA_MODE, TCC_MODE):
        print(format_table(timeline_rows(await SagaClient(db).show(order.id)), TIMELINE_COLUMNS))
    elif mode == CHOREOGRAPHY:
        print(format_table(await emitted_events(db, order.id), EVENT_COLUMNS))
    print()


async def demo(processes: ServiceProcesses, config: commit.ClusterConfig) -> list[str]:
    async with commit.connect(config) as db:
        await processes.wait_serving(db)
        progress("services registered; seeding stock, money and couriers")
        initial = await seed(db, {SKU: STOCK}, {CUSTOMER: BALANCE}, {REGION: COURIERS, NOWHERE: 0})
        orders: list[Order] = []
        for index, mode in enumerate(MODES):
            for scenario, make in SCENARIOS.items():
                if mode.startswith(ATOMIC_PREFIX) and scenario in SERVICE_SCENARIOS:
                    continue
                order = make(Order(id=f"order-{index}-{len(orders)}", sku=SKU, qty=QTY, amount=PRICE,
                                   customer=CUSTOMER, region=REGION))
                started = time.monotonic()
                outcome = await run_checkout(db, mode, order, RUN_TIMEOUT_S)
                orders.append(order)
                progress(f"{mode:<20} {scenario:<14} {order.id}: {outcome} in {time.monotonic() - started:.2f}s")
                await show(db, mode, order)
        progress(f"auditing {len(orders)} orders")
        return await audit(db, orders, initial)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="checkout-demo-") as tmp:
        root = Path(tmp)
        cluster = checkout_cluster(root)
        processes = ServiceProcesses(cluster.config, root)
        try:
            progress(f"starting 3 nodes under {root}")
            cluster.start_all()
            trio.run(cluster.wait_ready)
            progress(f"starting the services {', '.join(svc.SERVICES)} as processes")
            processes.start_all()
            problems = trio.run(demo, processes, cluster.config)
        finally:
            progress("stopping the services and the nodes")
            processes.stop()
            cluster.stop()
    for problem in problems:
        progress(f"PROBLEM: {problem}")
    progress("every order is all-or-nothing and every total is conserved" if not problems else "inconsistent")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
