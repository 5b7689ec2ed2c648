"""When each commit protocol blocks, unblocks or splits: demonstrations on a real local cluster.

    python -m bench.scenarios --list
    python -m bench.scenarios 2pc-coordinator-crash
    python -m bench.scenarios 3pc-partition --json

Each scenario starts a throwaway cluster of real node processes: n1 is the
coordinator node of ``2pc`` and ``3pc`` and hosts no replica; n2, n3 and n4
replicate the coordinator group and three shards, whose leaders are placed on
n2, n3 and n4 (shard-0, shard-1, shard-2) so that a fault hits the
participant it is meant to. It runs a transfer between accounts on different
shards, injects the fault (kill -9 of a coordinator held at a named protocol
step by the test hooks, or link cuts in the node-to-node RPC layer), and
then reads what every shard actually holds for the transaction
(``shard.inspect``) and the accounts' values. The verdict is computed from
that state, never assumed: a transaction committed on one shard and aborted
on another is printed as a violation, with the money it created or destroyed.

The link cuts of ``3pc-partition`` cut the commit protocol's messages, not
Raft replication (docs/OPERATIONS.md, "Fault injection"): each shard stays
available on its own side, which is the situation 3PC's termination protocol
is built for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import commit
from bench.report import progress
from commit.tooling.admin import transaction_trace
from commit.config import shard_group
from commit.protocols.registry import PROTOCOLS
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard
from commit.tooling.tables import format_table
from commit.tooling.traces import sequence_diagram, summarize
from consensus.errors import ClusterError

NODES = ["n1", "n2", "n3", "n4"]
REPLICAS = ["n2", "n3", "n4"]
PLACEMENT = {"shard-0": "n2", "shard-1": "n3", "shard-2": "n4", "coord": "n4"}
START_BALANCE = 100
AMOUNT = 30
POLL_S = 0.1
ASK_TIMEOUT_S = 3.0  # one shard.inspect or read; a partition makes some of them wait
STEP_TIMEOUT_S = 10.0  # a step of a scenario (the commit starting, the participants reaching a state)
OPTIONS: dict[str, Any] = {
    "coordinator_members": REPLICAS,
    "shard_members": REPLICAS,
    "transactions": {
        "fault_hooks": True,
        "twopc_coordinator": "n1",
        "vote_timeout_s": 1.0,
        "in_doubt_timeout_s": 0.5,
        "three_phase_wait_s": 1.0,
        "three_phase_stagger_s": 0.5,
    },
}


@dataclass
class Stage:
    """A running cluster with leaders placed, and a client."""

    cluster: LocalCluster
    db: commit.Database
    log: Callable[[str], None]
    runs: int = 0

    async def reset(self) -> None:
        """Every node running, every link healed, leaders back in place: ready for the next run."""
        for node in NODES:
            if not self.cluster.alive(node):
                self.cluster.start(node)
        await self.cluster.wait_ready()
        await self.cluster.heal()
        await self.cluster.place_leaders(PLACEMENT)


@asynccontextmanager
async def open_stage(root: Path, log: Callable[[str], None] = progress) -> AsyncIterator[Stage]:
    cluster = LocalCluster(root, node_ids=list(NODES), options=OPTIONS)
    log(f"starting nodes {', '.join(NODES)} (n1: 2pc/3pc coordinator; n2-n4: replicas) in {root}")
    cluster.start_all()
    try:
        await cluster.wait_ready()
        await cluster.place_leaders(PLACEMENT)
        log("leaders: " + ", ".join(f"{g} on {n}" for g, n in sorted(PLACEMENT.items())))
        async with commit.connect(cluster.config) as db:
            yield Stage(cluster, db, log)
    finally:
        cluster.stop()


@dataclass
class Run:
    """One transfer under a fault, and what the shards did with it."""

    protocol: str
    fault: str
    txid: str
    keys: dict[str, str]  # shard -> account key
    fault_at: float = 0.0
    timeline: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    values: dict[str, int | None] = field(default_factory=dict)

    def since_fault(self) -> float:
        return time.monotonic() - self.fault_at

    def decided_at(self) -> float | None:
        """Seconds after the fault when the last shard decided, if every shard did."""
        for at, states in self.timeline:
            if all(s in ("committed", "aborted") for s in states.values()):
                return round(at, 2)
        return None

    def verdict(self) -> dict[str, Any]:
        outcomes = {s for s in self.states.values() if s in ("committed", "aborted")}
        undecided = sorted(shard for shard, s in self.states.items() if s not in ("committed", "aborted"))
        total = sum(v or 0 for v in self.values.values()) if None not in self.values.values() else None
        expected_total = START_BALANCE * len(self.keys)
        if len(outcomes) == 2:
            verdict = "VIOLATION: split decision (committed on some shards, aborted on others)"
        elif undecided:
            verdict = f"blocked: {', '.join(undecided)} still prepared, locks held"
        else:
            verdict = f"consistent: {outcomes.pop()} everywhere"
        return {
            "protocol": self.protocol,
            "fault": self.fault,
            "txid": self.txid,
            "shards": dict(self.states),
            "split": verdict.startswith("VIOLATION"),
            "blocked": bool(undecided),
            "decided_after_s": self.decided_at(),
            "values": dict(self.values),
            "money_created": None if total is None else total - expected_total,
            "verdict": verdict,
        }


async def _inspect(stage: Stage, txid: str, shard: str) -> str:
    """The shard's state for txid, with the 3PC phase when prepared ("prepared/precommitted")."""
    try:
        with trio.fail_after(ASK_TIMEOUT_S):
            reply = await stage.db.call_group(shard, "shard.inspect", {"txid": txid, "shard": shard})
    except (ClusterError, trio.TooSlowError):
        return "unreachable"
    if reply["state"] == "prepared" and reply["phase"]:
        return f"prepared/{reply['phase']}"
    return str(reply["state"])


async def shard_states(stage: Stage, run: Run) -> dict[str, str]:
    return {shard: await _inspect(stage, run.txid, shard) for shard in run.keys}


async def watch(stage: Stage, run: Run, seconds: float, until_decided: bool = True) -> None:
    """Sample every shard's state for ``seconds`` (or until all decided), logging each change."""
    deadline = trio.current_time() + seconds
    last: dict[str, str] = {}
    while True:
        states = await shard_states(stage, run)
        if states != last:
            at = run.since_fault()
            run.timeline.append((at, states))
            stage.log(f"  +{at:5.2f}s  " + "  ".join(f"{s}: {v}" for s, v in sorted(states.items())))
            last = states
        run.states = states
        decided = all(s in ("committed", "aborted") for s in states.values())
        if (decided and until_decided) or trio.current_time() >= deadline:
            return
        await trio.sleep(POLL_S)


async def read_values(stage: Stage, run: Run) -> None:
    """The accounts as a reader sees them now; None where a reader is refused (an in-doubt lock)."""
    for shard, key in run.keys.items():
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                run.values[shard] = (await stage.db.get(key)).value
        except (ClusterError, trio.TooSlowError):
            run.values[shard] = None


async def start_held_transfer(stage: Stage, protocol: str, point: str, shards: list[str],
                              nursery: trio.Nursery) -> Run:
    """Move AMOUNT from the first shard's account to the others, with the coordinator armed at ``point``."""
    stage.runs += 1
    prefix = f"scenario{stage.runs}-{protocol}-"
    keys = {shard_group(i): k[0] for i, k in enumerate(keys_on_each_shard(prefix, 1, len(PLACEMENT) - 1))}
    keys = {s: keys[s] for s in shards}
    for key in keys.values():
        await stage.db.put(key, START_BALANCE)
    coordinator = await stage.cluster.coordinator_of(protocol)
    await stage.cluster.hold(coordinator, point)
    tx = commit.Transaction(stage.db, protocol)
    src, *dsts = shards
    tx.put(keys[src], (await tx.get(keys[src])).value - AMOUNT)
    for dst in dsts:
        tx.put(keys[dst], (await tx.get(keys[dst])).value + AMOUNT // len(dsts))

    async def commit_and_ignore() -> None:
        try:
            await tx.commit()
        except ClusterError:
            pass  # the coordinator is meant to die or vanish under it; the shards tell what happened

    nursery.start_soon(commit_and_ignore)
    with trio.fail_after(STEP_TIMEOUT_S):
        while tx.txid is None:
            await trio.sleep(0.01)
    return Run(protocol, point, tx.txid, keys)


async def wait_for_states(stage: Stage, run: Run, wanted: Callable[[dict[str, str]], bool], what: str) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        while not wanted(await shard_states(stage, run)):
            await trio.sleep(POLL_S / 2)
    stage.log(f"{what}: " + ", ".join(f"{s} {v}" for s, v in sorted((await shard_states(stage, run)).items())))


def _all_prepared(states: dict[str, str]) -> bool:
    return all(s.startswith("prepared") for s in states.values())


async def finish(stage: Stage, run: Run) -> dict[str, Any]:
    await read_values(stage, run)
    return {**run.verdict(), "events": await transaction_trace(stage.cluster.config, run.txid)}


# -- the faults ---------------------------------------------------------------------------------


async def coordinator_crash(stage: Stage, protocol: str, point: str = "coordinator.after_votes",
                            patience_s: float = 6.0) -> dict[str, Any]:
    """Kill -9 the coordinator held at ``point``; restart it only if the shards cannot finish without it."""
    stage.log(f"\n== {protocol}: kill -9 the coordinator at {point} ==")
    async with trio.open_nursery() as client:
        run = await start_held_transfer(stage, protocol, point, ["shard-0", "shard-1"], client)
        if point == "coordinator.after_decision" and PROTOCOLS[protocol].participants_terminate:
            await wait_for_states(stage, run, lambda s: all(v.endswith("precommitted") for v in s.values()),
                                  "every participant precommitted")
        else:
            await wait_for_states(stage, run, _all_prepared, "every participant voted yes")
        victim = await stage.cluster.coordinator_of(protocol)
        stage.cluster.kill(victim)
        run.fault_at = time.monotonic()
        # The client gives up too: a retry would send the whole transaction again (to the restarted or
        # new coordinator), and this is about what the participants do on their own.
        client.cancel_scope.cancel()
    stage.log(f"killed coordinator {victim}; watching the shards for {patience_s}s")
    await watch(stage, run, patience_s)
    needed_restart = any(s.startswith("prepared") for s in run.states.values())
    if needed_restart:
        await read_values(stage, run)
        refused = [s for s, v in run.values.items() if v is None]
        stage.log(f"still blocked after {patience_s}s; readers refused on {', '.join(refused) or 'none'}; "
                  f"restarting {victim}")
        stage.cluster.start(victim)
        await watch(stage, run, 30)
    result = await finish(stage, run)
    result["coordinator"] = victim
    result["needed_coordinator_back"] = needed_restart
    result["locks_held_s"] = result["decided_after_s"]
    return result


async def partition_after_one_precommit(stage: Stage, protocol: str, window_s: float = 8.0) -> dict[str, Any]:
    """PreCommit reaches shard-0 only; then {n1}, {n2: shard-0} and {n3, n4: shard-1, shard-2} are cut apart."""
    stage.log(f"\n== {protocol}: partition after PreCommit reached shard-0 only ==")
    shards = ["shard-0", "shard-1", "shard-2"]
    async with trio.open_nursery() as client:
        run = await start_held_transfer(stage, protocol, "coordinator.after_one_precommit", shards, client)
        await wait_for_states(stage, run, lambda s: s["shard-0"].endswith("precommitted")
                              and _all_prepared(s), "PreCommit reached shard-0")
        await stage.cluster.partition(["n1"], ["n2", "n3", "n4"])
        await stage.cluster.partition(["n2"], ["n3", "n4"])
        run.fault_at = time.monotonic()
        client.cancel_scope.cancel()  # the client gives up on the frozen coordinator
    stage.log("partitioned: {n1} | {n2: shard-0} | {n3, n4: shard-1, shard-2}; the coordinator is cut off")
    await watch(stage, run, window_s)
    during = dict(run.states)
    await read_values(stage, run)
    values_during = dict(run.values)
    await stage.cluster.heal()
    stage.log("healed every link; watching again")
    await watch(stage, run, window_s)
    result = await finish(stage, run)
    result["during_partition"] = during
    result["values_during_partition"] = values_during
    result["split_during_partition"] = {"committed", "aborted"} <= set(during.values())
    result["blocked_during_partition"] = sorted(s for s, v in during.items() if v.startswith("prepared"))
    return result


# -- the scenarios ---------------------------------------------------------------------------------


async def two_pc_coordinator_crash(stage: Stage) -> dict[str, Any]:
    return {"runs": [await coordinator_crash(stage, "2pc")]}


async def three_pc_unblocks(stage: Stage) -> dict[str, Any]:
    runs = [await coordinator_crash(stage, "3pc", "coordinator.after_votes")]
    await stage.reset()
    runs.append(await coordinator_crash(stage, "3pc", "coordinator.after_decision"))
    return {"runs": runs}


async def three_pc_partition(stage: Stage) -> dict[str, Any]:
    runs = [await partition_after_one_precommit(stage, "3pc")]
    await stage.reset()
    runs.append(await partition_after_one_precommit(stage, "3pc-quorum"))
    return {"runs": runs}


async def paxos_commit_coordinator_crash(stage: Stage) -> dict[str, Any]:
    return {"runs": [await coordinator_crash(stage, "paxos-commit")]}


COMPARED = ("2pc", "raft-2pc", "3pc", "3pc-quorum", "paxos-commit")


async def normal_case_costs(stage: Stage, protocol: str, transactions: int) -> dict[str, Any]:
    """Median latency and the traced costs of ``transactions`` 2-shard transfers without faults."""
    keys = [k[0] for k in keys_on_each_shard(f"costs-{protocol}-", 1, 3)[:2]]
    latencies, summaries = [], []
    for _ in range(transactions):
        started = time.perf_counter()
        async with stage.db.transaction(protocol) as tx:
            for key in keys:
                tx.put(key, 1)
        latencies.append(time.perf_counter() - started)
        assert tx.txid is not None
        await trio.sleep(0.3)  # the decision messages, and their traces, land after the reply
        summaries.append(summarize(await transaction_trace(stage.cluster.config, tx.txid)))
    latencies.sort()

    def median(key: str) -> int:
        return sorted(s[key] for s in summaries)[len(summaries) // 2]

    return {"protocol": protocol, "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "delays": median("message_delays"), "msgs": median("messages"), "forced": median("forced_writes")}


def _crash_cell(run: dict[str, Any]) -> str:
    if run["split"]:
        return "SPLIT"
    outcome = next(iter(set(run["shards"].values())))
    if run["needed_coordinator_back"]:
        return f"blocked until restart ({run['locks_held_s']}s), then {outcome}"
    return f"{outcome} after {run['locks_held_s']}s, no restart"


def _partition_cell(run: dict[str, Any]) -> str:
    if run["split_during_partition"]:
        return f"SPLIT: {', '.join(f'{s} {v}' for s, v in sorted(run['during_partition'].items()))}"
    if run["blocked_during_partition"]:
        return f"no split; {', '.join(run['blocked_during_partition'])} blocked until healed"
    return "no split"


async def compare(stage: Stage, transactions: int = 10, patience_s: float = 6.0,
                  window_s: float = 8.0) -> dict[str, Any]:
    """``patience_s`` and ``window_s``: how long a crash run watches before restarting a coordinator the
    shards cannot finish without, and how long a partition run watches the partition (and then the heal)."""
    rows = []
    for protocol in COMPARED:
        stage.log(f"\n== {protocol}: {transactions} transfers without faults ==")
        rows.append(await normal_case_costs(stage, protocol, transactions))
    runs = []
    for protocol in COMPARED:
        await stage.reset()
        run = await coordinator_crash(stage, protocol, patience_s=patience_s)
        runs.append(run)
        next(r for r in rows if r["protocol"] == protocol)["coordinator_crash"] = _crash_cell(run)
    for protocol in (p for p in COMPARED if PROTOCOLS[p].participants_terminate):  # those with a PreCommit
        await stage.reset()
        run = await partition_after_one_precommit(stage, protocol, window_s)
        runs.append(run)
        next(r for r in rows if r["protocol"] == protocol)["partition"] = _partition_cell(run)
    for row in rows:
        row.setdefault("partition", "not run (no PreCommit phase)")
    return {"rows": rows, "runs": runs}


@dataclass(frozen=True)
class Scenario:
    description: str
    body: Callable[[Stage], Awaitable[dict[str, Any]]]


SCENARIOS = {
    "2pc-coordinator-crash": Scenario(
        "2PC's coordinator dies after the votes: the participants block, locks held, until it returns",
        two_pc_coordinator_crash),
    "3pc-unblocks": Scenario(
        "the same crash under 3PC (after the votes, and after every PreCommit): participants finish alone",
        three_pc_unblocks),
    "3pc-partition": Scenario(
        "a partition after PreCommit reached one side: plain 3PC splits, quorum 3PC blocks the minority",
        three_pc_partition),
    "paxos-commit-coordinator-crash": Scenario(
        "the same crash under Paxos Commit: a new leader decides, nothing blocks, nothing splits",
        paxos_commit_coordinator_crash),
    "compare": Scenario(
        "2pc, raft-2pc, 3pc, 3pc-quorum and paxos-commit side by side: costs and each failure's outcome",
        compare),
}

RUN_COLUMNS = ("protocol", "fault", "shards", "decided_after_s", "money_created", "verdict")
COMPARE_COLUMNS = ("protocol", "delays", "msgs", "forced", "p50_ms", "coordinator_crash", "partition")


async def run_scenario(name: str, root: Path, log: Callable[[str], None] = progress) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    async with open_stage(root, log) as stage:
        result = await scenario.body(stage)
    return {"scenario": name, "description": scenario.description, **result}


def render(result: dict[str, Any], nodes: list[str]) -> str:
    lines = [f"# {result['scenario']}: {result['description']}", ""]
    for run in result["runs"]:
        diagram = sequence_diagram(run["events"], nodes) if run["events"] else "(no trace)"
        lines += [f"## {run['protocol']}, {run['fault']}: message trace of {run['txid']}",
                  "(what the surviving nodes recorded: a killed node's records died with it)", "", diagram, ""]
    if "rows" in result:
        lines += [format_table(result["rows"], COMPARE_COLUMNS), ""]
    flat = [{**r, "shards": ", ".join(f"{s}={v}" for s, v in sorted(r["shards"].items()))} for r in result["runs"]]
    lines += [format_table(flat, RUN_COLUMNS)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", choices=sorted(SCENARIOS))
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.list or args.name is None:
        print(format_table([{"scenario": n, "what it shows": s.description} for n, s in SCENARIOS.items()],
                           ("scenario", "what it shows")))
        return 0
    with tempfile.TemporaryDirectory(prefix="scenario-") as tmp:
        result = trio.run(run_scenario, args.name, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(render(result, NODES))
    return 1 if any(r["split"] and not PROTOCOLS[r["protocol"]].splits_under_partition for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
