"""What a consistent checkout looks like, at its end (``audit``) and while it runs (``intermediate``).

A saga gives up isolation for availability: while it runs, a reader can see money taken for stock that is not
reserved yet. Its end is still all-or-nothing. ``audit`` checks the end: every order either did everything
(APPROVED, its stock, money and courier taken exactly once) or nothing (REJECTED or absent, everything it took
given back), and the totals of stock, money and couriers are conserved, which is what would break if a retried
or duplicated step had applied twice.

``read_view`` reads one order's four records in ONE transaction, so what it shows existed at one moment (a
consistent cut), and ``intermediate`` names the anomaly in it, if any. Whether the reader could have known it
was looking at a checkout in flight is the semantic lock's ``flagged``: the order is PENDING.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from commit.client import Database
from commit.saga.outbox import HEAD, outbox_key
from commit.transaction import Transaction
from examples.checkout import services as svc
from examples.checkout.flows import Initial, Order

# A resource's record in these states means its units are out of the counter ...
TAKEN = {
    "reservation": (svc.RESERVED, svc.CONFIRMED),
    "charge": (svc.CHARGED, svc.HELD, svc.CAPTURED),
    "shipment": (svc.SCHEDULED, svc.BOOKED, svc.CONFIRMED),
}
# ... and in these its checkout is over (a TCC Try still held or booked was never confirmed).
FINAL_TAKEN = {
    "reservation": (svc.RESERVED, svc.CONFIRMED),
    "charge": (svc.CHARGED, svc.CAPTURED),
    "shipment": (svc.SCHEDULED, svc.CONFIRMED),
}
GIVEN_BACK = {"reservation": svc.RELEASED, "charge": svc.REFUNDED, "shipment": svc.CANCELLED}
RECORDS = {  # view field -> (service, record name of an order id)
    "order": (svc.ORDER, svc.order_name),
    "reservation": (svc.INVENTORY, svc.STOCK.record_name),
    "charge": (svc.PAYMENT, svc.MONEY.record_name),
    "shipment": (svc.SHIPPING, svc.COURIERS.record_name),
}
FACTS = (  # (what is true, what is not) of an order's view, in the order an anomaly names them
    ("order approved", "order not approved"),
    ("stock reserved", "stock not reserved"),
    ("money taken", "money not taken"),
    ("courier booked", "courier not booked"),
)


def _state(record: Any, field: str) -> Any:
    return record.get(field) if isinstance(record, dict) else None


async def read_view(db: Database, order_id: str) -> dict[str, Any]:
    """The order's record and its reservation, charge and shipment, read in one transaction (None: absent).

    ``flagged``: the order is PENDING, so the semantic lock tells the reader this checkout is in flight.
    """
    async def body(tx: Transaction) -> dict[str, Any]:
        return {field: (await tx.get(svc.data_key(service, name(order_id)))).value
                for field, (service, name) in RECORDS.items()}

    view = await db.run(body)
    return {**view, "flagged": _state(view["order"], "status") == svc.PENDING}


def _facts(view: Mapping[str, Any]) -> list[bool]:
    return [_state(view["order"], "status") == svc.APPROVED,
            *(_state(view[field], "state") in TAKEN[field] for field in ("reservation", "charge", "shipment"))]


def intermediate(view: Mapping[str, Any]) -> str | None:
    """The anomaly a reader of ``view`` sees, e.g. "money taken, stock not reserved, ..."; None if all or nothing.

    Raw: it does not look at the semantic lock (``view["flagged"]``; ``observe`` gives both).
    """
    facts = _facts(view)
    if all(facts) or not any(facts):
        return None
    held = [yes for (yes, _), fact in zip(FACTS, facts) if fact]
    missing = [no for (_, no), fact in zip(FACTS, facts) if not fact]
    return ", ".join(held + missing)


def observe(view: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The raw anomaly and whether the semantic lock flagged the order as in flight."""
    return intermediate(view), bool(view["flagged"])


def _verdict(order: Order, view: Mapping[str, Any]) -> tuple[bool | None, list[str]]:
    """(True: done, False: undone, None: neither), and what is wrong with the order's records."""
    status = _state(view["order"], "status")
    states = {field: _state(view[field], "state") for field in GIVEN_BACK}
    if status == svc.APPROVED and all(states[f] in FINAL_TAKEN[f] for f in states):
        return True, []
    if status in (None, svc.REJECTED) and all(states[f] in (None, GIVEN_BACK[f]) for f in states):
        return False, []
    return None, [f"order {order.id}: neither done nor undone: order {status}, "
                  + ", ".join(f"{f} {s}" for f, s in states.items())]


async def _counter(db: Database, resource: svc.Resource, name: str) -> Any:
    return (await db.get(svc.data_key(resource.service, f"{resource.counter}/{name}"))).value


async def audit(db: Database, orders: list[Order], initial: Initial | Mapping[str, dict[str, int]]) -> list[str]:
    """Problems with the end state of ``orders`` (empty: consistent), once none of them is in flight.

    The totals are checked for every sku, customer and region of ``initial``, so ``orders`` must be every
    order that touched them.
    """
    start = Initial.of(initial)
    problems: list[str] = []
    used: dict[str, Counter[str]] = {"stock": Counter(), "balance": Counter(), "couriers": Counter()}
    for order in orders:
        view = await read_view(db, order.id)
        done, wrong = _verdict(order, view)
        problems += wrong
        if done:
            used["stock"][order.sku] += order.qty
            used["balance"][order.customer] += order.amount
            used["couriers"][order.region] += 1
        for resource, table in ((svc.STOCK, start.skus), (svc.MONEY, start.customers), (svc.COURIERS, start.couriers)):
            if getattr(order, resource.by) not in table:
                problems.append(f"order {order.id}: its {resource.by} is not in the initial {resource.counter}")
    for resource, table in ((svc.STOCK, start.skus), (svc.MONEY, start.customers), (svc.COURIERS, start.couriers)):
        for name, before in table.items():
            now = await _counter(db, resource, name)
            expected = before - used[resource.counter][name]
            if now != expected:
                problems.append(f"{resource.counter}/{name}: {now}, but {before} less what done orders took is "
                                f"{expected}")
    return problems


async def emitted_events(db: Database, order_id: str) -> list[dict[str, Any]]:
    """The events the services emitted for the order (its choreography's history), in causal order.

    Each row: the emitting ``service``, its outbox number ``n``, the ``event`` type and the ``error`` a
    failure event carries. Reads every outbox whole: for demos and tests, not for a busy store.
    """
    rows = []
    for name in svc.SERVICES:
        head = (await db.get(outbox_key(name, HEAD))).value or 0
        for number in range(1, head + 1):
            event = (await db.get(outbox_key(name, number))).value
            if isinstance(event, dict) and event.get("saga") == order_id:
                data = event.get("data") or {}
                rows.append({"service": name, "n": number, "event": event["type"], "error": data.get("error")})
    return sorted(rows, key=lambda r: svc.CHAIN.index(r["event"]))
