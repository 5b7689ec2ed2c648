"""dtm's sub-transaction barrier, kept in the same store transaction as the handler's effects.

dtm (dtm.pub, "exception/barrier") names the three anomalies of a distributed transaction's branches
and cures all three with one table of ``(gid, branch, op)`` rows inserted in the branch's own local
transaction:

* a *duplicate* request (a retry after a lost reply) finds its row and applies nothing;
* a *null compensation* (a compensation whose action never ran, or ran and failed) finds no action
  row: it inserts the action's row itself and succeeds without running the handler;
* a *hanging* action (one that arrives after its compensation) finds that row and is refused, so it can
  never apply an effect nobody will undo.

Here the table is keys of the store (docs/SAGAS.md, "Keys in the store"): a row is
``<service>/_barrier/<saga>/<step>/<op>``, read and written by the same ``commit.Transaction`` as the
handler's writes. A conflicting duplicate running concurrently fails its commit (its read of the row is
stale) and, retried by ``db.run``, finds the row: at most one of them commits the effect.

An action's business refusal (``Fail``) is a row too, ``{"failed": ...}``, written by ``refuse`` in a
transaction of its own that reads the row again: the handler's transaction never commits, so its reads
were never validated, and a refusal based on another attempt's half-seen effects must not become the
answer. A repeat then gets the same refusal, a late attempt is refused by it, and a compensation that
finds it is a null compensation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from commit.transaction import Transaction

ACTION = "action"
COMPENSATION = "compensation"
CONFIRM = "confirm"
EVENT = "event"  # a consumed event: dtm's barrier, keyed (event id, "event", "event")
STEP_OPS = (ACTION, COMPENSATION, CONFIRM)

FENCED = {"fenced": True}  # an action's row written by a null compensation: the action may never run
NULL_COMPENSATION = {"ok": None, "null": True}

Reply = dict[str, Any]


def ok(result: Any) -> Reply:
    return {"ok": result}


def failed(error: str, message: str, retryable: bool) -> Reply:
    """The failure reply of docs/SAGAS.md ("The service RPC"): the orchestrator's retry policy reads it."""
    return {"failed": {"error": error, "message": message, "retryable": retryable}}


@dataclass(frozen=True)
class Branch:
    """One branch of a global transaction at one service: dtm's ``(gid, branch id, op)``."""

    service: str
    saga: str
    step: str
    op: str

    @classmethod
    def of_event(cls, service: str, event_id: str) -> Branch:
        """An event consumed by ``service``: Eventuate's idempotent consumer, on the same barrier."""
        return cls(service, event_id, EVENT, EVENT)

    def key(self, op: str | None = None) -> str:
        """The row of this branch, or with ``op`` the row of the same step's other operation."""
        return f"{self.service}/_barrier/{self.saga}/{self.step}/{op or self.op}"


@dataclass(frozen=True)
class Admission:
    """The barrier's verdict before the handler runs: answer ``reply`` now, or run it with ``prior``.

    ``prior`` is the action's recorded result, which a compensation or a confirm undoes or settles.
    """

    reply: Reply | None = None
    prior: Any = None


async def _row(tx: Transaction, key: str) -> dict[str, Any] | None:
    """A barrier row as read inside ``tx`` (the read is validated at commit), or None when absent."""
    seen = await tx.get(key)
    if not seen.exists:
        return None
    return seen.value if isinstance(seen.value, dict) else {"ok": seen.value}


class Barrier:
    """The barrier's rules; ``record`` is the one place a row is written, so a test can break it."""

    async def admit(self, tx: Transaction, branch: Branch) -> Admission:
        own = await _row(tx, branch.key())
        if own is not None:
            return Admission(reply=self._replay(branch, own))
        if branch.op == COMPENSATION:
            return await self._compensation(tx, branch)
        if branch.op == CONFIRM:
            return await self._confirm(tx, branch)
        return Admission()

    def finish(self, tx: Transaction, branch: Branch, result: Any) -> None:
        """The handler ran: its row goes into the transaction that holds its effects."""
        self.record(tx, branch.key(), ok(result))

    async def refuse(self, tx: Transaction, branch: Branch, refusal: Reply) -> Reply:
        """An action's ``Fail``, made the answer of its branch in a transaction of its own.

        The handler's transaction is not committed, so its reads were never validated: two attempts of one
        step may run at once (after a timeout, or a new leader's call), and the second may refuse on the
        first one's effects while not yet seeing its row. Here the row is read again: if another attempt
        recorded an answer, that is the answer; if not, the refusal is recorded, so a repeat gets it, a
        late attempt that would apply is refused by it, and a compensation finds it (a null compensation).
        """
        admission = await self.admit(tx, branch)
        if admission.reply is not None:
            return admission.reply
        self.record(tx, branch.key(), refusal)
        return refusal

    def record(self, tx: Transaction, key: str, row: dict[str, Any]) -> None:
        tx.put(key, row)

    @staticmethod
    def _replay(branch: Branch, row: dict[str, Any]) -> Reply:
        """A duplicate gets the first answer; an action under a fence gets dtm's hanging refusal."""
        if row.get("fenced") is True:
            return failed("Fenced", f"{branch.saga}/{branch.step} was compensated before its action arrived",
                          False)
        if isinstance(row.get("failed"), dict):
            return {"failed": row["failed"]}
        return ok(row.get("ok"))

    async def _compensation(self, tx: Transaction, branch: Branch) -> Admission:
        action = await _row(tx, branch.key(ACTION))
        if action is None or action.get("fenced") is True:
            self.record(tx, branch.key(ACTION), FENCED)
            self.record(tx, branch.key(), NULL_COMPENSATION)
            return Admission(reply=ok(None))
        if "failed" in action:  # the action refused and applied nothing; its row already refuses a late one
            self.record(tx, branch.key(), NULL_COMPENSATION)
            return Admission(reply=ok(None))
        return Admission(prior=action.get("ok"))

    async def _confirm(self, tx: Transaction, branch: Branch) -> Admission:
        """TCC's Confirm settles a Try; without one there is nothing to settle, and waiting will not help."""
        action = await _row(tx, branch.key(ACTION))
        if action is None or action.get("fenced") is True or "failed" in action:
            return Admission(reply=failed("NotTried", f"{branch.saga}/{branch.step} has no recorded try", False))
        return Admission(prior=action.get("ok"))
