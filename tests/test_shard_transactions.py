"""The participant side of atomic commit in ``commit.shard.ShardState``.

Commands are fed through ``ShardState.apply`` exactly as the replicated log
would feed them: ``("prepare", txid, reads, writes)``, ``("commit", txid)``,
``("abort", txid)``, ``("refuse", txid)``, ``("commit_one", txid, reads, writes)``,
plus ``put``/``delete`` on locked keys.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit.errors import Conflict
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PREPARED, UNKNOWN
from commit.node.state_machines.shard import ABSENT, Cell, Lock, Prepared, ShardState
from consensus.errors import InternalError, InvalidRequest

T1 = "raft-2pc:" + "1" * 32
T2 = "raft-2pc:" + "2" * 32
T3 = "raft-2pc:" + "3" * 32


def prepare(shard: ShardState, txid: str, reads=(), writes=()):
    return shard.apply(("prepare", txid, tuple(reads), tuple(writes)))


def is_no(vote) -> bool:
    """A NO vote, or the answer for a transaction already aborted here (not a new vote, but no)."""
    fresh_no = isinstance(vote, tuple) and len(vote) == 2 and vote[0] == "no" and isinstance(vote[1], str)
    return fresh_no or vote == ("decided", "aborted")


def snapshot(shard: ShardState):
    return (
        dict(shard.cells),
        shard.write_counter,
        {k: (v.exclusive, tuple(v.shared)) for k, v in shard.locks.items()},
        dict(shard.prepared),
        list(shard.decided.items()),
        dict(shard.outcomes),
    )


# -- read validation ---------------------------------------------------------------


def test_prepare_with_current_read_versions_votes_yes_and_locks():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v), (b"missing", 0)], writes=[(b"b", b"2")]) == "yes"
    assert shard.state_of(T1) == PREPARED
    assert shard.prepared[T1] == Prepared(((b"a", v), (b"missing", 0)), ((b"b", b"2"),))
    assert shard.locks[b"a"] == Lock(exclusive=None, shared={T1: None})
    assert shard.locks[b"missing"] == Lock(exclusive=None, shared={T1: None})
    assert shard.locks[b"b"] == Lock(exclusive=T1, shared={})
    # Nothing is written at prepare.
    assert shard.read(b"b") == ABSENT
    assert shard.write_counter == v


def test_prepare_with_stale_read_version_votes_no():
    shard = ShardState()
    v1 = shard.apply(("put", b"a", b"1"))
    shard.apply(("put", b"a", b"2"))
    vote = prepare(shard, T1, reads=[(b"a", v1)], writes=[(b"b", b"x")])
    assert is_no(vote)
    assert "stale" in vote[1]
    assert shard.locks == {}
    assert shard.prepared == {}
    assert shard.state_of(T1) == ABORTED


def test_prepare_of_absent_key_read_at_version_zero_is_stale_once_created():
    shard = ShardState()
    shard.apply(("put", b"a", b"1"))
    assert is_no(prepare(shard, T1, reads=[(b"a", 0)]))


def test_tombstones_keep_versions_growing_so_delete_and_recreate_is_detected():
    shard = ShardState()
    shard.apply(("put", b"k", b"v1"))
    deleted_at = shard.apply(("delete", b"k"))
    assert shard.read(b"k") == Cell(None, deleted_at)
    # A reader saw "absent at version deleted_at"; the key is then re-created and deleted again.
    recreated_at = shard.apply(("put", b"k", b"v2"))
    deleted_again_at = shard.apply(("delete", b"k"))
    assert deleted_at < recreated_at < deleted_again_at
    assert shard.read(b"k").value is None  # absent again, like when the reader looked
    vote = prepare(shard, T1, reads=[(b"k", deleted_at)], writes=[(b"k", b"mine")])
    assert is_no(vote) and "stale" in vote[1]
    # With the current tombstone version, it prepares.
    assert prepare(shard, T2, reads=[(b"k", deleted_again_at)], writes=[(b"k", b"mine")]) == "yes"


# -- lock compatibility ------------------------------------------------------------


def test_readers_share_a_key():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)]) == "yes"
    assert prepare(shard, T2, reads=[(b"a", v)]) == "yes"
    assert shard.locks[b"a"].exclusive is None
    assert list(shard.locks[b"a"].shared) == [T1, T2]


def test_writer_conflicts_with_another_txns_shared_lock():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)]) == "yes"
    vote = prepare(shard, T2, writes=[(b"a", b"2")])
    assert is_no(vote) and T1 in vote[1]
    assert shard.locks[b"a"] == Lock(exclusive=None, shared={T1: None})


def test_writer_conflicts_with_another_txns_exclusive_lock():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    vote = prepare(shard, T2, writes=[(b"a", b"2")])
    assert is_no(vote) and T1 in vote[1]
    assert shard.writer_of(b"a") == T1


def test_reader_conflicts_with_another_txns_exclusive_lock():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, writes=[(b"a", b"2")]) == "yes"
    vote = prepare(shard, T2, reads=[(b"a", v)])
    assert is_no(vote) and T1 in vote[1]
    assert T2 not in shard.locks[b"a"].shared


def test_txn_reading_and_writing_a_key_takes_only_the_exclusive_lock():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"a", b"2")]) == "yes"
    assert shard.locks[b"a"] == Lock(exclusive=T1, shared={})


def test_a_conflicting_prepare_takes_no_locks_at_all():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"b", b"1")]) == "yes"
    # T2's first keys are free, its last one conflicts: no partial locking.
    assert is_no(prepare(shard, T2, reads=[(b"x", 0)], writes=[(b"y", b"1"), (b"b", b"2")]))
    assert set(shard.locks) == {b"b"}


def test_put_and_delete_on_locked_keys_raise_conflict_naming_the_holder():
    shard = ShardState()
    v = shard.apply(("put", b"r", b"1"))
    assert prepare(shard, T1, reads=[(b"r", v)], writes=[(b"w", b"1")]) == "yes"
    before = snapshot(shard)
    for command in [("put", b"w", b"x"), ("delete", b"w"), ("put", b"r", b"x"), ("delete", b"r")]:
        with pytest.raises(Conflict) as info:
            shard.apply(command)
        assert info.value.detail["txid"] == T1
        assert info.value.maybe_applied is False
        assert info.value.retryable
    assert snapshot(shard) == before
    # Unlocked keys are still writable.
    assert shard.apply(("put", b"free", b"x")) == v + 1


# -- votes -------------------------------------------------------------------------


def test_no_vote_is_final_and_a_later_prepare_votes_no_again():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    assert is_no(prepare(shard, T2, writes=[(b"a", b"2")]))
    assert shard.decided[T2] == ABORTED
    assert shard.outcomes == {COMMITTED: 0, ABORTED: 1}
    shard.apply(("abort", T1))
    assert shard.locks == {}
    # The key is free now, but T2 already voted no here: it stays no.
    vote = prepare(shard, T2, writes=[(b"a", b"2")])
    assert vote == ("decided", "aborted")
    assert shard.locks == {}
    assert T2 not in shard.prepared


def test_prepare_is_idempotent():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"b", b"2")]) == "yes"
    before = snapshot(shard)
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"b", b"2")]) == "yes"
    assert snapshot(shard) == before
    # A redelivered PREPARE after commit is not a new vote: it says so, and changes nothing.
    shard.apply(("commit", T1))
    before = snapshot(shard)
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"b", b"2")]) == ("decided", "committed")
    assert snapshot(shard) == before


# -- commit / abort ----------------------------------------------------------------


def test_commit_applies_writes_with_fresh_versions_and_releases_every_lock():
    shard = ShardState()
    va = shard.apply(("put", b"a", b"1"))
    vd = shard.apply(("put", b"d", b"old"))
    assert prepare(
        shard, T1, reads=[(b"a", va), (b"d", vd)], writes=[(b"b", b"2"), (b"d", None), (b"c", b"3")]
    ) == "yes"
    shard.apply(("put", b"unrelated", b"x"))  # counter moves on while T1 is prepared
    counter = shard.write_counter
    assert shard.apply(("commit", T1)) == COMMITTED
    assert shard.read(b"b") == Cell(b"2", counter + 1)
    assert shard.read(b"d") == Cell(None, counter + 2)
    assert shard.read(b"c") == Cell(b"3", counter + 3)
    assert shard.read(b"a") == Cell(b"1", va)  # read-only key untouched
    assert shard.write_counter == counter + 3
    assert shard.locks == {}
    assert shard.prepared == {}
    assert shard.state_of(T1) == COMMITTED
    assert shard.outcomes == {COMMITTED: 1, ABORTED: 0}
    # Keys are free for others again.
    assert shard.apply(("put", b"a", b"new")) == counter + 4


def test_commit_is_idempotent():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    assert shard.apply(("commit", T1)) == COMMITTED
    before = snapshot(shard)
    assert shard.apply(("commit", T1)) == COMMITTED
    assert snapshot(shard) == before


def test_commit_releases_only_its_own_share_of_a_shared_lock():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"x", b"1")]) == "yes"
    assert prepare(shard, T2, reads=[(b"a", v)], writes=[(b"y", b"1")]) == "yes"
    shard.apply(("commit", T1))
    assert shard.locks == {b"a": Lock(exclusive=None, shared={T2: None}), b"y": Lock(exclusive=T2)}


def test_abort_releases_every_lock_and_writes_nothing():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    cells = dict(shard.cells)
    assert prepare(shard, T1, reads=[(b"a", v)], writes=[(b"b", b"2"), (b"a", b"3")]) == "yes"
    assert shard.apply(("abort", T1)) == ABORTED
    assert shard.cells == cells
    assert shard.write_counter == v
    assert shard.locks == {}
    assert shard.prepared == {}
    assert shard.state_of(T1) == ABORTED
    assert shard.outcomes == {COMMITTED: 0, ABORTED: 1}
    # Idempotent, and counted once.
    assert shard.apply(("abort", T1)) == ABORTED
    assert shard.outcomes == {COMMITTED: 0, ABORTED: 1}


def test_abort_of_unknown_txid_records_it_aborted():
    shard = ShardState()
    assert shard.apply(("abort", T1)) == ABORTED
    assert shard.state_of(T1) == ABORTED
    assert is_no(prepare(shard, T1, writes=[(b"a", b"1")]))
    assert shard.locks == {}


def test_commit_of_aborted_txid_raises_internal_error_without_side_effects():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    shard.apply(("abort", T1))
    before = snapshot(shard)
    with pytest.raises(InternalError) as info:
        shard.apply(("commit", T1))
    assert info.value.maybe_applied is False
    assert "aborted" in info.value.message
    assert snapshot(shard) == before
    assert shard.read(b"a") == ABSENT


def test_commit_of_a_txid_never_prepared_applies_nothing_and_fences_it_so_a_later_prepare_votes_no():
    """A commit for a txid this shard never prepared answers ``unknown`` (the handler's ``not_prepared``),
    which ends its coordinator's resending: before, it raised InternalError, which was resent for ever."""
    shard = ShardState()
    assert shard.apply(("commit", T1)) == UNKNOWN
    assert shard.state_of(T1) == ABORTED and shard.cells == {} and shard.write_counter == 0
    assert is_no(prepare(shard, T1, writes=[(b"a", b"1")]))
    assert shard.locks == {} and shard.prepared == {}
    with pytest.raises(InternalError, match="aborted"):  # now it is known here: aborted, never committed
        shard.apply(("commit", T1))


def test_abort_of_committed_txid_raises_internal_error_without_side_effects():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    shard.apply(("commit", T1))
    before = snapshot(shard)
    with pytest.raises(InternalError) as info:
        shard.apply(("abort", T1))
    assert info.value.maybe_applied is False
    assert snapshot(shard) == before
    assert shard.read(b"a").value == b"1"


# -- refuse ------------------------------------------------------------------------


def test_refuse_fences_unknown_txid_as_aborted_so_a_later_prepare_votes_no():
    shard = ShardState()
    assert shard.apply(("refuse", T1)) == ABORTED
    assert shard.decided[T1] == ABORTED
    assert shard.outcomes[ABORTED] == 1
    vote = prepare(shard, T1, writes=[(b"a", b"1")])
    assert is_no(vote)
    assert shard.locks == {}
    assert shard.prepared == {}
    # Asking again does not count it twice.
    assert shard.apply(("refuse", T1)) == ABORTED
    assert shard.outcomes[ABORTED] == 1


def test_refuse_reports_known_states_without_changing_them():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    before = snapshot(shard)
    assert shard.apply(("refuse", T1)) == PREPARED
    assert snapshot(shard) == before  # a prepared txn is not fenced
    shard.apply(("commit", T1))
    before = snapshot(shard)
    assert shard.apply(("refuse", T1)) == COMMITTED
    assert snapshot(shard) == before


# -- one-phase commit --------------------------------------------------------------


def test_commit_one_validates_and_applies():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    txid = "1pc:shard-0:" + "a" * 32
    assert shard.apply(("commit_one", txid, ((b"a", v),), ((b"a", b"2"), (b"b", None)))) == COMMITTED
    assert shard.read(b"a") == Cell(b"2", v + 1)
    assert shard.read(b"b") == Cell(None, v + 2)
    assert shard.locks == {}
    assert shard.state_of(txid) == COMMITTED
    assert shard.outcomes == {COMMITTED: 1, ABORTED: 0}
    # Redelivered: idempotent.
    before = snapshot(shard)
    assert shard.apply(("commit_one", txid, ((b"a", v),), ((b"a", b"2"),))) == COMMITTED
    assert snapshot(shard) == before


def test_commit_one_with_stale_read_raises_conflict_and_records_abort():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    shard.apply(("put", b"a", b"2"))
    txid = "1pc:shard-0:" + "b" * 32
    with pytest.raises(Conflict) as info:
        shard.apply(("commit_one", txid, ((b"a", v),), ((b"c", b"x"),)))
    assert info.value.detail["txid"] == txid
    assert shard.read(b"c") == ABSENT
    assert shard.state_of(txid) == ABORTED
    # Once aborted, a retry of the same txid conflicts too, even though it would now validate.
    with pytest.raises(Conflict):
        shard.apply(("commit_one", txid, ((b"a", v + 1),), ((b"c", b"x"),)))
    assert shard.read(b"c") == ABSENT


def test_commit_one_conflicts_with_prepared_locks():
    shard = ShardState()
    v = shard.apply(("put", b"a", b"1"))
    assert prepare(shard, T1, reads=[(b"a", v)]) == "yes"
    with pytest.raises(Conflict) as info:
        shard.apply(("commit_one", "1pc:shard-0:" + "c" * 32, (), ((b"a", b"2"),)))
    assert T1 in info.value.message
    assert shard.read(b"a") == Cell(b"1", v)
    assert prepare(shard, T2, writes=[(b"w", b"1")]) == "yes"
    with pytest.raises(Conflict):
        shard.apply(("commit_one", "1pc:shard-0:" + "d" * 32, ((b"w", 0),), ()))


def test_commit_one_of_a_prepared_txid_conflicts():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    before = snapshot(shard)
    with pytest.raises(Conflict):
        shard.apply(("commit_one", T1, (), ((b"a", b"1"),)))
    assert snapshot(shard) == before


# -- bookkeeping -------------------------------------------------------------------


def test_a_full_decided_table_raises_its_horizon_so_what_it_evicts_is_forgotten_not_unknown():
    shard = ShardState(max_decided=3)
    txids = [f"2pc:{i + 1:012x}{0:020x}" for i in range(5)]  # made at 1, 2, ... ms: the order they are forgotten in
    for txid in txids:
        shard.apply(("refuse", txid))
    assert list(shard.decided) == txids[2:]
    assert shard.state_of(txids[0]) == FORGOTTEN  # never None: a later fence or PREPARE would take it for new
    assert shard.outcomes[ABORTED] == 5  # counters are not bounded


def test_writer_of_names_the_exclusive_holder_only():
    shard = ShardState()
    v = shard.apply(("put", b"r", b"1"))
    assert shard.writer_of(b"w") is None
    assert prepare(shard, T1, reads=[(b"r", v)], writes=[(b"w", b"1")]) == "yes"
    assert shard.writer_of(b"w") == T1
    assert shard.writer_of(b"r") is None  # shared, not written
    shard.apply(("commit", T1))
    assert shard.writer_of(b"w") is None


def test_outcome_counters():
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    assert is_no(prepare(shard, T2, writes=[(b"a", b"2")]))  # NO vote: aborted
    shard.apply(("commit", T1))
    shard.apply(("refuse", T3))  # fenced: aborted
    shard.apply(("commit_one", "1pc:shard-0:" + "e" * 32, (), ((b"z", b"1"),)))
    assert shard.outcomes == {COMMITTED: 2, ABORTED: 2}


# -- property: lock invariants -----------------------------------------------------

KEYS = [b"k0", b"k1", b"k2"]
TXIDS = [f"raft-2pc:{i:032x}" for i in range(4)]


def check_invariants(shard: ShardState) -> None:
    for key, lock in shard.locks.items():
        # No empty lock objects linger.
        assert lock.exclusive is not None or lock.shared, key
        # Every holder is a prepared transaction.
        if lock.exclusive is not None:
            assert lock.exclusive in shard.prepared, (key, lock)
        for txid in lock.shared:
            assert txid in shard.prepared, (key, lock)
        # Never one txid's exclusive lock alongside another txid's shared lock.
        others = [t for t in lock.shared if t != lock.exclusive]
        assert lock.exclusive is None or not others, (key, lock)
    # Every prepared transaction holds the locks it took, and is not decided.
    for txid, prepared in shard.prepared.items():
        assert txid not in shard.decided
        written = {k for k, _ in prepared.writes}
        for key in written:
            assert shard.locks[key].exclusive == txid
        for key, _ in prepared.reads:
            if key not in written:
                assert txid in shard.locks[key].shared


command_kinds = st.sampled_from(["prepare", "prepare", "prepare", "commit", "abort", "refuse", "put", "delete"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_commands_keep_lock_invariants(data):
    shard = ShardState()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        kind = data.draw(command_kinds)
        txid = data.draw(st.sampled_from(TXIDS))
        if kind == "prepare":
            read_keys = data.draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
            reads = tuple(
                (k, shard.read(k).version if data.draw(st.booleans()) else data.draw(st.integers(0, 5)))
                for k in read_keys
            )
            write_keys = data.draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
            writes = tuple((k, data.draw(st.sampled_from([b"x", b"y", None]))) for k in write_keys)
            held = shard.prepared.get(txid)
            if held is not None and (held.reads, held.writes) != (reads, writes):
                before = snapshot(shard)
                with pytest.raises(InvalidRequest):  # a second PREPARE may only repeat the first
                    shard.apply(("prepare", txid, reads, writes))
                assert snapshot(shard) == before
                continue
            vote = shard.apply(("prepare", txid, reads, writes))
            assert vote in ("yes", ("decided", "committed")) or is_no(vote)
            if vote == "yes":
                assert shard.state_of(txid) == PREPARED
            elif vote == ("decided", "committed"):
                assert shard.state_of(txid) == COMMITTED
            else:
                assert shard.state_of(txid) == ABORTED
        elif kind in ("commit", "abort"):
            before, known = snapshot(shard), shard.state_of(txid)
            try:
                outcome = shard.apply((kind, txid))
            except InternalError:
                assert snapshot(shard) == before  # maybe_applied=False must be true
            else:
                unknown_commit = kind == "commit" and known is None
                assert outcome == (UNKNOWN if unknown_commit else COMMITTED if kind == "commit" else ABORTED)
                assert txid not in shard.prepared
                assert not unknown_commit or shard.state_of(txid) == ABORTED  # fenced, never prepared later
        elif kind == "refuse":
            state = shard.state_of(txid)
            answer = shard.apply(("refuse", txid))
            assert answer == (state or ABORTED)
        else:
            key = data.draw(st.sampled_from(KEYS))
            command = ("put", key, b"p") if kind == "put" else ("delete", key)
            before = snapshot(shard)
            try:
                shard.apply(command)
            except Conflict:
                assert key in shard.locks
                assert snapshot(shard) == before
            else:
                assert key not in shard.locks
        check_invariants(shard)
        # Versions only grow: every cell's version is at most the write counter.
        assert all(cell.version <= shard.write_counter for cell in shard.cells.values())


def test_a_second_prepare_must_be_the_first_again_not_other_reads_and_writes():
    """A replayed PREPARE with other writes used to be answered "yes" for what it did not lock."""
    shard = ShardState()
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"
    before = snapshot(shard)
    assert prepare(shard, T1, writes=[(b"a", b"1")]) == "yes"  # a retry of the same
    with pytest.raises(InvalidRequest, match="prepared here with other reads and writes"):
        prepare(shard, T1, writes=[(b"a", b"1"), (b"b", b"2")])
    assert snapshot(shard) == before
