"""A sharded transactional key-value store on Raft: the client library.

    import commit
    async with commit.connect("cluster.toml") as db:
        await db.put("k", {"any": "msgpack value"})
        value, version, exists = await db.get("k")

``commit.connect_sync`` is the blocking twin for scripts and the REPL.
"""

from commit.client import ClientStatistics, Database, connect
from commit.config import ClusterConfig, ConfigError, load_config
from commit.errors import CommitUnknown, Conflict
from commit.transaction import Transaction, transactional
from commit.values import Versioned
from commit.sync_client import SyncDatabase, connect_sync
from consensus.errors import (
    ClusterError,
    InternalError,
    InvalidRequest,
    NotLeader,
    SessionExpired,
    Timeout,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "ClientStatistics",
    "ClusterConfig",
    "ClusterError",
    "CommitUnknown",
    "Conflict",
    "ConfigError",
    "Database",
    "InternalError",
    "InvalidRequest",
    "NotLeader",
    "SessionExpired",
    "SyncDatabase",
    "Timeout",
    "Transaction",
    "Unauthorized",
    "Unavailable",
    "Versioned",
    "connect",
    "connect_sync",
    "load_config",
    "transactional",
]
