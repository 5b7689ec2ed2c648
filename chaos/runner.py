"""One chaos run: a throwaway cluster, a workload's clients, a nemesis schedule, then the checker's verdict.

The run's order follows Jepsen's: set up, run the clients and the nemesis together for the run's time,
heal everything, let the cluster settle, make the final reads, and only then check the history. The
history, the nemesis events and the summary are written to the run's directory (``history.jsonl``,
``nemesis.jsonl``, ``summary.json``) so that a failing run can be re-checked (``python -m chaos check``)
and kept. Everything random comes from the run's seed: the schedule, the victims and the operations.
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

import commit
from chaos.checkers import CheckResult
from chaos.checkers.bank import check_bank
from chaos.checkers.list_append import check_list_append
from chaos.checkers.sets import check_set
from chaos.history import History
from chaos.nemesis import HOOKED_KINDS, PARTITIONS, Nemesis, plan
from chaos.network import NODE_HOSTS, Firewall, firewall_missing, open_firewall
from chaos.workloads import LIST_KEYS, Workload, record, run_clients
from commit.protocols.registry import PROTOCOLS, Coordinator
from commit.tooling.localcluster import LocalCluster

WORKLOADS = ("bank", "list-append", "set")
READY_S = 60.0  # the cluster elects every group's leader within this, at the start and after the heal
FINAL_READ_S = 30.0  # the final reads' own deadline, once everything is healed
SPLIT_BY_DESIGN = {"3pc"}  # protocols whose anomalies under partitions are expected (docs/PROTOCOLS.md)
# Chaos-sized timeouts: an operation that a fault holds up ends (as info) well within a fault's duration.
TIMEOUTS = {"client_attempt_s": 3.0, "client_deadline_s": 8.0, "request_s": 3.0}
FINAL_PROCESS = 10 ** 6  # the final reads' processes: after every client's
FINAL_RETRY_S = 1.0
OP_TIMEOUT_S = 10.0  # beyond the client's own deadline: the client's error, not this, classifies an op


@dataclass(frozen=True)
class RunSpec:
    protocol: str
    workload: str
    nemeses: tuple[str, ...]
    seconds: float
    seed: int
    clients: int = 6
    nodes: int = 3
    shards: int = 2
    accounts: int = 8  # bank
    keys: int = LIST_KEYS  # list-append: keys in use at once (fewer: hotter)
    mutant: str = ""  # a deliberately broken build (``transactions.mutant``): the harness must catch it
    operations: int = 0  # with seconds: stop at whichever comes first (0: seconds only)
    gap_s: tuple[float, float] = (1.0, 3.0)  # quiet time between faults, drawn from this range ...
    fault_s: tuple[float, float] = (1.0, 4.0)  # ... and each fault's duration
    partitions: tuple[str, ...] = PARTITIONS  # the shapes a partition is drawn from

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        if not self.workload or any(w not in WORKLOADS for w in self.workload.split("+")):
            raise ValueError(f"unknown workload {self.workload!r}: choose from {', '.join(WORKLOADS)}, or several "
                             "joined by '+'")
        if not 3 <= self.nodes <= len(NODE_HOSTS):
            raise ValueError(f"nodes = {self.nodes}: between 3 and {len(NODE_HOSTS)}")


@dataclass
class RunSummary:
    spec: RunSpec
    ops: dict[str, int]
    verdict: CheckResult
    lost_acknowledged: int
    windows: list[dict[str, Any]]
    expected_anomalies: bool
    directory: str
    skipped: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict.valid and self.lost_acknowledged == 0

    def to_json(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "ops": self.ops, "valid": self.valid, "verdict": self.verdict.to_json(),
                "lost_acknowledged": self.lost_acknowledged, "windows": self.windows,
                "expected_anomalies": self.expected_anomalies,
                "directory": self.directory, "skipped": self.skipped}


def check(workload: str, history: History, accounts: list[str], total: int) -> CheckResult:
    """The workload's checkers over a history (also what ``python -m chaos check`` calls on a kept one);
    with several workloads, one result holding every checker's anomalies."""
    results = []
    kinds = workload.split("+")
    if "bank" in kinds:
        results.append(check_bank(history, accounts, total))
    if "set" in kinds:
        results.append(check_set(history))
    if "list-append" in kinds:
        results.append(check_list_append(history, strict=True))
    return CheckResult.of([a for r in results for a in r.anomalies], {k: v for r in results for k, v in r.stats.items()})


def lost_acknowledged(workload: str, history: History) -> int:
    """Writes acknowledged ``ok`` and absent from the final reads (list-append and set)."""
    lost = 0
    kinds = workload.split("+")
    if "set" in kinds:
        final = [op for op in history.ops if op.f == "read" and op.type == "ok" and isinstance(op.value, list)]
        present = set(final[-1].value) if final else set()
        lost += sum(1 for op in history.ops if op.f == "add" and op.type == "ok" and op.value not in present)
    if "list-append" not in kinds:
        return lost
    last_read: dict[str, set[int]] = {}
    for op in history.ops:
        if op.type == "ok" and op.f == "txn" and op.process >= FINAL_PROCESS:
            for _f, key, seen in op.value:
                last_read[key] = set(seen)
    return lost + sum(1 for op in history.ops if op.type == "ok" and op.f == "txn" for f, key, v in op.value
                      if f == "append" and v not in last_read.get(key, set()))


def unavailability(history: History, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per nemesis event: the longest time without any ok completion from its start until 5 s after its end,
    and how long after the heal the first operation succeeded."""
    oks = sorted(op.time for op in history.ops if op.type == "ok")
    rows = []
    for event in events:
        start, end = event["start"], event["end"] if event["end"] is not None else event["start"]
        inside = [start] + [t for t in oks if start <= t <= end + 5.0] + [end + 5.0]
        after = next((t for t in oks if t >= end), None)
        rows.append({"kind": event["kind"], "target": event["target"], "nodes": event["nodes"],
                     "duration_s": round(end - start, 2),
                     "longest_gap_s": round(max(b - a for a, b in zip(inside, inside[1:])), 2),
                     "first_ok_after_heal_s": round(after - end, 2) if after is not None else None})
    return rows


def run_chaos(spec: RunSpec, directory: Path | None = None,
              progress: Callable[[str], None] = lambda line: None) -> RunSummary:
    spec.check()
    skipped = []
    nemeses = spec.nemeses
    if "partition" in nemeses and (missing := firewall_missing()) is not None:
        skipped.append(f"partition: {missing}")
        nemeses = tuple(n for n in nemeses if n != "partition")
    rng = random.Random(spec.seed)
    progress(f"seed {spec.seed}: {spec.workload} under {spec.protocol}, {spec.seconds:.0f} s"
             + (f" or {spec.operations} operations" if spec.operations else "")
             + f", nemesis {', '.join(nemeses) or 'none'}" + (f", mutant {spec.mutant}" if spec.mutant else ""))
    out = directory or Path(tempfile.mkdtemp(prefix="chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    node_ids = [f"n{i + 1}" for i in range(spec.nodes)]
    hosts = dict(zip(node_ids, NODE_HOSTS))
    transactions: dict[str, Any] = {"default_protocol": spec.protocol}
    if spec.mutant or set(nemeses) & set(HOOKED_KINDS):
        transactions["fault_hooks"] = True
    if spec.mutant:
        transactions["mutant"] = spec.mutant
    with tempfile.TemporaryDirectory(prefix="chaos-cluster-") as tmp:
        cluster = LocalCluster(Path(tmp), node_ids=node_ids, shards=spec.shards, seed=spec.seed,
                               options={"hosts": list(hosts.values()), "timeouts": TIMEOUTS,
                                        "transactions": transactions})
        protocol = PROTOCOLS[spec.protocol]
        blocks = protocol.coordinator is Coordinator.NODE and not protocol.participants_terminate
        spared = frozenset({cluster.config.transactions.twopc_coordinator or node_ids[0]}) if blocks else frozenset()
        cluster.start_all()
        try:
            firewall = open_firewall(f"chaos-{spec.seed % 10 ** 9}") if "partition" in nemeses else nullcontext()
            with firewall as cuts:
                history, workload, events = trio.run(_run, cluster, spec, nemeses, rng, hosts, spared, cuts, progress)
        finally:
            cluster.stop()
    history.write_jsonl(out / "history.jsonl")
    (out / "nemesis.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    verdict = check(spec.workload, history, workload.accounts, workload.total)
    counts = Counter(op.type for op in history.ops if op.type != "invoke")
    summary = RunSummary(spec, {k: counts.get(k, 0) for k in ("ok", "fail", "info")}, verdict,
                         lost_acknowledged(spec.workload, history), unavailability(history, events),
                         spec.protocol in SPLIT_BY_DESIGN and "partition" in nemeses, str(out), skipped)
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


async def _run(cluster: LocalCluster, spec: RunSpec, nemeses: tuple[str, ...], rng: random.Random,
               hosts: dict[str, str], spared: frozenset[str], firewall: Firewall | None,
               progress: Callable[[str], None]) -> tuple[History, Workload, list[dict[str, Any]]]:
    with trio.fail_after(READY_S):
        await cluster.wait_ready()
    history = History()
    workload = Workload(spec.workload, spec.protocol, random.Random(rng.random()), OP_TIMEOUT_S)
    nemesis = Nemesis(cluster, firewall, hosts, random.Random(rng.random()), time.monotonic, spared,
                      progress=progress)
    async with commit.connect(cluster.config) as db:
        await workload.setup(db, spec.accounts, spec.keys)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_terminated)
            nursery.start_soon(nemesis.run, plan(random.Random(rng.random()), nemeses, gap_s=spec.gap_s,
                                                    duration_s=spec.fault_s, partitions=spec.partitions))
            await run_clients(db, workload, history, clients=spec.clients, seconds=spec.seconds,
                              operations=spec.operations, progress=progress)
            nursery.cancel_scope.cancel()
        with trio.fail_after(READY_S):
            await cluster.wait_ready()
        progress(f"healed; {len(history.ops) // 2} operations; final reads ...")
        await _final_reads(db, workload, history)
    return history, workload, [e.to_json() for e in nemesis.events]


class Terminated(Exception):
    """The run got SIGTERM or SIGHUP: it stops, and its cluster and firewall are taken down on the way out."""


async def _until_terminated() -> None:
    """A run stopped by ``kill`` (SIGTERM, or a closed terminal) still heals its cuts and stops its nodes;
    without this the process would die at once, with the nodes running and the firewall chain in place."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            raise Terminated(f"stopped by {signal.Signals(signum).name}")


async def _final_reads(db: commit.Database, workload: Workload, history: History) -> None:
    """The final reads, each tried until it succeeds: a checker without them cannot say what was lost."""
    for i, (f, value, call) in enumerate(workload.final_reads(db, history)):
        process = FINAL_PROCESS + i
        deadline = trio.current_time() + FINAL_READ_S
        while await record(history, process, f, value, call, FINAL_READ_S) != "ok" and trio.current_time() < deadline:
            process += FINAL_PROCESS // 2  # an info leaves its process open: the next try is another process
            await trio.sleep(FINAL_RETRY_S)
