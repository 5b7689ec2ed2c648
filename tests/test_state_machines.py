"""Pure pieces: shard and coordinator state machines, routing, errors, auth, tables."""

from __future__ import annotations

import collections
import hashlib
import hmac
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.errors import CommitUnknown, Conflict
from commit.routing import key_bytes, shard_of
from commit.node.state_machines.shard import ABSENT, Cell, ShardState
from commit.tooling.tables import format_table
from consensus import auth
from consensus.errors import (
    ClusterError,
    InternalError,
    InvalidRequest,
    NotLeader,
    NotPrepared,
    SessionExpired,
    Timeout,
    Unauthorized,
    Unavailable,
    error_from_wire,
)

# -- ShardState ---------------------------------------------------------------------


def test_shard_put_read_versions_grow():
    shard = ShardState()
    assert shard.read(b"k") == ABSENT == Cell(None, 0)
    assert shard.apply(("put", b"k", b"v1")) == 1
    assert shard.apply(("put", b"other", b"x")) == 2
    assert shard.apply(("put", b"k", b"v2")) == 3
    assert shard.read(b"k") == Cell(b"v2", 3)
    assert shard.read(b"other") == Cell(b"x", 2)
    assert shard.write_counter == 3
    assert shard.live_keys() == 2


def test_shard_accepts_msgpack_lists_as_commands():
    # commands arrive through msgpack, which turns tuples into lists
    shard = ShardState()
    command = msgpack.unpackb(msgpack.packb(("put", b"k", b"v"), use_bin_type=True), raw=False)
    assert command == ["put", b"k", b"v"]
    assert shard.apply(command) == 1
    assert shard.read(b"k") == Cell(b"v", 1)


def test_shard_delete_leaves_a_versioned_tombstone():
    shard = ShardState()
    shard.apply(("put", b"k", b"v"))
    assert shard.apply(("delete", b"k")) == 2
    assert shard.read(b"k") == Cell(None, 2)
    assert shard.read(b"k") != ABSENT  # "deleted at 2" is distinguishable from "never written"
    assert shard.live_keys() == 0
    # deleting an absent key also records a tombstone and consumes a version
    assert shard.apply(("delete", b"never")) == 3
    assert shard.read(b"never") == Cell(None, 3)
    assert shard.apply(("put", b"k", b"")) == 4
    assert shard.read(b"k") == Cell(b"", 4)  # empty value is a value, not a tombstone
    assert shard.live_keys() == 1


@pytest.mark.parametrize(
    "command",
    [
        ("put", "k", b"v"),  # str key
        ("put", b"k", "v"),  # str value
        ("put", b"k"),
        ("put", b"k", b"v", b"extra"),
        ("delete", b"k", b"v"),
        ("get", b"k"),
        ("new_epoch",),
        "put",
        None,
        {"put": b"k"},
    ],
)
def test_shard_rejects_malformed_commands_without_side_effects(command):
    shard = ShardState()
    shard.apply(("put", b"k", b"v"))
    with pytest.raises(InvalidRequest, match="unknown shard command"):
        shard.apply(command)
    assert shard.write_counter == 1
    assert shard.read(b"k") == Cell(b"v", 1)


def test_shard_error_message_is_bounded():
    with pytest.raises(InvalidRequest) as info:
        ShardState().apply(("put", b"k" * 10_000))
    assert len(info.value.message) < 200


def test_shard_state_survives_pickling():
    # PySyncObj snapshots the state machine with pickle
    shard = ShardState()
    shard.apply(("put", b"a", b"1"))
    shard.apply(("delete", b"b"))
    copy = pickle.loads(pickle.dumps(shard))
    assert copy.cells == shard.cells
    assert copy.apply(("put", b"c", b"3")) == 3


# -- CoordinatorState ---------------------------------------------------------------


def test_coordinator_epochs_only_grow():
    coord = CoordinatorState()
    assert [coord.apply(("new_epoch",)) for _ in range(3)] == [1, 2, 3]
    assert coord.apply(["new_epoch"]) == 4  # list form, as it comes off the wire
    assert coord.epoch == 4


@pytest.mark.parametrize("command", [("new_epoch", 1), ("epoch",), "new_epoch", None, ("put", b"k", b"v")])
def test_coordinator_rejects_unknown_commands(command):
    coord = CoordinatorState()
    with pytest.raises(InvalidRequest, match="unknown coordinator command"):
        coord.apply(command)
    assert coord.epoch == 0


# -- routing ------------------------------------------------------------------------


def test_key_bytes_str_and_bytes_name_the_same_key():
    assert key_bytes("a", 10) == b"a" == key_bytes(b"a", 10)
    assert key_bytes("é", 10) == "é".encode()


def test_key_bytes_limit_counts_utf8_bytes():
    assert key_bytes("é" * 5, 10) == "é".encode() * 5  # exactly 10 bytes
    with pytest.raises(InvalidRequest, match="key of 12 bytes exceeds the limit of 10 bytes"):
        key_bytes("é" * 6, 10)


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("", "must not be empty"),
        (b"", "must not be empty"),
        (1, "must be str or bytes, got int"),
        (None, "must be str or bytes, got NoneType"),
        (bytearray(b"k"), "must be str or bytes, got bytearray"),
        (["k"], "must be str or bytes, got list"),
    ],
)
def test_key_bytes_rejects(key, pattern):
    with pytest.raises(InvalidRequest, match=pattern):
        key_bytes(key, 1024)


def test_shard_of_is_a_fixed_function_of_the_key():
    # Pinned values: changing the hash would move existing keys to other shards.
    assert [shard_of(k, 3) for k in (b"a", b"b", b"user:1", "é".encode(), b"\x00")] == [2, 2, 1, 0, 0]
    assert [shard_of(k, 7) for k in (b"a", b"b", b"user:1", "é".encode(), b"\x00")] == [2, 5, 1, 2, 1]
    assert shard_of(b"a", 1 << 20) == 410159


def test_shard_of_spreads_keys_over_all_shards():
    counts = collections.Counter(shard_of(f"key-{i}".encode(), 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 < n < 1200 for n in counts.values()), counts


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=64), shards=st.integers(1, 64))
def test_shard_of_in_range(key, shards):
    assert 0 <= shard_of(key, shards) < shards
    assert shard_of(key, 1) == 0


# -- errors ---------------------------------------------------------------------------

ALL_ERRORS = [
    InvalidRequest, Unauthorized, NotLeader, Unavailable, Timeout, SessionExpired, NotPrepared, InternalError,
    Conflict, CommitUnknown,
]


def _over_the_wire(error: ClusterError) -> ClusterError:
    raw = msgpack.unpackb(msgpack.packb(error.to_wire(), use_bin_type=True), raw=False)
    return error_from_wire(raw)


def test_every_error_class_has_a_distinct_code():
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(set(codes)) == len(codes)
    # and no concrete subclass outside this list would be lost on the wire
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    for cls in subclasses(ClusterError):
        if cls not in ALL_ERRORS:
            assert cls.code in codes, cls  # e.g. wire.FrameTooLarge travels as invalid_request


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("maybe_applied", [None, True, False])
def test_error_round_trip(cls, maybe_applied):
    original = cls("something happened", maybe_applied=maybe_applied, leader="n2", attempt=3)
    rebuilt = _over_the_wire(original)
    assert type(rebuilt) is cls
    assert rebuilt.message == "something happened"
    assert str(rebuilt) == "something happened"
    expected = cls.default_maybe_applied if maybe_applied is None else maybe_applied
    assert original.maybe_applied is expected
    assert rebuilt.maybe_applied is expected
    assert rebuilt.detail == {"leader": "n2", "attempt": 3}
    assert rebuilt.to_wire() == original.to_wire()


def test_error_flags():
    assert {cls for cls in ALL_ERRORS if cls.retryable} == {NotLeader, Unavailable, Timeout, Conflict}
    assert {cls for cls in ALL_ERRORS if cls.default_maybe_applied} == {
        Timeout, SessionExpired, InternalError, CommitUnknown
    }


def test_not_leader_hint():
    assert _over_the_wire(NotLeader("x", leader="n3")).leader == "n3"
    assert NotLeader("x").leader is None
    assert NotLeader("x", leader=7).leader is None


def test_error_repr():
    assert repr(Timeout("slow")) == "Timeout('slow', maybe_applied=True)"


@pytest.mark.parametrize(
    ("payload", "cls", "message"),
    [
        (None, InternalError, "malformed error payload: None"),
        (["not_leader", "m"], InternalError, "malformed error payload: ['not_leader', 'm']"),
        ("timeout", InternalError, "malformed error payload: 'timeout'"),
        ({}, InternalError, ""),
        ({"code": "no_such_code", "message": "m"}, InternalError, "m"),
        ({"code": 5, "message": "m"}, InternalError, "m"),
        ({"code": "timeout", "message": b"raw"}, Timeout, "b'raw'"),
        ({"code": "not_leader", "message": None}, NotLeader, "None"),
    ],
)
def test_malformed_error_payloads(payload, cls, message):
    error = error_from_wire(payload)
    assert type(error) is cls
    assert error.message == message


def test_malformed_maybe_applied_falls_back_to_class_default():
    assert error_from_wire({"code": "timeout", "message": "m", "maybe_applied": "no"}).maybe_applied is True
    assert error_from_wire({"code": "unavailable", "message": "m", "maybe_applied": 1}).maybe_applied is False


def test_non_string_detail_keys_are_stringified():
    error = error_from_wire({"code": "unavailable", "message": "m", 1: "one", b"k": 2})
    assert error.detail == {"1": "one", "b'k'": 2}


def test_detail_key_named_self_does_not_crash():
    error = error_from_wire({"code": "not_leader", "message": "m", "self": 1})
    assert isinstance(error, NotLeader)


# -- auth -------------------------------------------------------------------------------


KEY = b"k" * 32


def _proof(key: bytes = KEY, nonce: bytes = bytes(range(16)), theirs: bytes = bytes(16)) -> bytes:
    return auth.prove(key, "to-server", "client", "n1", nonce, theirs)


def test_prove_is_deterministic_hmac_sha256_over_every_bound_field():
    proof = _proof()
    assert isinstance(proof, bytes) and len(proof) == 32
    assert proof == _proof()
    message = b"\0".join((b"to-server", b"client", b"n1", bytes(range(16)), bytes(16)))
    assert proof == hmac.new(KEY, message, hashlib.sha256).digest()


def test_verify_accepts_only_the_right_proof():
    nonce, theirs = auth.new_nonce(), auth.new_nonce()
    proof = _proof(nonce=nonce, theirs=theirs)
    assert auth.verify(KEY, "to-server", "client", "n1", nonce, theirs, proof)
    assert not auth.verify(b"other", "to-server", "client", "n1", nonce, theirs, proof)  # wrong key
    assert not auth.verify(KEY, "to-server", "client", "n1", auth.new_nonce(), theirs, proof)  # another connection
    assert not auth.verify(KEY, "to-server", "client", "n2", nonce, theirs, proof)  # another node
    assert not auth.verify(KEY, "to-client", "client", "n1", nonce, theirs, proof)  # reflected back
    assert not auth.verify(KEY, "to-server", "client", "n1", nonce, theirs, proof[:-1])
    assert not auth.verify(KEY, "to-server", "client", "n1", nonce, theirs, b"")


@pytest.mark.parametrize("proof", [None, "", 0, [], bytearray(32)])
def test_verify_rejects_non_bytes_proofs(proof):
    assert auth.verify(KEY, "to-server", "client", "n1", b"n" * 16, bytes(16), proof) is False


def test_verify_rejects_bytearray_even_if_correct():
    nonce = auth.new_nonce()
    proof = bytearray(_proof(nonce=nonce))
    assert not auth.verify(KEY, "to-server", "client", "n1", nonce, bytes(16), proof)


def test_node_keys_differ_per_node_and_from_the_client_secret():
    credentials = auth.Credentials(client_secret="c", peer_secret="p")
    keys = {credentials.key_for(claim) for claim in ("client", "n1", "n2")}
    assert len(keys) == 3 and None not in keys
    assert auth.Credentials(client_secret="c").key_for("n1") is None  # a client cannot make a node key


def test_nonces_are_fresh():
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == auth.NONCE_BYTES == 16 for n in nonces)


# -- tables ---------------------------------------------------------------------------


def test_format_table_alignment_and_cell_rendering():
    rows = [
        {"name": "n1", "ok": True, "lat": 0.5, "big": 1234.5678},
        {"name": "node-22", "ok": False, "lat": None, "big": 3},
    ]
    assert format_table(rows, ["name", "ok", "lat", "big", "missing"]).splitlines() == [
        "name     ok   lat    big   missing",
        "-------  ---  -----  ----  -------",
        "n1       yes  0.500  1235  -",
        "node-22  no   -      3     -",
    ]


def test_format_table_without_rows_and_column_order():
    assert format_table([], ["b", "a"]) == "b  a\n-  -"
    assert format_table([{"a": 1, "b": 2}], ["b"]) == "b\n-\n2"
    assert format_table([{"x": -0.1234, "y": -123.4}], ["x", "y"]).splitlines()[2] == "-0.123  -123"
