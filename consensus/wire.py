"""Framing for the RPC protocol, sans-IO (in the manner of h11).

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
``FrameReader`` is fed bytes as they arrive and hands back whole decoded
frames; it never touches a socket, so the same code is tested with plain bytes.

The length is checked against ``max_frame_bytes`` *before* any payload is
buffered, so a peer cannot make a node allocate an arbitrary amount of memory
by announcing a huge frame.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from consensus.errors import InvalidRequest

_LENGTH = struct.Struct(">I")


class FrameTooLarge(InvalidRequest):
    """A frame announced a length above the limit; the stream cannot be resynchronised."""


class GarbageFrame(InvalidRequest):
    """A frame's payload is not valid msgpack; the stream cannot be trusted further."""


def encode_frame(message: Any, max_frame_bytes: int) -> bytes:
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {len(payload)} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    return _LENGTH.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise GarbageFrame(f"frame is not valid msgpack: {exc}") from None


class FrameReader:
    """Accumulates received bytes and yields complete decoded frames."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()

    def limit(self, max_frame_bytes: int) -> None:
        """Change the largest frame accepted from now on (the handshake's is smaller than the session's)."""
        self._max = max_frame_bytes

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def next_frame(self) -> tuple[bool, Any]:
        """Return ``(True, message)`` for a complete frame, ``(False, None)`` if more bytes are needed."""
        if len(self._buffer) < _LENGTH.size:
            return False, None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._max:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self._max} bytes"
            )
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return False, None
        payload = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return True, decode_payload(payload)


def nested_deeper(raw: Any, limit: int) -> bool:
    """Whether arrays and maps nest more than ``limit`` deep in ``raw``: level by level, never recursing, so
    that a hostile depth meets neither Python's recursion limit nor any check that recurses later."""
    level = [raw]
    for _ in range(limit + 1):
        containers = [x for x in level if isinstance(x, (list, tuple, dict))]
        if not containers:
            return False
        level = [inner for c in containers for inner in ([*c.keys(), *c.values()] if isinstance(c, dict) else c)]
    return True
