"""Snapshot install on real PySyncObj replicas: three ReplicaGroups in this process, on loopback ports.

PySyncObj 0.3.17's leader sends a snapshot whenever its next index for a follower is at or below its own
log start, and a stale ``next_node_idx`` reply can move that index back below the log start of a follower
that already holds, and acknowledged, entries after the snapshot point. Installing such a snapshot cleared
the follower's whole journal (syncobj.py ``__loadDumpFile(clearJournal=True)``). These tests force that
next index by hand and check what the follower keeps (consensus/durability.py, Raft section 7).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from consensus.durability import SyncedFileJournal
from consensus.group import ReplicaGroup
from consensus.raft_log_filter import PYSYNCOBJ_LOGGER, ResentEntriesFilter
from tests.replica_groups import IDS, replicas, syncobj, wait_for


def journal_indexes(group: ReplicaGroup) -> list[int]:
    journal = syncobj(group)._SyncObj__raftLog
    return [journal[i][1] for i in range(len(journal))]


@contextmanager
def recording_clears(group: ReplicaGroup) -> Iterator[list[int]]:
    """The last index this replica's journal held each time it was reset to a snapshot (an install)."""
    journal = syncobj(group)._SyncObj__raftLog
    held: list[int] = []
    original = journal.reset

    def reset(entries: list[tuple[bytes, int, int]]) -> None:
        held.append(journal[-1][1])
        original(entries)

    journal.reset = reset
    try:
        yield held
    finally:
        del journal.reset


@contextmanager
def counting_snapshots(group: ReplicaGroup) -> Iterator[list[int]]:
    """How many whole snapshots this replica has received (PySyncObj's last transmission chunk)."""
    serializer = syncobj(group)._SyncObj__serializer
    received: list[int] = []
    original = serializer.setTransmissionData

    def receive(data: Any) -> Any:
        if data is not None and data[2]:
            received.append(1)
        return original(data)

    serializer.setTransmissionData = receive
    try:
        yield received
    finally:
        del serializer.setTransmissionData


async def put_all(leader: ReplicaGroup, keys: range) -> None:
    for key in keys:
        await leader.propose((key, key))


async def compact(group: ReplicaGroup) -> int:
    """Force a replica's log compaction; returns its snapshot point (the last entry the snapshot holds)."""
    group.force_log_compaction()
    log = syncobj(group)._SyncObj__raftLog
    await wait_for(lambda: log[0][1] > 1, "the replica's log compaction")
    return int(log[1][1])


def send_snapshot_to(leader: ReplicaGroup, node: str, members: dict[str, str]) -> None:
    """Move the leader's next index for ``node`` below its log start, as a stale reset reply does."""
    next_index = syncobj(leader)._SyncObj__raftNextIndex
    (peer,) = [p for p in next_index if p.id == members[node]]
    next_index[peer] = 1


async def test_a_stale_snapshot_leaves_a_followers_acknowledged_entries_in_place(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consensus.durability")
    caplog.set_level(logging.DEBUG, logger=PYSYNCOBJ_LOGGER)  # last: it also sets caplog's handler level
    async with replicas(tmp_path, seed) as r:
        leader = await r.leader()
        await put_all(leader, range(30))
        follower, down = [n for n in IDS if r.groups[n] is not leader]
        r.stop(down)  # from here on an entry is committed once the leader and `follower` hold it
        await put_all(leader, range(30, 40))
        point = await compact(leader)
        await put_all(leader, range(40, 50))  # acknowledged by `follower`, after the snapshot point
        acknowledged = syncobj(leader).raftCommitIndex
        assert journal_indexes(r.groups[follower])[-1] >= acknowledged > point

        with recording_clears(r.groups[follower]) as clears, counting_snapshots(r.groups[follower]) as received:
            send_snapshot_to(leader, follower, r.members)
            await wait_for(lambda: received, "the follower to receive the leader's snapshot")
            await leader.propose((50, 50))  # behind the snapshot in the same TCP stream
            await wait_for(lambda: r.values(follower).get(50) == 50, "the follower to apply entry 50")
        # Without the fix the follower threw its log away down to the snapshot point: with the third replica
        # down, entries point+1 .. acknowledged, all committed, were then held by the leader alone.
        assert clears == []
        assert f"discarded the leader's snapshot: the log already holds or has applied its last entry, {point} " \
            in caplog.text
        indexes = journal_indexes(r.groups[follower])
        assert indexes == list(range(indexes[0], indexes[-1] + 1))  # contiguous
        assert indexes[0] <= point < acknowledged < indexes[-1]
        assert r.values(follower) == r.values(leader.spec.self_id) == {k: k for k in range(51)}
    # The leader re-sent entries after the snapshot point that the follower had already applied: PySyncObj
    # said CRITICAL, the filter that constructing the replicas installed (once, however many) made it the
    # routine DEBUG line it is with CompactionSafeJournal. No test installs that filter.
    assert sum(isinstance(f, ResentEntriesFilter) for f in logging.getLogger(PYSYNCOBJ_LOGGER).filters) == 1
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text
    assert any(rec.name == "pysyncobj.syncobj" and rec.levelno == logging.DEBUG and "re-sent" in rec.getMessage()
               for rec in caplog.records)


async def test_a_follower_behind_the_leaders_log_start_still_installs_the_snapshot(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(tmp_path, seed) as r:
        leader = await r.leader()
        await put_all(leader, range(20))
        lagging = next(n for n in IDS if r.groups[n] is not leader)
        r.stop(lagging)
        await put_all(leader, range(20, 40))
        # Both live replicas compact: whichever leads once the lagging one is back (its restart may start an
        # election), it no longer holds the entries the lagging one lacks, so only a snapshot helps.
        points = [await compact(g) for g in list(r.groups.values())]
        point = min(points)
        assert all(journal_indexes(g)[0] > 1 for g in r.groups.values())
        clears: list[int] = []  # recorded from before the restart: the install may come at once
        original = SyncedFileJournal.reset

        def reset(journal: SyncedFileJournal, entries: list[tuple[bytes, int, int]]) -> None:
            if journal._path == str(tmp_path / lagging / "g.journal"):
                clears.append(journal[-1][1])
            original(journal, entries)

        monkeypatch.setattr(SyncedFileJournal, "reset", reset)
        group = r.start(lagging)  # its journal ends before the leader's log starts: only the snapshot helps
        await (await r.leader()).propose((40, 40))
        await wait_for(lambda: r.values(lagging).get(40) == 40, "the restarted replica to catch up")
        assert len(clears) == 1 and clears[0] < point
        assert r.values(lagging) == {k: k for k in range(41)}
        assert journal_indexes(group)[0] in {p - 1 for p in points}  # it starts at the snapshot it installed
