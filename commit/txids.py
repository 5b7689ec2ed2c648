"""Transaction ids: unique forever, and they say who knows their outcome.

A txid is ``"<protocol>:<32 hex digits>"`` for a multi-shard transaction and
``"1pc:<shard>:<32 hex digits>"`` for a single-shard one. 128 random bits
never repeat across restarts; the prefix tells an in-doubt participant or a
status query whom to ask (the 2pc/3pc coordinator node, the coordinator group,
or the one shard). A txid that lies about its prefix cannot break safety:
every authority fences an unknown txid as aborted before answering.
"""

from __future__ import annotations

import os
import re

from consensus.errors import InvalidRequest

ONE_PHASE = "1pc"
_TXID = re.compile(r"(2pc|raft-2pc|paxos-commit|fast-paxos-commit|3pc|3pc-quorum|1pc:shard-\d{1,4}):[0-9a-f]{32}")


def new_txid(protocol: str, shard: str | None = None) -> str:
    prefix = f"{ONE_PHASE}:{shard}" if shard is not None else protocol
    return f"{prefix}:{os.urandom(16).hex()}"


def check_txid(txid: object) -> str:
    if not isinstance(txid, str) or not _TXID.fullmatch(txid):
        raise InvalidRequest(f"malformed txid {txid!r:.80}")
    return txid


def authority_of(txid: str) -> tuple[str, str | None]:
    """``(protocol, shard)``: the protocol that decides txid, and its shard for one-phase commits."""
    head, _, _ = txid.rpartition(":")
    if head.startswith(ONE_PHASE + ":"):
        return ONE_PHASE, head.split(":", 1)[1]
    return head, None
