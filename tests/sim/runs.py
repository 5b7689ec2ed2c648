"""Test helpers both simulators' test modules share: the seeds to draw, and whole runs of a world.

``SIM_SEED`` replays one seed: with it set, every test that draws a seed runs that one seed only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import strategies as st

from tests.sim.base import SimulationFailure, SimWorld

SEEDS = st.just(int(os.environ["SIM_SEED"])) if os.environ.get("SIM_SEED") else st.integers(0, 2**32 - 1)

W = TypeVar("W", bound=SimWorld)


def chaos_and_heal(world: W) -> W:
    """``world`` after its chaos run and the healing that follows (each raises at the first violation)."""
    world.run_chaos()
    world.heal()
    return world


def two_runs(make: Callable[[], SimWorld]) -> list[tuple[list[str], list[Any]]]:
    """The trace and history of two worlds ``make`` makes alike, each after chaos and healing."""
    runs = []
    for _ in range(2):
        world = chaos_and_heal(make())
        runs.append((world.trace, world.history))
    return runs


def first_failure(make: Callable[..., SimWorld], case: object, seeds: range, **kwargs: object) -> SimulationFailure:
    """The first failure of ``make(case, seed, **kwargs)`` over ``seeds``, run to the end and checked;
    its message must name the seed to replay. Fails the test if no seed fails."""
    for seed in seeds:
        world = make(case, seed, **kwargs)
        try:
            chaos_and_heal(world).check_settled_outcomes()
        except SimulationFailure as failure:
            assert f"SIM_SEED={seed}" in str(failure)
            return failure
    pytest.fail(f"the simulator missed a known bug in seeds {seeds}")
