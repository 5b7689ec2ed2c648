"""``python -m bench run [...]``: the benchmark suite (``bench.suite``); the older single benches stay
``python -m bench.kv``, ``bench.txn``, ``bench.checkout`` and ``bench.scenarios``."""

from __future__ import annotations

import sys

from bench import suite

USAGE = "usage: python -m bench run [--quick | --tiny] [--peer etcd] [--json] [--results DIR]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "run":
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(suite.main(sys.argv[2:]))
