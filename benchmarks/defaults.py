"""llama-server's other defaults against the alternatives, measured the way speculation is.

Raw llama-server with its defaults against the same with one flag changed
(:func:`variants.compare`: interleaved, fresh servers per repetition,
greedy, the server's own timings), on two of the fixed workloads: free prose
(one long reply) and the multi-turn chat (four turns, each reusing the
prompt cache of the ones before). Two figures per variant: decode tokens/s ÷
the default's, and prompt processing time over the chat's turns ÷ the
default's (lower is better; this is where ``--cache-reuse`` could help).

* ``--threads``: llama-server's default is the number of *physical* cores
  (``common_cpu_get_num_math``), which is what rocm_nb would pass; the row
  says so when the two are the same number on this machine (then there is
  nothing to measure).
* flash attention: ``auto`` (the default) against ``off``. ``auto`` resolves
  per device by probing the op (``llama-context.cpp``); the CPU backend has
  it, so on a CPU build ``auto`` *is* ``on`` and ``on`` is not measured apart.
* ``--cache-reuse 256`` (reuse cached chunks of ≥ 256 tokens by shifting the
  KV cache) against 0 (off, the default).

The batch sizes (``--ubatch-size``, with a cancel during prefill) are
measured by ``benchmarks/ubatch.py``. Run alone, writing nothing::

    BENCH_REPS=3 .venv/bin/python benchmarks/defaults.py
    DEFAULTS_WORKLOADS=multi-turn BENCH_REPS=2 .venv/bin/python benchmarks/defaults.py  # the chat only
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import NO_TARGET, REPS, Row
from variants import Results, compare, table
from workloads import WORKLOADS

PHYSICAL = psutil.cpu_count(logical=False) or 1
CHOSEN = [w for w in WORKLOADS if w.name.startswith(tuple(os.environ.get("DEFAULTS_WORKLOADS",
                                                                         "free prose,multi-turn").split(",")))]
"""Free prose and the multi-turn chat; ``DEFAULTS_WORKLOADS=multi-turn`` (name prefixes) picks others."""
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "flash attention off": ["--flash-attn", "off"],
    "--cache-reuse 256": ["--cache-reuse", "256"],
}
if psutil.cpu_count(logical=True) != PHYSICAL:  # else llama-server's default is this very number
    VARIANTS[f"--threads {PHYSICAL}"] = ["--threads", str(PHYSICAL)]


def prompt_ratios(results: Results, variant: str) -> list[float]:
    """The chat workload's prompt processing time (all turns) ÷ the default's, per repetition."""
    chat = next(w for w in results.samples[variant] if w.startswith("multi-turn"))
    base = results.samples[results.variants[0]][chat]
    return [s.prompt_ms / b.prompt_ms for s, b in zip(results.samples[variant][chat], base, strict=True)]


def bench_defaults(reps: int = max(3, REPS // 2)) -> list[Row]:
    """One row per alternative: decode ÷ default (both workloads) and the chat's prompt time ÷ default."""
    results = compare(VARIANTS, reps, CHOSEN)
    rows = []
    for variant in results.variants[1:]:
        decode = [r for w in results.samples[variant] for r in results.ratios(variant, w)]
        prompt = prompt_ratios(results, variant)
        rows.append(Row(f"raw llama-server {variant} ÷ its default: decode tokens/s; chat prompt time",
                        NO_TARGET,
                        f"decode {statistics.median(decode):.3g} (min {min(decode):.3g}, max {max(decode):.3g}); "
                        f"prompt time {statistics.median(prompt):.3g} (min {min(prompt):.3g}, "
                        f"max {max(prompt):.3g}), n={reps}", True))
    if f"--threads {PHYSICAL}" not in VARIANTS:
        rows.append(Row("`--threads` physical cores vs llama-server's choice", NO_TARGET,
                        f"the same number here ({PHYSICAL}): llama-server's default is the physical core count",
                        True))
    return rows


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    measured = compare(VARIANTS, REPS, CHOSEN)
    print(table(measured, REPS))
    for name in measured.variants[1:]:
        ratios = prompt_ratios(measured, name)
        print(f"{name}: chat prompt time ÷ default {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
