"""Append-only files of frames (``consensus.wire``), as the decision and acceptor logs keep them.

A crash can leave the last record half written. It was never synced, so no
one acted on it; reading the file back cuts it off, so that records appended
later do not land behind its remains and vanish with it on the next read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from consensus.errors import InvalidRequest
from consensus.wire import FrameReader


def read_frames(path: Path, max_frame_bytes: int) -> list[Any]:
    """Every whole frame in ``path``, oldest first; a torn tail is truncated away (and the cut synced)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    reader = FrameReader(max_frame_bytes)
    reader.feed(data)
    frames: list[Any] = []
    good_end = 0
    while True:
        try:
            ready, frame = reader.next_frame()
        except InvalidRequest:  # garbage or an absurd length: the torn tail
            break
        if not ready:
            break
        good_end = len(data) - reader.buffered()
        frames.append(frame)
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return frames
