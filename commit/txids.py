"""Transaction ids: unique forever, they say who knows their outcome, and they bind their participants.

A txid is ``"<protocol>:<32 hex digits>.<16 hex digits>.<16 hex digits>"`` for
a multi-shard transaction and ``"1pc:<shard>:<32 hex digits>"`` for a
single-shard one.
The 32 hex digits are a ULID's layout: the first 12 are the client's clock at
creation, in milliseconds since the Unix epoch (``created_ms``), the other 20
are 80 random bits, which never repeat across restarts. The time orders
forgetting: a node forgets a finished transaction only once its creation time
is below that node's horizon, and answers any txid below the horizon that it
does not hold "forgotten" instead of presuming it aborted
(``consensus.horizon``; docs/PROTOCOLS.md, "Forgetting"). The prefix tells an in-doubt
participant or a status query whom to ask (the 2pc/3pc coordinator node, the
coordinator group, or the one shard). A txid that lies about its prefix
cannot break safety: every authority fences an unknown txid as aborted
before answering.

The suffix of a multi-shard txid is a digest of its random part and its
participant set, made by the client when it commits. Every node checks a
participant list it is handed (a commit, a PREPARE, a Paxos message, a status
question) against it, so the participant set of a transaction is the one its
client committed, everywhere: a status question that names only some of the
participants can never make a recovering leader decide over those alone
(issue 9.1: a Paxos Commit leader that recovered "every instance" of a
caller's list committed half a transaction).

The last part is a digest of its reads and writes at every participant, which
the coordinator checks at ``txn.commit``: a txid can only ever be committed
with the payload it was made for, whether or not the coordinator still
remembers it (a client that learnt someone else's in-flight txid, from
``node.py status`` say, cannot resend it with other writes to a new leader).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from commit.protocols.registry import NAMES, ONE_PHASE, ProtocolSpec, spec
from consensus.errors import InvalidRequest

NONCE_BYTES = 16
TIME_BYTES = 6  # of the nonce: the creation time in milliseconds, big-endian (ULID's 48 bits)
DIGEST_BYTES = 8
_TXID = re.compile(
    rf"(?:({'|'.join(re.escape(name) for name in NAMES)}):([0-9a-f]{{32}})\.([0-9a-f]{{16}})\.([0-9a-f]{{16}}))"
    rf"|(?:{ONE_PHASE.name}:shard-\d{{1,4}}:[0-9a-f]{{32}})"
)


Payloads = Mapping[str, Mapping[str, list[Any]]]  # shard -> {"reads": [[key, version]...], "writes": [[key, value]...]}


def _digest(protocol: str, nonce: str, participants: Iterable[str]) -> str:
    text = "\n".join([protocol, nonce, *sorted(participants)])
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


def _payload_digest(protocol: str, nonce: str, payloads: Payloads) -> str:
    canonical = [[shard, payloads[shard]["reads"], payloads[shard]["writes"]] for shard in sorted(payloads)]
    packed = msgpack.packb([protocol, nonce, canonical], use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=DIGEST_BYTES).hexdigest()


def new_txid(protocol: str, participants: Payloads | Iterable[str] = (), shard: str | None = None) -> str:
    """A fresh txid: one-phase on ``shard``, or a multi-shard one bound to its participants' payloads.

    ``participants`` maps each shard to its reads and writes (what a commit sends); shard names alone
    bind an empty payload at each, for a txid that is never committed (a status question, a test).
    """
    created = int(time.time() * 1000).to_bytes(TIME_BYTES, "big")
    nonce = (created + os.urandom(NONCE_BYTES - TIME_BYTES)).hex()
    if shard is not None:
        return f"{ONE_PHASE.name}:{shard}:{nonce}"
    payloads = participants if isinstance(participants, Mapping) else {
        name: {"reads": [], "writes": []} for name in participants}
    return (f"{protocol}:{nonce}.{_digest(protocol, nonce, payloads)}"
            f".{_payload_digest(protocol, nonce, payloads)}")


def created_ms(txid: str) -> int:
    """When the client made txid, in milliseconds since the epoch (its clock): the stamp it is forgotten by.

    0 for a name that is no txid of ``new_txid``'s (the simulators' ``t0``...): older than any horizon, so
    it is "forgotten" as soon as anything is, the safe side (the nodes check every txid at the edge).
    """
    try:
        return int(txid.rpartition(":")[2][:2 * TIME_BYTES], 16)
    except ValueError:
        return 0


def check_txid(txid: object) -> str:
    if not isinstance(txid, str) or not _TXID.fullmatch(txid):
        raise InvalidRequest(f"malformed txid {txid!r:.80}")
    return txid


def authority_of(txid: str) -> tuple[str, str | None]:
    """``(protocol, shard)``: the protocol that decides txid, and its shard for one-phase commits."""
    head, _, _ = txid.rpartition(":")
    if head.startswith(ONE_PHASE.name + ":"):
        return ONE_PHASE.name, head.split(":", 1)[1]
    return head, None


def protocol_of(txid: str) -> ProtocolSpec:
    """The spec of the protocol that decides a well-formed txid (``check_txid``)."""
    return spec(authority_of(txid)[0])


def are_participants_of(txid: str, participants: Iterable[str]) -> bool:
    """Whether ``participants`` (no repeats) is exactly the set txid was committed with."""
    names = list(participants)
    match = _TXID.fullmatch(txid)
    if match is None or match.group(1) is None or len(set(names)) != len(names):
        return False
    protocol, nonce, digest = match.group(1, 2, 3)
    return _digest(protocol, nonce, names) == digest


def check_payloads(txid: str, payloads: Payloads) -> None:
    """InvalidRequest unless ``payloads`` are the reads and writes txid was made for (and its participants)."""
    check_participants(txid, payloads)
    match = _TXID.fullmatch(txid)
    assert match is not None and match.group(1) is not None
    protocol, nonce, _, digest = match.group(1, 2, 3, 4)
    if _payload_digest(protocol, nonce, payloads) != digest:
        raise InvalidRequest(f"other reads and writes than {txid} was made for")


def check_participants(txid: str, participants: Iterable[str]) -> tuple[str, ...]:
    """``participants`` sorted, or InvalidRequest if they are not txid's own."""
    names = tuple(sorted(participants))
    if not are_participants_of(txid, names):
        raise InvalidRequest(f"{', '.join(names)} are not the participants {txid} was committed with")
    return names
