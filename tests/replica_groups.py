"""Three ReplicaGroups of one Raft group in this process, on loopback ports: real PySyncObj, no nodes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from commit.tooling.localcluster import free_port_block
from consensus.errors import InvalidRequest
from consensus.group import ReplicaGroup
from consensus.settings import Durability, GroupSpec, RaftSettings

IDS = ("a", "b", "c")
WAIT_S = 10.0
POLL_S = 0.02


class Register:
    """A picklable state machine: ``(key, value)`` sets a key; a value of None is refused."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}

    def apply(self, command: Any) -> Any:
        key, value = command
        if value is None:
            raise InvalidRequest(f"no value for key {key}")
        self.values[key] = value
        return value


# Compaction only when forced: a follower's own compaction would blur what the tests look at.
QUIET_RAFT = RaftSettings(log_compaction_min_entries=10**6, log_compaction_min_time_s=10.0**6)


def spec(root: Path, members: dict[str, str], node: str, raft: RaftSettings = QUIET_RAFT) -> GroupSpec:
    return GroupSpec(name="g", self_id=node, members=members, journal_path=root / node / "g.journal",
                     dump_path=root / node / "g.dump", raft=raft, durability=Durability.FSYNC)


class Replicas:
    def __init__(self, root: Path, seed: int, raft: RaftSettings = QUIET_RAFT) -> None:
        base = free_port_block(len(IDS), random.Random(seed))
        self.root = root
        self.raft = raft
        self.members = {node: f"127.0.0.1:{base + i}" for i, node in enumerate(IDS)}
        self.groups: dict[str, ReplicaGroup] = {}

    def start(self, node: str) -> ReplicaGroup:
        (self.root / node).mkdir(exist_ok=True)
        group = ReplicaGroup(spec(self.root, self.members, node, self.raft), Register(), trio.lowlevel.current_trio_token())
        self.groups[node] = group
        return group

    def stop(self, node: str) -> None:
        self.groups.pop(node).close()

    async def leader(self) -> ReplicaGroup:
        def agreed() -> ReplicaGroup | None:
            leaders = [n for n, g in self.groups.items() if g.is_leader()]
            if len(leaders) == 1 and all(g.leader_id() == leaders[0] for g in self.groups.values()):
                return self.groups[leaders[0]]
            return None

        return await wait_for(agreed, "one leader that every running replica follows")

    def values(self, node: str) -> dict[int, int]:
        """The replica's state now (a snapshot install replaces the machine object)."""
        machine = self.groups[node].machine
        assert isinstance(machine, Register)
        return machine.values


@asynccontextmanager
async def replicas(root: Path, seed: int, raft: RaftSettings = QUIET_RAFT) -> AsyncIterator[Replicas]:
    r = Replicas(root, seed, raft)
    try:
        for node in IDS:
            r.start(node)
        yield r
    finally:
        for node in list(r.groups):
            r.stop(node)


async def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = trio.current_time() + WAIT_S
    while not (result := check()):
        if trio.current_time() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S}s")
        await trio.sleep(POLL_S)
    return result


def syncobj(group: ReplicaGroup) -> Any:
    return group._syncobj
