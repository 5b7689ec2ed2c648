"""Which shard owns a key.

Keys are bytes on the wire and in the shards; a ``str`` key is its UTF-8
encoding, so ``"a"`` and ``b"a"`` name the same key. The shard is a stable
hash (BLAKE2b, not Python's salted ``hash``) of the key bytes, so every
client and node agrees without coordination, across processes and restarts.
"""

from __future__ import annotations

import hashlib

from consensus.errors import InvalidRequest

Key = str | bytes


def key_bytes(key: object, max_key_bytes: int) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise InvalidRequest(f"a key must be str or bytes, got {type(key).__name__}")
    if not key:
        raise InvalidRequest("a key must not be empty")
    if len(key) > max_key_bytes:
        raise InvalidRequest(f"key of {len(key)} bytes exceeds the limit of {max_key_bytes} bytes")
    return key


def shard_of(key: bytes, shard_count: int) -> int:
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def keys_on_each_shard(prefix: str, per_shard: int, shard_count: int) -> list[list[str]]:
    """``per_shard`` key names ``prefix<n>`` landing on each shard: for demos, tests and benchmarks."""
    found: list[list[str]] = [[] for _ in range(shard_count)]
    i = 0
    while any(len(keys) < per_shard for keys in found):
        name = f"{prefix}{i}"
        shard = shard_of(name.encode(), shard_count)
        if len(found[shard]) < per_shard:
            found[shard].append(name)
        i += 1
    return found
