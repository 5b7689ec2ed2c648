"""The checkout example (examples/checkout) against real node processes and real service processes.

One cluster and one process per service serve the whole module (``tests.checkout_cluster``); each test has
its own goods, customers and regions, so each audits its own totals with ``examples.checkout.checks.audit``:
every order all done or all undone, stock, money and couriers conserved, which a step applied twice breaks.

A ``slow`` step sleeps ``SLOW_S``, longer than the attempt timeout of the cluster's ``[sagas]``, so its first
call times out and is called again; the tests audit only after that first call has woken and tried to commit
too (``settle``), or a double application could hide behind it. The tests that kill a node or a service come
last, and start what they killed again.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import commit
from commit.config import COORDINATOR_GROUP
from commit.saga import ServiceConnections, open_service_connections
from commit.saga.client import SagaClient
from commit.tooling.saga_views import TIMELINE_COLUMNS, timeline_rows
from commit.tooling.tables import format_table
from examples.checkout import services as svc
from examples.checkout.checks import RECORDS, audit, emitted_events, observe, read_view
from examples.checkout.cluster import QUICK_SAGAS
from examples.checkout.flows import (
    ATOMIC_PREFIX, CHOREOGRAPHY, COMPENSATED, COMPLETED, SAGA_MODE, TCC_MODE, Order, checkout_saga, checkout_tcc,
    run_checkout, start_choreographed, wait_choreographed,
)
from tests.checkout_cluster import (
    BALANCE, COURIERS, PRICE, QTY, STOCK, CheckoutEnv, Shop, slow, started_env, wait_sleeping,
)

pytestmark = pytest.mark.cluster

SLOW_S = 2 * QUICK_SAGAS["attempt_timeout_s"]
SETTLE_S = 0.5  # after a slow first call woke: time for its commit to be refused
RUN_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 5.0  # one direct call to a service
LAST_ITEMS, BUYERS = 2, 6
ATOMIC_MODES = (f"{ATOMIC_PREFIX}paxos-commit", f"{ATOMIC_PREFIX}2pc")
ALL_MODES = (SAGA_MODE, CHOREOGRAPHY, TCC_MODE, *ATOMIC_MODES)
TOO_MANY = 10 * STOCK  # an order's qty that no seeded stock covers
QTY_AMENDED = 3
# (step, service, action, compensation): one step of each service, as the checkout's definitions name them
PAIRS = (
    ("order", svc.ORDER, "create", "reject"),
    ("inventory", svc.INVENTORY, "reserve", "release"),
    ("payment", svc.PAYMENT, "charge", "refund"),
    ("shipping", svc.SHIPPING, "book", "cancel_booking"),
)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckoutEnv]:
    yield from started_env(Path(tmp_path_factory.mktemp("checkout")))


def shop() -> Shop:
    return Shop(uuid.uuid4().hex[:8])


async def settle(since: float) -> None:
    """Until a slow first call that began at ``since`` has woken and had its commit refused."""
    await trio.sleep_until(since + SLOW_S + SETTLE_S)


def failure_points(s: Shop, slow_payment: str) -> dict[str, tuple[Order, str]]:
    """Each failure point of a checkout, and a success: the order and how its checkout ends.

    ``slow_payment``: the payment action the mode calls (TCC Tries with a hold, not a charge).
    """
    return {
        "success": (s.order(), COMPLETED),
        "out of stock": (s.order(qty=TOO_MANY), COMPENSATED),
        "card declined": (s.order(card=svc.DECLINED_CARD), COMPENSATED),
        "no courier": (s.order(region=s.nowhere), COMPENSATED),
        "slow payment": (s.order(slow=slow(svc.PAYMENT, slow_payment, SLOW_S)), COMPLETED),
        # compensated while the payment hangs: the null compensation must fence it
        "out of stock, payment hangs": (s.order(qty=TOO_MANY, slow=slow(svc.PAYMENT, slow_payment, SLOW_S)),
                                        COMPENSATED),
    }


async def run_all(db: commit.Database, modes: list[str], orders: list[Order],
                  delays: list[float] | None = None) -> list[str]:
    """Run the orders' checkouts concurrently (each after its delay, in its mode); their outcomes, in order."""
    outcomes = [""] * len(orders)

    async def one(index: int) -> None:
        await trio.sleep(delays[index] if delays else 0)
        outcomes[index] = await run_checkout(db, modes[index], orders[index], RUN_TIMEOUT_S)

    async with trio.open_nursery() as nursery:
        for index in range(len(orders)):
            nursery.start_soon(one, index)
    return outcomes


async def call(services: ServiceConnections, service: str, saga: str, step: str, op: str, handler: str,
               input: Any) -> dict[str, Any]:
    return await services.call_step(service, saga=saga, step=step, op=op, handler=handler, input=input,
                                    timeout_s=STEP_TIMEOUT_S)


async def counters(db: commit.Database, s: Shop) -> tuple[Any, ...]:
    """The shop's stock, the customer's balance and the region's couriers."""
    names = {"sku": s.sku, "customer": s.customer, "region": s.region}
    keys = [svc.data_key(resource.service, resource.counter_name(names))
            for resource in (svc.STOCK, svc.MONEY, svc.COURIERS)]
    return tuple([(await db.get(key)).value for key in keys])


async def deliver_twice(services: ServiceConnections, service: str, event: dict[str, Any]) -> None:
    for _ in range(2):
        assert await services.deliver_event(service, event, STEP_TIMEOUT_S) == {"ok": True}


def made_up(event_id: str, event_type: str, source: str, order: Order) -> dict[str, Any]:
    """An event as a relay sends it, written by hand so it can arrive out of order."""
    return {"id": event_id, "type": event_type, "saga": order.id, "source": source, "data": {"order": order.data()}}


async def order_created(db: commit.Database, order: Order) -> dict[str, Any]:
    """The order's OrderCreated, read from the order service's outbox: the very event its relay delivers."""
    [row] = [e for e in await emitted_events(db, order.id) if e["event"] == svc.ORDER_CREATED]
    event = (await db.get(f"{svc.ORDER}/_outbox/{row['n']}")).value
    assert isinstance(event, dict)
    return event


def timeline(shown: dict[str, Any]) -> str:
    return format_table(timeline_rows(shown), TIMELINE_COLUMNS)


# -- every way, every failure point ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [SAGA_MODE, CHOREOGRAPHY, TCC_MODE])
async def test_every_failure_point_ends_consistent(checkout: CheckoutEnv, mode: str) -> None:
    s = shop()
    cases = failure_points(s, "hold" if mode == TCC_MODE else "charge")
    orders = [order for order, _ in cases.values()]
    async with commit.connect(checkout.cluster.config) as db:
        initial = await s.seed(db)
        started = trio.current_time()
        outcomes = await run_all(db, [mode] * len(orders), orders)
        assert dict(zip(cases, outcomes)) == {name: end for name, (_, end) in cases.items()}
        await settle(started)
        assert await audit(db, orders, initial) == []


@pytest.mark.parametrize("protocol", ATOMIC_MODES)
async def test_the_atomic_checkout_is_all_or_nothing(checkout: CheckoutEnv, protocol: str) -> None:
    s = shop()
    cases = {
        COMPLETED: s.order(),
        svc.OUT_OF_STOCK: s.order(qty=TOO_MANY),
        svc.CARD_DECLINED: s.order(card=svc.DECLINED_CARD),
        svc.NO_COURIER: s.order(region=s.nowhere),
    }
    orders = list(cases.values())
    async with commit.connect(checkout.cluster.config) as db:
        initial = await s.seed(db)
        assert await run_all(db, [protocol] * len(orders), orders) == list(cases)
        for refusal, order in cases.items():
            if refusal != COMPLETED:
                view = await read_view(db, order.id)
                assert [view[field] for field in RECORDS] == [None] * len(RECORDS), view
        assert await audit(db, orders, initial) == []


async def test_the_semantic_lock_flags_a_checkout_in_flight(checkout: CheckoutEnv) -> None:
    s = shop()
    order = s.order(slow=slow(svc.SHIPPING, "schedule", SLOW_S))  # held at the pivot
    amendment = {"order": order.id, "qty": QTY_AMENDED}
    async with commit.connect(checkout.cluster.config) as db, open_service_connections(db) as services:
        initial = await s.seed(db)
        started = trio.current_time()
        sagas = SagaClient(db)
        await sagas.start(checkout_saga(order), order.id)
        await wait_sleeping(checkout.services, svc.SHIPPING, "schedule", order.id, RUN_TIMEOUT_S)
        assert observe(await read_view(db, order.id)) == (
            "stock reserved, money taken, order not approved, courier not booked", True)
        refused = await call(services, svc.ORDER, f"amend-{order.id}", "amend", "action", "amend", amendment)
        assert refused["failed"]["error"] == svc.OrderPending.__name__ and refused["failed"]["retryable"], refused
        assert (await sagas.wait(order.id, RUN_TIMEOUT_S))["state"] == COMPLETED
        assert observe(await read_view(db, order.id)) == (None, False)
        amended = await call(services, svc.ORDER, f"amend-{order.id}", "amend", "action", "amend", amendment)
        assert amended == {"ok": amendment}  # the same amendment, retried once the lock is gone
        await settle(started)
        assert await audit(db, [order], initial) == []


async def test_the_last_items_are_never_oversold(checkout: CheckoutEnv, seed: int) -> None:
    rng = random.Random(seed)
    s = shop()
    orders = [s.order() for _ in range(BUYERS)]
    modes = [rng.choice(ALL_MODES) for _ in orders]
    delays = [rng.random() * QUICK_SAGAS["initial_interval_s"] for _ in orders]
    async with commit.connect(checkout.cluster.config) as db:
        initial = await s.seed(db, stock=LAST_ITEMS, couriers=BUYERS)
        outcomes = await run_all(db, modes, orders, delays)
        print(list(zip(modes, outcomes)))
        assert outcomes.count(COMPLETED) == LAST_ITEMS
        assert set(outcomes) <= {COMPLETED, COMPENSATED, svc.OUT_OF_STOCK}
        assert await audit(db, orders, initial) == []
        assert (await counters(db, s))[0] == 0


# -- duplicates and reordering, sent straight to the services ---------------------------------------------


async def test_duplicated_and_reordered_steps_are_applied_once(checkout: CheckoutEnv) -> None:
    s = shop()
    twice, backwards, unconfirmed = s.order(), s.order(), s.order()
    async with commit.connect(checkout.cluster.config) as db, open_service_connections(db) as services:
        initial = await s.seed(db)
        for step, service, action, _ in PAIRS:
            first = await call(services, service, twice.id, step, "action", action, twice.data())
            assert "ok" in first, first
            assert await call(services, service, twice.id, step, "action", action, twice.data()) == first
        assert await counters(db, s) == (STOCK - QTY, BALANCE - PRICE, COURIERS - 1)
        for step, service, _, compensation in reversed(PAIRS):
            first = await call(services, service, twice.id, step, "compensation", compensation, twice.data())
            assert "ok" in first, first
            assert await call(services, service, twice.id, step, "compensation", compensation, twice.data()) == first
        for step, service, action, compensation in PAIRS:  # each compensation overtakes its action
            for _ in range(2):
                null = await call(services, service, backwards.id, step, "compensation", compensation,
                                  backwards.data())
                assert null == {"ok": None}, null
            for _ in range(2):
                fenced = await call(services, service, backwards.id, step, "action", action, backwards.data())
                assert fenced["failed"]["error"] == "Fenced" and not fenced["failed"]["retryable"], fenced
        confirm = await call(services, svc.INVENTORY, unconfirmed.id, "inventory", "confirm", "confirm_reserve",
                             unconfirmed.data())
        assert confirm["failed"]["error"] == svc.NOT_TRIED, confirm
        assert await counters(db, s) == (STOCK, BALANCE, COURIERS)
        assert await audit(db, [twice, backwards, unconfirmed], initial) == []


async def test_duplicated_and_reordered_events_are_applied_once(checkout: CheckoutEnv) -> None:
    s = shop()
    placed, backwards = s.order(), s.order()
    async with commit.connect(checkout.cluster.config) as db, open_service_connections(db) as services:
        initial = await s.seed(db)
        first = await start_choreographed(db, placed)
        assert await start_choreographed(db, placed) == first
        await deliver_twice(services, svc.INVENTORY, await order_created(db, placed))  # and the relay's delivery
        assert await wait_choreographed(db, placed.id, RUN_TIMEOUT_S) == COMPLETED
        assert [e["event"] for e in await emitted_events(db, placed.id)] == [
            svc.ORDER_CREATED, svc.STOCK_RESERVED, svc.PAYMENT_DONE, svc.SHIPPED]

        # PaymentFailed overtakes OrderCreated: the release leaves a tombstone, so the late reserve takes nothing
        await deliver_twice(services, svc.INVENTORY,
                            made_up(f"test-{backwards.id}:1", svc.PAYMENT_FAILED, svc.PAYMENT, backwards))
        await deliver_twice(services, svc.INVENTORY,
                            made_up(f"test-{backwards.id}:2", svc.ORDER_CREATED, svc.ORDER, backwards))
        assert await wait_choreographed(db, backwards.id, RUN_TIMEOUT_S) == COMPENSATED
        late = await start_choreographed(db, backwards)
        assert late["failed"]["error"] == svc.ORDER_EXISTS, late
        assert await audit(db, [placed, backwards], initial) == []


# -- crashes: these kill a process and start it again ------------------------------------------------------


@pytest.mark.parametrize(("mode", "service", "action", "ends"), [
    (SAGA_MODE, svc.PAYMENT, "charge", COMPLETED),
    (SAGA_MODE, svc.INVENTORY, "reserve", COMPENSATED),  # the order has no courier
    (CHOREOGRAPHY, svc.INVENTORY, "reserve", COMPLETED),
])
async def test_a_service_killed_mid_action_is_retried_to_the_same_end(
    checkout: CheckoutEnv, mode: str, service: str, action: str, ends: str,
) -> None:
    s = shop()
    order = s.order(region=s.region if ends == COMPLETED else s.nowhere, slow=slow(service, action, SLOW_S))
    async with commit.connect(checkout.cluster.config) as db:
        initial = await s.seed(db)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_all, db, [mode], [order])
            await wait_sleeping(checkout.services, service, action, order.id, RUN_TIMEOUT_S)
            checkout.services.kill(service)
            checkout.services.start(service)
            # the new process is slow once more, as a cold service is: wait for that call to be retried too
            await wait_sleeping(checkout.services, service, action, order.id, RUN_TIMEOUT_S, times=2)
            restarted = trio.current_time()
        if mode == SAGA_MODE:
            print(timeline(await SagaClient(db).show(order.id)))
        assert await run_checkout(db, mode, order, RUN_TIMEOUT_S) == ends  # the same saga: its end again
        await settle(restarted)
        assert await audit(db, [order], initial) == []


# Where the orchestrator's node dies: each step held in flight by ``slow``, some in sagas that compensate.
KILL_POINTS = [
    (SAGA_MODE, "order", svc.ORDER, "create", COMPLETED),
    (SAGA_MODE, "inventory", svc.INVENTORY, "reserve", COMPENSATED),  # the order has no courier
    (SAGA_MODE, "payment", svc.PAYMENT, "charge", COMPENSATED),
    (SAGA_MODE, "shipping", svc.SHIPPING, "schedule", COMPLETED),
    (SAGA_MODE, "approve", svc.ORDER, "approve", COMPLETED),
    (TCC_MODE, "payment", svc.PAYMENT, "hold", COMPLETED),
]


@pytest.mark.parametrize(("mode", "step", "service", "action", "ends"), KILL_POINTS,
                         ids=[f"{p[0]}-{p[1]}" for p in KILL_POINTS])
async def test_the_orchestrator_killed_mid_step_ends_the_saga_once(
    checkout: CheckoutEnv, mode: str, step: str, service: str, action: str, ends: str,
) -> None:
    s = shop()
    order = s.order(region=s.region if ends == COMPLETED else s.nowhere, slow=slow(service, action, SLOW_S))
    cluster = checkout.cluster
    async with commit.connect(cluster.config) as db:
        initial = await s.seed(db)
        sagas = SagaClient(db)
        started = trio.current_time()
        await sagas.start(checkout_saga(order) if mode == SAGA_MODE else checkout_tcc(order), order.id)
        await wait_sleeping(checkout.services, service, action, order.id, RUN_TIMEOUT_S)
        leader = (await cluster.leaders())[COORDINATOR_GROUP]
        cluster.kill(leader)
        try:
            final = await sagas.wait(order.id, RUN_TIMEOUT_S)  # driven to its end by a new leader
        finally:
            cluster.start(leader)
        print(timeline(final))
        assert final["state"] == ends
        held = [e for e in final["history"] if e["event"] == "attempt" and (e["step"], e["op"]) == (step, "action")]
        assert len(held) >= 2, "the new leader calls again the step the old one left in flight"
        await settle(started)
        assert await audit(db, [order], initial) == []
        await cluster.wait_ready()
