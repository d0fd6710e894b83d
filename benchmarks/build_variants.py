"""Decode rate of llama-server builds against each other, in the same run, interleaved.

Usage::

    .venv/bin/python benchmarks/build_variants.py LABEL=/path/to/llama-server LABEL2=/path/to/other ...

Each binary serves the default model (CPU, greedy, ``-c 512``); the runs are
interleaved (A/B/A/B…) ``BENCH_REPS`` times, and each build's median decode
rate is printed with its ratio to the first build's. This is the measurement
behind the choice of cache layout in ``benchmarks/README.md`` ("Which
llama-server build").
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import REPS, raw_start, raw_stream

from rocm_nb._exposure import free_port
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model

TOKENS = 128


def main(specs: list[str]) -> None:
    model = resolve_model(DEFAULT_MODEL)
    servers = []
    for spec in specs:
        label, _, path = spec.partition("=")
        port, key = free_port(), "bench"
        _, proc = raw_start([path, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--api-key", key,
                             "-c", "512", "-ngl", "0", "--parallel", "1"])
        servers.append((label, f"http://127.0.0.1:{port}", key, proc))
    rates: dict[str, list[float]] = {label: [] for label, *_ in servers}
    try:
        for _ in range(REPS + 1):
            for label, url, key, _proc in servers:
                rates[label].append(raw_stream(url, key, TOKENS)[1])
        first = statistics.median(rates[servers[0][0]][1:])  # the first round warms each server up
        for label, values in rates.items():
            median = statistics.median(values[1:])
            print(f"{label}: {median:.1f} tok/s (min {min(values[1:]):.1f}, max {max(values[1:]):.1f}, "
                  f"n={len(values) - 1}), {median / first:.3f} of {servers[0][0]}")
    finally:
        for *_, proc in servers:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    os.environ.setdefault("BENCH_REPS", "7")
    main(sys.argv[1:])
