"""Docs that are drawn from code stay in step with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from commit.config import Limits, Sagas, Timeouts, Transactions
from commit.protocols import two_phase
from consensus.settings import RaftSettings

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


@pytest.mark.parametrize("section", [Limits, Timeouts, RaftSettings, Transactions, Sagas])
def test_every_setting_is_documented_in_operations(section: type) -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    name = {Limits: "limits", Timeouts: "timeouts", RaftSettings: "raft", Transactions: "transactions",
            Sagas: "sagas"}[section]
    undocumented = [f.name for f in dataclasses.fields(section)
                    if f"`{name}.{f.name}`" not in text and f"`{f.name}`" not in text]
    assert not undocumented, f"[{name}] keys missing from docs/OPERATIONS.md: {undocumented}"


def test_every_limit_is_in_the_threat_model() -> None:
    """docs/SECURITY.md says what each limit bounds, so a new limit must be placed in the threat model."""
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    missing = [f.name for f in dataclasses.fields(Limits) if f.name not in text]
    assert not missing, f"[limits] keys missing from docs/SECURITY.md: {missing}"
