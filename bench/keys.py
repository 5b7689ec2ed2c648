"""Which key an operation picks: YCSB's scrambled zipfian, or uniform, over ``[0, n)``.

A port of YCSB's ``ZipfianGenerator`` and ``ScrambledZipfianGenerator``
(core/src/main/java/site/ycsb/generator/), which implement the method of
Gray, Sundaresan, Englert, Baclawski and Weinberger, "Quickly generating
billion-record synthetic databases" (SIGMOD 1994): draw an item of a zipfian
distribution with constant ``theta`` in O(1) from one uniform number, given
``zeta(n, theta)``, the sum of ``1 / i**theta`` for i in 1..n.

Plain zipfian makes item 0 the hottest, 1 the next and so on, so the hot
keys sit together (YCSB: "the popular items are clustered"). The scrambled
generator draws from a zipfian over YCSB's fixed ``ITEM_COUNT`` (10 billion
items, whose zeta YCSB precomputed as ``ZETAN``) and hashes the item with
FNV-1a 64 into ``[0, n)``: the popularity skew stays, the hot keys land
anywhere in the key space. It is what YCSB's ``requestdistribution=zipfian``
uses (``CoreWorkload``).

Each generator is seeded, so a benchmark operation that seeds one from its
(client, operation number) draws the same keys in every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

ZIPFIAN_CONSTANT = 0.99  # YCSB's ZipfianGenerator.ZIPFIAN_CONSTANT
ITEM_COUNT = 10_000_000_000  # ScrambledZipfianGenerator.ITEM_COUNT: the zipfian it draws from, then hashes
ZETAN = 26.46902820178302  # ScrambledZipfianGenerator.ZETAN: zeta(ITEM_COUNT, 0.99), precomputed by YCSB

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325  # FNV-1a 64 (Fowler, Noll, Vo; draft-eastlake-fnv)
FNV_PRIME_64 = 0x100000001B3
UINT64 = (1 << 64) - 1
INT64_SIGN = 1 << 63
LONG_BYTES = 8  # YCSB's Utils.fnvhash64 hashes the 8 bytes of a Java long, lowest first

Seed = int | str


class KeyGenerator(Protocol):
    """A source of item numbers in ``[0, n)``."""

    n: int

    def next(self) -> int: ...


def zeta(n: int, theta: float) -> float:
    """``sum(1 / i**theta for i in 1..n)``: the zipfian's normalising constant (Gray et al., section 3)."""
    return sum(1.0 / i ** theta for i in range(1, n + 1))


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64 bits: xor each byte in, then multiply by the FNV prime."""
    h = FNV_OFFSET_BASIS_64
    for octet in data:
        h = ((h ^ octet) * FNV_PRIME_64) & UINT64
    return h


def fnvhash64(value: int) -> int:
    """YCSB's ``Utils.fnvhash64``: FNV-1a of the long's 8 bytes, lowest first, as a non-negative long.

    Java's ``Math.abs`` of the signed result; for the one hash that is ``Long.MIN_VALUE`` Java stays
    negative and Python gives 2**63, a difference no run will meet.
    """
    h = fnv1a_64((value & UINT64).to_bytes(LONG_BYTES, "little"))
    return abs(h - (1 << 64) if h & INT64_SIGN else h)


class ZipfianGenerator:
    """Zipfian over ``[0, n)``, item 0 the most popular: YCSB's ``ZipfianGenerator`` (Gray et al., Fig. 5).

    ``zetan`` is ``zeta(n, theta)``; pass it when known, since computing it is O(n).
    """

    def __init__(self, n: int, seed: Seed = 0, theta: float = ZIPFIAN_CONSTANT, zetan: float | None = None) -> None:
        if n < 1:
            raise ValueError(f"a zipfian needs at least one item, got {n}")
        self.n = n
        self.theta = theta
        self.zetan = zeta(n, theta) if zetan is None else zetan
        self.alpha = 1.0 / (1.0 - theta)
        self._half_pow_theta = 0.5 ** theta
        zeta2theta = 1.0 + self._half_pow_theta  # zeta(2, theta)
        self.eta = (1.0 - (2.0 / n) ** (1.0 - theta)) / (1.0 - zeta2theta / self.zetan)
        self._rng = random.Random(seed)

    def next(self) -> int:
        u = self._rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self._half_pow_theta:
            return 1
        return int(self.n * (self.eta * u - self.eta + 1.0) ** self.alpha)


class ScrambledZipfianGenerator:
    """YCSB's ``ScrambledZipfianGenerator``: a zipfian item of ``ITEM_COUNT``, FNV-1a hashed into ``[0, n)``."""

    def __init__(self, n: int, seed: Seed = 0) -> None:
        if n < 1:
            raise ValueError(f"a key space needs at least one key, got {n}")
        self.n = n
        # ZipfianGenerator(0, ITEM_COUNT, ...) in YCSB: min and max inclusive, so ITEM_COUNT + 1 items.
        self._zipfian = ZipfianGenerator(ITEM_COUNT + 1, seed, ZIPFIAN_CONSTANT, ZETAN)

    def next(self) -> int:
        return fnvhash64(self._zipfian.next()) % self.n


class UniformGenerator:
    """Every item of ``[0, n)`` equally likely (YCSB's ``requestdistribution=uniform``)."""

    def __init__(self, n: int, seed: Seed = 0) -> None:
        if n < 1:
            raise ValueError(f"a key space needs at least one key, got {n}")
        self.n = n
        self._rng = random.Random(seed)

    def next(self) -> int:
        return self._rng.randrange(self.n)


DISTRIBUTIONS: dict[str, Callable[[int, Seed], KeyGenerator]] = {
    "zipfian": ScrambledZipfianGenerator,
    "uniform": UniformGenerator,
}


def generator(distribution: str, n: int, seed: Seed = 0) -> KeyGenerator:
    """The generator YCSB's ``requestdistribution`` names: ``zipfian`` (scrambled, as in YCSB) or ``uniform``."""
    try:
        make = DISTRIBUTIONS[distribution]
    except KeyError:
        raise ValueError(f"unknown distribution {distribution!r}; "
                         f"choose one of {', '.join(DISTRIBUTIONS)}") from None
    return make(n, seed)
