"""Nemeses: seeded schedules of real faults on a running cluster, each healed when its time is up.

A schedule is data (``Fault`` rows that ``plan`` draws from a seed), so the same seed replays the same
faults in the same order. ``run_nemesis`` carries it out against a ``LocalCluster`` and a
``Firewall``: kill -9 then restart, SIGSTOP then SIGCONT, a partition of every byte between chosen
nodes (``chaos.network``), or, through the nodes' own test-only message filter (``commit.node.faults``),
every decision message lost (``drop-decisions``) or every message between the coordinator group's leader and
a shard's leader (``cut-rpc``: lost before it is sent, so nothing in flight arrives late after the heal), one fault at a time with a quiet gap between them, as Jepsen's combined
nemesis packages do (``jepsen.nemesis.combined``). Targets named by role ("the coordinator group's
leader") are resolved when the fault strikes. Whatever happens, everything is healed on the way out:
paused nodes continued, killed ones restarted, cuts removed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from chaos.network import Firewall
from commit.config import COORDINATOR_GROUP
from commit.tooling.fault_requests import link_requests, send_fault_requests
from commit.tooling.localcluster import LocalCluster

KINDS = ("kill", "pause", "partition", "drop-decisions", "cut-rpc")
DEFAULT_KINDS = KINDS[:3]  # the others need transactions.fault_hooks (a run turns it on when asked)
HOOKED_KINDS = KINDS[3:]
DROPPED = "shard.decide"  # what drop-decisions loses: every decision message, on every node, while it lasts
PARTITIONS = ("isolate-one", "isolate-leader", "majority-minority", "ring", "coordinator-shard")
LEADER_LOOKUP_S = 2.0  # how long to ask who leads before striking a random node instead


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule: after how quiet a gap, what, for how long, and whom."""

    gap_s: float  # quiet time before it strikes (after the previous fault healed)
    kind: str  # one of KINDS
    duration_s: float
    target: str  # "random", "leader" (of a random group), or for partitions one of PARTITIONS


@dataclass
class NemesisEvent:
    """A fault as it happened: the nodes it struck, and when (the history's monotonic clock)."""

    kind: str
    target: str
    nodes: list[str]
    start: float
    end: float | None = None
    cut: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(rng: random.Random, kinds: tuple[str, ...], *, gap_s: tuple[float, float] = (1.0, 3.0),
         duration_s: tuple[float, float] = (1.0, 4.0), partitions: tuple[str, ...] = PARTITIONS) -> Iterator[Fault]:
    """An endless schedule from ``rng``: the same seed gives the same faults in the same order."""
    unknown = (set(kinds) - set(KINDS)) | (set(partitions) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"unknown nemesis {sorted(unknown)}: choose from {', '.join(KINDS + PARTITIONS)}")
    while kinds:
        kind = rng.choice(kinds)
        target = rng.choice(partitions) if kind == "partition" else "all" if kind == "drop-decisions" \
            else "coordinator-shard" if kind == "cut-rpc" else rng.choice(("random", "leader"))
        yield Fault(round(rng.uniform(*gap_s), 2), kind, round(rng.uniform(*duration_s), 2), target)


def partition_pairs(shape: str, nodes: list[str], victim: str, rng: random.Random) -> list[tuple[str, str]]:
    """The node pairs a partition of ``shape`` cuts. ``victim`` is the node an isolation isolates.

    ``coordinator-shard`` is resolved from the leaders when it strikes (``_coordinator_and_shard``).
    ``ring`` is Jepsen's majorities ring: every node still sees a majority, but no two see the same one
    (each keeps its ring neighbours). With 3 nodes that is a bridge: one pair cut, the third node in both
    halves.
    """
    others = [n for n in nodes if n != victim]
    if shape in ("isolate-one", "isolate-leader"):
        return [(victim, n) for n in others]
    if shape == "majority-minority":
        shuffled = rng.sample(nodes, len(nodes))
        minority, majority = shuffled[:(len(nodes) - 1) // 2], shuffled[(len(nodes) - 1) // 2:]
        return [(a, b) for a in minority for b in majority]
    if shape == "ring":
        ring = rng.sample(nodes, len(nodes))
        if len(ring) <= 3:
            return [(ring[0], ring[2])] if len(ring) == 3 else []
        size = len(ring)
        return [(ring[i], ring[j]) for i in range(size) for j in range(i + 1, size)
                if min(j - i, size - (j - i)) > 1]
    raise ValueError(f"unknown partition {shape!r}: choose from {', '.join(PARTITIONS)}")


async def _coordinator_and_shard(cluster: LocalCluster, rng: random.Random) -> list[tuple[str, str]]:
    """The pair ``coordinator-shard`` cuts: the coordinator group's leader and the leader of a shard that
    another node leads, so that decisions reach one shard and not another (the window in which a reader
    must respect a prepared writer's lock). Two random nodes if the leaders are unknown or all on one."""
    with trio.move_on_after(LEADER_LOOKUP_S):
        leaders = await cluster.leaders()
        coordinator = leaders.get(COORDINATOR_GROUP)
        others = sorted({n for g, n in leaders.items() if g != COORDINATOR_GROUP and n != coordinator})
        if coordinator is not None and others:
            return [(coordinator, rng.choice(others))]
    a, b = rng.sample(list(cluster.node_ids), 2)
    return [(a, b)]


async def _leader(cluster: LocalCluster, rng: random.Random, among: list[str]) -> str:
    """The leader of a random group, if it is one of ``among`` and answers in time; else a random node."""
    with trio.move_on_after(LEADER_LOOKUP_S):
        leaders = await cluster.leaders()
        found = sorted(n for n in leaders.values() if n in among)
        if found:
            return rng.choice(found)
    return rng.choice(among)


@dataclass
class Nemesis:
    """Runs a schedule against ``cluster``; ``spared`` nodes are never killed or paused (the 2pc coordinator)."""

    cluster: LocalCluster
    firewall: Firewall | None
    hosts: dict[str, str]  # node id -> its own loopback address
    rng: random.Random
    clock: Callable[[], float]
    spared: frozenset[str] = frozenset()
    events: list[NemesisEvent] = field(default_factory=list)
    progress: Callable[[str], None] = lambda line: None

    async def run(self, schedule: Iterator[Fault]) -> None:
        """Strike fault after fault until cancelled; then heal whatever is open (shielded: it must happen)."""
        try:
            for fault in schedule:
                await trio.sleep(fault.gap_s)
                await self._strike(fault)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.heal_all()

    async def _strike(self, fault: Fault) -> None:
        nodes = list(self.cluster.node_ids)
        if fault.kind == "partition":
            if self.firewall is None:
                return
            victim = await _leader(self.cluster, self.rng, nodes) if fault.target == "isolate-leader" \
                else self.rng.choice(nodes)
            pairs = await _coordinator_and_shard(self.cluster, self.rng) if fault.target == "coordinator-shard" \
                else partition_pairs(fault.target, nodes, victim, self.rng)
            event = NemesisEvent("partition", fault.target, [victim], self.clock(), cut=[list(p) for p in pairs])
            await trio.to_thread.run_sync(self.firewall.cut, [(self.hosts[a], self.hosts[b]) for a, b in pairs])
        elif fault.kind == "drop-decisions":
            event = NemesisEvent(fault.kind, DROPPED, nodes, self.clock())
            await send_fault_requests(self.cluster.config, [(n, {"op": "drop", "method": DROPPED}) for n in nodes])
        elif fault.kind == "cut-rpc":
            [(a, b)] = await _coordinator_and_shard(self.cluster, self.rng)
            event = NemesisEvent(fault.kind, fault.target, [a, b], self.clock(), cut=[[a, b]])
            await send_fault_requests(self.cluster.config, link_requests("cut", a, b, nodes))
        else:
            among = [n for n in nodes if n not in self.spared]
            victim = await _leader(self.cluster, self.rng, among) if fault.target == "leader" else self.rng.choice(among)
            event = NemesisEvent(fault.kind, fault.target, [victim], self.clock())
            (self.cluster.kill if fault.kind == "kill" else self.cluster.pause)(victim)
        self.events.append(event)
        self.progress(f"nemesis: {fault.kind} {fault.target} {event.nodes} {event.cut or ''} for {fault.duration_s} s")
        await trio.sleep(fault.duration_s)
        await self._heal(event)

    async def _heal(self, event: NemesisEvent) -> None:
        if event.kind == "partition" and self.firewall is not None:
            await trio.to_thread.run_sync(self.firewall.heal)
        if event.kind == "drop-decisions":
            await send_fault_requests(self.cluster.config, [(n, {"op": "undrop"}) for n in event.nodes])
        if event.kind == "cut-rpc":
            a, b = event.nodes
            await send_fault_requests(self.cluster.config, link_requests("heal", a, b, self.cluster.node_ids))
        for node in event.nodes:
            if event.kind == "kill" and not self.cluster.alive(node):
                self.cluster.start(node)
            elif event.kind == "pause":
                self.cluster.resume(node)
        event.end = self.clock()

    async def heal_all(self) -> None:
        """Every open fault healed: what a run does at its end, and on its way out after an error."""
        for event in self.events:
            if event.end is None:
                await self._heal(event)
        if self.firewall is not None:  # also a cut made just as the run was cancelled, before its event
            await trio.to_thread.run_sync(self.firewall.heal)
        for node in self.cluster.node_ids:
            if not self.cluster.alive(node):
                self.cluster.start(node)
            else:
                self.cluster.resume(node)
