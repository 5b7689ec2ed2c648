"""Choreography against one real cluster: the outbox written in the handler's transaction, the relay that
delivers it at least once and in order, consumers that apply each event once, and the registry.

Every test uses event types of its own: subscriptions are durable, so a type another test's (stopped)
consumer subscribed to would hold this test's relay back.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import commit
from commit.saga import Barrier, EventContext, Fail, Service, StepContext, open_service
from commit.tooling.localcluster import LocalCluster
from commit.saga.remote import ServiceConnections
from tests.saga_services import RecordNothing, serving
from consensus.errors import InvalidRequest
from consensus.rpc import open_rpc_client

pytestmark = pytest.mark.cluster

ORDERS = 5
RELAY_WAIT_S = 10.0  # a relay delivers within this on an idle loopback cluster


def producer(name: str, event_type: str) -> Service:
    service = Service(name)

    @service.action("create")
    async def create(ctx: StepContext, input: dict[str, Any]) -> dict[str, Any]:
        ctx.put(f"order/{input['order']}", "created")
        ctx.emit(event_type, {"order": input["order"]})
        return {"order": input["order"]}

    @service.action("refuse")
    async def refuse(ctx: StepContext, input: dict[str, Any]) -> None:
        ctx.emit(event_type, {"order": input["order"]})
        raise Fail("Refused", "after emitting")

    @service.action("emit_badly")
    async def emit_badly(ctx: StepContext, input: dict[str, Any]) -> None:
        ctx.emit(f"{event_type}/with-a-slash", input)

    return service


def consumer(name: str, event_type: str, *, follow_up: str | None = None, barrier: Barrier | None = None) -> Service:
    """Appends each event id it consumes to ``seen`` (the order) and counts it (the duplicate check)."""
    service = Service(name, barrier=barrier)

    @service.on(event_type)
    async def consume(ctx: EventContext, event: dict[str, Any]) -> None:
        ctx.put("seen", [*await ctx.get("seen", []), event["id"]])
        ctx.put(f"count/{event['id']}", await ctx.get(f"count/{event['id']}", 0) + 1)
        ctx.put(f"event/{event['id']}", event)
        if follow_up is not None:
            ctx.emit(follow_up, event["data"])

    return service


async def value(db: commit.Database, key: str, default: Any = None) -> Any:
    seen = await db.get(key)
    return seen.value if seen.exists else default


async def create_orders(connections: ServiceConnections, service: str, orders: range) -> None:
    for order in orders:
        reply = await connections.call_step(service, saga=f"order-{order}", step="create", op="action",
                                            handler="create", input={"order": order},
                                            timeout_s=connections.db.config.sagas.attempt_timeout_s)
        assert reply == {"ok": {"order": order}}


async def wait_relayed(cluster: LocalCluster, db: commit.Database, service: str, number: int) -> None:
    async def relayed() -> bool:
        return await value(db, f"{service}/_outbox/relayed", 0) >= number

    await cluster.wait_until(relayed, RELAY_WAIT_S, f"{service}'s relay to pass event {number}")


async def assert_consumed_once(db: commit.Database, service: str, ids: list[str]) -> None:
    """The duplicate check: every event took effect exactly once, in the order given."""
    for event_id in ids:
        count = await value(db, f"{service}/count/{event_id}", 0)
        assert count == 1, f"{event_id} was applied {count} times at {service}"
    assert await value(db, f"{service}/seen", []) == ids


def event(source: str, number: int, event_type: str) -> dict[str, Any]:
    return {"id": f"{source}:{number}", "type": event_type, "saga": f"order-{number}", "source": source,
            "data": {"order": number}}


async def deliver(connections: ServiceConnections, service: str, sent: dict[str, Any]) -> dict[str, Any]:
    return await connections.deliver_event(service, sent, connections.db.config.sagas.attempt_timeout_s)


async def test_an_event_delivered_twice_and_out_of_order_is_applied_once(shared_cluster: LocalCluster) -> None:
    sink = consumer("sink-dup", "Shipped-dup")
    async with serving(shared_cluster, sink) as (db, connections):
        second, first = event("src", 2, "Shipped-dup"), event("src", 1, "Shipped-dup")
        for sent in (second, first, second, first):
            assert await deliver(connections, sink.name, sent) == {"ok": True}
        await assert_consumed_once(db, sink.name, ["src:2", "src:1"])
        assert await value(db, f"{sink.name}/_barrier/src:1/event/event") == {"ok": None}


async def test_the_duplicate_check_catches_a_consumer_barrier_that_records_nothing(
    shared_cluster: LocalCluster,
) -> None:
    sink = consumer("sink-broken", "Shipped-broken", barrier=RecordNothing())
    async with serving(shared_cluster, sink) as (db, connections):
        sent = event("src", 1, "Shipped-broken")
        for _ in range(2):
            assert await deliver(connections, sink.name, sent) == {"ok": True}
        with pytest.raises(AssertionError, match="applied 2 times"):
            await assert_consumed_once(db, sink.name, ["src:1"])


async def test_emitted_events_reach_every_subscriber_once_in_order(shared_cluster: LocalCluster) -> None:
    source = producer("orders-relay", "OrderCreated-relay")
    sinks = [consumer(f"sink-relay-{i}", "OrderCreated-relay") for i in range(2)]
    ids = [f"{source.name}:{n}" for n in range(1, ORDERS + 1)]
    async with serving(shared_cluster, *sinks, source) as (db, connections):
        await create_orders(connections, source.name, range(1, ORDERS + 1))
        await wait_relayed(shared_cluster, db, source.name, ORDERS)
        assert await value(db, f"{source.name}/_outbox/head") == ORDERS
        for sink in sinks:
            await assert_consumed_once(db, sink.name, ids)
        assert await value(db, f"{sinks[0].name}/event/{ids[0]}") == {
            "id": ids[0], "type": "OrderCreated-relay", "saga": "order-1", "source": source.name,
            "data": {"order": 1}}
        await db.put(f"{source.name}/_outbox/relayed", 0)  # as if the relay crashed before moving it
        await wait_relayed(shared_cluster, db, source.name, ORDERS)
        for sink in sinks:
            await assert_consumed_once(db, sink.name, ids)


async def test_the_relay_waits_for_a_stopped_consumer(shared_cluster: LocalCluster) -> None:
    source = producer("orders-wait", "OrderCreated-wait")
    sink = consumer("sink-wait", "OrderCreated-wait")
    async with serving(shared_cluster, sink):
        pass  # subscribed, then stopped
    async with serving(shared_cluster, source) as (db, connections):
        await create_orders(connections, source.name, range(1, 3))
        await trio.sleep(db.config.timeouts.backoff_max_s)
        assert await value(db, f"{source.name}/_outbox/relayed", 0) == 0
        async with open_service(sink, shared_cluster.config):
            await wait_relayed(shared_cluster, db, source.name, 2)
        await assert_consumed_once(db, sink.name, [f"{source.name}:1", f"{source.name}:2"])


async def test_a_failed_handler_emits_nothing(shared_cluster: LocalCluster) -> None:
    source = producer("orders-fail", "OrderCreated-fail")
    async with serving(shared_cluster, source) as (db, connections):
        for handler, error in (("refuse", "Refused"), ("emit_badly", "InvalidRequest")):
            reply = await connections.call_step(source.name, saga="s1", step=handler, op="action", handler=handler,
                                                input={"order": 1}, timeout_s=db.config.sagas.attempt_timeout_s)
            assert reply["failed"]["error"] == error
        assert not (await db.get(f"{source.name}/_outbox/head")).exists
        assert not (await db.get(f"{source.name}/_outbox/1")).exists


async def test_a_consumer_emits_once_per_event_in_its_own_transaction(shared_cluster: LocalCluster) -> None:
    sink = consumer("sink-chain", "Paid-chain", follow_up="Ship-chain")
    async with serving(shared_cluster, sink) as (db, connections):
        for _ in range(2):
            assert await deliver(connections, sink.name, event("src", 1, "Paid-chain")) == {"ok": True}
        assert await value(db, f"{sink.name}/_outbox/head") == 1
        assert await value(db, f"{sink.name}/_outbox/1") == {
            "id": f"{sink.name}:1", "type": "Ship-chain", "saga": "order-1", "source": sink.name,
            "data": {"order": 1}}


async def test_registration_rewrites_the_entry_and_the_subscriptions_together(shared_cluster: LocalCluster) -> None:
    first = [consumer("sink-reg-a", "Reg-old"), consumer("sink-reg-b", "Reg-old")]
    async with serving(shared_cluster, *first) as (db, _):
        assert await value(db, "_events/Reg-old") == ["sink-reg-a", "sink-reg-b"]
        entry = await value(db, "_services/sink-reg-a")
        assert entry["host"] == "127.0.0.1" and isinstance(entry["port"], int) and entry["events"] == ["Reg-old"]
    async with serving(shared_cluster, consumer("sink-reg-a", "Reg-new")) as (db, _):
        assert await value(db, "_events/Reg-old") == ["sink-reg-b"]
        assert await value(db, "_events/Reg-new") == ["sink-reg-a"]
        assert (await value(db, "_services/sink-reg-a"))["events"] == ["Reg-new"]


def hostile_events(max_chars: int) -> list[dict[str, Any]]:
    good = event("src", 1, "Hostile")
    return [
        {}, {"event": None}, {"event": [good]}, {"event": {**good, "id": 1}}, {"event": {**good, "id": ""}},
        {"event": {**good, "id": "a/b"}}, {"event": {**good, "id": "x" * 2000}}, {"event": {**good, "type": "Other"}},
        {"event": {**good, "type": None}}, {"event": {**good, "saga": "y" * (max_chars + 1)}},
        {"event": {**good, "source": 3}},
    ]


async def test_hostile_event_parameters_are_invalid_and_change_nothing(shared_cluster: LocalCluster) -> None:
    sink = consumer("sink-hostile", "Hostile")
    config = shared_cluster.config
    async with serving(shared_cluster, sink) as (db, connections):
        port = (await value(db, f"_services/{sink.name}"))["port"]
        async with open_rpc_client("127.0.0.1", port, settings=config.rpc_settings(),
                                   expect_node=f"service:{sink.name}") as conn:
            for params in hostile_events(config.sagas.max_name_chars):
                with pytest.raises(InvalidRequest):
                    await conn.call("event.deliver", params)
        assert not (await db.get(f"{sink.name}/seen")).exists
        assert await deliver(connections, sink.name, event("src", 1, "Hostile")) == {"ok": True}
        await assert_consumed_once(db, sink.name, ["src:1"])
