"""Checks on request parameters, at the edge, before anything is proposed.

Every byte a request carries is hostile until one of these has looked at it: a
wrong type, size, depth or name is ``invalid_request`` and changes nothing, and
so is a txid of a kind the method is never sent for (``ParamChecks.txid``, from
the protocol registry). The checks need only the cluster's configuration, so
every handler module shares one.
"""

from __future__ import annotations

import time
from typing import Any

from commit.config import ClusterConfig, shard_group
from commit.outcomes import ABORTED, PREPARED
from commit.protocols.registry import sends
from commit.protocols.three_phase import Round
from commit.routing import key_bytes, shard_of
from commit.txids import check_participants, check_txid, created_ms, protocol_of
from consensus.errors import InvalidRequest
from consensus.paxos import Ballot, ballot_of
from consensus.sessions import SessionRef
from consensus.wire import nested_deeper

MAX_SESSION_NUMBER = 2**63 - 1  # msgpack's largest signed integer
MAX_HOP = 64  # a message chain longer than any protocol's is forged
MAX_ROUND_NUMBER = 2**31 - 1

Payload = tuple[tuple[tuple[bytes, int], ...], tuple[tuple[bytes, bytes | None], ...]]


def session_of(params: dict[str, Any]) -> SessionRef:
    raw = params.get("session")
    if not (isinstance(raw, list) and len(raw) == 3):
        raise InvalidRequest("session must be [session id, seq, low_water]")
    session_id, seq, low_water = raw
    for name, n in (("session id", session_id), ("seq", seq), ("low_water", low_water)):
        if not _is_int(n) or not 1 <= n <= MAX_SESSION_NUMBER:
            raise InvalidRequest(f"session {name} must be a positive integer")
    if low_water > seq:
        raise InvalidRequest("session low_water must not exceed seq")
    return SessionRef(session_id, seq, low_water)


def _is_int(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def hop_of(params: dict[str, Any]) -> int:
    """How many messages led here (for traces); a node that forwards a message adds one."""
    hop = params.get("hop", 1)
    if not _is_int(hop) or not 1 <= hop <= MAX_HOP:
        raise InvalidRequest(f"hop must be an integer from 1 to {MAX_HOP}")
    return hop


def ballot(raw: Any) -> Ballot:
    try:
        return ballot_of(raw)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def round_of(raw: Any) -> Round:
    if not (isinstance(raw, list) and len(raw) == 2 and all(_is_int(n) and 0 <= n <= MAX_ROUND_NUMBER for n in raw)):
        raise InvalidRequest("round must be [attempt, participant] with small non-negative integers")
    return raw[0], raw[1]


def one_of(raw: Any, allowed: tuple[str, ...], what: str) -> str:
    if raw not in allowed:
        raise InvalidRequest(f"{what} must be {' or '.join(repr(a) for a in allowed)}")
    return raw


class ParamChecks:
    """The checks that depend on this cluster: its limits, its shards, its nodes."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.node_ids = frozenset(n.id for n in config.nodes)
        self.group_names = frozenset(g.name for g in config.groups())

    def shape(self, params: dict[str, Any]) -> None:
        """The whole request at once, before any other check: at most ``limits.max_nesting_depth`` deep."""
        limit = self.config.limits.max_nesting_depth
        if nested_deeper(params, limit):
            raise InvalidRequest(f"parameters nest deeper than {limit} arrays and maps (limits.max_nesting_depth)")

    def txid(self, params: dict[str, Any], method: str) -> str:
        """``params['txid']``, well-formed and of a protocol whose transactions come with ``method``."""
        txid = check_txid(params.get("txid"))
        spec = protocol_of(txid)
        if not sends(spec, method):
            raise InvalidRequest(f"{method} is not a message of {spec.name} transactions, so not of {txid}")
        ahead_s = created_ms(txid) / 1000 - time.time()
        if ahead_s > self.config.limits.forget_after_s:
            # Stamped later than this node could ever forget it by: such txids would push a capped table's
            # horizon into the future, and every honest txid under it would then read as "forgotten".
            raise InvalidRequest(f"{txid} is stamped {ahead_s:.0f} s ahead of this node's clock: clients and "
                                 f"nodes must agree within limits.forget_after_s ({self.config.limits.forget_after_s} s)")
        return txid

    def key(self, raw: Any) -> bytes:
        return key_bytes(raw, self.config.limits.max_key_bytes)

    def key_param(self, params: dict[str, Any]) -> bytes:
        if "key" not in params:
            raise InvalidRequest("missing param 'key'")
        return self.key(params["key"])

    def value(self, value: Any, allow_none: bool = False) -> bytes | None:
        if value is None and allow_none:
            return None
        if not isinstance(value, bytes):
            raise InvalidRequest(f"value must be bytes (msgpack-packed), got {type(value).__name__}")
        if len(value) > self.config.limits.max_value_bytes:
            raise InvalidRequest(
                f"value of {len(value)} bytes exceeds the limit of {self.config.limits.max_value_bytes} bytes"
            )
        return value

    def shard_name(self, raw: Any) -> str:
        if raw not in self.config.shard_names():
            raise InvalidRequest(f"unknown shard {raw!r:.40}")
        return raw

    def group_name(self, raw: Any) -> str:
        if not isinstance(raw, str) or raw not in self.group_names:
            raise InvalidRequest(f"group must name a group of this cluster, got {raw!r:.40}")
        return raw

    def payload(self, params: dict[str, Any], shard: str) -> Payload:
        """A participant's reads and writes, every key checked to belong to ``shard``."""
        reads, writes = params.get("reads"), params.get("writes")
        if not isinstance(reads, list) or not isinstance(writes, list):
            raise InvalidRequest("reads and writes must be arrays")
        cap = self.config.limits.max_keys_per_command
        if len(reads) + len(writes) > cap:
            raise InvalidRequest(f"{len(reads)} reads and {len(writes)} writes at {shard}: at most {cap} keys "
                                 "per shard and transaction (limits.max_keys_per_command)")
        checked_reads = []
        for item in reads:
            if not (isinstance(item, list) and len(item) == 2 and _is_int(item[1]) and item[1] >= 0):
                raise InvalidRequest("each read must be [key, version >= 0]")
            checked_reads.append((self.key(item[0]), item[1]))
        checked_writes = []
        for item in writes:
            if not (isinstance(item, list) and len(item) == 2):
                raise InvalidRequest("each write must be [key, value or nil]")
            checked_writes.append((self.key(item[0]), self.value(item[1], allow_none=True)))
        for key, _ in checked_reads + checked_writes:
            if shard_group(shard_of(key, self.config.shard_count)) != shard:
                raise InvalidRequest(f"key {key!r:.40} does not belong to {shard}")
        return tuple(checked_reads), tuple(checked_writes)

    def shards(self, raw: Any, what: str) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest(f"{what} must be a non-empty array of shard names")
        return tuple(self.shard_name(s) for s in raw)

    def participants_of(self, txid: str, raw: Any) -> tuple[str, ...]:
        """txid's participants, given as an array of shard names; InvalidRequest unless they are its own."""
        return check_participants(txid, self.shards(raw, "participants"))

    def reason(self, raw: Any) -> str:
        """A participant's own words for its NO vote, carried to the leader; cut to ``limits.max_reason_chars``."""
        if not isinstance(raw, str):
            raise InvalidRequest("reason must be a string")
        return raw[: self.config.limits.max_reason_chars]

    def node_id(self, raw: Any, what: str) -> str:
        if not isinstance(raw, str) or raw not in self.node_ids:
            raise InvalidRequest(f"{what} must be a node id of this cluster, got {raw!r:.40}")
        return raw

    def votes(self, raw: Any, what: str) -> dict[str, str]:
        if not isinstance(raw, dict) or not all(v in (PREPARED, ABORTED) for v in raw.values()):
            raise InvalidRequest(f"{what} must map shard names to 'prepared' or 'aborted'")
        return {self.shard_name(k): v for k, v in raw.items()}
