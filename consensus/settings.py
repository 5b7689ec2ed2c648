"""Settings of a replica group: plain data, importable without PySyncObj.

The client library reads ``cluster.toml`` too, and must not pull in the
node-side machinery to do so; these dataclasses are what the two share.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class Durability(enum.Enum):
    """What an acknowledged write survives; ``consensus.durability`` says exactly."""

    OS = "os"
    FSYNC = "fsync"


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
