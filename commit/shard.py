"""The shard state machine: keys to versioned values.

Pure and deterministic (it runs inside ``consensus.group`` on every replica):
no clock, no randomness. A version is the shard's write counter at the time
of the write, so versions of a key only grow, and a deleted key keeps a
tombstone with its deletion version. That matters to the optimistic
transactions built on top: a reader that saw "absent at version 7" can tell
that the key was created and deleted again since (version 9), which it could
not if deletion forgot the key.

Values are opaque bytes here: the client packs them with msgpack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Cell:
    value: bytes | None  # None is a tombstone
    version: int


ABSENT = Cell(None, 0)


class ShardState:
    def __init__(self) -> None:
        self.cells: dict[bytes, Cell] = {}
        self.write_counter = 0

    def read(self, key: bytes) -> Cell:
        return self.cells.get(key, ABSENT)

    def live_keys(self) -> int:
        return sum(1 for cell in self.cells.values() if cell.value is not None)

    def apply(self, command: Any) -> Any:
        match command:
            case ("put", bytes() as key, bytes() as value):
                return self._write(key, value)
            case ("delete", bytes() as key):
                return self._write(key, None)
            case _:
                raise InvalidRequest(f"unknown shard command {command!r:.80}")

    def _write(self, key: bytes, value: bytes | None) -> int:
        self.write_counter += 1
        self.cells[key] = Cell(value, self.write_counter)
        return self.write_counter
