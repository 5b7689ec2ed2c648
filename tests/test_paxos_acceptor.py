"""Paxos acceptors: the promise/accept rules, ballots, the durable log with group commit, restarts.

Covers ``consensus.paxos`` (pure state), ``consensus.acceptor_log`` (the
append-only file) and ``consensus.acceptor`` (the two glued together), and
ends with a property test of Paxos safety over random runs of several
acceptors driven by a tiny proposer that follows the phase-1 rule.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

import consensus.acceptor_log as acceptor_log_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.acceptor import Acceptor
from consensus.acceptor_log import AcceptorLog
from consensus.paxos import BALLOT_ZERO, NO_PROMISE, AcceptorState, InstanceState, ballot_of, unissued
from consensus.settings import Durability
from consensus.framed_file import parse_records
from consensus.wire import encode_frame

B1 = (1, 0, 1)
B2 = (1, 0, 2)
B3 = (2, 1, 1)

ballots = st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 5))
real_ballots = ballots.filter(lambda b: b != BALLOT_ZERO)


def records_in(path: Path) -> list:
    """The whole records of an acceptor log file (a record being written at the tail is skipped)."""
    return [r.value for r in parse_records(path, path.read_bytes(), acceptor_log_module.KIND)[0]]


# -- AcceptorState: promise ---------------------------------------------------------------


def test_first_promise_on_a_fresh_instance_is_granted_with_nothing_accepted():
    acc = AcceptorState()
    assert acc.promise("x", B1) == (True, None, None)
    assert acc.get("x") == InstanceState(B1, None, None)


@pytest.mark.parametrize("second", [B1, (1, 0, 0), (0, 9, 9)])
def test_promise_not_above_every_earlier_promise_is_refused_and_changes_nothing(second):
    acc = AcceptorState()
    acc.promise("x", B1)
    assert acc.promise("x", second) == (False, None, None)
    assert acc.get("x").promised == B1


def test_promise_above_the_earlier_one_is_granted_and_raises_the_promise():
    acc = AcceptorState()
    acc.promise("x", B1)
    assert acc.promise("x", B3) == (True, None, None)
    assert acc.get("x").promised == B3


def test_promise_returns_the_highest_accepted_value():
    acc = AcceptorState()
    assert acc.accept("x", BALLOT_ZERO, "prepared")
    assert acc.promise("x", B1) == (True, BALLOT_ZERO, "prepared")
    assert acc.accept("x", B1, "aborted")
    assert acc.promise("x", B2) == (True, B1, "aborted")
    # A refused promise still tells what was accepted (and at which ballot).
    assert acc.promise("x", B1) == (False, B1, "aborted")


def test_instances_are_independent():
    acc = AcceptorState()
    acc.promise("x", B3)
    assert acc.promise("y", B1) == (True, None, None)
    assert acc.accept("y", B1, "v")
    assert not acc.accept("x", B1, "v")
    assert acc.record("x") == (B3, None, None)
    assert acc.record("y") == (B1, B1, "v")


# -- AcceptorState: accept ----------------------------------------------------------------


def test_never_accept_below_the_promise():
    acc = AcceptorState()
    acc.promise("x", B2)
    assert acc.accept("x", B1, "v") is False
    assert acc.accept("x", BALLOT_ZERO, "v") is False
    assert acc.get("x") == InstanceState(B2, None, None)


def test_accept_at_or_above_the_promise_accepts_and_raises_the_promise():
    acc = AcceptorState()
    acc.promise("x", B1)
    assert acc.accept("x", B1, "a") is True
    assert acc.get("x") == InstanceState(B1, B1, "a")
    assert acc.accept("x", B3, "b") is True
    assert acc.get("x") == InstanceState(B3, B3, "b")
    # The acceptance at B3 is also a promise: B2 (between) is now refused both ways.
    assert acc.accept("x", B2, "c") is False
    assert acc.promise("x", B2)[0] is False


def test_one_value_per_ballot():
    acc = AcceptorState()
    assert acc.accept("x", BALLOT_ZERO, "prepared")
    assert acc.accept("x", BALLOT_ZERO, "aborted") is False
    assert acc.get("x").accepted_value == "prepared"
    assert acc.accept("x", BALLOT_ZERO, "prepared") is True  # a duplicate of the same 2a is fine


def test_record_and_restore_round_trip():
    acc = AcceptorState()
    acc.promise("x", B1)
    acc.accept("x", B2, "v")
    other = AcceptorState()
    other.restore("x", *acc.record("x"))
    assert other.get("x") == acc.get("x")
    assert AcceptorState().record("never") == (NO_PROMISE, None, None)


# -- ballots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [[1, 2, 3], (1, 2, 3), [0, 0, 0]])
def test_ballot_of_accepts_lists_and_tuples_of_three_naturals(raw):
    b = ballot_of(raw)
    assert b == tuple(raw)
    assert type(b) is tuple


@pytest.mark.parametrize(
    "raw",
    [
        None, 5, "1,2,3", [1, 2], [1, 2, 3, 4], [], [1, -1, 2], [-1, -1, -1], [1.0, 2, 3],
        [True, 0, 0], [0, False, 0], ["1", 2, 3], [None, 2, 3], [[1], 2, 3], {1: 1, 2: 2, 3: 3},
    ],
)
def test_ballot_of_rejects_malformed_ballots(raw):
    with pytest.raises(ValueError, match="malformed ballot"):
        ballot_of(raw)


@given(b=real_ballots)
def test_ballot_zero_is_below_every_other_ballot_and_no_promise_below_it(b):
    assert NO_PROMISE < BALLOT_ZERO < b
    assert ballot_of(list(b)) > BALLOT_ZERO


@given(b=real_ballots)
def test_ballot_zero_is_refused_once_any_real_ballot_is_promised(b):
    acc = AcceptorState()
    assert acc.accept("fresh", BALLOT_ZERO, "prepared")  # nothing promised: ballot 0 goes through
    acc.promise("x", b)
    assert acc.accept("x", BALLOT_ZERO, "prepared") is False


@given(a=ballots, b=ballots)
def test_ballot_order_is_lexicographic_term_rank_counter(a, b):
    assert (ballot_of(list(a)) < ballot_of(list(b))) == ([*a] < [*b])


# -- AcceptorLog ----------------------------------------------------------------------------


async def test_log_persist_then_load_in_a_new_instance(tmp_path):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    assert log.load() == []
    await log.persist([(["t", "s0"], [1, 0, 1], None, None), (["t", "s1"], [1, 0, 1], [1, 0, 1], "aborted")])
    await log.persist([(["t", "s0"], [2, 0, 1], [2, 0, 1], "prepared")])
    assert log.forced_writes == 2
    log.close()
    again = AcceptorLog(path, Durability.OS)
    assert again.load() == [
        (["t", "s0"], [1, 0, 1], None, None),
        (["t", "s1"], [1, 0, 1], [1, 0, 1], "aborted"),
        (["t", "s0"], [2, 0, 1], [2, 0, 1], "prepared"),
    ]
    again.close()


async def test_log_last_record_per_instance_wins_on_restore(tmp_path):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    await log.persist([(["t", "s0"], list(B1), None, None)])
    await log.persist([(["t", "s0"], list(B1), list(B1), "aborted"), (["t", "s1"], list(B1), None, None)])
    await log.persist([(["t", "s0"], list(B3), list(B3), "prepared")])
    log.close()
    acc = Acceptor("a0", path, Durability.OS)
    assert acc.state.get(("t", "s0")) == InstanceState(B3, B3, "prepared")
    assert acc.state.get(("t", "s1")) == InstanceState(B1, None, None)
    assert set(acc.state.instances) == {("t", "s0"), ("t", "s1")}
    acc.log.close()


def _torn(kind: str) -> bytes:
    if kind == "half a frame":
        return encode_frame([["t", "s9"], [9, 9, 9], [9, 9, 9], "prepared"], 1 << 20)[:-5]
    if kind == "half a length":
        return b"\x00\x00"
    if kind == "garbage payload":
        return b"\x00\x00\x00\x01\xc1"
    assert kind == "absurd length"
    return b"\xff\xff\xff\xff" + b"x" * 10


@pytest.mark.parametrize("kind", ["half a frame", "half a length", "garbage payload", "absurd length"])
async def test_log_torn_tail_is_cut_on_load_and_appending_afterwards_works(tmp_path, kind):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    good = [(["t", "s0"], [1, 0, 1], [1, 0, 1], "prepared"), (["t", "s1"], [1, 0, 1], None, None)]
    await log.persist(good)
    log.close()
    good_size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(_torn(kind))

    log = AcceptorLog(path, Durability.OS)
    assert log.load() == good
    assert path.stat().st_size == good_size
    more = (["t", "s2"], [2, 0, 1], [2, 0, 1], "aborted")
    await log.persist([more])
    log.close()

    log = AcceptorLog(path, Durability.OS)
    assert log.load() == [*good, more]
    log.close()
    acc = Acceptor("a0", path, Durability.OS)
    assert acc.state.get(("t", "s2")) == InstanceState((2, 0, 1), (2, 0, 1), "aborted")
    acc.log.close()


async def test_log_group_commit_shares_forced_writes_and_returns_only_after_the_write(tmp_path):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    log.load()
    missing: list[int] = []
    returned: list[int] = []

    async def one(i: int) -> None:
        record = [["t", f"s{i}"], [1, 0, i], [1, 0, i], "prepared"]
        await log.persist([tuple(record)])
        if record not in records_in(path):
            missing.append(i)
        returned.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
    assert sorted(returned) == list(range(50))
    assert missing == []
    assert 1 <= log.forced_writes <= 5
    assert len(records_in(path)) == 50
    log.close()


async def test_log_caller_arriving_during_a_write_waits_for_the_next_batch(tmp_path, monkeypatch):
    """Deterministic group commit: the first write is held until two more callers have queued."""
    path = tmp_path / "acc.log"
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    log = AcceptorLog(path, Durability.FSYNC)  # the thread path: os mode writes inline, too fast to batch
    entered, release = threading.Event(), threading.Event()
    real_write = log._write
    writes: list[bytes] = []

    def gated(data: bytes) -> None:
        writes.append(data)
        if len(writes) == 1:
            entered.set()
            release.wait(5)
        real_write(data)

    log._write = gated  # type: ignore[method-assign]
    done: list[str] = []

    async def call(name: str) -> None:
        await log.persist([([name], [1, 0, 1], None, None)])
        assert [[name], [1, 0, 1], None, None] in records_in(path)
        done.append(name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a")
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(call, "b")
            nursery.start_soon(call, "c")
            await trio.sleep(0.05)
            assert done == []  # nobody returns while the first write is held
            release.set()
    assert sorted(done) == ["a", "b", "c"]
    assert log.forced_writes == 2  # a alone, then b and c together
    assert len(writes) == 2
    log.close()


async def test_log_write_error_reaches_every_caller_of_the_batch(tmp_path):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    entered, release = threading.Event(), threading.Event()
    calls = []

    def failing(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 1:
            entered.set()
            release.wait(5)
            return
        raise OSError(28, "No space left on device")

    log._write = failing  # type: ignore[method-assign]
    errors: dict[str, BaseException | None] = {}

    async def call(name: str) -> None:
        try:
            await log.persist([([name], [1, 0, 1], None, None)])
            errors[name] = None
        except OSError as exc:
            errors[name] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a")
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(call, "b")
            nursery.start_soon(call, "c")
            await trio.sleep(0.05)
            release.set()
    assert errors["a"] is None
    assert isinstance(errors["b"], OSError) and isinstance(errors["c"], OSError)
    assert log.forced_writes == 1  # the failed batch is not counted
    log.close()


async def test_log_unwritable_record_in_a_joined_batch_does_not_hang_the_batch(tmp_path, monkeypatch):
    path = tmp_path / "acc.log"
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    log = AcceptorLog(path, Durability.FSYNC)  # the thread path: os mode writes inline, too fast to batch
    entered, release = threading.Event(), threading.Event()
    real_write = log._write

    def gated(data: bytes) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(5)
        real_write(data)

    log._write = gated  # type: ignore[method-assign]
    results: dict[str, object] = {}

    async def call(name: str, value: object) -> None:
        try:
            await log.persist([([name], [1, 0, 1], [1, 0, 1], value)])
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any error is an answer; hanging is not
            results[name] = exc

    try:
        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "a", "prepared")
                await trio.to_thread.run_sync(entered.wait)
                nursery.start_soon(call, "b", object())  # msgpack cannot pack it
                nursery.start_soon(call, "c", "prepared")
                await trio.sleep(0.05)
                release.set()
    finally:
        release.set()
        log.close()
    assert results["a"] == "ok"  # a's own records were written
    assert isinstance(results["b"], Exception)
    assert "c" in results


async def test_log_write_is_shielded_from_cancellation(tmp_path):
    path = tmp_path / "acc.log"
    log = AcceptorLog(path, Durability.OS)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            await log.persist([(["t", "s0"], [1, 0, 1], None, None)])
    assert records_in(path) == [[["t", "s0"], [1, 0, 1], None, None]]
    assert log.forced_writes == 1
    log.close()


@pytest.mark.parametrize("durability, syncs", [(Durability.FSYNC, True), (Durability.OS, False)])
async def test_log_fsync_only_in_fsync_durability(tmp_path, monkeypatch, durability, syncs):
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    log = AcceptorLog(tmp_path / "acc.log", durability)
    await log.persist([(["t", "s0"], [1, 0, 1], None, None)])
    await log.persist([(["t", "s1"], [1, 0, 1], None, None)])
    if syncs:
        assert synced == [log._file.fileno()] * 2
    else:
        assert synced == []
    log.close()


# -- Acceptor ---------------------------------------------------------------------------------


def log_records(path: Path) -> list:
    return [tuple(r) for r in records_in(path)]


async def test_accept_now_then_persist_writes_only_the_dirty_instances(tmp_path):
    path = tmp_path / "acc.log"
    acc = Acceptor("a0", path, Durability.OS)
    i0, i1, i2, i3 = ("t", "s0"), ("t", "s1"), ("t", "s2"), ("t", "s3")
    assert acc.accept_now(i0, BALLOT_ZERO, "prepared")
    assert acc.accept_now(i1, BALLOT_ZERO, "aborted")
    assert acc.accept_now(i2, BALLOT_ZERO, "prepared")
    # i3 is not dirty: never touched
    assert await acc.persist([i0, i1, i3]) == 2
    assert log_records(path) == [
        (["t", "s0"], [0, 0, 0], [0, 0, 0], "prepared"),
        (["t", "s1"], [0, 0, 0], [0, 0, 0], "aborted"),
    ]
    assert acc.log.forced_writes == 1
    # Written ones are clean now; i2 is still dirty.
    assert await acc.persist([i0, i1]) == 0
    assert await acc.persist([i0, i1, i2]) == 1
    assert log_records(path)[-1] == (["t", "s2"], [0, 0, 0], [0, 0, 0], "prepared")
    assert acc.log.forced_writes == 2
    assert await acc.persist([]) == 0
    assert acc.log.forced_writes == 2  # nothing to write, no forced write


async def test_refused_accept_now_is_not_dirty(tmp_path):
    path = tmp_path / "acc.log"
    acc = Acceptor("a0", path, Durability.OS)
    i0 = ("t", "s0")
    await acc.promise(B2, [i0])
    before = log_records(path)
    assert acc.accept_now(i0, B1, "prepared") is False
    assert await acc.persist([i0]) == 0
    assert log_records(path) == before


async def test_promise_is_durable_before_it_returns(tmp_path):
    path = tmp_path / "acc.log"
    acc = Acceptor("a0", path, Durability.OS)
    i0, i1 = ("t", "s0"), ("t", "s1")
    assert acc.accept_now(i0, BALLOT_ZERO, "prepared")  # accepted but not persisted yet
    promised, accepted, promise = await acc.promise(B1, [i0, i1])
    assert promised is True and promise == B1
    assert accepted == {i0: (BALLOT_ZERO, "prepared"), i1: (None, None)}
    other = Acceptor("a0", path, Durability.OS)  # the same file, opened afresh: a restart
    assert other.state.instances == acc.state.instances
    assert other.state.get(i0) == InstanceState(B1, BALLOT_ZERO, "prepared")
    assert other.state.get(i1) == InstanceState(B1, None, None)


async def test_promise_refused_for_one_instance_is_refused_overall(tmp_path):
    acc = Acceptor("a0", tmp_path / "acc.log", Durability.OS)
    i0, i1 = ("t", "s0"), ("t", "s1")
    await acc.promise(B2, [i0])
    promised, accepted, promise = await acc.promise(B1, [i0, i1])
    assert promised is False
    assert promise == B2  # what it holds instead: tells a leader it was outbid, and by whom
    assert accepted == {i0: (None, None), i1: (None, None)}
    assert acc.state.get(i0).promised == B2


async def test_accept_is_durable_before_it_returns(tmp_path):
    path = tmp_path / "acc.log"
    acc = Acceptor("a0", path, Durability.OS)
    i0, i1, i2 = ("t", "s0"), ("t", "s1"), ("t", "s2")
    await acc.promise(B2, [i1])
    accepted = await acc.accept(B1, {i0: "prepared", i1: "prepared", i2: "aborted"})
    assert accepted == {i0: "prepared", i2: "aborted"}  # i1 promised B2 > B1
    other = Acceptor("a0", path, Durability.OS)
    assert other.state.instances == acc.state.instances
    assert other.state.get(i0) == InstanceState(B1, B1, "prepared")
    assert other.state.get(i2) == InstanceState(B1, B1, "aborted")
    assert other.state.get(i1) == InstanceState(B2, None, None)


async def test_restart_keeps_promises_so_a_lower_ballot_is_refused(tmp_path):
    path = tmp_path / "acc.log"
    acc = Acceptor("a0", path, Durability.FSYNC)
    inst = ("t", "s0")
    assert (await acc.promise(B3, [inst]))[0] is True
    acc.log.close()

    restarted = Acceptor("a0", path, Durability.FSYNC)
    assert (await restarted.promise(B2, [inst]))[0] is False
    assert await restarted.accept(B2, {inst: "prepared"}) == {}
    assert restarted.accept_now(inst, BALLOT_ZERO, "prepared") is False
    assert (await restarted.promise(B3, [inst]))[0] is False  # equal is not above
    assert await restarted.accept(B3, {inst: "aborted"}) == {inst: "aborted"}
    restarted.log.close()

    again = Acceptor("a0", path, Durability.FSYNC)
    assert again.state.get(inst) == InstanceState(B3, B3, "aborted")
    assert (await again.promise((3, 0, 1), [inst])) == (True, {inst: (B3, "aborted")}, (3, 0, 1))
    again.log.close()


# -- Paxos safety under random runs ----------------------------------------------------------

INSTANCES = ("x", "y")


class Proposer:
    """Runs phase 1 over a majority, then phase 2 with the highest accepted value (or its own)."""

    def __init__(self, ballot, value, owner: bool = False) -> None:
        self.ballot = ballot
        self.value = value
        self.owner = owner  # the ballot-0 owner may skip phase 1, as Paxos Commit's participants do
        self.proposal: dict[str, object] = {}  # instance -> value it may propose (after phase 1)
        self.tried: set[str] = set()

    def phase1(self, accs, inst, subset, majority) -> None:
        if self.owner or inst in self.tried:
            return
        self.tried.add(inst)
        answers = [accs[a].promise(inst, self.ballot) for a in subset]
        granted = [(b, v) for ok, b, v in answers if ok]
        if len(granted) < majority:
            return
        accepted = [(b, v) for b, v in granted if b is not None]
        self.proposal[inst] = max(accepted, key=lambda bv: bv[0])[1] if accepted else self.value

    def phase2(self, accs, inst, subset, history) -> None:
        value = self.value if self.owner else self.proposal.get(inst)
        if value is None:
            return
        for a in subset:
            if accs[a].accept(inst, self.ballot, value):
                history.append((inst, a, self.ballot, value))


def check_safety(history, n_acceptors: int) -> None:
    majority = n_acceptors // 2 + 1
    for inst in INSTANCES:
        voters: dict[tuple, set[int]] = {}
        for i, a, b, v in history:
            if i == inst:
                voters.setdefault((b, v), set()).add(a)
        by_ballot: dict[tuple, set] = {}
        for b, v in voters:
            by_ballot.setdefault(b, set()).add(v)
        assert all(len(vs) == 1 for vs in by_ballot.values()), f"two values at one ballot: {by_ballot}"
        chosen = [(b, v) for (b, v), who in voters.items() if len(who) >= majority]
        for b, v in chosen:
            for i, _a, b2, v2 in history:
                if i == inst and b2 > b:
                    assert v2 == v, f"{inst}: {v!r} chosen at {b}, but {v2!r} accepted at {b2}"
        assert len({v for _b, v in chosen}) <= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_paxos_safety_with_proposers_following_phase_1(data):
    n = data.draw(st.sampled_from([3, 5]), label="acceptors")
    majority = n // 2 + 1
    accs = [AcceptorState() for _ in range(n)]
    ballots_ = data.draw(st.lists(real_ballots, min_size=1, max_size=5, unique=True), label="ballots")
    proposers = [Proposer(BALLOT_ZERO, "v-owner", owner=True)] + [
        Proposer(b, f"v{k}") for k, b in enumerate(ballots_)
    ]
    history: list = []

    def subset(at_least: int) -> list[int]:
        order = data.draw(st.permutations(range(n)))
        return order[: data.draw(st.integers(at_least, n))]

    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        p = proposers[data.draw(st.integers(0, len(proposers) - 1))]
        inst = data.draw(st.sampled_from(INSTANCES))
        if data.draw(st.booleans()):
            p.phase1(accs, inst, subset(majority), majority)
        else:
            p.phase2(accs, inst, subset(0), history)
        check_safety(history, n)
    for acc in accs:
        for state in acc.instances.values():
            assert state.accepted_ballot is None or state.accepted_ballot <= state.promised


# -- ballots a leader can have made (consensus.paxos.unissued) -----------------------------------------


@pytest.mark.parametrize(("ballot", "why"), [
    ((0, 0, 0), "belongs to the participants"),
    ((0, 1, 7), "not of a term"),  # no leader ever has term 0
    ((6, 0, 1), "not of a term"),  # a later term than the current one: it would outrank every real leader
    ((2**64 - 1, 0, 0), "not of a term"),
    ((4, 3, 1), "there are 3 acceptors"),
    ((5, 2, 1), "whose leader has rank 1"),  # the current term belongs to its one leader
])
def test_a_ballot_no_leader_can_have_made_yet_is_named_with_why(ballot, why):
    assert why in (unissued(ballot, term=5, leader_rank=1, ranks=3) or "")


@pytest.mark.parametrize("ballot", [(5, 1, 1), (5, 1, 2**63 - 1), (4, 0, 9), (1, 2, 1)])
def test_a_ballot_of_the_current_leader_or_of_an_earlier_term_is_issuable(ballot):
    assert unissued(ballot, term=5, leader_rank=1, ranks=3) is None


def test_no_ballot_of_the_current_term_is_issuable_while_its_leader_is_unknown():
    assert unissued((5, 1, 1), term=5, leader_rank=None, ranks=3) is not None
    assert unissued((4, 1, 1), term=5, leader_rank=None, ranks=3) is None
