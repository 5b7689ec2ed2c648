"""The saga service SDK and dtm's barrier, against one real cluster: services served in-process.

Each test serves its own service (its own name, so its own keys) with ``open_service`` on a free port and
calls it as an orchestrator would (``commit.saga.remote``). Every handler of the inventory below also
counts its own applications in a ledger key, in the same transaction as its effect: the duplicate check
(``assert_applied_at_most_once``) reads those counts, and is shown to catch a barrier that records nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import commit
from commit.saga import Barrier, Fail, Service, StepContext, call_step
from commit.tooling.localcluster import LocalCluster
from commit.saga.remote import ServiceConnections
from tests.saga_services import RecordNothing, serving
from consensus.errors import InvalidRequest
from consensus.rpc import open_rpc_client

pytestmark = pytest.mark.cluster

SKU = "sku-1"
STOCK = 10
SEED = {f"stock/{SKU}": STOCK}
STALL_TIMEOUT_S = 0.5  # a caller's patience with a handler that never finishes
QUICK_S = 2.0  # "quickly": an unreachable service is reported well before a step's attempt timeout


async def count_application(ctx: StepContext) -> None:
    """The ledger the duplicate check reads: one more application of this (saga, step, op)."""
    name = f"applied/{ctx.saga}/{ctx.step}/{ctx.op}"
    ctx.put(name, await ctx.get(name, 0) + 1)


def inventory(name: str, barrier: Barrier | None = None) -> Service:
    service = Service(name, barrier=barrier)

    @service.action("reserve")
    async def reserve(ctx: StepContext, input: dict[str, Any]) -> dict[str, Any]:
        stock = await ctx.get(f"stock/{input['sku']}", 0)
        if stock < input["qty"]:
            raise Fail("OutOfStock", f"{stock} left")
        ctx.put(f"stock/{input['sku']}", stock - input["qty"])
        await count_application(ctx)
        return {"reserved": input["qty"]}

    @service.compensation("release")
    async def release(ctx: StepContext, input: dict[str, Any], result: dict[str, Any]) -> None:
        ctx.put(f"stock/{input['sku']}", await ctx.get(f"stock/{input['sku']}", 0) + result["reserved"])
        await count_application(ctx)

    @service.confirm("confirm_reserve")
    async def confirm(ctx: StepContext, input: dict[str, Any], result: dict[str, Any]) -> str:
        ctx.put(f"confirmed/{ctx.saga}", result)
        await count_application(ctx)
        return "confirmed"

    @service.action("explode")
    async def explode(ctx: StepContext, input: Any) -> None:
        ctx.put("exploded", True)
        raise RuntimeError("the handler broke after writing")

    @service.action("stall")
    async def stall(ctx: StepContext, input: Any) -> None:
        await trio.sleep_forever()

    return service


async def step(connections: ServiceConnections, service: str, saga: str, op: str, handler: str,
               qty: int = 3) -> dict[str, Any]:
    return await connections.call_step(service, saga=saga, step="reserve", op=op, handler=handler,
                                       input={"sku": SKU, "qty": qty},
                                       timeout_s=connections.db.config.sagas.attempt_timeout_s)


async def stock(db: commit.Database, service: str) -> int:
    return (await db.get(f"{service}/stock/{SKU}")).value


async def barrier_row(db: commit.Database, service: str, saga: str, op: str) -> Any:
    return (await db.get(f"{service}/_barrier/{saga}/reserve/{op}")).value


async def assert_applied_at_most_once(db: commit.Database, service: str, sagas: list[str]) -> None:
    """The duplicate check: every (saga, step, op) took effect at most once, by its ledger."""
    for saga in sagas:
        for op in ("action", "compensation", "confirm"):
            count = (await db.get(f"{service}/applied/{saga}/reserve/{op}")).value or 0
            assert count <= 1, f"{saga}/reserve/{op} was applied {count} times"


async def test_an_action_sent_twice_is_applied_once(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-twice")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        first = await step(connections, service.name, "s1", "action", "reserve")
        again = await step(connections, service.name, "s1", "action", "reserve")
        assert first == again == {"ok": {"reserved": 3}}
        assert await stock(db, service.name) == STOCK - 3
        assert await barrier_row(db, service.name, "s1", "action") == {"ok": {"reserved": 3}}
        await assert_applied_at_most_once(db, service.name, ["s1"])


async def test_concurrent_duplicates_of_an_action_apply_it_once(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-concurrent")
    copies = 3
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        replies: list[dict[str, Any]] = []

        async def send() -> None:
            replies.append(await step(connections, service.name, "s1", "action", "reserve"))

        async with trio.open_nursery() as nursery:
            for _ in range(copies):
                nursery.start_soon(send)
        assert replies == [{"ok": {"reserved": 3}}] * copies
        assert await stock(db, service.name) == STOCK - 3
        await assert_applied_at_most_once(db, service.name, ["s1"])


async def test_a_null_compensation_succeeds_and_fences_the_late_action(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-null")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        assert await step(connections, service.name, "s1", "compensation", "release") == {"ok": None}
        assert await barrier_row(db, service.name, "s1", "action") == {"fenced": True}
        assert await barrier_row(db, service.name, "s1", "compensation") == {"ok": None, "null": True}
        late = await step(connections, service.name, "s1", "action", "reserve")
        assert late["failed"]["error"] == "Fenced" and late["failed"]["retryable"] is False
        assert await step(connections, service.name, "s1", "compensation", "release") == {"ok": None}
        assert await stock(db, service.name) == STOCK
        await assert_applied_at_most_once(db, service.name, ["s1"])


async def test_a_compensation_after_its_action_undoes_it_once(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-undo")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        assert await step(connections, service.name, "s1", "action", "reserve", qty=4) == {"ok": {"reserved": 4}}
        assert await stock(db, service.name) == STOCK - 4
        for _ in range(2):
            assert await step(connections, service.name, "s1", "compensation", "release") == {"ok": None}
        assert await stock(db, service.name) == STOCK
        await assert_applied_at_most_once(db, service.name, ["s1"])


async def test_a_confirm_needs_its_try_and_settles_it_once(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-confirm")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        untried = await step(connections, service.name, "s0", "confirm", "confirm_reserve")
        assert untried["failed"]["error"] == "NotTried" and untried["failed"]["retryable"] is False
        assert await barrier_row(db, service.name, "s0", "confirm") is None
        await step(connections, service.name, "s1", "action", "reserve")
        for _ in range(2):
            assert await step(connections, service.name, "s1", "confirm", "confirm_reserve") == {"ok": "confirmed"}
        assert (await db.get(f"{service.name}/confirmed/s1")).value == {"reserved": 3}
        await assert_applied_at_most_once(db, service.name, ["s0", "s1"])


async def test_a_fail_commits_nothing_but_its_refusal_and_its_compensation_is_null(
    shared_cluster: LocalCluster,
) -> None:
    """The refusal is the branch's answer: a repeat gets it, even once the stock would allow it now."""
    service = inventory("inv-fail")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        refused = await step(connections, service.name, "s1", "action", "reserve", qty=STOCK + 1)
        assert refused == {"failed": {"error": "OutOfStock", "message": f"{STOCK} left", "retryable": False}}
        assert await barrier_row(db, service.name, "s1", "action") == refused
        await db.put(f"{service.name}/stock/{SKU}", 2 * STOCK)
        assert await step(connections, service.name, "s1", "action", "reserve", qty=STOCK + 1) == refused
        assert await step(connections, service.name, "s1", "compensation", "release") == {"ok": None}
        assert await barrier_row(db, service.name, "s1", "compensation") == {"ok": None, "null": True}
        assert await stock(db, service.name) == 2 * STOCK


FIRST_COMMITS_S, SECOND_READS_S, SECOND_STARTS_S = 0.3, 0.5, 0.1


async def test_a_refusal_made_on_a_concurrent_attempt_s_effects_is_not_the_answer(shared_cluster: LocalCluster) -> None:
    """Two attempts of one step at once (a timeout's retry beside the first call): the second reads the row
    as absent, then the first one's record, and refuses. Its reads were never validated; the answer both
    get must be the first one's, which applied."""
    service = Service("inv-race")
    runs = {"n": 0}

    @service.action("take")
    async def take(ctx: StepContext, input: Any) -> str:
        runs["n"] += 1
        await trio.sleep(FIRST_COMMITS_S if runs["n"] == 1 else SECOND_READS_S)
        if await ctx.get("record") is not None:
            raise Fail("AlreadyTaken", "a record exists")
        ctx.put("record", {"by": ctx.saga})
        return "taken"

    async with serving(shared_cluster, service) as (db, connections):
        replies: list[Any] = []

        async def attempt(delay: float) -> None:
            await trio.sleep(delay)
            replies.append(await step(connections, service.name, "s1", "action", "take"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, 0.0)
            nursery.start_soon(attempt, SECOND_STARTS_S)
        assert runs["n"] >= 2, "the two attempts did not overlap"
        assert replies == [{"ok": "taken"}, {"ok": "taken"}], replies
        assert await barrier_row(db, service.name, "s1", "action") == {"ok": "taken"}


async def test_a_broken_handler_is_retryable_and_commits_nothing(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-explode")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        reply = await step(connections, service.name, "s1", "action", "explode")
        assert reply["failed"]["error"] == "RuntimeError" and reply["failed"]["retryable"] is True
        assert not (await db.get(f"{service.name}/exploded")).exists
        assert not (await db.get(f"{service.name}/_barrier/s1/reserve/action")).exists


async def test_the_duplicate_check_catches_a_barrier_that_records_nothing(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-broken", barrier=RecordNothing())
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        for _ in range(2):
            assert await step(connections, service.name, "s1", "action", "reserve") == {"ok": {"reserved": 3}}
        assert await stock(db, service.name) == STOCK - 6
        with pytest.raises(AssertionError, match="applied 2 times"):
            await assert_applied_at_most_once(db, service.name, ["s1"])


def hostile_steps(max_chars: int) -> list[dict[str, Any]]:
    good = {"saga": "h1", "step": "reserve", "op": "action", "handler": "reserve", "input": {"sku": SKU, "qty": 1}}
    deep: Any = 1
    for _ in range(64):
        deep = [deep]
    wide = "\U0001f4a5" * max_chars  # within the name limit in characters, not in key bytes
    return [
        {}, {**good, "saga": None}, {**good, "saga": 7}, {**good, "saga": ""}, {**good, "saga": "x" * (max_chars + 1)},
        {**good, "saga": "a/b"}, {**good, "step": ["reserve"]}, {**good, "op": "destroy"}, {**good, "op": None},
        {**good, "handler": "nope"}, {**good, "handler": "release"}, {**good, "op": "compensation"},
        {**good, "handler": b"reserve"}, {**good, "input": deep}, {**good, "saga": wide, "step": wide},
    ]


async def test_hostile_step_parameters_are_invalid_and_change_nothing(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-hostile")
    config = shared_cluster.config
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        port = (await db.get(f"_services/{service.name}")).value["port"]
        async with open_rpc_client("127.0.0.1", port, settings=config.rpc_settings(),
                                   expect_node=f"service:{service.name}") as conn:
            for params in hostile_steps(config.sagas.max_name_chars):
                with pytest.raises(InvalidRequest):
                    await conn.call("saga.step", params)
        unknown = await connections.call_step(service.name, saga="h1", step="reserve", op="action", handler="nope",
                                              input=None, timeout_s=config.sagas.attempt_timeout_s)
        assert unknown["failed"]["error"] == "InvalidRequest" and unknown["failed"]["retryable"] is False
        assert await stock(db, service.name) == STOCK
        assert await barrier_row(db, service.name, "h1", "action") is None
        assert await step(connections, service.name, "h2", "action", "reserve") == {"ok": {"reserved": 3}}


async def unavailable_at_once(db: commit.Database, service: str) -> None:
    started = trio.current_time()
    reply = await call_step(db, service, saga="s1", step="reserve", op="action", handler="reserve",
                            input={"sku": SKU, "qty": 1}, timeout_s=db.config.sagas.attempt_timeout_s)
    assert reply["failed"]["error"] == "Unavailable" and reply["failed"]["retryable"] is True
    assert trio.current_time() - started < QUICK_S


async def test_a_service_that_is_not_there_is_unavailable_at_once(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-gone")
    async with serving(shared_cluster, service, seed=SEED) as (db, _):
        pass  # registered, then stopped: its port refuses
    async with commit.connect(shared_cluster.config) as db:
        await unavailable_at_once(db, "nobody-serves-this")
        await unavailable_at_once(db, service.name)


async def test_a_handler_that_never_answers_is_a_timeout(shared_cluster: LocalCluster) -> None:
    service = inventory("inv-stall")
    async with serving(shared_cluster, service, seed=SEED) as (db, connections):
        started = trio.current_time()
        reply = await connections.call_step(service.name, saga="s1", step="reserve", op="action",
                                            handler="stall", input=None, timeout_s=STALL_TIMEOUT_S)
        assert reply["failed"]["error"] == "Timeout" and reply["failed"]["retryable"] is True
        assert trio.current_time() - started < STALL_TIMEOUT_S * 2
