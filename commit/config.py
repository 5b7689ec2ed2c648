"""``cluster.toml``: parsed with tomllib into typed, validated, frozen dataclasses.

Every error names the file, the key and what is wrong with it, and unknown
keys are errors too (a typo must not silently fall back to a default).
Relative paths are resolved against the directory of the config file.

Group layout: the coordinator group has index 0 and shard ``i`` has index
``i + 1``. A node hosting a group replicates it on port ``raft_port + index``,
so each node needs one RPC port and a block of consecutive Raft ports.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from commit.credentials import CLIENT_SECRET_FILE, PEER_SECRET_FILE, SecretFileError, ensure_secret, read_secret
from commit.protocols.mutants import NAMES as MUTANTS
from commit.protocols.registry import NAMES as PROTOCOLS
from consensus.auth import Credentials
from consensus.rpc import RpcSettings
from consensus.sessions import MAX_RESULTS_PER_SESSION
from consensus.settings import (
    HANDSHAKE_FRAME_BYTES,
    POLLERS,
    Compaction,
    Durability,
    GroupSpec,
    RaftSettings,
    RaftTransportLimits,
)

COORDINATOR_GROUP = "coord"


def shard_group(index: int) -> str:
    return f"shard-{index}"


class ConfigError(ValueError):
    """A bad ``cluster.toml``; the message names the key."""


@dataclass(frozen=True)
class NodeConfig:
    id: str
    host: str
    rpc_port: int
    raft_port: int


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 4 * 1024 * 1024
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    max_in_flight_per_connection: int = 1024
    max_handshake_frame_bytes: int = HANDSHAKE_FRAME_BYTES  # a frame before the peer proved its secret (RPC and Raft ports)
    max_queued_reply_bytes: int = RpcSettings.max_queued_reply_bytes  # replies a connection has not read; then it is closed
    max_connections: int = RpcSettings.max_connections  # RPC connections a node serves at once (leaves descriptors for Raft and files)
    max_connections_per_address: int = RpcSettings.max_connections_per_address  # ... of which from one client address
    max_raft_frame_bytes: int = RaftTransportLimits.max_frame_bytes  # a Raft frame from a peer that proved the secret
    max_raft_connections: int = RaftTransportLimits.max_connections  # connections one Raft port holds at once
    max_raft_connections_per_address: int = RaftTransportLimits.max_connections_per_address  # ... of which from one peer address
    max_reason_chars: int = 256  # a participant's reason for a NO vote, as carried to the coordinator
    max_remembered_transactions: int = 100_000  # decided outcomes a shard, the coordinator group, a manager keep
    forget_after_s: float = 60.0  # a finished transaction is forgotten once its txid is this old; older txids are refused
    forget_interval_s: float = 1.0  # how often a node forgets (one "forget" Raft entry per group it leads, if due)
    max_forget_batch: int = 4096  # finished Paxos Commit transactions one paxos.forget message names
    compact_dead_share: float = Compaction.dead_share  # 2pc.log, acceptor.log: rewritten once this share of records is dead ...
    compact_min_dead_records: int = Compaction.min_dead_records  # ... and at least this many
    max_traced_transactions: int = 20_000  # transactions whose messages a node's tracer keeps
    max_pending_bundles: int = 10_000  # Paxos Commit: an acceptor's unsent 2b bundles, a learner's tallies
    max_results_per_session: int = MAX_RESULTS_PER_SESSION  # results one exactly-once session holds above its low water
    max_keys_per_command: int = 4096  # reads + writes of one transaction at one shard: one Raft entry to apply
    max_nesting_depth: int = 32  # arrays and maps inside a request's parameters


@dataclass(frozen=True)
class Timeouts:
    request_s: float = 5.0
    client_attempt_s: float = 6.0
    client_deadline_s: float = 20.0
    connect_s: float = 2.0
    handshake_s: float = RaftTransportLimits.handshake_s
    idle_connection_s: float = RpcSettings.idle_timeout_s  # an RPC connection with no request and no reply this long is closed
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 0.5
    status_poll_s: float = 0.2  # db.run asks this often for the outcome of a commit that may have happened
    startup_s: float = 30.0
    stop_grace_s: float = 10.0  # node.py up/down: a node that has not stopped this long after SIGTERM is killed




@dataclass(frozen=True)
class Transactions:
    default_protocol: str = "paxos-commit"
    twopc_coordinator: str = ""  # node id of the single 2pc and 3pc coordinator; "" means the first node
    vote_timeout_s: float = 2.0
    decision_resend_s: float = 0.5
    in_doubt_timeout_s: float = 1.0
    resolve_interval_s: float = 0.25
    resolve_fanout: int = 8  # questions a shard leader has in flight at once to one authority (a coordinator)
    lock_wait_s: float = 0.05
    retry_limit: int = 100
    three_phase_wait_s: float = 1.0  # a silent 3pc coordinator: participants act after this ...
    three_phase_stagger_s: float = 0.5  # ... plus this times the shard's place among the participants
    fault_hooks: bool = False  # test-only: lets RPC hold a coordinator at a named step, cut links, drop messages
    mutant: str = ""  # test-only, needs fault_hooks: a deliberately broken build (commit.protocols.mutants)


@dataclass(frozen=True)
class Sagas:
    """The saga engine's defaults and caps (docs/SAGAS.md); a definition's own retry policy overrides the first five."""

    initial_interval_s: float = 0.2  # a failed step is called again after this ...
    backoff_coefficient: float = 2.0  # ... times this for every attempt after the second ...
    maximum_interval_s: float = 5.0  # ... never waiting longer than this between attempts
    maximum_attempts: int = 5  # an action's attempts before its saga compensates (after the pivot: is stuck)
    compensation_maximum_attempts: int = 50  # a compensation's (or confirm's) attempts before its saga is stuck
    attempt_timeout_s: float = 5.0  # one call to a service; then the attempt counts as failed (Timeout)
    relay_poll_s: float = 0.05  # an idle outbox relay looks for new events this often
    max_steps: int = 64  # steps in one definition
    max_name_chars: int = 128  # a saga id, step, service, handler or event type name
    max_history_events: int = 10_000  # events one saga records; a saga that reaches it is stuck
    max_active_sagas: int = 10_000  # running, compensating and stuck sagas; saga.start is refused beyond
    max_remembered_sagas: int = 10_000  # finished sagas the coordinator group keeps, oldest forgotten first
    max_definition_bytes: int = 256 * 1024  # one definition, packed (its steps' inputs included)
    max_result_bytes: int = 64 * 1024  # one step's result as recorded in the history; larger fails the step
    max_listed_sagas: int = 1000  # rows one saga.list answers with, newest first


@dataclass(frozen=True)
class GroupLayout:
    name: str
    index: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    name: str
    data_dir: Path
    durability: Durability
    secret: str | None  # the client secret (commit.credentials)
    peer_secret: str | None  # the nodes' secret; clients need not have it
    nodes: tuple[NodeConfig, ...]
    coordinator_members: tuple[str, ...]
    shard_count: int
    shard_members: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    raft: RaftSettings = field(default_factory=RaftSettings)
    transactions: Transactions = field(default_factory=Transactions)
    sagas: Sagas = field(default_factory=Sagas)

    @property
    def twopc_coordinator(self) -> str:
        return self.transactions.twopc_coordinator or self.nodes[0].id

    def shard_names(self) -> tuple[str, ...]:
        return tuple(shard_group(i) for i in range(self.shard_count))

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(f"{self.path}: no node {node_id!r} in [[nodes]] (known: {known})")

    def groups(self) -> tuple[GroupLayout, ...]:
        return (GroupLayout(COORDINATOR_GROUP, 0, self.coordinator_members),) + tuple(
            GroupLayout(shard_group(i), i + 1, self.shard_members) for i in range(self.shard_count)
        )

    def node_dir(self, node_id: str) -> Path:
        return self.data_dir / node_id

    def node_log(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.log"

    def node_pid_file(self, node_id: str) -> Path:
        """Holds the node's process id while it runs (``node.py start``), for ``node.py down``."""
        return self.node_dir(node_id) / "node.pid"

    def group_specs(self, node_id: str) -> list[GroupSpec]:
        """The replicas ``node_id`` hosts, ready for ``consensus.group``."""
        specs = []
        for layout in self.groups():
            if node_id not in layout.members:
                continue
            members = {
                m: f"{self.node(m).host}:{self.node(m).raft_port + layout.index}"
                for m in layout.members
            }
            base = self.node_dir(node_id) / layout.name
            specs.append(
                GroupSpec(
                    name=layout.name,
                    self_id=node_id,
                    members=members,
                    journal_path=base.with_suffix(".journal"),
                    dump_path=base.with_suffix(".dump"),
                    raft=self.raft,
                    durability=self.durability,
                    password=self.peer_secret,
                    transport=RaftTransportLimits(
                        max_handshake_frame_bytes=self.limits.max_handshake_frame_bytes,
                        max_frame_bytes=self.limits.max_raft_frame_bytes,
                        max_connections=self.limits.max_raft_connections,
                        max_connections_per_address=self.limits.max_raft_connections_per_address,
                        handshake_s=self.timeouts.handshake_s,
                    ),
                    max_results_per_session=self.limits.max_results_per_session,
                    max_batch_bytes=self.limits.max_frame_bytes,
                )
            )
        return specs

    def rpc_settings(self, as_node: str | None = None) -> RpcSettings:
        """Connection settings for a client, or with ``as_node`` for that node (its server and its calls)."""
        limits = self.limits
        return RpcSettings(
            max_frame_bytes=limits.max_frame_bytes,
            handshake_timeout_s=self.timeouts.handshake_s,
            max_in_flight_per_connection=limits.max_in_flight_per_connection,
            credentials=Credentials(
                client_secret=self.secret,
                peer_secret=self.peer_secret if as_node is not None else None,
                node_id=as_node,
            ),
            max_handshake_frame_bytes=limits.max_handshake_frame_bytes,
            max_queued_reply_bytes=limits.max_queued_reply_bytes,
            idle_timeout_s=self.timeouts.idle_connection_s,
            max_connections=limits.max_connections,
            max_connections_per_address=limits.max_connections_per_address,
            source_host=self.node(as_node).host if as_node is not None else None,
        )

    def secret_file(self, name: str) -> Path:
        return self.data_dir / name

    def with_secrets(self) -> ClusterConfig:
        """This config with both secrets, made in the data directory if neither the file nor the toml has them.

        What ``node.py up`` and a test cluster call before a node starts: a node never runs with
        unauthenticated ports (``commit.credentials``).
        """
        try:
            config = replace(
                self,
                secret=self.secret or ensure_secret(self.secret_file(CLIENT_SECRET_FILE)),
                peer_secret=self.peer_secret or ensure_secret(self.secret_file(PEER_SECRET_FILE)),
            )
        except (SecretFileError, OSError) as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        if config.secret == config.peer_secret:
            raise ConfigError(f"{self.path}: cluster.peer_secret must differ from cluster.secret: "
                              "a client must not be able to act as a node")
        return config


class _Table:
    """A TOML table being consumed key by key, so leftovers can be reported."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: {where} must be a table")
        self.path = path
        self.where = where
        self.data = dict(data)

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self._key(key)}: {problem}")

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, key: str, default: Any) -> Any:
        kind = float if isinstance(default, float) else int
        value = self.take(key, (int, float) if kind is float else int, default)
        if not (math.isfinite(value) and value > 0):
            raise self.fail(key, f"must be positive and finite, got {value!r}")
        return kind(value)

    def table(self, key: str) -> _Table:
        return _Table(self.path, self._key(key), self.data.pop(key, {}))

    def done(self) -> None:
        if self.data:
            unknown = ", ".join(sorted(self._key(k) for k in self.data))
            raise ConfigError(f"{self.path}: unknown key(s): {unknown}")


def _dataclass_from(table: _Table, cls: Any) -> Any:
    """Fill a dataclass of numeric/bool fields from a table, defaults from the class."""
    defaults = cls()
    values = {}
    for name in cls.__dataclass_fields__:
        default = getattr(defaults, name)
        if isinstance(default, bool):
            values[name] = table.take(name, bool, default)
        elif isinstance(default, str):
            values[name] = table.take(name, str, default)
        else:
            values[name] = table.positive(name, default)
    table.done()
    return cls(**values)


def _raft(table: _Table) -> RaftSettings:
    raft: RaftSettings = _dataclass_from(table, RaftSettings)
    if raft.poller not in POLLERS:
        raise table.fail("poller", f"must be one of {', '.join(map(repr, POLLERS))}, got {raft.poller!r}")
    return raft


def _members(table: _Table, key: str, node_ids: list[str]) -> tuple[str, ...]:
    members = table.take(key, list, node_ids)
    if not members or not all(isinstance(m, str) for m in members):
        raise table.fail(key, "must be a non-empty list of node ids")
    unknown = [m for m in members if m not in node_ids]
    if unknown:
        raise table.fail(key, f"unknown node id(s) {unknown}; [[nodes]] defines {node_ids}")
    if len(set(members)) != len(members):
        raise table.fail(key, "lists a node twice")
    return tuple(members)


def _transactions(table: _Table, node_ids: list[str]) -> Transactions:
    where = _Table(table.path, table.where, dict(table.data))
    txn = _dataclass_from(table, Transactions)
    if txn.default_protocol not in PROTOCOLS:
        raise where.fail("default_protocol", f"must be one of {', '.join(PROTOCOLS)}, got {txn.default_protocol!r}")
    if txn.twopc_coordinator and txn.twopc_coordinator not in node_ids:
        raise where.fail("twopc_coordinator", f"unknown node id {txn.twopc_coordinator!r}; [[nodes]] defines {node_ids}")
    if txn.mutant and txn.mutant not in MUTANTS:
        raise where.fail("mutant", f"must be one of {', '.join(MUTANTS)}, got {txn.mutant!r}")
    if txn.mutant and not txn.fault_hooks:
        raise where.fail("mutant", "a deliberately broken build runs only with fault_hooks = true (a test cluster)")
    return txn


def _port(table: _Table, key: str) -> int:
    port = table.take(key, int)
    if not 1 <= port <= 65535:
        raise table.fail(key, f"must be a TCP port (1-65535), got {port}")
    return port


def _secret(cluster: _Table, key: str, file: Path | None) -> str | None:
    """A secret from ``cluster.toml``, else from its file; the peer secret's file is read by nodes only."""
    value = cluster.take(key, str, None)
    if value == "":
        raise cluster.fail(key, "must not be empty (remove the key to keep the secret in the data directory)")
    if value is not None or file is None:
        return value
    try:
        return read_secret(file)
    except SecretFileError as exc:
        raise cluster.fail(key, str(exc)) from None


def parse_config(text: str, path: Path) -> ClusterConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = _Table(path, "", raw)
    cluster = top.table("cluster")
    name = cluster.take("name", str, "local")
    data_dir = (path.parent / cluster.take("data_dir", str, "data")).resolve()
    durability_name = cluster.take("durability", str, "os")
    try:
        durability = Durability(durability_name)
    except ValueError:
        raise cluster.fail("durability", f"must be 'os' or 'fsync', got {durability_name!r}") from None
    secret = _secret(cluster, "secret", data_dir / CLIENT_SECRET_FILE)
    peer_secret = _secret(cluster, "peer_secret", None)
    cluster.done()

    raw_nodes = top.data.pop("nodes", None)
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"{path}: [[nodes]] must define at least one node")
    nodes = []
    for i, raw_node in enumerate(raw_nodes):
        t = _Table(path, f"nodes[{i}]", raw_node)
        node_id = t.take("id", str)
        if not node_id or not node_id.replace("-", "").replace("_", "").isalnum():
            raise t.fail("id", f"must be a non-empty name of letters, digits, - and _, got {node_id!r}")
        nodes.append(NodeConfig(node_id, t.take("host", str, "127.0.0.1"), _port(t, "rpc_port"), _port(t, "raft_port")))
        t.done()
    node_ids = [n.id for n in nodes]
    if len(set(node_ids)) != len(node_ids):
        raise ConfigError(f"{path}: [[nodes]] ids must be unique, got {node_ids}")

    coordinator = top.table("coordinator")
    coordinator_members = _members(coordinator, "members", node_ids)
    coordinator.done()
    shards = top.table("shards")
    shard_count = shards.positive("count", 3)
    shard_members = _members(shards, "members", node_ids)
    shards.done()

    config = ClusterConfig(
        path=path,
        name=name,
        data_dir=data_dir,
        durability=durability,
        secret=secret,
        peer_secret=peer_secret,
        nodes=tuple(nodes),
        coordinator_members=coordinator_members,
        shard_count=shard_count,
        shard_members=shard_members,
        limits=_dataclass_from(top.table("limits"), Limits),
        timeouts=_dataclass_from(top.table("timeouts"), Timeouts),
        raft=_raft(top.table("raft")),
        transactions=_transactions(top.table("transactions"), node_ids),
        sagas=_dataclass_from(top.table("sagas"), Sagas),
    )
    top.done()
    _check_ports(config)
    _check_limits(config)
    return config


def _check_ports(config: ClusterConfig) -> None:
    used: dict[tuple[str, int], str] = {}
    group_count = len(config.groups())
    for node in config.nodes:
        wanted = [("rpc_port", node.rpc_port)] + [
            (f"raft_port+{i}", node.raft_port + i) for i in range(group_count)
        ]
        for label, port in wanted:
            if port > 65535:
                raise ConfigError(f"{config.path}: node {node.id}: {label} = {port} is not a TCP port")
            other = used.get((node.host, port))
            if other is not None:
                raise ConfigError(
                    f"{config.path}: node {node.id}: {label} = {port} collides with {other} on {node.host}"
                )
            used[(node.host, port)] = f"node {node.id} {label}"


# A Raft frame carries one replicated command (one RPC request, at most limits.max_frame_bytes) pickled
# twice and encrypted: measured up to 3.7 times the request (consensus.raft_transport). A smaller Raft
# limit would stall a group on a legitimate entry.
RAFT_FRAME_GROWTH = 8


def _check_limits(config: ClusterConfig) -> None:
    limits = config.limits
    if limits.max_raft_frame_bytes < RAFT_FRAME_GROWTH * limits.max_frame_bytes:
        raise ConfigError(
            f"{config.path}: limits.max_raft_frame_bytes = {limits.max_raft_frame_bytes} must be at least "
            f"{RAFT_FRAME_GROWTH} x limits.max_frame_bytes ({RAFT_FRAME_GROWTH * limits.max_frame_bytes}): "
            "a replicated command grows that much on a Raft link"
        )


def load_config(path: str | Path = "cluster.toml") -> ClusterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(text, path.resolve())
