"""What asking for token probabilities costs: decode rate with ``top_logprobs=5`` ÷ without.

Each repetition streams the same greedy continuation twice through
``model.stream()``, once plain and once with ``logprobs=True,
top_logprobs=5`` (the order alternates, so a busy spell of a shared machine
hits both alike), and compares the decode rates the client sees between the
first and the last piece. With logprobs, every event carries the token's
alternatives, which the server must sort for and the client must parse.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from common import GREEDY, PROMPT, REPS, Row, spread

from rocm_nb import LocalModel

TOKENS = 256
TARGET = 0.9


def decode_rate(model: LocalModel, **options: Any) -> tuple[float, int]:
    """Pieces per second between the first and the last piece, and the number of pieces."""
    first = last = 0.0
    pieces = 0
    for _ in model.stream(PROMPT, max_tokens=TOKENS, **GREEDY, **options):
        last = time.perf_counter()
        if not pieces:
            first = last
        pieces += 1
    return (pieces - 1) / (last - first), pieces


def bench_logprobs(model: LocalModel) -> list[Row]:
    ratios, plain_rates = [], []
    for rep in range(REPS):
        runs: dict[bool, tuple[float, int]] = {}
        for with_probs in ((False, True) if rep % 2 == 0 else (True, False)):
            runs[with_probs] = decode_rate(model, logprobs=True, top_logprobs=5) if with_probs else decode_rate(model)
        assert runs[True][1] == runs[False][1], "both runs must decode the same tokens"
        ratios.append(runs[True][0] / runs[False][0])
        plain_rates.append(runs[False][0])
    return [Row("decode rate, `top_logprobs=5` / without", f"≥ {TARGET}", spread(ratios),
                statistics.median(ratios) >= TARGET, f"without: {statistics.median(plain_rates):.1f} tok/s")]
