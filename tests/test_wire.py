"""consensus.wire: sans-IO framing (4-byte big-endian length + msgpack)."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.errors import InvalidRequest
from consensus.wire import FrameReader, FrameTooLarge, GarbageFrame, decode_payload, encode_frame

BIG = 1 << 20


def _raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# Values that survive a msgpack round trip unchanged (no tuples, no NaN).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-1000, 1000), children, max_size=4),
    max_leaves=12,
)


# -- encode_frame -----------------------------------------------------------


def test_encode_frame_layout_is_big_endian_length_then_msgpack():
    message = [7, "get", {"key": b"\x00\xff", "n": 3}]
    frame = encode_frame(message, BIG)
    payload = msgpack.packb(message, use_bin_type=True)
    assert frame[:4] == len(payload).to_bytes(4, "big")
    assert frame[4:] == payload
    # bytes stay bytes and str stays str across the round trip (use_bin_type / raw=False)
    assert decode_payload(frame[4:]) == message


def test_encode_frame_limit_is_inclusive():
    message = b"x" * 100
    size = len(msgpack.packb(message, use_bin_type=True))
    assert len(encode_frame(message, size)) == size + 4
    with pytest.raises(FrameTooLarge, match=rf"{size} bytes exceeds the limit of {size - 1}"):
        encode_frame(message, size - 1)


def test_frame_errors_are_invalid_requests():
    # The RPC layer relies on both being ClusterErrors with the invalid_request code.
    assert issubclass(FrameTooLarge, InvalidRequest)
    assert issubclass(GarbageFrame, InvalidRequest)
    assert FrameTooLarge("x").to_wire()["code"] == "invalid_request"
    assert GarbageFrame("x").to_wire()["code"] == "invalid_request"


# -- decode_payload -----------------------------------------------------------


def test_decode_payload_keeps_integer_map_keys():
    assert decode_payload(msgpack.packb({1: "a", "b": 2})) == {1: "a", "b": 2}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(msgpack.packb("hello")[:-1], id="truncated"),
        pytest.param(msgpack.packb(1) + msgpack.packb(2), id="trailing-data"),
        pytest.param(b"\xd9\x02\xff\xfe", id="invalid-utf8-str"),
        pytest.param(b"\xd4\xff\x00", id="bad-timestamp-ext"),
        pytest.param(b"\x91" * 5000 + b"\xc0", id="too-deep"),
    ],
)
def test_decode_payload_rejects_garbage(payload):
    with pytest.raises(GarbageFrame, match="not valid msgpack"):
        decode_payload(payload)


@pytest.mark.parametrize("payload", [b"\x81\x90\x00", b"\x81\x80\x00"], ids=["list-key", "map-key"])
def test_decode_payload_unhashable_map_key_is_garbage(payload):
    with pytest.raises(GarbageFrame):
        decode_payload(payload)


# -- FrameReader --------------------------------------------------------------


def test_reader_needs_whole_header_and_payload():
    frame = encode_frame({"hello": "n1"}, BIG)
    reader = FrameReader(BIG)
    assert reader.next_frame() == (False, None)
    for byte in frame[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_frame() == (False, None)
    reader.feed(frame[-1:])
    assert reader.next_frame() == (True, {"hello": "n1"})
    assert reader.next_frame() == (False, None)


def test_reader_returns_several_frames_from_one_chunk_in_order():
    reader = FrameReader(BIG)
    reader.feed(encode_frame(1, BIG) + encode_frame(None, BIG) + encode_frame("three", BIG)[:3])
    assert reader.next_frame() == (True, 1)
    # None is a legitimate message: the flag, not the value, says a frame was complete
    assert reader.next_frame() == (True, None)
    assert reader.next_frame() == (False, None)
    reader.feed(encode_frame("three", BIG)[3:])
    assert reader.next_frame() == (True, "three")


def test_reader_rejects_oversized_length_before_the_payload_arrives():
    reader = FrameReader(100)
    reader.feed(struct.pack(">I", 101))  # header only: nothing to buffer yet
    with pytest.raises(FrameTooLarge, match="101 bytes exceeds the limit of 100"):
        reader.next_frame()


def test_reader_rejects_huge_announced_length():
    reader = FrameReader(4 * 1024 * 1024)
    reader.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(FrameTooLarge):
        reader.next_frame()


def test_reader_accepts_frame_of_exactly_the_limit():
    payload = msgpack.packb(b"y" * 50, use_bin_type=True)
    reader = FrameReader(len(payload))
    reader.feed(_raw_frame(payload))
    assert reader.next_frame() == (True, b"y" * 50)


def test_reader_raises_garbage_for_invalid_payload_then_continues_with_next_frame():
    reader = FrameReader(BIG)
    reader.feed(_raw_frame(b"\xc1") + encode_frame("ok", BIG))
    with pytest.raises(GarbageFrame):
        reader.next_frame()
    # the bad frame was consumed, so the reader is not stuck on it
    assert reader.next_frame() == (True, "ok")


def test_zero_length_frame_is_garbage():
    reader = FrameReader(BIG)
    reader.feed(b"\x00\x00\x00\x00")
    with pytest.raises(GarbageFrame):
        reader.next_frame()


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(msgpack_values, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_reader_any_chunking_yields_the_same_messages(messages, cuts):
    stream = b"".join(encode_frame(m, BIG) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = FrameReader(BIG)
    received = []
    for start, end in zip(points, points[1:]):
        reader.feed(stream[start:end])
        while True:
            ready, message = reader.next_frame()
            if not ready:
                break
            received.append(message)
    assert received == messages
    assert reader.next_frame() == (False, None)


@settings(max_examples=100, deadline=None)
@given(message=msgpack_values)
def test_encode_decode_round_trip(message):
    frame = encode_frame(message, BIG)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode_payload(frame[4:]) == message
