"""The sans-IO Paxos Commit leader, driven by hand: events in, exact effect lists out.

Ends with a property test: the leader is fed random interleavings of the 2b
and 1b messages that three real ``AcceptorState`` acceptors could actually
have sent, and its outcome is compared with the values the acceptors chose.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit.outcomes import ABORTED, COMMITTED, PREPARED
from commit.protocols.paxos_commit import (
    RECOVERY_TIMER,
    RESEND_TIMER,
    TRANSITIONS,
    VOTES_TIMER,
    OutcomeForgotten,
    PaxosCommitLeader,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    Recover,
    Superseded,
)
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
)
from consensus.paxos import BALLOT_ZERO, AcceptorState

TXID = "paxos-commit:" + "e" * 32
PARTS = ("s0", "s1")
ACCS3 = ("a0", "a1", "a2")
ACCS5 = ("a0", "a1", "a2", "a3", "a4")
VOTE_TIMEOUT = 5.0
RESEND = 1.0
B1, B2, B3 = (1, 0, 1), (1, 0, 2), (1, 0, 3)


def make(participants=PARTS, acceptors=ACCS3, fast=False, ballots=(B1, B2, B3)) -> PaxosCommitLeader:
    return PaxosCommitLeader(
        txid=TXID,
        participants=participants,
        acceptors=acceptors,
        ballots=iter(ballots),
        vote_timeout_s=VOTE_TIMEOUT,
        resend_s=RESEND,
        fast=fast,
    )


def started(**kwargs) -> PaxosCommitLeader:
    leader = make(**kwargs)
    assert leader.handle(Start(now=0.0)) == [SendPrepare(participant=p) for p in leader.participants] + [
        SetTimer(name=VOTES_TIMER, deadline=VOTE_TIMEOUT)
    ]
    assert leader.state == "collecting"
    return leader


def two_b(acceptor, values, ballot=BALLOT_ZERO, now=1.0) -> Phase2b:
    return Phase2b(now=now, acceptor=acceptor, ballot=ballot, values=values)


def one_b(acceptor, accepted, ballot, promised=True, now=1.0, promise=None) -> Phase1b:
    return Phase1b(now=now, acceptor=acceptor, ballot=ballot, promised=promised, accepted=accepted,
                   promise=promise)


def decision(outcome, now, participants=PARTS, no_votes=(), reason=""):
    return (
        [Reply(outcome=outcome, no_votes=no_votes, reason=reason)]
        + [SendDecision(participant=p, outcome=outcome) for p in participants]
        + [SetTimer(name=RESEND_TIMER, deadline=now + RESEND)]
    )


def all_prepared(participants=PARTS):
    return {p: PREPARED for p in participants}


def recovering(participants=PARTS, fast=False, **kwargs) -> PaxosCommitLeader:
    """A leader whose vote timer fired with nothing chosen: phase 1 at B1 for every participant."""
    leader = started(participants=participants, fast=fast, **kwargs)
    assert leader.handle(TimerFired(now=5.0, name=VOTES_TIMER)) == [
        Phase1a(ballot=B1, participants=participants),
        SetTimer(name=RECOVERY_TIMER, deadline=5.0 + VOTE_TIMEOUT),
    ]
    assert leader.state == "recovering"
    return leader


# -- normal path --------------------------------------------------------------------------


@pytest.mark.parametrize("acceptors", [ACCS3, ACCS5])
def test_commit_after_f_plus_1_bundled_2b_at_ballot_zero(acceptors):
    leader = started(acceptors=acceptors)
    f = len(acceptors) // 2
    for a in acceptors[:f]:
        assert leader.handle(two_b(a, all_prepared())) == []
        assert leader.state == "collecting"
    assert leader.handle(two_b(acceptors[f], all_prepared(), now=2.0)) == decision(COMMITTED, 2.0)
    assert leader.state == "decided"
    assert leader.outcome == COMMITTED
    assert leader.chosen == all_prepared()


@pytest.mark.parametrize("acceptors", [ACCS3, ACCS5])
def test_prepared_from_only_f_acceptors_does_not_decide(acceptors):
    leader = started(acceptors=acceptors)
    f = len(acceptors) // 2
    for a in acceptors[:f]:
        assert leader.handle(two_b(a, all_prepared())) == []
    # Duplicates from the same acceptors do not make a quorum either.
    for a in acceptors[:f]:
        assert leader.handle(two_b(a, all_prepared())) == []
    assert leader.state == "collecting"
    assert leader.outcome is None
    assert leader.chosen == {}


def test_commit_needs_a_quorum_for_every_participant_not_just_one():
    leader = started()
    assert leader.handle(two_b("a0", {"s0": PREPARED})) == []
    assert leader.handle(two_b("a1", {"s0": PREPARED})) == []
    assert leader.chosen == {"s0": PREPARED}
    assert leader.handle(two_b("a2", {"s1": PREPARED})) == []
    assert leader.state == "collecting"
    # Different quorums per instance are fine.
    assert leader.handle(two_b("a0", {"s1": PREPARED}, now=3.0)) == decision(COMMITTED, 3.0)


def test_quorum_counts_the_same_value_at_the_same_ballot_only():
    leader = recovering()
    assert leader.handle(two_b("a0", {"s0": PREPARED, "s1": PREPARED})) == []
    assert leader.handle(two_b("a1", {"s0": PREPARED}, ballot=B1)) == []  # other ballot
    assert leader.handle(two_b("a2", {"s0": ABORTED}, ballot=B1)) == []  # other value
    assert leader.chosen == {}
    assert leader.state == "recovering"


@pytest.mark.parametrize("bundle", [{"s1": ABORTED}, {"s0": PREPARED, "s1": ABORTED}])
def test_abort_as_soon_as_one_2b_carries_aborted_at_ballot_zero(bundle):
    leader = started()
    assert leader.handle(two_b("a2", bundle, now=1.5)) == decision(ABORTED, 1.5, no_votes=("s1",))
    assert leader.state == "decided"
    assert leader.outcome == ABORTED


def test_abort_after_some_prepared():
    leader = started()
    assert leader.handle(two_b("a0", {"s0": PREPARED})) == []
    assert leader.handle(two_b("a1", {"s0": PREPARED})) == []
    assert leader.handle(two_b("a0", {"s1": ABORTED}, now=2.0)) == decision(ABORTED, 2.0, no_votes=("s1",))


def test_one_aborted_2b_at_a_recovery_ballot_is_not_a_decision():
    leader = recovering()
    assert leader.handle(two_b("a0", {"s0": ABORTED, "s1": ABORTED}, ballot=B1)) == []
    assert leader.state == "recovering"
    assert leader.handle(two_b("a1", {"s0": ABORTED}, ballot=B1, now=6.0)) == decision(ABORTED, 6.0)


# -- acks, resend, finish -------------------------------------------------------------------


def decided(outcome=COMMITTED, participants=PARTS, **kwargs) -> PaxosCommitLeader:
    leader = started(participants=participants, **kwargs)
    values = all_prepared(participants) if outcome == COMMITTED else {participants[0]: ABORTED}
    leader.handle(two_b("a0", values))
    leader.handle(two_b("a1", values, now=2.0))
    assert leader.state == "decided" and leader.outcome == outcome
    return leader


def test_finished_only_after_every_participant_acked():
    leader = decided(COMMITTED)
    assert leader.handle(Acked(now=3.0, participant="s1")) == []
    assert leader.handle(Acked(now=3.1, participant="s1")) == []
    assert leader.state == "decided"
    assert leader.handle(Acked(now=3.2, participant="s0")) == [Finished(outcome=COMMITTED)]
    assert leader.state == "done"
    assert leader.handle(Acked(now=3.3, participant="s0")) == []
    assert leader.handle(TimerFired(now=4.0, name=RESEND_TIMER)) == []


def test_resend_timer_resends_only_to_the_unacked():
    leader = decided(ABORTED, participants=("s0", "s1", "s2"))
    assert leader.handle(Acked(now=2.5, participant="s1")) == []
    assert leader.handle(TimerFired(now=3.0, name=RESEND_TIMER)) == [
        SendDecision(participant="s0", outcome=ABORTED),
        SendDecision(participant="s2", outcome=ABORTED),
        SetTimer(name=RESEND_TIMER, deadline=3.0 + RESEND),
    ]
    assert leader.handle(Acked(now=3.5, participant="s2")) == []
    assert leader.handle(TimerFired(now=4.0, name=RESEND_TIMER)) == [
        SendDecision(participant="s0", outcome=ABORTED),
        SetTimer(name=RESEND_TIMER, deadline=4.0 + RESEND),
    ]
    assert leader.handle(Acked(now=4.5, participant="s0")) == [Finished(outcome=ABORTED)]


def test_stale_messages_and_other_timers_after_the_decision_are_ignored():
    leader = decided(COMMITTED)
    assert leader.handle(two_b("a2", {"s0": ABORTED})) == []
    assert leader.handle(two_b("a2", {"s0": ABORTED}, ballot=B1)) == []
    assert leader.handle(one_b("a0", {}, B1)) == []
    assert leader.handle(TimerFired(now=9.0, name=VOTES_TIMER)) == []
    assert leader.handle(TimerFired(now=9.0, name=RECOVERY_TIMER)) == []
    assert leader.outcome == COMMITTED and leader.state == "decided"


# -- recovery ---------------------------------------------------------------------------------


def test_vote_timer_starts_phase_1_with_the_next_ballot_over_the_undecided():
    leader = started(participants=("s0", "s1", "s2"))
    leader.handle(two_b("a0", {"s1": PREPARED}))
    leader.handle(two_b("a2", {"s1": PREPARED}))
    assert leader.chosen == {"s1": PREPARED}
    assert leader.handle(TimerFired(now=5.0, name=VOTES_TIMER)) == [
        Phase1a(ballot=B1, participants=("s0", "s2")),
        SetTimer(name=RECOVERY_TIMER, deadline=10.0),
    ]
    assert leader.state == "recovering"
    assert leader.ballot == B1


def test_other_timers_do_not_start_recovery():
    leader = started()
    assert leader.handle(TimerFired(now=5.0, name=RECOVERY_TIMER)) == []
    assert leader.handle(TimerFired(now=5.0, name=RESEND_TIMER)) == []
    assert leader.state == "collecting"
    leader = recovering()
    assert leader.handle(TimerFired(now=6.0, name=VOTES_TIMER)) == []
    assert leader.ballot == B1


def test_recovery_timer_starts_again_at_a_new_higher_ballot():
    leader = recovering()
    assert leader.handle(one_b("a0", {}, B1)) == []  # one promise at B1 ...
    assert leader.handle(TimerFired(now=10.0, name=RECOVERY_TIMER)) == [
        Phase1a(ballot=B2, participants=PARTS),
        SetTimer(name=RECOVERY_TIMER, deadline=15.0),
    ]
    assert leader.ballot == B2 > B1
    # ... does not count towards the B2 quorum: a B2 promise from a1 alone is not enough.
    assert leader.handle(one_b("a1", {}, B2)) == []
    assert leader.handle(one_b("a2", {}, B2)) == [Phase2a(ballot=B2, values={"s0": ABORTED, "s1": ABORTED})]


def test_phase_1b_quorum_proposes_the_highest_ballot_value_and_aborted_where_none():
    parts = ("s0", "s1", "s2", "s3")
    leader = recovering(participants=parts)
    leader.handle(TimerFired(now=10.0, name=RECOVERY_TIMER))
    assert leader.ballot == B2
    a0 = {
        "s0": (BALLOT_ZERO, PREPARED),
        "s1": (B1, PREPARED),
        "s2": (B1, ABORTED),  # higher first ...
        "s3": (None, None),
    }
    a1 = {
        "s0": ([1, 0, 1], ABORTED),  # ... and higher second (as a list, the way msgpack delivers it)
        "s1": (None, None),
        "s2": (BALLOT_ZERO, PREPARED),
        "s3": (None, None),
    }
    assert leader.handle(one_b("a0", a0, B2)) == []
    assert leader.handle(one_b("a1", a1, B2)) == [
        Phase2a(ballot=B2, values={"s0": ABORTED, "s1": PREPARED, "s2": ABORTED, "s3": ABORTED})
    ]
    # A third promise after the quorum does not propose again.
    assert leader.handle(one_b("a2", {p: (None, None) for p in parts}, B2)) == []


def test_phase_2a_proposes_prepared_from_a_single_ballot_zero_acceptance():
    leader = recovering()
    assert leader.handle(one_b("a1", {"s0": (BALLOT_ZERO, PREPARED), "s1": (None, None)}, B1)) == []
    assert leader.handle(one_b("a2", {"s0": (None, None), "s1": (BALLOT_ZERO, PREPARED)}, B1)) == [
        Phase2a(ballot=B1, values={"s0": PREPARED, "s1": PREPARED})
    ]


def test_phase_2a_leaves_out_what_was_chosen_meanwhile():
    leader = recovering()
    leader.handle(two_b("a0", {"s0": PREPARED}))
    leader.handle(two_b("a1", {"s0": PREPARED}))
    assert leader.chosen == {"s0": PREPARED}
    leader.handle(one_b("a0", {"s0": (BALLOT_ZERO, PREPARED), "s1": (None, None)}, B1))
    assert leader.handle(one_b("a2", {"s0": (None, None), "s1": (BALLOT_ZERO, PREPARED)}, B1)) == [
        Phase2a(ballot=B1, values={"s1": PREPARED})
    ]


def test_phase_1b_at_an_old_ballot_is_no_promise_but_what_it_reports_counts():
    leader = recovering()
    leader.handle(TimerFired(now=10.0, name=RECOVERY_TIMER))
    assert leader.ballot == B2
    for a in ACCS3:
        assert leader.handle(one_b(a, {"s0": (BALLOT_ZERO, PREPARED), "s1": (None, None)}, B1)) == []
    assert leader.promises == {}
    assert leader.chosen == {"s0": PREPARED}  # a quorum accepted it at ballot 0: chosen, whoever asked
    assert leader.handle(one_b("a0", {}, B3)) == []  # a ballot we never used, too
    assert leader.handle(one_b("a1", {"s0": (None, None), "s1": (None, None)}, B2)) == []
    assert leader.handle(one_b("a2", {"s0": (None, None), "s1": (None, None)}, B2)) == [
        Phase2a(ballot=B2, values={"s1": ABORTED})
    ]


def test_a_refusal_from_a_later_term_supersedes_the_leader():
    """Issue 9.4: ballots of an old term can never win again; the old leader stops instead of retrying."""
    leader = recovering()
    nothing = {"s0": (None, None), "s1": (None, None)}
    later = (2, 1, 1)
    assert leader.handle(one_b("a0", nothing, B1, promised=False, promise=later)) == [
        Superseded(reason="acceptor a0 promised ballot [2, 1, 1] of a later term than ours [1, 0, 1]")
    ]
    assert leader.state == "done" and leader.outcome is None
    assert leader.handle(TimerFired(now=9.0, name=RECOVERY_TIMER)) == []  # no phase 1 again


def test_a_refusal_from_the_same_term_waits_for_the_next_ballot():
    leader = recovering()
    nothing = {"s0": (None, None), "s1": (None, None)}
    assert leader.handle(one_b("a0", nothing, B1, promised=False, promise=B3)) == []
    assert leader.state == "recovering"


def test_one_acceptor_reporting_a_no_vote_in_phase_1b_ends_the_recovery():
    """Issue 9.4: a decided outcome learned from any acceptor, promised or not, ends the recovery."""
    leader = recovering()
    accepted = {"s0": (BALLOT_ZERO, PREPARED), "s1": (BALLOT_ZERO, ABORTED)}
    assert leader.handle(one_b("a2", accepted, B1, promised=False, promise=(7, 2, 1), now=6.0)) == decision(
        ABORTED, 6.0, no_votes=("s1",))


def test_a_value_refused_phase_1bs_agree_on_is_chosen():
    """Another leader's phase 2 reached a quorum: the refusals report it, and it is the outcome."""
    leader = recovering()
    theirs = (1, 2, 1)
    accepted = {"s0": (theirs, PREPARED), "s1": (theirs, PREPARED)}
    assert leader.handle(one_b("a0", accepted, B1, promised=False, promise=theirs)) == []
    assert leader.handle(one_b("a1", accepted, B1, promised=False, promise=theirs, now=7.0)) == decision(
        COMMITTED, 7.0)


def test_not_promised_phase_1b_is_ignored():
    leader = recovering()
    nothing = {"s0": (None, None), "s1": (None, None)}
    assert leader.handle(one_b("a0", {"s0": ((5, 0, 1), PREPARED)}, B1, promised=False)) == []
    assert leader.handle(one_b("a1", nothing, B1, promised=False)) == []
    assert leader.handle(one_b("a2", nothing, B1)) == []
    assert leader.handle(one_b("a2", nothing, B1)) == []  # a duplicate does not count twice
    # a0 later promises (it learned nothing at B1): its refusal's contents were not used.
    assert leader.handle(one_b("a0", {"s0": (BALLOT_ZERO, PREPARED), "s1": (None, None)}, B1)) == [
        Phase2a(ballot=B1, values={"s0": PREPARED, "s1": ABORTED})
    ]


@pytest.mark.parametrize("value, outcome", [(PREPARED, COMMITTED), (ABORTED, ABORTED)])
def test_phase_2b_from_a_quorum_at_the_recovery_ballot_decides(value, outcome):
    leader = recovering()
    leader.handle(one_b("a0", {"s0": (BALLOT_ZERO, PREPARED), "s1": (BALLOT_ZERO, PREPARED)}, B1))
    leader.handle(one_b("a1", {"s0": (None, None), "s1": (None, None)}, B1))
    values = {"s0": PREPARED, "s1": value}
    assert leader.handle(two_b("a2", values, ballot=B1, now=7.0)) == []
    assert leader.handle(two_b("a0", values, ballot=B1, now=7.5)) == decision(outcome, 7.5)
    assert leader.state == "decided"
    assert leader.outcome == outcome


def test_an_acceptor_that_forgot_the_instances_stops_the_recovery_without_an_outcome():
    """"Nothing accepted" from an acceptor that forgot would make phase 2 propose "aborted" for what may
    have committed (docs/PROTOCOLS.md, "Forgetting"): the leader stops instead, deciding nothing."""
    leader = recovering()
    leader.handle(one_b("a1", {"s0": (None, None), "s1": (None, None)}, B1))
    forgotten = Phase1b(now=2.0, acceptor="a2", ballot=B1, promised=False, accepted={}, forgotten=True)
    assert leader.handle(forgotten) == [OutcomeForgotten(acceptor="a2")]
    assert leader.state == "done" and leader.outcome is None and not leader.participants_acked
    assert leader.handle(one_b("a0", {"s0": (None, None), "s1": (None, None)}, B1)) == []


def test_recover_from_idle_runs_phase_1_for_every_participant():
    leader = make()
    assert leader.handle(Recover(now=3.0)) == [
        Phase1a(ballot=B1, participants=PARTS),
        SetTimer(name=RECOVERY_TIMER, deadline=3.0 + VOTE_TIMEOUT),
    ]
    assert leader.state == "recovering"
    leader.handle(one_b("a1", {"s0": (None, None), "s1": (None, None)}, B1))
    assert leader.handle(one_b("a2", {"s0": (None, None), "s1": (BALLOT_ZERO, PREPARED)}, B1)) == [
        Phase2a(ballot=B1, values={"s0": ABORTED, "s1": PREPARED})
    ]


def test_late_ballot_zero_quorum_during_recovery_still_decides():
    leader = recovering()
    leader.handle(two_b("a0", all_prepared()))
    assert leader.handle(two_b("a2", all_prepared(), now=6.0)) == decision(COMMITTED, 6.0)


# -- Faster Paxos Commit ------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [COMMITTED, ABORTED])
def test_fast_normal_path_replies_and_finishes_without_sending_decisions(outcome):
    leader = started(fast=True)
    values = all_prepared() if outcome == COMMITTED else {"s0": ABORTED}
    effects = [] if outcome == ABORTED else leader.handle(two_b("a0", values))
    assert effects == []
    reply = Reply(outcome=outcome, no_votes=("s0",)) if outcome == ABORTED else Reply(outcome=outcome)
    assert leader.handle(two_b("a1", values, now=2.0)) == [reply, Finished(outcome=outcome)]
    assert leader.state == "done"
    assert leader.handle(Acked(now=3.0, participant="s0")) == []
    assert leader.handle(TimerFired(now=3.0, name=RESEND_TIMER)) == []


def test_fast_after_a_recovery_sends_decisions():
    leader = recovering(fast=True)
    leader.handle(one_b("a0", {"s0": (None, None), "s1": (None, None)}, B1))
    assert leader.handle(one_b("a1", {"s0": (None, None), "s1": (None, None)}, B1)) == [
        Phase2a(ballot=B1, values={"s0": ABORTED, "s1": ABORTED})
    ]
    leader.handle(two_b("a0", {"s0": ABORTED, "s1": ABORTED}, ballot=B1))
    assert leader.handle(two_b("a1", {"s0": ABORTED, "s1": ABORTED}, ballot=B1, now=8.0)) == decision(
        ABORTED, 8.0, reason="no vote from s0, s1 reached the acceptors in time")
    assert leader.handle(Acked(now=9.0, participant="s0")) == []
    assert leader.handle(Acked(now=9.0, participant="s1")) == [Finished(outcome=ABORTED)]


def test_fast_recovered_leader_sends_decisions_even_for_a_ballot_zero_quorum():
    leader = recovering(fast=True)
    leader.handle(two_b("a0", all_prepared()))
    assert leader.handle(two_b("a1", all_prepared(), now=6.0)) == decision(COMMITTED, 6.0)


# -- protocol errors ----------------------------------------------------------------------------

SAMPLE_EVENTS = {
    Start: Start(now=1.0),
    Recover: Recover(now=1.0),
    Phase2b: two_b("a0", {"s0": PREPARED}),
    Phase1b: one_b("a0", {}, B1),
    Acked: Acked(now=1.0, participant="s0"),
    TimerFired: TimerFired(now=1.0, name="whatever"),
}


def in_state(state: str) -> PaxosCommitLeader:
    if state == "idle":
        return make()
    if state == "collecting":
        return started()
    if state == "recovering":
        return recovering()
    leader = decided(COMMITTED)
    if state == "done":
        leader.handle(Acked(now=3.0, participant="s0"))
        leader.handle(Acked(now=3.0, participant="s1"))
    assert leader.state == state
    return leader


FORBIDDEN = [
    (state, kind) for state, allowed in TRANSITIONS.items() for kind in SAMPLE_EVENTS if kind not in allowed
]


def test_the_table_covers_every_state_and_forbids_something():
    assert set(TRANSITIONS) == {"idle", "collecting", "recovering", "decided", "done"}
    assert ("idle", Phase2b) in FORBIDDEN and ("idle", Acked) in FORBIDDEN
    # a late ack of an earlier leader's decision is a network fault, not a bug: ignored
    assert ("collecting", Acked) not in FORBIDDEN and ("recovering", Acked) not in FORBIDDEN
    assert ("decided", Start) in FORBIDDEN and ("recovering", Recover) in FORBIDDEN


@pytest.mark.parametrize("state, kind", FORBIDDEN, ids=[f"{s}-{k.__name__}" for s, k in FORBIDDEN])
def test_events_not_in_transitions_raise_protocol_error_naming_the_state(state, kind):
    leader = in_state(state)
    with pytest.raises(ProtocolError, match=f"state '{state}'"):
        leader.handle(SAMPLE_EVENTS[kind])
    assert leader.state == state


@pytest.mark.parametrize("state", ["collecting", "recovering"])
def test_2b_from_a_non_acceptor_raises(state):
    leader = in_state(state)
    with pytest.raises(ProtocolError, match="non-acceptor 'mallory'"):
        leader.handle(two_b("mallory", all_prepared()))


@pytest.mark.parametrize("state", ["collecting", "recovering"])
def test_2b_for_a_non_participant_raises(state):
    leader = in_state(state)
    with pytest.raises(ProtocolError, match="non-participant 's9'"):
        leader.handle(two_b("a0", {"s9": PREPARED}))


# -- property: the outcome matches what the acceptors chose ---------------------------------------


class World:
    """Three real acceptors, one instance per participant, and the messages in flight."""

    def __init__(self, participants, votes, voters) -> None:
        self.participants = participants
        self.votes = votes  # participant -> its ballot-0 value
        self.voters = voters  # participants that send their 2a at all
        self.accs = {a: AcceptorState() for a in ACCS3}
        self.zero: dict[str, dict[str, str]] = {a: {} for a in ACCS3}  # what each accepted at ballot 0
        self.bundle_sent: set[str] = set()
        self.history: list[tuple[str, str, tuple, str]] = []  # (acceptor, participant, ballot, value)
        self.to_acceptors: list[tuple] = []
        self.to_leader: list = []
        self.timers: dict[str, float] = {}
        self.replies: list[str] = []

    def effects(self, effects, now: float) -> None:
        for e in effects:
            match e:
                case SendPrepare(participant=p) if p in self.voters:
                    self.to_acceptors += [("2a0", a, p) for a in ACCS3]
                case Phase1a(ballot=b, participants=ps):
                    self.to_acceptors += [("1a", a, b, ps) for a in ACCS3]
                case Phase2a(ballot=b, values=vs):
                    self.to_acceptors += [("2a", a, b, dict(vs)) for a in ACCS3]
                case SetTimer(name=name, deadline=deadline):
                    self.timers[name] = deadline
                case Reply(outcome=outcome):
                    self.replies.append(outcome)
                case SendDecision(participant=p):
                    self.to_leader.append(Acked(now=now, participant=p))

    def deliver(self, message, now: float) -> list:
        """An acceptor handles a message; returns the events it sends to the leader."""
        kind, a, *rest = message
        acc = self.accs[a]
        if kind == "2a0":
            (p,) = rest
            value = self.votes[p]
            if not acc.accept(p, BALLOT_ZERO, value):
                return []
            self.history.append((a, p, BALLOT_ZERO, value))
            self.zero[a][p] = value
            if value == ABORTED:
                return [Phase2b(now=now, acceptor=a, ballot=BALLOT_ZERO, values={p: ABORTED})]
            if a not in self.bundle_sent and set(self.zero[a]) == set(self.participants):
                self.bundle_sent.add(a)
                return [Phase2b(now=now, acceptor=a, ballot=BALLOT_ZERO, values=dict(self.zero[a]))]
            return []
        if kind == "1a":
            ballot, parts = rest
            answers = {p: acc.promise(p, ballot) for p in parts}
            return [Phase1b(now=now, acceptor=a, ballot=ballot, promised=all(ok for ok, _, _ in answers.values()),
                            accepted={p: (b, v) for p, (_, b, v) in answers.items()})]
        assert kind == "2a"
        ballot, values = rest
        accepted = {}
        for p, v in values.items():
            if acc.accept(p, ballot, v):
                self.history.append((a, p, ballot, v))
                accepted[p] = v
        return [Phase2b(now=now, acceptor=a, ballot=ballot, values=accepted)] if accepted else []

    def chosen(self) -> dict[str, set[str]]:
        voters: dict[tuple, set[str]] = {}
        for a, p, b, v in self.history:
            voters.setdefault((p, b, v), set()).add(a)
        out: dict[str, set[str]] = {p: set() for p in self.participants}
        for (p, _b, v), who in voters.items():
            if len(who) >= 2:
                out[p].add(v)
        return out


def finish_with_a_new_leader(world: World, now: float) -> str:
    """A new leader at a later term recovers with every message delivered at once."""
    leader = make(participants=world.participants, ballots=((9, 1, n) for n in itertools.count(1)))
    replies: list[str] = []
    queue = list(leader.handle(Recover(now=now)))
    while queue and not replies:
        effect = queue.pop(0)
        if isinstance(effect, Reply):
            replies.append(effect.outcome)
        elif isinstance(effect, Phase1a):
            for a in ACCS3:
                for event in world.deliver(("1a", a, effect.ballot, effect.participants), now):
                    queue += leader.handle(event)
        elif isinstance(effect, Phase2a):
            for a in ACCS3:
                for event in world.deliver(("2a", a, effect.ballot, dict(effect.values)), now):
                    queue += leader.handle(event)
    assert replies, "a recovery with every acceptor answering must decide"
    return replies[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_outcome_is_commit_iff_every_participant_chose_prepared(data):
    participants = ("s0", "s1", "s2")[: data.draw(st.integers(1, 3), label="participants")]
    votes = {p: data.draw(st.sampled_from([PREPARED, PREPARED, PREPARED, ABORTED]), label=f"vote {p}")
             for p in participants}
    voters = {p for p in participants if data.draw(st.integers(0, 4), label=f"{p} sends 2a") > 0}
    world = World(participants, votes, voters)
    leader = make(participants=participants, fast=data.draw(st.booleans(), label="fast"),
                  ballots=((1, 0, n) for n in itertools.count(1)))
    now = 0.0
    world.effects(leader.handle(Start(now=now)), now)
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        now += 0.1
        actions = (
            [("acceptor", i) for i in range(len(world.to_acceptors))]
            + [("drop", i) for i in range(len(world.to_acceptors))]
            + [("leader", i) for i in range(len(world.to_leader))]
            + [("again", i) for i in range(len(world.to_leader))]  # duplicated delivery
            + [("timer", name) for name in sorted(world.timers)]
        )
        if not actions:
            break
        action, arg = data.draw(st.sampled_from(actions))
        if action == "acceptor":
            world.to_leader += world.deliver(world.to_acceptors.pop(arg), now)
        elif action == "drop":
            world.to_acceptors.pop(arg)
        elif action in ("leader", "again"):
            event = world.to_leader[arg] if action == "again" else world.to_leader.pop(arg)
            world.effects(leader.handle(event), now)
        else:
            now = max(now, world.timers.pop(arg))
            world.effects(leader.handle(TimerFired(now=now, name=arg)), now)

    assert len(world.replies) <= 1
    final = finish_with_a_new_leader(world, now + 100.0)
    chosen = world.chosen()
    for p, values in chosen.items():
        assert len(values) <= 1, f"{p}: chosen {values} (history {world.history})"
    everyone_prepared = all(chosen[p] == {PREPARED} for p in participants)
    assert final == (COMMITTED if everyone_prepared else ABORTED)
    if final == ABORTED:
        # Some instance chose "aborted", or an acceptor holds "aborted" at ballot 0 for it: only its
        # participant proposes there, so it voted no and "prepared" can never be chosen for it (the
        # leader may decide from that alone, without a quorum choosing "aborted").
        no_vote_seen = {p for _, p, b, v in world.history if b == BALLOT_ZERO and v == ABORTED}
        assert any(chosen[p] == {ABORTED} or p in no_vote_seen for p in participants), world.history
    if world.replies:
        assert world.replies[0] == (COMMITTED if everyone_prepared else ABORTED), world.history
    # Sanity of the model: "prepared" can be chosen only for a participant that voted so.
    for p in participants:
        if chosen[p] == {PREPARED}:
            assert votes[p] == PREPARED and p in voters
