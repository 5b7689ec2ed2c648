"""Settings of a replica group: plain data, importable without PySyncObj.

The client library reads ``cluster.toml`` too, and must not pull in the
node-side machinery to do so; these dataclasses are what the two share.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.sessions import MAX_RESULTS_PER_SESSION


class Durability(enum.Enum):
    """What an acknowledged write survives; ``consensus.durability`` says exactly."""

    OS = "os"
    FSYNC = "fsync"


POLLERS = ("epoll", "poll", "select")  # the values of raft.poller


@dataclass(frozen=True)
class RaftSettings:
    """The PySyncObj knobs this project sets; see docs/OPERATIONS.md."""

    append_entries_use_batch: bool = False
    leader_fallback_timeout_s: float = 1.0
    election_timeout_min_s: float = 0.4
    election_timeout_max_s: float = 1.4
    connection_timeout_s: float = 3.5
    connection_retry_s: float = 1.0
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: float = 300.0
    max_sessions: int = 100_000
    group_commit: bool = True  # false: every command its own entry at once (to measure what batching buys)
    max_batch_commands: int = 64  # commands proposed together as one Raft entry (group commit)
    proposal_timeout_s: float = 5.0  # a batch PySyncObj has not answered by then is given up as maybe applied
    one_tick_thread: bool = True  # one thread ticks all of a node's replicas (consensus.ticker), not one each
    poller: str = "epoll"  # what replicas wait in: one of POLLERS ("poll", "select": PySyncObj's own)

    def syncobj_options(self) -> dict[str, Any]:
        """These settings as PySyncObj's ``SyncObjConf`` keywords (a node's replicas, the bare-PySyncObj
        bench peer); importable without PySyncObj."""
        return {
            "appendEntriesUseBatch": self.append_entries_use_batch,
            "leaderFallbackTimeout": self.leader_fallback_timeout_s,
            "raftMinTimeout": self.election_timeout_min_s,
            "raftMaxTimeout": self.election_timeout_max_s,
            "connectionTimeout": self.connection_timeout_s,
            "connectionRetryTime": self.connection_retry_s,
            "logCompactionMinEntries": self.log_compaction_min_entries,
            "logCompactionMinTime": self.log_compaction_min_time_s,
            # PySyncObj has no epoll (poller.py): a bare PySyncObj (the bench peer) uses its 'auto', poll(2).
            # A node's replicas get epoll as a LimitedTransportConf.poller instead (consensus.ticker).
            "pollerType": self.poller if self.poller in ("poll", "select") else "auto",
        }


@dataclass(frozen=True)
class Compaction:
    """When a log of records (``2pc.log``, ``acceptor.log``) is rewritten with only its live records.

    The defaults are those of ``cluster.toml`` (``limits.compact_dead_share``,
    ``limits.compact_min_dead_records``). Rewriting costs a write of every live record, so it waits until
    the dead ones are both a share of the file and many: the cost per dead record then stays constant
    (the same amortisation as PySyncObj's ``logCompactionMinEntries``).
    """

    dead_share: float = 0.5  # of the file's records, dead ones (forgotten transactions) ...
    min_dead_records: int = 10_000  # ... and at least this many of them, before it is rewritten

    def due(self, dead: int, total: int) -> bool:
        return dead >= self.min_dead_records and dead >= self.dead_share * total


# The largest frame a peer may send before it proved a secret, on RPC and Raft ports alike: a handshake
# frame is 230-320 bytes, so this leaves room while a stranger can make a node buffer almost nothing.
HANDSHAKE_FRAME_BYTES = 4096


@dataclass(frozen=True)
class RaftTransportLimits:
    """What a replica's Raft port accepts (``consensus.raft_transport``); docs/OPERATIONS.md explains each.

    The defaults are those of ``cluster.toml`` (``limits.max_handshake_frame_bytes``,
    ``max_raft_frame_bytes``, ``max_raft_connections``, ``max_raft_connections_per_address``,
    ``timeouts.handshake_s``), for replicas built without one.
    """

    max_handshake_frame_bytes: int = HANDSHAKE_FRAME_BYTES  # a frame from a peer that has not proved the secret yet
    max_frame_bytes: int = 32 * 1024 * 1024  # a frame from a peer that has
    max_connections: int = 64  # connections one Raft port holds at once
    max_connections_per_address: int = 16  # ... of which from one peer address
    handshake_s: float = 5.0  # a connection that has not proved the secret by then is closed


@dataclass(frozen=True)
class GroupSpec:
    name: str
    self_id: str
    members: Mapping[str, str] = field(repr=False)  # node id -> "host:raft_port"
    journal_path: Path
    dump_path: Path
    raft: RaftSettings
    durability: Durability
    password: str | None = None
    transport: RaftTransportLimits = field(default_factory=RaftTransportLimits)
    max_results_per_session: int = MAX_RESULTS_PER_SESSION
    max_batch_bytes: int = 4 * 1024 * 1024  # a batch's pickled commands: limits.max_frame_bytes, as one request's
