"""A follower's commit index rises only over entries a message showed to match (consensus/durability.py).

One real DurableSyncObj follower, never ticked (``autoTick=False``): the test hands it leader messages
the way PySyncObj's transport would (syncobj.py ``__onMessageReceived``) and reads its commit index.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from commit.tooling.localcluster import free_port_block
from consensus.durability import DurableSyncObj
from consensus.journal_file import JournalFile
from consensus.settings import Durability

OLD_TERM, LEADER_TERM = 1, 2


def entry(i: int, term: int = OLD_TERM) -> tuple[bytes, int, int]:
    return (b"\x01", i, term)  # PySyncObj's NO_OP command type: nothing for a state machine to apply


@pytest.fixture
def follower(tmp_path: Path, seed: int) -> Iterator[tuple[Any, TCPNode]]:
    """A follower whose journal holds entries 1..10 of an old term; nothing is committed yet."""
    journal = JournalFile(str(tmp_path / "g.journal"))
    for i in range(1, 11):
        journal.add(*entry(i))
    journal._destroy()
    base = free_port_block(2, random.Random(seed))
    conf = SyncObjConf(autoTick=False, journalFile=str(tmp_path / "g.journal"),
                       fullDumpFile=str(tmp_path / "g.dump"))
    so = DurableSyncObj(f"127.0.0.1:{base}", [f"127.0.0.1:{base + 1}"], conf, [], Durability.OS)
    try:
        yield so, TCPNode(f"127.0.0.1:{base + 1}")
    finally:
        so.destroy()


def deliver(so: Any, leader: TCPNode, **message: Any) -> None:
    so._SyncObj__onMessageReceived(leader, {"type": "append_entries", "term": LEADER_TERM, **message})


def test_the_commit_index_stops_at_the_last_entry_the_message_carried(follower: tuple[Any, TCPNode]) -> None:
    """Entries 8..10 stay unconfirmed: the leader may hold other entries there, this follower's may never
    have been committed. PySyncObj took its log's end, 10, and would have applied them."""
    so, leader = follower
    deliver(so, leader, commit_index=12, prevLogIdx=5, prevLogTerm=OLD_TERM, entries=[entry(6), entry(7)])
    assert so.raftCommitIndex == 7
    deliver(so, leader, commit_index=12, prevLogIdx=7, prevLogTerm=OLD_TERM, entries=[])  # a heartbeat
    assert so.raftCommitIndex == 7
    deliver(so, leader, commit_index=12, prevLogIdx=7, prevLogTerm=OLD_TERM,
            entries=[entry(8), entry(9, LEADER_TERM)])  # a conflict at 9: this follower's 9 and 10 go
    assert so.raftCommitIndex == 9
    assert so._SyncObj__raftLog[-1][1:] == (9, LEADER_TERM)


def test_a_snapshot_chunk_raises_nothing(follower: tuple[Any, TCPNode]) -> None:
    so, leader = follower
    deliver(so, leader, commit_index=12, serialized=(b"the first bytes of a snapshot", True, False))
    assert so.raftCommitIndex == 1  # PySyncObj: min(12, log end) = 10, before the snapshot said anything
