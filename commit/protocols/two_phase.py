"""The Two-Phase Commit coordinator, sans-IO: events in, effects out.

One core serves both ``2pc`` and ``raft-2pc`` (Gray 1978; Bernstein, Hadzilacos
& Goodman, "Concurrency Control and Recovery", ch. 7). They differ only in
where the driver carries ``Persist`` effects: an fsync'd local log for
``2pc``, compare-and-set entries in the coordinator group for ``raft-2pc``;
and ``raft-2pc`` also persists the participant list (``Begin``) before the
first PREPARE, so that a new leader can finish the transaction.

The core does no I/O and reads no clock: every event carries ``now`` and
timers are effects. Effect order is the contract with the driver (as etcd's
``Ready``): a ``Persist`` must be durable before the driver feeds back
``Persisted``, and the core emits ``Reply`` and ``SendDecision`` only after
that, so no one hears a decision before it is durable.

Presumed abort: a vote timeout or any NO decides abort; the participants of
an aborted transaction need not all be reached for it to be safe, because a
participant that never prepared answers a later question with "aborted"
(``ShardState.refuse``).

States and transitions (the table ``TRANSITIONS`` below is the source of the
diagram in docs/PROTOCOLS.md):

    idle       --Start-->          beginning (Persist Begin)   if record_begin
    idle       --Start-->          collecting (SendPrepare*)   otherwise
    idle       --Recover-->        collecting (SendPrepare*) or decided
    beginning  --Persisted-->      collecting (SendPrepare*) or decided (already decided)
    collecting --Vote-->           collecting, or persisting (Persist Decision) when all yes / any no
    collecting --TimerFired-->     persisting (Persist Decision abort)
    persisting --Persisted-->      decided (Reply, SendDecision*)
    decided    --Acked-->          decided, or done when every participant acked
    decided    --TimerFired-->     decided (SendDecision* to the silent ones)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from commit.outcomes import ABORTED, COMMITTED
from commit.protocols.events import (
    Acked,
    Finished,
    ProtocolError,
    Reply,
    SendDecision,
    SendPrepare,
    SetTimer,
    Start,
    TimerFired,
    Vote,
    votes_missing,
)


# -- events (besides Start, Vote, Acked and TimerFired, shared: commit.protocols.events) -----------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recover:
    """A coordinator that lost its memory resumes from the durable record."""

    now: float
    outcome: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Persisted:
    """The driver made a record durable; ``outcome`` is what the store holds now (CAS may differ)."""

    now: float
    outcome: str | None = None


Event = Start | Recover | Persisted | Vote | Acked | TimerFired

# -- effects (besides SendPrepare, SendDecision, Reply, SetTimer and Finished) --------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistBegin:
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistDecision:
    outcome: str


Effect = PersistBegin | PersistDecision | SendPrepare | SendDecision | Reply | SetTimer | Finished

VOTES_TIMER = "votes"
RESEND_TIMER = "resend"

# state -> event types it accepts (anything else is a ProtocolError; stale
# duplicates of accepted types are ignored inside the handlers).
TRANSITIONS: dict[str, tuple[type, ...]] = {
    "idle": (Start, Recover),
    "beginning": (Persisted, Vote, TimerFired),
    "collecting": (Vote, TimerFired, Persisted),
    "persisting": (Persisted, Vote, TimerFired),
    "decided": (Acked, TimerFired, Vote, Persisted),
    "done": (Acked, TimerFired, Vote, Persisted),
}


@dataclass
class TwoPhaseCoordinator:
    EFFECTS: ClassVar[tuple[type, ...]] = (PersistBegin, PersistDecision, SendPrepare, SendDecision, Reply, SetTimer,
                                           Finished)

    txid: str
    participants: tuple[str, ...]
    record_begin: bool
    vote_timeout_s: float
    resend_s: float
    state: str = "idle"
    yes_votes: set[str] = field(default_factory=set)
    unacked: set[str] = field(default_factory=set)
    outcome: str | None = None
    no_votes: tuple[str, ...] = ()
    reason: str = ""

    def handle(self, event: Event) -> list[Effect]:
        allowed = TRANSITIONS[self.state]
        if not isinstance(event, allowed):
            raise ProtocolError(
                f"2PC coordinator of {self.txid}: no transition from state {self.state!r} on {event!r}"
            )
        match event:
            case Start():
                if self.record_begin:
                    self.state = "beginning"
                    return [PersistBegin(participants=self.participants)]
                return self._send_prepares(event.now)
            case Recover(outcome=str() as outcome):
                return self._decided(outcome, event.now)
            case Recover():
                return self._send_prepares(event.now)
            case Persisted() if self.state == "beginning":
                if event.outcome in (COMMITTED, ABORTED):
                    return self._decided(event.outcome, event.now)
                return self._send_prepares(event.now)
            case Persisted() if self.state == "persisting":
                assert event.outcome in (COMMITTED, ABORTED), event
                return self._decided(event.outcome, event.now)
            case Vote() if self.state == "collecting":
                if event.participant not in self.participants:
                    raise ProtocolError(f"{self.txid}: vote from non-participant {event.participant!r}")
                if not event.yes:
                    self.no_votes = (event.participant,)
                    return self._persist(ABORTED)
                self.yes_votes.add(event.participant)
                if self.yes_votes == set(self.participants):
                    return self._persist(COMMITTED)
                return []
            case TimerFired(name=name) if self.state == "collecting" and name == VOTES_TIMER:
                self.reason = votes_missing(self.participants, self.yes_votes, self.vote_timeout_s)
                return self._persist(ABORTED)
            case Acked() if self.state == "decided":
                self.unacked.discard(event.participant)
                if not self.unacked:
                    self.state = "done"
                    return [Finished(outcome=self.outcome or ABORTED)]
                return []
            case TimerFired(name=name) if self.state == "decided" and name == RESEND_TIMER:
                assert self.outcome is not None
                resend: list[Effect] = [SendDecision(participant=p, outcome=self.outcome) for p in sorted(self.unacked)]
                return resend + [SetTimer(name=RESEND_TIMER, deadline=event.now + self.resend_s)]
            case _:
                return []  # a late or duplicated message: nothing to do

    def _send_prepares(self, now: float) -> list[Effect]:
        self.state = "collecting"
        effects: list[Effect] = [SendPrepare(participant=p) for p in self.participants]
        return effects + [SetTimer(name=VOTES_TIMER, deadline=now + self.vote_timeout_s)]

    def _persist(self, outcome: str) -> list[Effect]:
        self.state = "persisting"
        return [PersistDecision(outcome=outcome)]

    def _decided(self, outcome: str, now: float) -> list[Effect]:
        self.state = "decided"
        self.outcome = outcome
        self.unacked = set(self.participants)
        reply = Reply(outcome=outcome, no_votes=self.no_votes, reason=self.reason) if outcome == ABORTED else \
            Reply(outcome=outcome)
        effects: list[Effect] = [reply]
        effects += [SendDecision(participant=p, outcome=outcome) for p in self.participants]
        return effects + [SetTimer(name=RESEND_TIMER, deadline=now + self.resend_s)]
