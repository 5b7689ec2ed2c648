"""The coordinator group's state machine: epochs, ``raft-2pc`` transaction records, and saga records.

A ``raft-2pc`` transaction is recorded here before any PREPARE is sent
(``begin``: txid and participants), and its outcome is set exactly once by
compare-and-set (``decide``): the first decision replicated wins, and every
later ``decide`` gets that one back. Because the record is a Raft entry, a
new leader of the coordinator group finds every transaction that was in
flight under the old one (``in_flight``) and finishes it.

``fence`` is presumed abort made safe: asked about a txid it has no record
of, the group records it as aborted, so a ``begin`` that arrives later (an
old leader's proposal, delayed) learns the outcome instead of starting it.

``forget(horizon)`` is the leader's periodic command (``commit.node.forgetting``): the
decided outcomes of finished transactions (their ``finish`` came after every
participant acknowledged) and fences whose txid was made before ``horizon`` are
dropped, and the horizon only rises. A txid made before it that the group holds
no record of is answered ``forgotten`` by ``fence``, ``begin`` and ``decide``, and
nothing is recorded: it may have committed, so presumed abort must not fence it,
and an old leader's delayed ``begin`` must not start it again (the low-water
mark of ``consensus.horizon``; Raft snapshots then carry only what is left,
Ongaro's thesis, chapter 5). In-flight records (``txns``) are never forgotten.

Saga records (definitions and histories) are ``saga_records.SagaRecords``; their commands start with
``saga.``.

Pure and deterministic, like every replicated state machine here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from commit.config import Limits, Sagas
from commit.node.state_machines.saga_records import SagaRecords
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PENDING
from commit.txids import created_ms
from consensus.errors import InvalidRequest
from consensus.horizon import HorizonTable


@dataclass(slots=True)
class TxnRecord:
    participants: tuple[str, ...]
    outcome: str | None = None


class CoordinatorState:
    def __init__(self, max_decided: int = Limits.max_remembered_transactions, sagas: Sagas = Sagas()) -> None:
        self.epoch = 0
        self.txns: dict[str, TxnRecord] = {}
        self.decided: HorizonTable[str, str] = HorizonTable(max_decided)
        self.sagas = SagaRecords(sagas)

    def outcome_of(self, txid: str) -> str | None:
        """The outcome, ``pending`` (in flight), ``forgotten`` (decided long ago, maybe), or None: never heard of."""
        record = self.txns.get(txid)
        if record is not None:
            return record.outcome or PENDING
        decided = self.decided.get(txid)
        if decided is None and self.decided.forgotten(created_ms(txid)):
            return FORGOTTEN
        return decided

    def in_flight(self) -> list[tuple[str, TxnRecord]]:
        """Transactions not yet finished, in the order they began."""
        return list(self.txns.items())

    def apply(self, command: Any) -> Any:
        match command:
            case ("new_epoch",):
                self.epoch += 1
                return self.epoch
            case ("begin", str() as txid, tuple() as participants):
                known = self.outcome_of(txid)
                if known is not None:
                    return known
                self.txns[txid] = TxnRecord(participants)
                return PENDING
            case ("decide", str() as txid, str() as outcome) if outcome in (COMMITTED, ABORTED):
                if self.outcome_of(txid) == FORGOTTEN:
                    return FORGOTTEN
                return self._decide(txid, outcome)
            case ("forget", int() as horizon):
                return self.decided.forget_before(horizon, keep=self.txns.__contains__)
            case ("fence", str() as txid):
                known = self.outcome_of(txid)
                return known if known is not None else self._decide(txid, ABORTED)
            case (str() as name, *_) if name.startswith("saga."):
                return self.sagas.apply(command)
            case ("finish", str() as txid):
                record = self.txns.get(txid)
                if record is not None and record.outcome is not None:
                    del self.txns[txid]
                return self.decided.get(txid)
            case _:
                raise InvalidRequest(f"unknown coordinator command {command!r:.80}")

    def _decide(self, txid: str, outcome: str) -> str:
        record = self.txns.get(txid)
        if record is not None:
            if record.outcome is None:
                record.outcome = outcome
            final = record.outcome
        else:
            final = self.decided.get(txid) or outcome
        if txid not in self.decided:
            self.decided.remember(txid, created_ms(txid), final)
        return final
