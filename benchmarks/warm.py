"""Warm after a restart (issue 23): the first answer after Kernel → Restart, the teardown's cost, the disk.

Three figures, on the default model with ``ctx_size=4096``:

* **Time to first token after a kernel restart, warm ÷ cold.** In a real
  kernel (jupyter_client), ``LocalModel(...).start()`` and the ~2,800-token
  :data:`LONG_PROMPT` streamed once (cold: nothing saved yet), then Kernel →
  Restart (a normal shutdown: the slot is saved), then the same in the fresh
  kernel (its start restores the slot and proves it reused). Each side's time
  is measured in the kernel, from the call to the first piece. The kernel's
  restart is timed too (request → the old llama-server gone).
* **Teardown with and without the save.** ``close()`` → the process gone,
  for a model whose slot holds the restored prompt (the save writes it
  again), and for the same model with ``warm_cache=False``.
* **Disk bytes per cached token**, from the saved file, against the KV
  cache's own size per token (llama.cpp's, as the fit plan counts it).

Each repetition uses a fresh folder (``ROCM_NB_WARM_DIR``). Run alone::

    BENCH_ONLY=warm .venv/bin/python benchmarks/bench.py

``BENCH_REPS`` sets the repetitions (three at least for the kernel figure,
whose cold side reads 2,800 tokens each time).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import NO_TARGET, REPS, Row, spread

from rocm_nb import LocalModel
from rocm_nb.server._warm_store import SAVE_BUDGET, WarmStore
from tests.support.processes import gone

LONG_PROMPT = " ".join(f"Record {i}: on day {i} the harbour master logged {i * 7 % 50 + 3} ships, {i * 3 % 11} of "
                       "them late, and noted the tide." for i in range(93))
"""2,765 tokens for the default model."""

_FIRST_TOKEN = """
import json, time
from rocm_nb import LocalModel
began = time.perf_counter()
m = LocalModel({path!r}, ctx_size=4096).start()
loaded = time.perf_counter() - began
began = time.perf_counter()
stream = m.stream({prompt!r}, max_tokens=8, temperature=0.0, seed=42)
next(iter(stream))
first = time.perf_counter() - began
for _ in stream:
    pass
print(json.dumps({{"first": first, "loaded": loaded, "pid": m.pid, "note": str(m.warm_start or ""),
                  "restored": m.warm_start.tokens if m.warm_start else 0}}))
"""


def _kernel_first_tokens(path: Path, folder: Path) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Cold first token, Kernel → Restart (timed until the old server is gone), warm first token."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "ROCM_NB_WARM_DIR": str(folder)})
    try:
        def run(code: str) -> dict[str, Any]:
            out: list[str] = []
            reply = kc.execute_interactive(code, timeout=900, output_hook=lambda msg: out.append(
                msg["content"]["text"]) if msg["msg_type"] == "stream" else None)
            assert reply["content"]["status"] == "ok", reply["content"]
            answer: dict[str, Any] = json.loads("".join(out).strip().splitlines()[-1])
            return answer

        code = _FIRST_TOKEN.format(path=str(path), prompt=LONG_PROMPT)
        cold = run(code)
        began = time.perf_counter()
        km.restart_kernel(now=False)
        ended = gone(int(cold["pid"]))
        while not ended():
            time.sleep(0.001)
        restart = time.perf_counter() - began
        kc.wait_for_ready(timeout=60)
        warm = run(code)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return cold, warm, restart


def _teardown(path: Path, warm_cache: bool) -> float:
    """``close()`` → the process gone, for a model with the saved long prompt in its slot (or warm_cache off)."""
    model = LocalModel(path, ctx_size=4096, warm_cache=warm_cache).start()
    if not warm_cache:
        model.generate(LONG_PROMPT[:2000], max_tokens=1)  # a slot that holds something, which nothing saves
    pid = model.pid
    assert pid is not None
    began = time.perf_counter()
    model.close()
    ended = gone(pid)
    while not ended():
        time.sleep(0.001)
    return time.perf_counter() - began


def bench_warm(path: Path) -> list[Row]:
    ratios, colds, warms, restarts, loads, notes = [], [], [], [], [], []
    for _ in range(max(3, REPS // 2)):
        with tempfile.TemporaryDirectory(prefix="rocm_nb-bench-warm-") as folder:
            cold, warm, restart = _kernel_first_tokens(path, Path(folder))
        assert warm["restored"] > 2700, warm["note"]
        ratios.append(warm["first"] / cold["first"])
        colds.append(cold["first"])
        warms.append(warm["first"])
        restarts.append(restart)
        loads.append(warm["loaded"] - cold["loaded"])
        notes.append(warm["note"])

    saving, plain, per_token, kv_per_token = [], [], 0.0, 0.0
    before = os.environ.get("ROCM_NB_WARM_DIR")
    with tempfile.TemporaryDirectory(prefix="rocm_nb-bench-warm-") as folder:
        os.environ["ROCM_NB_WARM_DIR"] = folder
        try:
            with LocalModel(path, ctx_size=4096) as model:
                model.generate(LONG_PROMPT, max_tokens=8, temperature=0.0)
                estimate = model.fit.estimate
                kv_per_token = (estimate.kv_ram + estimate.kv_vram) / estimate.ctx_size
            [entry] = WarmStore(Path(folder)).entries()
            per_token = entry.size / entry.tokens
            for _ in range(REPS):
                saving.append(_teardown(path, warm_cache=True))
                plain.append(_teardown(path, warm_cache=False))
            [entry] = WarmStore(Path(folder)).entries()  # each close saved it again
        finally:
            os.environ.pop("ROCM_NB_WARM_DIR")
            if before is not None:
                os.environ["ROCM_NB_WARM_DIR"] = before
    bound = 1.0 + SAVE_BUDGET
    return [
        Row("time to first token after Kernel → Restart, ~2,800-token prompt: warm (restored) ÷ cold", "≤ 0.05",
            spread(ratios), statistics.median(ratios) <= 0.05,
            f"cold {spread(colds, ' s')}, warm {spread(warms, ' s')}; the restore and its proof add "
            f"{spread(loads, ' s')} to the load; {notes[-1]}"),
        Row("Kernel → Restart with a 2,800-token slot to save → its llama-server gone",
            f"≤ {2.0 + SAVE_BUDGET:.0f} s (2 s + the {SAVE_BUDGET:.0f} s save budget)", spread(restarts, " s"),
            max(restarts) <= 2.0 + SAVE_BUDGET),
        Row("teardown: `close()` → process gone, with the save of a 2,800-token slot / without (warm_cache=False)",
            f"with ≤ {bound:.0f} s (1 s + the {SAVE_BUDGET:.0f} s save budget)",
            f"with {spread(saving, ' s')}; without {spread(plain, ' s')}", max(saving) <= bound,
            f"{entry.tokens:,} tokens, {entry.size / 2**20:.0f} MiB written each time"),
        Row("disk bytes per cached token, default model (f16 KV cache)", NO_TARGET,
            f"{per_token / 1024:.1f} KiB/token ({per_token:,.0f} B)", True,
            f"{per_token / kv_per_token:.3f}× the KV cache's own {kv_per_token:,.0f} B/token"),
    ]
