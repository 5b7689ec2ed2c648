"""Values as the client stores them: any msgpack-able Python value, packed to bytes."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from consensus.errors import InvalidRequest


class Versioned(NamedTuple):
    """A read: the value (None if absent), its version, and whether the key exists."""

    value: Any
    version: int
    exists: bool


def pack_value(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"value is not msgpack-serialisable: {exc}") from None


def unpack_value(packed: bytes | None) -> Any:
    return None if packed is None else msgpack.unpackb(packed, raw=False, strict_map_key=False)
