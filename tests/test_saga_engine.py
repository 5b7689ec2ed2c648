"""The saga engine on a real cluster: hostile definitions, stuck sagas and what operators do with them.

The service here runs in the test process (a real RPC server on loopback, with its store transactions on
the cluster); the checkout tests (tests/test_checkout.py) run services as processes and kill them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

import commit
from commit.saga import Fail, Service, StepContext, open_service
from commit.saga.client import Saga, SagaClient
from commit.tooling.localcluster import LocalCluster
from tests.conftest import _started

ROOT = Path(__file__).resolve().parent.parent
SAGA_OPTIONS = {"attempt_timeout_s": 1.0, "initial_interval_s": 0.05, "maximum_interval_s": 0.2}
WAIT_S = 20.0

counter = Service("counter")
behaviour: dict[str, Any] = {"undo_fails": False, "finish_fails": False}


@counter.action("add")
async def add(ctx: StepContext, input: dict[str, Any]) -> int:
    total = await ctx.get(input["key"], 0) + 1
    ctx.put(input["key"], total)
    if input.get("sleep_s"):
        await trio.sleep(input["sleep_s"])
    return total


@counter.compensation("subtract")
async def subtract(ctx: StepContext, input: dict[str, Any], result: int) -> None:
    if behaviour["undo_fails"]:
        raise RuntimeError("the undo is broken today")
    ctx.put(input["key"], await ctx.get(input["key"], 0) - 1)


@counter.action("refuse")
async def refuse(ctx: StepContext, input: dict[str, Any]) -> None:
    raise Fail("Refused", "this step always says no")


@counter.action("boast")
async def boast(ctx: StepContext, input: dict[str, Any]) -> str:
    ctx.put(input["key"], 1)
    return "x" * input["size"]


@counter.action("finish")
async def finish(ctx: StepContext, input: dict[str, Any]) -> str:
    if behaviour["finish_fails"]:
        raise RuntimeError("the finishing service is down")
    return "done"


@pytest.fixture(scope="module")
def saga_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("sagas"), options={"sagas": SAGA_OPTIONS})


@asynccontextmanager
async def serving(cluster: LocalCluster) -> AsyncIterator[SagaClient]:
    async with commit.connect(cluster.config) as db, open_service(counter, cluster.config, host="127.0.0.1", port=0):
        yield SagaClient(db)


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "node.py"), "--config", str(cluster.config_path), *args],
                          capture_output=True, text=True, timeout=60)


def compensatable(key: str, name: str = "add") -> dict[str, Any]:
    return {"service": "counter", "action": "add", "compensation": "subtract", "input": {"key": key}}


BAD_DEFINITIONS = [
    ("not a map", "must be a map"),
    ({"mode": "saga", "steps": []}, "from 1 to"),
    ({"mode": "xa", "steps": [{"name": "a"}]}, "mode must be one of"),
    ({"steps": [{"name": "a", "service": "counter", "action": "add", "compensation": "subtract", "after": ["b"]}]},
     "not earlier steps"),
    ({"steps": [{"name": "a", "service": "counter", "action": "add"}]}, "has a compensation"),
    ({"steps": [{"name": "a", "service": "counter", "action": "add", "compensation": "x", "evil": 1}]},
     "unknown fields"),
    ({"steps": [{"name": "a" * 500, "service": "counter", "action": "add", "compensation": "x"}]}, "characters"),
    ({"steps": [{"name": "a", "service": "counter", "action": "add", "compensation": "x",
                 "retry": {"backoff_coefficient": 0.5}}]}, "backoff_coefficient"),
    ({"steps": [{"name": "p", "service": "counter", "action": "add", "kind": "pivot"},
                {"name": "q", "service": "counter", "action": "add", "kind": "pivot", "after": ["p"]}]},
     "at most one pivot"),
]


@pytest.mark.parametrize(("definition", "complaint"), BAD_DEFINITIONS)
async def test_a_bad_definition_is_refused_whole_and_nothing_is_recorded(
    saga_cluster: LocalCluster, definition: Any, complaint: str
) -> None:
    async with commit.connect(saga_cluster.config) as db:
        sagas = SagaClient(db)
        before = await sagas.list()
        with pytest.raises(commit.InvalidRequest, match=complaint):
            await sagas.start(definition, "bad-one")
        with pytest.raises(commit.InvalidRequest):
            await db.call_group("coord", "saga.start", {"saga": 17, "definition": {"steps": []}})
        assert await sagas.list() == before


async def test_a_saga_started_twice_runs_once_and_another_definition_under_its_id_is_refused(
    saga_cluster: LocalCluster,
) -> None:
    async with serving(saga_cluster) as sagas:
        saga = Saga().step("a", **compensatable("twice")).step(
            "done", service="counter", action="finish", kind="pivot", after=["a"])
        await sagas.start(saga, "started-twice")
        await sagas.start(saga, "started-twice")
        assert (await sagas.wait("started-twice", WAIT_S))["state"] == "completed"
        assert (await sagas.db.get("counter/twice")).value == 1
        with pytest.raises(commit.InvalidRequest, match="another definition"):
            await sagas.start(Saga().step("b", **compensatable("twice")), "started-twice")


async def test_a_compensation_that_keeps_failing_leaves_the_saga_stuck_until_an_operator_retries_it(
    saga_cluster: LocalCluster,
) -> None:
    behaviour["undo_fails"] = True
    try:
        async with serving(saga_cluster) as sagas:
            saga = Saga().step("a", **compensatable("stuck-undo"), compensation_retry={"maximum_attempts": 2}).step(
                "no", service="counter", action="refuse", kind="pivot", after=["a"])
            shown = await sagas.run(saga, "stuck-undo", WAIT_S)
            assert shown["state"] == "stuck" and "RuntimeError" in shown["reason"], shown
            listed = json.loads(cli(saga_cluster, "saga", "list", "--state", "stuck", "--json").stdout)
            assert "stuck-undo" in [row["saga"] for row in listed]
            table = cli(saga_cluster, "saga", "show", "stuck-undo").stdout
            assert "compensation (undo)" in table and "the undo is broken today" in table, table
            assert (await sagas.db.get("counter/stuck-undo")).value == 1  # nothing undone yet
            behaviour["undo_fails"] = False
            retried = cli(saga_cluster, "saga", "retry", "stuck-undo", "--step", "a")
            assert retried.returncode == 0, retried.stderr
            assert (await sagas.wait("stuck-undo", WAIT_S))["state"] == "compensated"
            assert (await sagas.db.get("counter/stuck-undo")).value == 0
    finally:
        behaviour["undo_fails"] = False


async def test_a_step_after_the_pivot_that_keeps_failing_is_stuck_and_can_be_skipped(
    saga_cluster: LocalCluster,
) -> None:
    behaviour["finish_fails"] = True
    try:
        async with serving(saga_cluster) as sagas:
            saga = (Saga().step("a", **compensatable("stuck-forward"))
                    .step("pivot", service="counter", action="add", kind="pivot", after=["a"],
                          input={"key": "stuck-forward-pivot"})
                    .step("finish", service="counter", action="finish", kind="retriable", after=["pivot"],
                          retry={"maximum_attempts": 2}))
            shown = await sagas.run(saga, "stuck-forward", WAIT_S)
            assert shown["state"] == "stuck", shown
            with pytest.raises(commit.InvalidRequest, match="past its pivot"):
                await sagas.compensate("stuck-forward")
            with pytest.raises(commit.InvalidRequest, match="stuck on step finish"):
                await sagas.skip("stuck-forward", "a")
            await sagas.skip("stuck-forward", "finish")
            final = await sagas.wait("stuck-forward", WAIT_S)
            assert final["state"] == "completed"
            assert [e["command"] for e in final["history"] if e["event"] == "operator"] == ["skip"]
            assert (await sagas.db.get("counter/stuck-forward")).value == 1
    finally:
        behaviour["finish_fails"] = False


async def test_an_operator_compensates_a_running_saga_before_its_pivot(saga_cluster: LocalCluster) -> None:
    async with serving(saga_cluster) as sagas:
        saga = (Saga().step("a", **compensatable("operator-undo"))
                .step("slow", service="counter", action="add", compensation="subtract", after=["a"],
                      input={"key": "operator-undo-slow", "sleep_s": 0.6}, timeout_s=5.0)
                .step("pivot", service="counter", action="finish", kind="pivot", after=["slow"]))
        await sagas.start(saga, "operator-undo")
        with trio.fail_after(WAIT_S):
            while not any(e.get("step") == "slow" for e in (await sagas.show("operator-undo"))["history"]):
                await trio.sleep(0.05)
        await sagas.compensate("operator-undo")
        final = await sagas.wait("operator-undo", WAIT_S)
        assert final["state"] == "compensated", final
        assert (await sagas.db.get("counter/operator-undo")).value == 0
        assert (await sagas.db.get("counter/operator-undo-slow")).value in (0, None)  # undone, or fenced


async def test_node_status_counts_sagas_by_state(saga_cluster: LocalCluster) -> None:
    async with serving(saga_cluster) as sagas:
        await sagas.run(Saga().step("a", **compensatable("counted")), "counted", WAIT_S)
    leader = (await saga_cluster.leaders())["coord"]
    counters = (await saga_cluster.call(leader, "node.status", {}))["counters"]
    assert counters["sagas"]["completed"] >= 1 and counters["saga_orchestrator"]["calls"] >= 1


async def test_oversized_definitions_results_and_listings_are_refused(saga_cluster: LocalCluster) -> None:
    """Every replica keeps a definition and a history for the saga's life: both are bounded."""
    sagas_config = saga_cluster.config.sagas
    async with serving(saga_cluster) as sagas:
        huge = Saga().step("a", **compensatable("huge"))
        huge.steps[0] = replace(huge.steps[0], input={"key": "huge", "pad": "p" * sagas_config.max_definition_bytes})
        with pytest.raises(commit.InvalidRequest, match="max_definition_bytes"):
            await sagas.start(huge, "huge")
        with pytest.raises(commit.InvalidRequest, match="max_listed_sagas"):
            await sagas.list(limit=sagas_config.max_listed_sagas + 1)
        boastful = Saga().step("a", service="counter", action="boast", compensation="subtract",
                               input={"key": "boastful", "size": sagas_config.max_result_bytes + 1})
        final = await sagas.run(boastful, "boastful", WAIT_S)
        assert final["state"] == "compensated", final
        assert [e["error"] for e in final["history"] if e["event"] == "failed"] == ["ResultTooLarge"]
        assert (await sagas.db.get("counter/boastful")).value == 0  # applied, then undone
