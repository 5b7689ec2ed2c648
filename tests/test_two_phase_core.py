"""The sans-IO 2PC coordinator core, driven by hand: events in, exact effect lists out."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)
from commit.protocols.two_phase import (
    RESEND_TIMER,
    TRANSITIONS,
    VOTES_TIMER,
    Persisted,
    PersistBegin,
    PersistDecision,
    Recover,
    TwoPhaseCoordinator,
)

TXID = "raft-2pc:" + "f" * 32
PARTS = ("s0", "s1")
VOTE_TIMEOUT = 5.0
RESEND = 1.0


def make(record_begin: bool, participants: tuple[str, ...] = PARTS) -> TwoPhaseCoordinator:
    return TwoPhaseCoordinator(
        txid=TXID,
        participants=participants,
        record_begin=record_begin,
        vote_timeout_s=VOTE_TIMEOUT,
        resend_s=RESEND,
    )


def prepares(now: float, participants=PARTS):
    return [SendPrepare(participant=p) for p in participants] + [
        SetTimer(name=VOTES_TIMER, deadline=now + VOTE_TIMEOUT)
    ]


def decision(outcome: str, now: float, participants=PARTS, no_votes=(), reason=""):
    return (
        [Reply(outcome=outcome, no_votes=no_votes, reason=reason)]
        + [SendDecision(participant=p, outcome=outcome) for p in participants]
        + [SetTimer(name=RESEND_TIMER, deadline=now + RESEND)]
    )


def collecting(record_begin: bool, participants=PARTS) -> TwoPhaseCoordinator:
    """A coordinator that has sent its PREPAREs at time 1."""
    coord = make(record_begin, participants)
    if record_begin:
        assert coord.handle(Start(now=0.0)) == [PersistBegin(participants=participants)]
        assert coord.state == "beginning"
        assert coord.handle(Persisted(now=1.0, outcome="pending")) == prepares(1.0, participants)
    else:
        coord.handle(Start(now=0.0))
        coord.handle(TimerFired(now=0.5, name=RESEND_TIMER))  # ignored in collecting
        assert coord.state == "collecting"
    assert coord.state == "collecting"
    return coord


# -- start -------------------------------------------------------------------------


def test_start_2pc_sends_prepares_at_once():
    coord = make(record_begin=False)
    assert coord.handle(Start(now=10.0)) == prepares(10.0)
    assert coord.state == "collecting"


def test_start_raft_2pc_persists_begin_before_any_prepare():
    coord = make(record_begin=True)
    assert coord.handle(Start(now=10.0)) == [PersistBegin(participants=PARTS)]
    assert coord.state == "beginning"
    # Votes cannot exist yet; a stray one is ignored rather than counted.
    assert coord.handle(Vote(now=10.5, participant="s0", yes=True)) == []
    assert coord.handle(Persisted(now=11.0, outcome="pending")) == prepares(11.0)
    assert coord.state == "collecting"
    assert coord.yes_votes == set()


@pytest.mark.parametrize("outcome", [COMMITTED, ABORTED])
def test_begin_finding_the_txn_already_decided_adopts_the_decision(outcome):
    # The record was fenced (or decided by another leader) before our begin landed.
    coord = make(record_begin=True)
    coord.handle(Start(now=0.0))
    assert coord.handle(Persisted(now=2.0, outcome=outcome)) == decision(outcome, 2.0)
    assert coord.state == "decided"
    assert coord.outcome == outcome


# -- full runs ---------------------------------------------------------------------


@pytest.mark.parametrize("record_begin", [True, False])
def test_all_yes_commits_then_finishes_after_all_acks(record_begin):
    coord = collecting(record_begin)
    assert coord.handle(Vote(now=2.0, participant="s0", yes=True)) == []
    assert coord.state == "collecting"
    assert coord.handle(Vote(now=2.5, participant="s1", yes=True)) == [PersistDecision(outcome=COMMITTED)]
    assert coord.state == "persisting"
    assert coord.handle(Persisted(now=3.0, outcome=COMMITTED)) == decision(COMMITTED, 3.0)
    assert coord.state == "decided"
    assert coord.outcome == COMMITTED
    assert coord.handle(Acked(now=3.5, participant="s1")) == []
    assert coord.state == "decided"
    assert coord.handle(Acked(now=4.0, participant="s0")) == [Finished(outcome=COMMITTED)]
    assert coord.state == "done"


@pytest.mark.parametrize("record_begin", [True, False])
@pytest.mark.parametrize("no_from", ["s0", "s1"])
def test_any_no_aborts_at_once(record_begin, no_from):
    coord = collecting(record_begin)
    if no_from == "s1":
        assert coord.handle(Vote(now=2.0, participant="s0", yes=True)) == []
    assert coord.handle(Vote(now=2.1, participant=no_from, yes=False)) == [PersistDecision(outcome=ABORTED)]
    assert coord.state == "persisting"
    assert coord.handle(Persisted(now=2.2, outcome=ABORTED)) == decision(ABORTED, 2.2, no_votes=(no_from,))
    assert coord.handle(Acked(now=3.0, participant="s0")) == []
    assert coord.handle(Acked(now=3.0, participant="s1")) == [Finished(outcome=ABORTED)]
    assert coord.state == "done"


@pytest.mark.parametrize("record_begin", [True, False])
def test_vote_timer_aborts(record_begin):
    coord = collecting(record_begin)
    assert coord.handle(Vote(now=2.0, participant="s0", yes=True)) == []
    assert coord.handle(TimerFired(now=6.0, name=VOTES_TIMER)) == [PersistDecision(outcome=ABORTED)]
    assert coord.state == "persisting"
    # The missing yes arrives while the abort is being persisted: too late.
    assert coord.handle(Vote(now=6.1, participant="s1", yes=True)) == []
    assert coord.handle(Persisted(now=6.2, outcome=ABORTED)) == decision(
        ABORTED, 6.2, reason=f"no vote from s1 within {VOTE_TIMEOUT}s")
    assert coord.outcome == ABORTED


@pytest.mark.parametrize("record_begin", [True, False])
def test_cas_returning_abort_for_a_requested_commit_is_adopted(record_begin):
    coord = collecting(record_begin)
    coord.handle(Vote(now=2.0, participant="s0", yes=True))
    assert coord.handle(Vote(now=2.0, participant="s1", yes=True)) == [PersistDecision(outcome=COMMITTED)]
    # A recovering leader fenced the txn first: the store holds abort.
    assert coord.handle(Persisted(now=3.0, outcome=ABORTED)) == decision(ABORTED, 3.0)
    assert coord.outcome == ABORTED
    assert coord.handle(TimerFired(now=4.0, name=RESEND_TIMER)) == [
        SendDecision(participant="s0", outcome=ABORTED),
        SendDecision(participant="s1", outcome=ABORTED),
        SetTimer(name=RESEND_TIMER, deadline=5.0),
    ]
    assert coord.handle(Acked(now=4.1, participant="s0")) == []
    assert coord.handle(Acked(now=4.1, participant="s1")) == [Finished(outcome=ABORTED)]


@pytest.mark.parametrize("record_begin", [True, False])
def test_cas_returning_commit_for_a_requested_abort_is_adopted(record_begin):
    coord = collecting(record_begin)
    assert coord.handle(TimerFired(now=6.0, name=VOTES_TIMER)) == [PersistDecision(outcome=ABORTED)]
    assert coord.handle(Persisted(now=6.5, outcome=COMMITTED)) == decision(COMMITTED, 6.5)
    assert coord.outcome == COMMITTED


# -- recovery ----------------------------------------------------------------------


@pytest.mark.parametrize("record_begin", [True, False])
def test_recover_without_outcome_resends_prepares(record_begin):
    coord = make(record_begin)
    assert coord.handle(Recover(now=20.0, outcome=None)) == prepares(20.0)
    assert coord.state == "collecting"
    coord.handle(Vote(now=21.0, participant="s0", yes=True))
    assert coord.handle(Vote(now=21.0, participant="s1", yes=True)) == [PersistDecision(outcome=COMMITTED)]


@pytest.mark.parametrize("record_begin", [True, False])
@pytest.mark.parametrize("outcome", [COMMITTED, ABORTED])
def test_recover_with_outcome_resends_the_decision(record_begin, outcome):
    coord = make(record_begin)
    assert coord.handle(Recover(now=20.0, outcome=outcome)) == decision(outcome, 20.0)
    assert coord.state == "decided"
    assert coord.outcome == outcome
    assert coord.handle(Acked(now=21.0, participant="s0")) == []
    assert coord.handle(Acked(now=21.0, participant="s1")) == [Finished(outcome=outcome)]


# -- resend ------------------------------------------------------------------------


def test_resend_timer_resends_only_to_unacked_participants():
    parts = ("s2", "s0", "s1", "s3")
    coord = collecting(False, parts)
    for p in parts:
        coord.handle(Vote(now=2.0, participant=p, yes=True))
    assert coord.state == "persisting"
    assert coord.handle(Persisted(now=3.0, outcome=COMMITTED)) == decision(COMMITTED, 3.0, parts)
    assert coord.handle(Acked(now=3.2, participant="s0")) == []
    assert coord.handle(TimerFired(now=4.0, name=RESEND_TIMER)) == [
        SendDecision(participant="s1", outcome=COMMITTED),
        SendDecision(participant="s2", outcome=COMMITTED),
        SendDecision(participant="s3", outcome=COMMITTED),
        SetTimer(name=RESEND_TIMER, deadline=5.0),
    ]
    coord.handle(Acked(now=4.5, participant="s2"))
    coord.handle(Acked(now=4.5, participant="s3"))
    assert coord.handle(TimerFired(now=5.0, name=RESEND_TIMER)) == [
        SendDecision(participant="s1", outcome=COMMITTED),
        SetTimer(name=RESEND_TIMER, deadline=6.0),
    ]
    assert coord.handle(Acked(now=5.5, participant="s1")) == [Finished(outcome=COMMITTED)]
    # Done: a last timer sends nothing.
    assert coord.handle(TimerFired(now=6.0, name=RESEND_TIMER)) == []


# -- duplicates and late events ----------------------------------------------------


def test_duplicate_and_late_events_are_ignored():
    coord = collecting(True)
    assert coord.handle(Vote(now=2.0, participant="s0", yes=True)) == []
    assert coord.handle(Vote(now=2.0, participant="s0", yes=True)) == []  # duplicate yes
    assert coord.state == "collecting"
    assert coord.handle(Persisted(now=2.1, outcome="pending")) == []  # duplicate begin ack
    assert coord.state == "collecting"
    assert coord.handle(TimerFired(now=2.2, name=RESEND_TIMER)) == []  # not our timer yet
    assert coord.handle(Vote(now=2.5, participant="s1", yes=True)) == [PersistDecision(outcome=COMMITTED)]
    # While persisting: no second decision, whatever arrives.
    assert coord.handle(Vote(now=2.6, participant="s1", yes=False)) == []
    assert coord.handle(TimerFired(now=6.0, name=VOTES_TIMER)) == []
    assert coord.handle(TimerFired(now=6.0, name=RESEND_TIMER)) == []
    assert coord.state == "persisting"
    assert coord.handle(Persisted(now=6.1, outcome=COMMITTED)) == decision(COMMITTED, 6.1)
    # Decided: late votes, the vote timer and a duplicate Persisted change nothing.
    assert coord.handle(Vote(now=6.2, participant="s0", yes=False)) == []
    assert coord.handle(TimerFired(now=6.3, name=VOTES_TIMER)) == []
    assert coord.handle(Persisted(now=6.4, outcome=ABORTED)) == []
    assert coord.outcome == COMMITTED
    assert coord.handle(Acked(now=7.0, participant="s0")) == []
    assert coord.handle(Acked(now=7.0, participant="s0")) == []  # duplicate ack
    assert coord.state == "decided"
    assert coord.handle(Acked(now=7.1, participant="s1")) == [Finished(outcome=COMMITTED)]
    # Done: everything late is ignored, and Finished is emitted once.
    for event in [
        Acked(now=8.0, participant="s1"),
        Acked(now=8.0, participant="s0"),
        Vote(now=8.0, participant="s0", yes=True),
        Persisted(now=8.0, outcome=COMMITTED),
        TimerFired(now=8.0, name=RESEND_TIMER),
        TimerFired(now=8.0, name=VOTES_TIMER),
    ]:
        assert coord.handle(event) == []
        assert coord.state == "done"


# -- protocol errors ---------------------------------------------------------------


def reach(state: str) -> TwoPhaseCoordinator:
    coord = make(True)
    if state == "idle":
        return coord
    coord.handle(Start(now=0.0))
    if state == "beginning":
        return coord
    coord.handle(Persisted(now=1.0, outcome="pending"))
    if state == "collecting":
        return coord
    coord.handle(Vote(now=2.0, participant="s0", yes=False))
    if state == "persisting":
        return coord
    coord.handle(Persisted(now=3.0, outcome=ABORTED))
    if state == "decided":
        return coord
    coord.handle(Acked(now=4.0, participant="s0"))
    coord.handle(Acked(now=4.0, participant="s1"))
    assert state == "done"
    return coord


ALL_EVENTS = [
    Start(now=9.0),
    Recover(now=9.0, outcome=None),
    Recover(now=9.0, outcome=COMMITTED),
    Persisted(now=9.0, outcome=COMMITTED),
    Vote(now=9.0, participant="s0", yes=True),
    Acked(now=9.0, participant="s0"),
    TimerFired(now=9.0, name=RESEND_TIMER),
]


REJECTED = [
    pytest.param(state, event, id=f"{state}-{type(event).__name__}")
    for state in TRANSITIONS
    for event in ALL_EVENTS
    if not isinstance(event, TRANSITIONS[state])
]


def test_rejected_pairs_cover_every_state_but_none_the_table_accepts():
    assert {p.values[0] for p in REJECTED} == set(TRANSITIONS)
    assert ("idle", Acked) in {(p.values[0], type(p.values[1])) for p in REJECTED}


@pytest.mark.parametrize("state,event", REJECTED)
def test_events_the_transition_table_lacks_raise_protocol_error_naming_the_state(state, event):
    coord = reach(state)
    assert coord.state == state
    with pytest.raises(ProtocolError, match=f"state '{state}'"):
        coord.handle(event)
    assert coord.state == state


def test_acked_in_idle_is_a_protocol_error():
    coord = make(False)
    with pytest.raises(ProtocolError) as info:
        coord.handle(Acked(now=0.0, participant="s0"))
    assert "'idle'" in str(info.value)
    assert TXID in str(info.value)
    assert coord.state == "idle"


def test_start_twice_is_a_protocol_error():
    coord = collecting(False)
    with pytest.raises(ProtocolError, match="'collecting'"):
        coord.handle(Start(now=5.0))


def test_vote_from_a_non_participant_is_a_protocol_error():
    coord = collecting(False)
    with pytest.raises(ProtocolError, match="non-participant 'intruder'"):
        coord.handle(Vote(now=2.0, participant="intruder", yes=True))
    assert coord.yes_votes == set()
    assert coord.state == "collecting"
    # A NO from a stranger must not abort the transaction either.
    with pytest.raises(ProtocolError):
        coord.handle(Vote(now=2.0, participant="intruder", yes=False))
    assert coord.state == "collecting"


# -- property: durability before telling -------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    record_begin=st.booleans(),
    nparts=st.integers(1, 3),
    start=st.sampled_from(["start", "recover-none", "recover-commit", "recover-abort"]),
    data=st.data(),
)
def test_no_one_hears_a_decision_before_it_is_durable(record_begin, nparts, start, data):
    """A driver that follows the contract (a Persisted only answers a Persist; votes only after a
    PREPARE, acks only after a decision, timers only once set) feeds events in any order, with
    duplicates and CAS results that may differ from the request. No Reply or SendDecision may be
    emitted before a Persisted carrying that decision (or a Recover from a durable decision)."""
    parts = tuple(f"s{i}" for i in range(nparts))
    coord = make(record_begin, parts)
    now = 0.0
    durable: str | None = None  # the outcome the durable store holds, once there is one
    pending_persist = None
    prepared_to: set[str] = set()
    told: set[str] = set()
    timers: set[str] = set()
    replies: list[str] = []
    finished: list[str] = []
    acked: set[str] = set()

    def feed(event):
        nonlocal pending_persist
        effects = coord.handle(event)
        for effect in effects:
            if isinstance(effect, (Reply, SendDecision)):
                assert durable is not None, (event, effects)
                assert effect.outcome == durable, (event, effects)
            if isinstance(effect, (PersistBegin, PersistDecision)):
                assert pending_persist is None, "a second Persist before the first was answered"
                pending_persist = effect
            if isinstance(effect, Reply):
                replies.append(effect.outcome)
            if isinstance(effect, SendPrepare):
                prepared_to.add(effect.participant)
            if isinstance(effect, SendDecision):
                told.add(effect.participant)
            if isinstance(effect, SetTimer):
                timers.add(effect.name)
            if isinstance(effect, Finished):
                assert effect.outcome == durable
                assert acked >= set(parts)
                finished.append(effect.outcome)
        return effects

    if start == "start":
        feed(Start(now=now))
    elif start == "recover-none":
        feed(Recover(now=now, outcome=None))
    else:
        durable = COMMITTED if start == "recover-commit" else ABORTED
        feed(Recover(now=now, outcome=durable))

    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        now += 0.25
        choices: list = []
        if pending_persist is not None:
            choices.append("persisted")
        choices += [("vote", p) for p in sorted(prepared_to)]
        choices += [("ack", p) for p in sorted(told)]
        choices += [("timer", name) for name in sorted(timers)]
        if not choices:
            break
        choice = data.draw(st.sampled_from(choices))
        if choice == "persisted":
            persist, pending_persist = pending_persist, None
            if isinstance(persist, PersistBegin):
                stored = data.draw(st.sampled_from(["pending", COMMITTED, ABORTED]))
            elif durable is not None:
                stored = durable  # CAS: the first decision stays
            else:
                stored = data.draw(st.sampled_from([persist.outcome, COMMITTED, ABORTED]))
            if stored in (COMMITTED, ABORTED):
                if durable is None:
                    durable = stored
                stored = durable
            feed(Persisted(now=now, outcome=stored))
        elif choice[0] == "vote":
            feed(Vote(now=now, participant=choice[1], yes=data.draw(st.booleans())))
        elif choice[0] == "ack":
            acked.add(choice[1])
            feed(Acked(now=now, participant=choice[1]))
        else:
            feed(TimerFired(now=now, name=choice[1]))

    assert len(replies) <= 1
    assert len(finished) <= 1
    if coord.state in ("decided", "done"):
        assert coord.outcome == durable
        assert replies == [durable]
