"""The bank checker: transfers move money between accounts and never make or destroy it, so every read of
all the balances at once (one transaction) must show the same total (Jepsen's bank test, as in its etcd and
CockroachDB analyses).

A wrong total in a read is a snapshot that mixes states: half of a transfer, or two transfers that did not
serialize. The workload refuses overdrafts, so a negative balance is an anomaly too, unless the caller's
workload allows them. Transfers themselves are not checked: their effect shows only through reads.
"""

from __future__ import annotations

from chaos.checkers import Anomaly, CheckResult, outcome_counts
from chaos.history import History


def check_bank(history: History, accounts: list[str], total: int, allow_negative: bool = False) -> CheckResult:
    """Check every ``ok`` read: exactly ``accounts``, summing to ``total``, none negative unless allowed.

    A balance of ``None`` is a missing account (a read of a key that is not there). The total is only
    compared when the accounts are exactly right, since a missing or extra one already explains it.
    """
    expected = set(accounts)
    anomalies: list[Anomaly] = []
    for _invoke, done in history.pairs():
        if done is None or done.f != "read" or done.type != "ok":
            continue
        at = f"read (op {done.index})"
        balances = {account: b for account, b in done.value.items() if b is not None}
        missing = sorted(expected - balances.keys())
        extra = sorted(balances.keys() - expected)
        if missing:
            anomalies.append(Anomaly("missing-key", f"{at} lacks {', '.join(missing)}", [done.index]))
        if extra:
            anomalies.append(Anomaly("unexpected-key", f"{at} has {', '.join(extra)}", [done.index]))
        if not missing and not extra and sum(balances.values()) != total:
            anomalies.append(Anomaly("wrong-total", f"{at} sums to {sum(balances.values())}, not {total}",
                                     [done.index]))
        negative = {account: b for account, b in sorted(balances.items()) if b < 0}
        if negative and not allow_negative:
            shown = ", ".join(f"{account}={b}" for account, b in negative.items())
            anomalies.append(Anomaly("negative", f"{at} has {shown}", [done.index]))
    return CheckResult.of(anomalies, outcome_counts(history, "transfer") | outcome_counts(history, "read"))
