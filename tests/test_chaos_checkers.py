"""The chaos history and its checkers, on histories known to be good and known to be bad.

Each anomaly is built by hand in a few operations and must be found under its name and nothing else; the
recorder's clock ticks once per recorded op, so the order of the calls below is the real-time order, and a
txn is named T<index of its completion>, as the checker prints it.
Generated valid histories must pass; they print their seed, and ``TEST_SEED=<seed>`` replays one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from chaos.checkers.bank import check_bank
from chaos.checkers.list_append import check_list_append
from chaos.checkers.sets import check_set
from chaos.history import History, Op


def ticking() -> History:
    return History(clock=itertools.count().__next__)


def op(h: History, f: str, value: Any, type: str = "ok", result: Any = None) -> Op:
    """An operation of its own process, invoked and completed at once."""
    return h.complete(h.invoke(len(h.ops), f, value), type, result)


# list-append micro-ops, as they are at ok: a read carries the list it saw.
def a(key: str, value: int) -> list[Any]:
    return ["append", key, value]


def r(key: str, *values: int) -> list[Any]:
    return ["r", key, list(values)]


@dataclasses.dataclass(frozen=True)
class Pending:
    invoked: Op
    mops: tuple[list[Any], ...]


def begin(h: History, *mops: list[Any], process: int | None = None) -> Pending:
    """Invoke a txn: its reads are ``None`` until it completes. Its own process unless one is given."""
    shape = [[f, key, None if f == "r" else v] for f, key, v in mops]
    return Pending(h.invoke(len(h.ops) if process is None else process, "txn", shape), mops)


def end(h: History, txn: Pending, type: str = "ok") -> Op:
    return h.complete(txn.invoked, type, [list(m) for m in txn.mops] if type == "ok" else None)


def txn(h: History, *mops: list[Any], type: str = "ok") -> Op:
    return end(h, begin(h, *mops), type)


def concurrently(h: History, *txns: tuple[list[Any], ...], types: tuple[str, ...] = ()) -> None:
    """Txns that all overlap: every one is invoked before any completes, so real time orders none of them."""
    pending = [begin(h, *mops) for mops in txns]
    for i, p in enumerate(pending):
        end(h, p, types[i] if i < len(types) else "ok")


# ---- the history ----

def test_pairs_match_completions_to_invocations_by_process() -> None:
    h = ticking()
    first, second = h.invoke(0, "add", 1), h.invoke(1, "add", 2)
    second_done = h.complete(second, "ok")
    first_done = h.complete(first, "info", error="timeout")
    third = h.invoke(2, "read", None)
    assert h.pairs() == [(first, first_done), (second, second_done), (third, None)]
    assert second_done.value == 2 and first_done.error == "timeout"
    assert [o.time for o in h.ops] == [0, 1, 2, 3, 4]


def test_the_recorder_refuses_what_a_runner_must_not_do() -> None:
    h = ticking()
    invoked = h.invoke(0, "add", 1)
    with pytest.raises(ValueError):
        h.invoke(0, "add", 2)  # a second open operation on one process
    h.complete(invoked, "info")
    with pytest.raises(ValueError):
        h.complete(invoked, "ok")  # completed twice
    with pytest.raises(ValueError):
        h.invoke(0, "add", 3)  # the process got info: it is retired


def test_jsonl_round_trip(tmp_path: Path) -> None:
    h = History(clock=iter([0.5, 1.25, 2.0, 3.0]).__next__)
    t = h.invoke(3, "txn", [["append", "k1", 1], ["r", "k2", None]])
    h.complete(t, "ok", [["append", "k1", 1], ["r", "k2", [4, 5]]])
    read = h.invoke(4, "read", None)
    h.complete(read, "fail", error="Unavailable")
    h.write_jsonl(tmp_path / "history.jsonl")
    assert History.read_jsonl(tmp_path / "history.jsonl").ops == h.ops
    assert json.loads((tmp_path / "history.jsonl").read_text().splitlines()[3])["error"] == "Unavailable"


# ---- bank ----

ACCOUNTS = ["a1", "a2"]


def bank(*reads: dict[str, Any]) -> History:
    h = ticking()
    op(h, "transfer", {"from": "a1", "to": "a2", "amount": 5})
    op(h, "transfer", {"from": "a2", "to": "a1", "amount": 3}, "fail")
    for balances in reads:
        op(h, "read", None, "ok", balances)
    return h


def test_bank_good() -> None:
    result = check_bank(bank({"a1": 10, "a2": 10}, {"a1": 5, "a2": 15}), ACCOUNTS, 20)
    assert result.valid and result.stats == {"transfer-ok": 1, "transfer-fail": 1, "transfer-info": 0,
                                             "read-ok": 2, "read-fail": 0, "read-info": 0}


@pytest.mark.parametrize("balances, found", [
    ({"a1": 5, "a2": 10}, "wrong-total"),
    ({"a1": -5, "a2": 25}, "negative"),
    ({"a1": 20}, "missing-key"),
    ({"a1": 20, "a2": None}, "missing-key"),
    ({"a1": 10, "a2": 10, "a3": 0}, "unexpected-key"),
])
def test_bank_bad_reads(balances: dict[str, Any], found: str) -> None:
    assert check_bank(bank({"a1": 10, "a2": 10}, balances), ACCOUNTS, 20).counts() == {found: 1}


def test_bank_negative_balances_may_be_allowed() -> None:
    assert check_bank(bank({"a1": -5, "a2": 25}), ACCOUNTS, 20, allow_negative=True).valid


# ---- set ----

def adds(h: History, **outcomes: str) -> None:
    """adds(h, ok="0 1", fail="2"): adds of those elements, ending so."""
    for type, elements in outcomes.items():
        for element in elements.split():
            op(h, "add", int(element), type)


def test_set_good_with_indeterminate_adds_either_way() -> None:
    h = ticking()
    adds(h, ok="0 1", fail="2", info="3 4")
    op(h, "read", None, "ok", [0, 1, 3])
    result = check_set(h)
    assert result.valid, result.summary()
    assert result.stats["recovered"] == 1 and result.stats["not-recovered"] == 1


@pytest.mark.parametrize("final, found", [([0], "lost"), ([0, 1, 7], "unexpected"),
                                          ([0, 1, 2], "resurrected-fail")])
def test_set_bad_final_read(final: list[int], found: str) -> None:
    h = ticking()
    adds(h, ok="0 1", fail="2")
    op(h, "read", None, "ok", final)
    assert check_set(h).counts() == {found: 1}


def test_set_every_read_counts_for_unexpected_elements_and_only_the_last_for_durability() -> None:
    h = ticking()
    adds(h, ok="0")
    op(h, "read", None, "ok", [9])  # not final, yet 9 was never added
    op(h, "read", None, "ok", [0])
    assert check_set(h).counts() == {"unexpected": 1}


def test_set_an_add_acknowledged_during_the_final_read_may_be_missing() -> None:
    h = ticking()
    read = h.invoke(0, "read", None)
    op(h, "add", 5)
    h.complete(read, "ok", [])
    result = check_set(h)
    assert result.valid and result.stats["ok-during-final-read"] == 1


def test_set_without_a_final_read_is_invalid() -> None:
    h = ticking()
    adds(h, ok="0")
    op(h, "read", None, "fail")
    assert check_set(h).counts() == {"no-final-read": 1}


# ---- list-append: good histories ----

def test_list_append_good_serial() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, r("x", 1), a("x", 2))
    txn(h, r("x", 1, 2), a("y", 1), r("y", 1))
    txn(h, r("y", 1), r("x", 1, 2), a("x", 3), r("x", 1, 2, 3))
    result = check_list_append(h)
    assert result.valid, result.summary()
    assert result.stats["txn-ok"] == 4 and result.stats["reads"] == 6


def test_list_append_good_concurrent() -> None:
    """T2 reads x before T1's append although T1 began first: fine, they overlap."""
    h = ticking()
    concurrently(h, (a("x", 1), a("y", 1)), (r("x"), a("z", 1)), (r("z"),))
    txn(h, r("x", 1), r("y", 1), r("z", 1))
    assert check_list_append(h, strict=True).valid


# ---- list-append: each anomaly by hand ----

def test_g0_write_cycle() -> None:
    """T1 and T2 each append to x and y; x's order puts T1 first, y's puts T2 first."""
    h = ticking()
    concurrently(h, (a("x", 1), a("y", 1)), (a("x", 2), a("y", 2)))
    txn(h, r("x", 1, 2), r("y", 2, 1))
    result = check_list_append(h)
    assert result.counts() == {"G0": 1}
    assert " ".join(result.anomalies[0].cycle) == "T2 -ww(x)-> T3 -ww(y)-> T2"


def test_g1a_aborted_read() -> None:
    h = ticking()
    txn(h, a("x", 1), type="fail")
    txn(h, r("x", 1))
    assert check_list_append(h).counts() == {"G1a": 1}


def test_g1b_intermediate_read() -> None:
    h = ticking()
    txn(h, a("x", 1), a("x", 2))
    txn(h, r("x", 1))
    assert check_list_append(h).counts() == {"G1b": 1}


def test_g1c_circular_information_flow() -> None:
    h = ticking()
    concurrently(h, (a("x", 1), r("y", 1)), (a("y", 1), r("x", 1)))
    assert check_list_append(h).counts() == {"G1c": 1}


def test_a_dependency_cycle_is_not_blamed_on_real_time() -> None:
    """T1 ends before T2 begins, yet each reads the other's append: G1c, with or without real time."""
    h = ticking()
    txn(h, a("x", 1), r("y", 1))
    txn(h, a("y", 1), r("x", 1))
    assert check_list_append(h, strict=False).counts() == check_list_append(h, strict=True).counts() == {"G1c": 1}


def test_appending_one_value_twice_to_a_key_is_the_runner_s_bug() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, a("x", 1))
    with pytest.raises(ValueError, match="unique per key"):
        check_list_append(h)


def test_g_single_read_skew() -> None:
    """T2 sees T1's y but not its x."""
    h = ticking()
    concurrently(h, (a("x", 1), a("y", 1)), (r("x"), r("y", 1)))
    txn(h, r("x", 1))
    result = check_list_append(h)
    assert result.counts() == {"G-single": 1}
    assert " ".join(result.anomalies[0].cycle) == "T2 -wr(y)-> T3 -rw(x)-> T2"


def test_g2_write_skew() -> None:
    h = ticking()
    concurrently(h, (r("x"), a("y", 1)), (r("y"), a("x", 1)))
    txn(h, r("x", 1), r("y", 1))
    assert check_list_append(h).counts() == {"G2": 1}


def test_a_stale_read_breaks_only_strict_serializability() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, r("x"))  # invoked after the append was acknowledged
    txn(h, r("x", 1))
    assert check_list_append(h, strict=False).valid
    result = check_list_append(h, strict=True)
    assert result.counts() == {"G-single-realtime": 1}
    assert " ".join(result.anomalies[0].cycle) == "T1 -rt-> T3 -rw(x)-> T1"


def test_real_time_reaches_through_the_sparse_edges() -> None:
    """The edge T1 -rt-> T5 is not kept (T3 covers it), yet the stale read in T5 is found through T3."""
    h = ticking()
    txn(h, a("x", 1))
    txn(h, a("y", 1))
    txn(h, r("x"))
    txn(h, r("x", 1))
    result = check_list_append(h, strict=True)
    assert result.counts() == {"G-single-realtime": 1}
    assert " ".join(result.anomalies[0].cycle) == "T1 -rt-> T3 -rt-> T5 -rw(x)-> T1"


def test_incompatible_orders() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, a("x", 2))
    txn(h, r("x", 1, 2))
    txn(h, r("x", 2, 1))
    result = check_list_append(h)
    assert result.counts() == {"incompatible-order": 1}
    assert result.anomalies[0].ops == [7, 5]


def test_duplicate() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, r("x", 1, 1))
    assert check_list_append(h).counts() == {"duplicate": 1}


def test_garbage() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, r("x", 1, 9))
    assert check_list_append(h).counts() == {"garbage": 1}


@pytest.mark.parametrize("mops", [
    (r("x", 5), a("x", 6), r("x", 5)),  # a second read that lost the txn's own append
    (a("y", 1), r("y")),  # a read that does not end with the txn's own append
    (r("x", 5), r("x")),  # two reads of one key that disagree
])
def test_internal_inconsistency(mops: tuple[list[Any], ...]) -> None:
    h = ticking()
    txn(h, a("x", 5))
    txn(h, *mops)
    assert check_list_append(h).counts() == {"internal": 1}


def test_an_info_txn_whose_write_was_read_committed() -> None:
    """The read skew of test_g_single_read_skew, with T1 indeterminate: some read shows its append."""
    h = ticking()
    concurrently(h, (a("x", 1), a("y", 1)), (r("x"), r("y", 1)), types=("info",))
    txn(h, r("x", 1))
    result = check_list_append(h)
    assert result.counts() == {"G-single": 1} and result.stats["info-committed"] == 1


def test_an_info_txn_nobody_saw_is_left_out() -> None:
    """A later read that misses an indeterminate append is fine even under strict: it may never happen."""
    h = ticking()
    txn(h, a("x", 1), type="info")
    txn(h, r("x"))
    begin(h, a("x", 2))  # never completes: just as indeterminate
    txn(h, r("x"), a("y", 1))
    result = check_list_append(h, strict=True)
    assert result.valid, result.summary()
    assert result.stats["info-committed"] == 0 and result.stats["txn-info"] == 2


def test_summary_and_json_show_the_cycle() -> None:
    h = ticking()
    txn(h, a("x", 1))
    txn(h, r("x"))
    txn(h, r("x", 1))
    result = check_list_append(h)
    assert "G-single-realtime: 1" in result.summary()
    assert "T1 -rt-> T3 -rw(x)-> T1" in result.summary()
    assert json.loads(json.dumps(result.to_json()))["counts"] == {"G-single-realtime": 1}


def test_the_summary_shows_a_few_anomalies_of_every_type() -> None:
    result = check_bank(bank(*[{"a1": 1, "a2": 1}] * 30, {"a1": -1, "a2": 21}), ACCOUNTS, 20)
    assert result.counts() == {"negative": 1, "wrong-total": 30}
    lines = result.summary(shown=5).splitlines()
    assert lines[-1] == "... and 26 more" and sum(line.startswith("negative:") for line in lines) == 1


# ---- list-append: generated histories ----

def generated(rng: random.Random, txns: int, keys: int, spread: float = 3.0) -> History:
    """A strict serializable history by construction: txns run one after another against a dict of lists,
    txn i taking effect at time i; each is invoked up to ``spread`` before that and completes up to
    ``spread`` after, so real time never contradicts the serial order. One in twenty fails (not applied),
    one in twenty ends info (applied or not, at random); appended values count up per key."""
    state: dict[str, list[int]] = {}
    appended: dict[str, int] = defaultdict(int)
    plans: list[tuple[list[list[Any]], str]] = []
    events: list[tuple[float, int, int]] = []  # (time, 0 invoke / 1 complete, txn)
    for i in range(txns):
        outcome = rng.choices(("ok", "fail", "info"), (18, 1, 1))[0]
        mine: dict[str, list[int]] = {}  # the txn's own view of each key it appended to
        mops = []
        for _ in range(rng.randint(1, 4)):
            key = f"k{rng.randrange(keys)}"
            if rng.random() < 0.5:
                appended[key] += 1
                mine.setdefault(key, list(state.get(key, []))).append(appended[key])
                mops.append(a(key, appended[key]))
            else:
                mops.append(r(key, *mine.get(key, state.get(key, []))))
        if outcome == "ok" or (outcome == "info" and rng.random() < 0.5):
            state.update(mine)
        plans.append((mops, outcome))
        events += [(i - rng.uniform(0, spread), 0, i), (i + rng.uniform(0, spread), 1, i)]
    clock = [0.0]
    h = History(clock=lambda: clock[0])
    free: list[int] = []  # processes with nothing open
    fresh = itertools.count()
    pending: dict[int, Pending] = {}
    for clock[0], is_completion, i in sorted(events):
        mops, outcome = plans[i]
        if not is_completion:
            pending[i] = begin(h, *mops, process=free.pop() if free else next(fresh))
        else:
            done = end(h, pending.pop(i), outcome)
            if done.type != "info":
                free.append(done.process)
    return h


def seeds() -> list[int]:
    if "TEST_SEED" in os.environ:
        return [int(os.environ["TEST_SEED"])]
    return [random.randrange(2**31) for _ in range(5)]


def test_generated_valid_histories_pass() -> None:
    for seed in seeds():
        print(f"seed={seed}")
        h = generated(random.Random(seed), txns=400, keys=4)
        result = check_list_append(h, strict=True)
        assert result.valid, f"seed={seed}\n{result.summary()}"
        assert result.stats["txn-ok"] > 300 and result.stats["edges"] > 400


def test_a_stale_read_slipped_into_a_generated_history_is_caught() -> None:
    for seed in seeds():
        print(f"seed={seed}")
        h = generated(random.Random(seed), txns=400, keys=4)
        stale = _cut_short(h)
        broken = History()
        for o in h.ops:
            broken.append(stale if o.index == stale.index else o)
        assert not check_list_append(broken, strict=True).valid, f"seed={seed}"


def _cut_short(h: History) -> Op:
    """An ok txn's completion with one read cut short by its last element, whose writer was acknowledged
    before the txn was invoked, and which a longer read shows too: the txn now misses a write real time
    says it must see, and the key's order still holds that write."""
    acknowledged = {(key, v): done.time for _invoke, done in h.pairs() if done is not None and done.type == "ok"
                    for f, key, v in done.value if f == "append"}
    longest: dict[str, int] = defaultdict(int)
    for o in h.ops:
        if o.type == "ok":
            for f, key, v in o.value:
                longest[key] = max(longest[key], len(v) if f == "r" else 0)
    for invoke, done in h.pairs():
        if done is not None and done.type == "ok":
            for position, (f, key, v) in enumerate(done.value):
                if (f == "r" and 0 < len(v) < longest[key]
                        and acknowledged.get((key, v[-1]), math.inf) < invoke.time):
                    value = [list(m) for m in done.value]
                    value[position][2] = v[:-1]
                    return dataclasses.replace(done, value=value)
    raise AssertionError("the generated history has no read to cut short")


def test_a_generated_history_of_5000_txns_is_checked_fast() -> None:
    seed = int(os.environ.get("TEST_SEED", 5000))
    print(f"seed={seed}")
    h = generated(random.Random(seed), txns=5000, keys=50)
    started = time.perf_counter()
    result = check_list_append(h, strict=True)
    elapsed = time.perf_counter() - started
    assert result.valid, f"seed={seed}\n{result.summary()}"
    assert elapsed < 5, f"{elapsed:.1f} s"
