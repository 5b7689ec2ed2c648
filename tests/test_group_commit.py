"""Group commit (``consensus.group``): concurrent commands share Raft entries, each keeps its own result.

On three real PySyncObj replicas in this process. What must hold: a command alone is its own entry (it
never waits for company); concurrent ones share entries, capped by ``raft.max_batch_commands``; one refused
command does not take its batch-mates down; a retry inside the same batch is still applied once; a batch
PySyncObj never answers is given up as maybe applied and the queue behind it moves on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from consensus.errors import InvalidRequest, Unavailable
from consensus.group import ReplicaGroup
from consensus.sessions import SessionRef
from tests.replica_groups import IDS, QUIET_RAFT, replicas, wait_for

COMMANDS = 120


def commit_index(group: ReplicaGroup) -> int:
    return int(group.status()["commit_index"])


async def propose_all(group: ReplicaGroup, commands: list[tuple[int, Any]]) -> dict[int, Any]:
    results: dict[int, Any] = {}

    async def one(key: int, value: Any) -> None:
        try:
            results[key] = await group.propose((key, value))
        except InvalidRequest as exc:
            results[key] = exc

    async with trio.open_nursery() as nursery:
        for key, value in commands:
            nursery.start_soon(one, key, value)
    return results


async def test_a_lone_command_is_its_own_entry_and_concurrent_ones_share(tmp_path: Path, seed: int) -> None:
    async with replicas(tmp_path, seed) as r:
        leader = await r.leader()
        before = commit_index(leader)
        for key in range(5):
            assert await leader.propose((key, key)) == key
        assert commit_index(leader) - before == 5

        before = commit_index(leader)
        results = await propose_all(leader, [(key, key * 10) for key in range(COMMANDS)])
        entries = commit_index(leader) - before
        assert results == {key: key * 10 for key in range(COMMANDS)}
        assert 1 < entries < COMMANDS / 4, f"{COMMANDS} concurrent commands took {entries} entries"
        for node in IDS:
            await wait_for(lambda: r.values(node).get(COMMANDS - 1) == (COMMANDS - 1) * 10,
                           f"replica {node} applying every command")


async def test_a_batch_holds_at_most_max_batch_commands(tmp_path: Path, seed: int) -> None:
    cap = 4
    async with replicas(tmp_path, seed, dataclasses.replace(QUIET_RAFT, max_batch_commands=cap)) as r:
        leader = await r.leader()
        before = commit_index(leader)
        await propose_all(leader, [(key, key) for key in range(COMMANDS)])
        assert commit_index(leader) - before >= COMMANDS / cap


async def test_a_refused_command_leaves_its_batch_mates_applied(tmp_path: Path, seed: int) -> None:
    async with replicas(tmp_path, seed) as r:
        leader = await r.leader()
        results = await propose_all(leader, [(key, None if key % 3 == 0 else key) for key in range(30)])
        for key in range(30):
            if key % 3 == 0:
                assert isinstance(results[key], InvalidRequest)
            else:
                assert results[key] == key
        assert 0 not in r.values(leader.spec.self_id)


async def test_a_retry_in_the_same_batch_is_applied_once(tmp_path: Path, seed: int) -> None:
    """The second copy of (session, seq) gets the first one's result, not a second application."""
    async with replicas(tmp_path, seed) as r:
        leader = await r.leader()
        session = await leader.open_session()
        ref = SessionRef(session, 1, 1)
        got: list[Any] = []

        async def send(value: int) -> None:
            got.append(await leader.propose((7, value), ref))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 1)
            await trio.sleep(0)  # the first copy is in flight: the next two form one batch behind it
            nursery.start_soon(send, 2)
            nursery.start_soon(send, 3)
        assert got == [1, 1, 1]
        assert r.values(leader.spec.self_id)[7] == 1


async def test_a_batch_raft_never_answers_is_given_up_and_the_queue_moves_on(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(tmp_path, seed, dataclasses.replace(QUIET_RAFT, proposal_timeout_s=0.5)) as r:
        leader = await r.leader()
        state = leader._state
        real = state.execute_batch
        dropped: list[Any] = []

        def lose_first(items: Any, callback: Any) -> None:  # PySyncObj applies it but never calls back
            if not dropped:
                dropped.append(items)
                return real(items, callback=lambda *_: None)
            return real(items, callback=callback)

        monkeypatch.setattr(state, "execute_batch", lose_first)
        with pytest.raises(Unavailable) as lost:
            await leader.propose((1, 1))
        assert lost.value.maybe_applied
        assert await leader.propose((2, 2)) == 2
        await leader.read_barrier()
        assert r.values(leader.spec.self_id)[1] == 1  # it was applied after all: "maybe applied" was right


async def test_without_group_commit_every_command_is_its_own_entry(tmp_path: Path, seed: int) -> None:
    async with replicas(tmp_path, seed, dataclasses.replace(QUIET_RAFT, group_commit=False)) as r:
        leader = await r.leader()
        before = commit_index(leader)
        results = await propose_all(leader, [(key, key) for key in range(COMMANDS)])
        await leader.read_barrier()
        assert results == {key: key for key in range(COMMANDS)}
        assert commit_index(leader) - before == COMMANDS + 1  # and one for the barrier
