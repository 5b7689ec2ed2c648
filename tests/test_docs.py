"""Docs that are drawn from code stay in step with it."""

from __future__ import annotations

import re
from pathlib import Path

from commit.protocols import two_phase

ROOT = Path(__file__).resolve().parent.parent


def _transition_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.match(r"\s+\w+\s+--\w+-->", line)]


def test_protocols_doc_shows_the_core_transitions() -> None:
    doc = _transition_lines((ROOT / "docs" / "PROTOCOLS.md").read_text())
    code = _transition_lines(two_phase.__doc__ or "")
    assert code, "the 2PC core's docstring lists no transitions"
    assert doc == code


def test_every_state_in_the_transitions_block_is_in_the_table() -> None:
    states = {line.split()[0] for line in _transition_lines(two_phase.__doc__ or "")}
    assert states <= set(two_phase.TRANSITIONS)
