"""The status question: where a transaction's outcome is kept, and how to ask for it.

The client asks it after a ``CommitUnknown`` (``db.status``), and so does a participant in doubt (the
node's resolver); both come here. Whom to ask is the protocol's (``commit.protocols.registry``): a
one-phase commit's shard, the 2pc/3pc coordinator node, the coordinator group, and for 3PC, which keeps
no coordinator record, the participants themselves. Asking fences: an authority that never heard of the
txid records it as aborted before it answers, which is what makes presumed abort safe; one that may have
decided it and forgotten it (older than its horizon) answers ``forgotten`` and records nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from commit.config import COORDINATOR_GROUP
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PENDING, UNKNOWN
from commit.protocols.registry import Coordinator
from commit.txids import are_participants_of, authority_of, protocol_of
from consensus.errors import ClusterError

if TYPE_CHECKING:
    from commit.client import Database

log = logging.getLogger(__name__)


async def shard_state(db: Database, shard: str, txid: str) -> str:
    """The shard's state for txid; a shard that never prepared it records it aborted first."""
    reply = await db.call_group(shard, "shard.query", {"txid": txid, "shard": shard})
    return str(reply["state"])


async def participants_know(db: Database, txid: str, participants: tuple[str, ...], timeout_s: float) -> str:
    """3PC keeps no coordinator record: a decided participant is the answer (asking fences a shard that
    never prepared txid, as a NO vote would). ``pending`` while none has decided, ``forgotten`` when one
    forgot it and none still knows."""
    states = set()
    for shard in participants:
        with trio.move_on_after(timeout_s):
            try:
                states.add(await shard_state(db, shard, txid))
            except ClusterError as exc:
                log.info("%s: %s did not say its state: %s", txid, shard, exc)
    for outcome in (COMMITTED, ABORTED):
        if outcome in states:
            return outcome
    return FORGOTTEN if FORGOTTEN in states else PENDING


async def status(db: Database, txid: str, participants: tuple[str, ...] = ()) -> str:
    """The outcome as the authority for txid knows it: committed, aborted, pending, unknown or forgotten
    (decided so long ago that nobody asked remembers which way: never a presumed abort).

    For 3PC the authority is the participants themselves: with the participant list this asks them, so
    the answer does not need the coordinator (which may be dead: that is 3PC's point). A list that is not
    txid's own is answered ``unknown`` here, without asking anyone: asking would fence shards that are
    not participants, or let a recovery decide over part of the transaction.
    """
    spec = protocol_of(txid)
    if spec.coordinator is Coordinator.SHARD:
        shard = authority_of(txid)[1]
        assert shard is not None
        return await shard_state(db, shard, txid)
    if participants and not are_participants_of(txid, participants):
        return UNKNOWN
    if spec.participants_terminate and participants:
        return await participants_know(db, txid, participants, db.config.timeouts.request_s)
    params: dict[str, Any] = {"txid": txid}
    if participants:
        params["participants"] = list(participants)
    if spec.coordinator is Coordinator.NODE:
        reply = await db.call_node(db.config.twopc_coordinator, "txn.status", params)
    else:
        reply = await db.call_group(COORDINATOR_GROUP, "txn.status", params)
    return str(reply["outcome"])
