"""Speculative decoding against a default raw llama-server, on the fixed workloads.

Each speculation mode is a raw llama-server with that mode's flags, against
one with none (what a user gets from ``llama-server -m model.gguf``), measured
by :func:`variants.compare` (interleaved, fresh servers per repetition,
decode rate from the server's own timings, greedy output compared).

Run alone, writing nothing::

    .venv/bin/python benchmarks/speculative.py              # the shipped mode against off
    SPEC_ALL=1 .venv/bin/python benchmarks/speculative.py   # every candidate that was tried
    SPEC_VARIANTS=off,ngram-mod .venv/bin/python benchmarks/speculative.py  # some of them

``BENCH_REPS`` sets the repetitions (default 7). In ``make bench`` the
figure is registered as ``speculative``.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPS, Row
from variants import compare, table

from rocm_nb._options import NGRAM_FLAGS

SHIPPED = {"off": [], "ngram": list(NGRAM_FLAGS)}
"""What ``speculative="ngram"`` runs, against a default raw llama-server."""

CANDIDATES = {
    "off": [],
    "ngram-simple": ["--spec-type", "ngram-simple"],
    "ngram-mod": ["--spec-type", "ngram-mod"],
    "ngram-map-k": ["--spec-type", "ngram-map-k"],
    "ngram-cache": ["--spec-type", "ngram-cache"],
}
"""Every n-gram mode that was measured (``SPEC_ALL=1``); the README's table has their results."""


def bench_speculative(reps: int = max(3, REPS // 2)) -> list[Row]:
    """``speculative="ngram"`` ÷ off per workload; the target is the issue's (≥ 1.2× geometric mean, none < 0.97)."""
    results = compare(SHIPPED, reps)
    medians = {w: statistics.median(results.ratios("ngram", w)) for w in results.samples["ngram"]}
    geo = results.geomean("ngram")
    worst = min(medians, key=lambda w: medians[w])
    per = "; ".join(f"{w} {m:.2f}" for w, m in medians.items())
    return [Row("decode tokens/s, speculative n-gram ÷ off (raw llama-server), geometric mean over 5 workloads",
                "≥ 1.2, each ≥ 0.97", f"{geo:.3g} (lowest {worst}: {medians[worst]:.2f})",
                geo >= 1.2 and medians[worst] >= 0.97,
                f"{per}; greedy text differed {results.mismatches('ngram')} times")]


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # kill: the servers still stop (compare's finally)
    variants = CANDIDATES if os.environ.get("SPEC_ALL") else SHIPPED
    if os.environ.get("SPEC_VARIANTS"):  # a subset of the candidates, by name, the baseline first
        variants = {name: CANDIDATES[name] for name in os.environ["SPEC_VARIANTS"].split(",")}
    print(table(compare(variants, REPS), REPS))
