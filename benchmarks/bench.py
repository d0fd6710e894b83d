"""rocm_nb against raw llama-server, measured in the same run.

Every figure is a ratio or a difference against a baseline written here:
a bare ``subprocess.Popen`` with a tight ``/health`` poll, and a minimal httpx
SSE client. Runs are interleaved (A/B/A/B), repeated, and reported as median
and spread. Decoding is greedy with a fixed seed so both sides decode the
same tokens.

Run with ``make bench``; the table is printed and written into
``benchmarks/README.md`` between the RESULTS markers. ``BENCH_ONLY=map,kernel``
runs only the named figures (names in ``run()``) and prints their rows
without touching the README.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from rocm_nb import Completion, LocalModel
from rocm_nb._exposure import free_port
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, written once for both

import retrieval
from chat_turns import bench_chat_turns
from common import (
    GREEDY,
    NO_TARGET,
    PROMPT,
    REPS,
    Row,
    ours_stream,
    raw_start,
    raw_stream,
    spread,
)
from defaults import bench_defaults
from import_cost import bench_import
from speculative import bench_speculative
from token_probs import bench_logprobs
from warm import bench_warm

from tests.support.processes import gone

README = Path(__file__).with_name("README.md")


# -- figures --------------------------------------------------------------------------------------


def bench_streaming(model: LocalModel) -> list[Row]:
    ours_tps, raw_tps, ttft_delta = [], [], []
    for _ in range(REPS):
        raw = raw_stream(model.base_url, model.api_key, 256)
        mine = ours_stream(model, 256)
        assert raw[2] == mine[2], "both sides must decode the same tokens"
        raw_tps.append(raw[1])
        ours_tps.append(mine[1])
        ttft_delta.append(mine[0] - raw[0])
    ratios = [o / r for o, r in zip(ours_tps, raw_tps, strict=True)]
    ttft = [d * 1000 for d in ttft_delta]
    return [
        Row("decode throughput, `model.stream()` / raw SSE client", "≥ 0.98", spread(ratios),
            statistics.median(ratios) >= 0.98, f"raw {statistics.median(raw_tps):.1f} tok/s"),
        Row("time to first token, `model.stream()` − raw", "≤ 3 ms median", spread(ttft, " ms"),
            statistics.median(ttft) <= 3.0),
    ]


def bench_start(path: Path) -> list[Row]:
    deltas, attach, teardown = [], [], []
    for i in range(REPS):
        ctx = 1024 + 64 * i  # a new config each time: a cold start, never a registry hit
        began = time.perf_counter()
        model = LocalModel(path, ctx_size=ctx).start()
        ours = time.perf_counter() - began
        argv = model.config.argv(free_port())
        model.close()
        raw, proc = raw_start(argv)
        proc.terminate()
        proc.wait()
        deltas.append((ours - raw) * 1000)

        with LocalModel(path, ctx_size=ctx) as first:
            began = time.perf_counter()
            second = LocalModel(path, ctx_size=ctx).start()
            attach.append((time.perf_counter() - began) * 1000)
            assert second.pid == first.pid
            second.close()
            pid = first.pid
            assert pid is not None
            began = time.perf_counter()
        ended = gone(pid)
        while not ended():
            time.sleep(0.001)
        teardown.append(time.perf_counter() - began)
    return [
        Row("`LocalModel` start → ready, minus raw Popen → first 200 from `/health`", "≤ 30 ms",
            spread(deltas, " ms"), statistics.median(deltas) <= 30),
        Row("attach to a running server with the same config (registry reuse)", "≤ 20 ms",
            spread(attach, " ms"), statistics.median(attach) <= 20),
        Row("teardown: `close()` → process gone", "≤ 1 s", spread(teardown, " s"), max(teardown) <= 1.0),
    ]


def bench_memory(model: LocalModel) -> list[Row]:
    gc.collect()
    tracemalloc.start()
    samples: list[tuple[int, int]] = []
    text_bytes = 0
    stream = model.stream(PROMPT, max_tokens=2000, **GREEDY)
    for n, piece in enumerate(stream, 1):
        text_bytes += len(piece.encode())
        if n % 100 == 0:
            samples.append((n, tracemalloc.get_traced_memory()[0]))
    tracemalloc.stop()
    (n0, m0), (n1, m1) = samples[1], samples[-1]
    per_token = (m1 - m0) / (n1 - n0)
    text_per_token = text_bytes / n1
    # the text itself is kept (it is the result): allow its size plus list slots
    ok = per_token <= text_per_token + 120
    return [Row("Python-side memory while streaming 2,000 tokens", "flat (no growth per token)",
                f"{per_token:.0f} B/token over tokens {n0}–{n1} (the text itself is {text_per_token:.0f} B/token)",
                ok)]


def bench_kernel(path: Path) -> list[Row]:
    """%%rocm_generate in a real kernel: token delivery to iopub against raw decoding."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=[])
    try:
        def iopub(msg_id: str, until: Callable[[dict[str, Any]], bool]) -> list[tuple[float, dict[str, Any]]]:
            seen: list[tuple[float, dict[str, Any]]] = []
            while True:
                msg = kc.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                seen.append((time.perf_counter(), msg))
                if until(msg):
                    return seen

        def idle(msg: dict[str, Any]) -> bool:
            return bool(msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")

        def execute(code: str) -> list[tuple[float, dict[str, Any]]]:
            return iopub(kc.execute(code), idle)

        execute(f"%load_ext rocm_nb\n%rocm_load {path} --ctx-size 4096 --alias bench")
        out = execute("m = get_ipython().magics_manager.registry['RocmMagics'].models['bench']; "
                      "print(m.base_url, m.api_key, m.pid)")
        base_url, api_key, pid = next(str(m["content"]["text"]).split() for _, m in out if m["msg_type"] == "stream")
        ratios, rates = [], []
        for _ in range(max(3, REPS // 2)):
            _, raw_tps, pieces = raw_stream(base_url, api_key, 400)
            cell = f"%%rocm_generate --raw --max-tokens 400 --temperature 0 --seed 42 --out r\n{PROMPT}"
            msgs = [(t, m) for t, m in execute(cell) if m["msg_type"] in ("display_data", "update_display_data")]
            texts = [(t, str(m["content"]["data"]["text/plain"])) for t, m in msgs]
            with_text = [(t, x) for t, x in texts if x.strip("▌ ")]
            duration = with_text[-1][0] - with_text[0][0]
            ratios.append(((pieces - 1) / duration) / raw_tps)
            rates.append(len(msgs) / (msgs[-1][0] - msgs[0][0]))
        latencies = []  # Kernel → Interrupt while tokens stream, until the cell's execute_reply
        for _ in range(max(3, REPS // 2)):
            msg_id = kc.execute(f"%%rocm_generate --max-tokens 3000 --temperature 0\n{PROMPT}")
            for _ in range(3):  # tokens are streaming
                iopub(msg_id, lambda m: m["msg_type"] == "update_display_data")
            began = time.perf_counter()
            km.interrupt_kernel()
            while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
                pass
            latencies.append(time.perf_counter() - began)
            iopub(msg_id, idle)
        began = time.perf_counter()
        km.shutdown_kernel(now=False)
        ended = gone(int(pid))
        while not ended():
            time.sleep(0.001)
        teardown = time.perf_counter() - began
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
    return [Row("`%%rocm_generate` in a real kernel: tokens reaching iopub per second / raw decode rate",
                "≥ 0.95, ≤ 30 display messages/s",
                f"{spread(ratios)}; {spread(rates, ' msg/s')}",
                statistics.median(ratios) >= 0.95 and max(rates) <= 30),
            Row("Kernel → Interrupt during `%%rocm_generate` → the cell's reply", "< 1 s",
                spread(latencies, " s"), max(latencies) < 1.0),
            Row("kernel shutdown → its llama-server gone", "≤ 2 s", f"{teardown:.3g} s", teardown <= 2.0)]


def bench_files(path: Path) -> list[Row]:
    """GGUF headers without the server: a cold `read_info`, `pull()` of a cached model, a 70B-sized library scan."""
    from rocm_nb import models
    from rocm_nb.hardware import Hardware
    from rocm_nb.modelfiles.catalog import _read_info_cached, pull, read_info
    from tests.support.gguf_files import write_huge_gguf

    header, pulled, scanned = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        huge = Path(tmp) / "huge" / "huge-70b.Q4_0.gguf"
        write_huge_gguf(huge)  # sparse: 40 GB of which only the header is on disk
        for _ in range(REPS):
            _read_info_cached.cache_clear()  # cold: nothing read before
            began = time.perf_counter()
            read_info(path)
            header.append(time.perf_counter() - began)
            began = time.perf_counter()
            pull(DEFAULT_MODEL)
            pulled.append(time.perf_counter() - began)
            _read_info_cached.cache_clear()
            began = time.perf_counter()
            models(huge.parent, environ={"ROCM_NB_CACHE": tmp, "HF_HUB_CACHE": tmp},
                   hardware=Hardware("cpu", (), None, ()))
            scanned.append(time.perf_counter() - began)
    return [
        Row("`read_info()` of the default model, cold (gguf.GGUFReader: ~2 s)", "< 0.5 s",
            spread(header, " ms", 1000), max(header) < 0.5),
        Row("`pull()` of a model already in the cache (no pip, no hashing)", "< 0.1 s",
            spread(pulled, " ms", 1000), max(pulled) < 0.1),
        Row("`models()` over a sparse 40 GB GGUF (header only)", "< 1 s",
            spread(scanned, " ms", 1000), max(scanned) < 1.0),
    ]


def bench_rpc(path: Path) -> list[Row]:
    """Decode speed with the layers split over two local RPC workers, against one process."""
    from rocm_nb import rpc_worker

    ratios, single_tps = [], []
    with rpc_worker() as a, rpc_worker() as b, LocalModel(path, ctx_size=2048) as single, LocalModel(
        path, ctx_size=2048, rpc=[a.address, b.address]
    ) as split:
        ours_stream(split, 16)
        for _ in range(max(3, REPS // 2)):
            one = ours_stream(single, 128)
            two = ours_stream(split, 128)
            assert one[2] == two[2]
            ratios.append(two[1] / one[1])
            single_tps.append(one[1])
    return [Row("decode tokens/s through 2 local RPC workers / one process (same run)", NO_TARGET,
                spread(ratios), True, f"one process {statistics.median(single_tps):.1f} tok/s")]


def bench_map(path: Path, prompts: int = 16, slots: int = 4) -> list[Row]:
    """``model.map()`` over the server's slots against a loop of ``chat()``, same server, alternating order."""
    questions = [f"Write two sentences about the number {i}." for i in range(prompts)]
    options = {"max_tokens": 64, **GREEDY}
    speedups, loop_times, map_times, step_ratios = [], [], [], []
    with LocalModel(path, ctx_size=1024 * slots, parallel=slots) as model:
        model.map(questions[:slots], progress=False, **options)  # warm up
        for rep in range(max(3, REPS // 2)):
            timed: dict[str, tuple[float, list[str]]] = {}
            steps: dict[str, float] = {}
            for side in ("loop", "map") if rep % 2 == 0 else ("map", "loop"):
                decodes = model.metrics()["llamacpp:n_decode_total"]
                began = time.perf_counter()
                if side == "loop":
                    texts = [model.chat([{"role": "user", "content": q}], **options).text for q in questions]
                else:
                    texts = [r.text if isinstance(r, Completion) else repr(r)
                             for r in model.map(questions, progress=False, **options)]
                timed[side] = (time.perf_counter() - began, texts)
                steps[side] = model.metrics()["llamacpp:n_decode_total"] - decodes
            assert timed["loop"][1] == timed["map"][1], "both sides must decode the same tokens, in order"
            speedups.append(timed["loop"][0] / timed["map"][0])
            loop_times.append(timed["loop"][0])
            map_times.append(timed["map"][0])
            step_ratios.append(steps["loop"] / steps["map"])
    return [Row(f"`model.map()` over {prompts} prompts, parallel {slots} / sequential `chat()` loop (speed-up)",
                NO_TARGET, spread(speedups, "×"), True,
                f"loop {spread(loop_times, ' s')}, map {spread(map_times, ' s')}; the server ran "
                f"{statistics.median(step_ratios):.1f}× fewer decode steps; 64 tokens each at most")]


_IN_PROCESS = """
import json, sys, time
from llama_cpp import Llama
path, prompt, max_tokens, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=2048, n_threads=2, verbose=False, seed=42)
out = []
for _ in range(reps + 1):
    began = time.perf_counter(); first = last = 0.0; pieces = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["text"]:
            last = time.perf_counter(); first = first or last; pieces += 1
    out.append([first - began, (pieces - 1) / (last - first), pieces])
print(json.dumps(out[1:]))
"""


def bench_in_process(model: LocalModel) -> list[Row]:
    """llama-cpp-python's in-process ``Llama`` against raw llama-server, same run.

    It needs a Python with llama-cpp-python built for this machine, named by
    ``BENCH_LLAMA_CPP_PYTHON`` (building it compiles all of llama.cpp: see README).
    """
    python = os.environ.get("BENCH_LLAMA_CPP_PYTHON")
    figure = "decode throughput, llama-cpp-python `Llama` (in-process) / raw llama-server"
    if not python:
        return [Row(figure, NO_TARGET, "not measured: BENCH_LLAMA_CPP_PYTHON unset", True)]
    reps = max(3, REPS // 2)
    raw = [raw_stream(model.base_url, model.api_key, 256) for _ in range(reps)]
    done = subprocess.run([python, "-c", _IN_PROCESS, str(model.path), PROMPT, "256", str(reps)],
                          capture_output=True, text=True, check=True)
    theirs = json.loads(done.stdout)
    ratios = [t[1] / r[1] for t, r in zip(theirs, raw, strict=True)]
    ttft = [(t[0] - r[0]) * 1000 for t, r in zip(theirs, raw, strict=True)]
    return [Row(figure, NO_TARGET, f"{spread(ratios)}; first token {spread(ttft, ' ms')} vs raw",
                True, f"raw {statistics.median(r[1] for r in raw):.1f} tok/s")]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")


def render(rows: list[Row], model: LocalModel, seconds: float) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; backend {model.backend}, "
        f"model {model.path.name}, llama-server {model.binary.version}; {REPS} repetitions; "
        f"took {seconds:.0f} s. Command: `make bench`.",
        "",
        "| figure | target | measured (median, spread) | met |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        detail = f" — {row.detail}" if row.detail else ""
        met = "–" if row.target == NO_TARGET else "yes" if row.ok else "**no**"
        lines.append(f"| {row.figure} | {row.target} | {row.measured}{detail} | {met} |")
    return "\n".join(lines)


def write_readme(table: str) -> None:
    text = README.read_text()
    start, end = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    README.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def run() -> None:
    began = time.perf_counter()
    # the prompt caches the figures' models save stay out of the user's own (~/.cache/rocm_nb/warm)
    os.environ.setdefault("ROCM_NB_WARM_DIR", tempfile.mkdtemp(prefix="rocm_nb-bench-warm-"))
    path = resolve_model(DEFAULT_MODEL)
    rows: list[Row] = []
    with LocalModel(path, ctx_size=4096) as model:
        figures: dict[str, Callable[[], list[Row]]] = {
            "streaming": lambda: bench_streaming(model),
            "chat_turns": lambda: bench_chat_turns(model),
            "speculative": bench_speculative,
            "defaults": bench_defaults,
            "memory": lambda: bench_memory(model),
            "in_process": lambda: bench_in_process(model),
            "start": lambda: bench_start(path),
            "kernel": lambda: bench_kernel(path),
            "rpc": lambda: bench_rpc(path),
            "map": lambda: bench_map(path),
            "files": lambda: bench_files(path),
            "import": bench_import,
            "retrieval": lambda: retrieval.bench_embeddings() + retrieval.bench_tool_loop(model),
            "logprobs": lambda: bench_logprobs(model),
            "widget_rate": lambda: __import__("widget_rate").bench_widget_rate(model),  # benchmarks/widget_rate.py
            "vision": lambda: __import__("vision").bench_vision(),  # benchmarks/vision.py: its own tiny vision model
            "warm": lambda: bench_warm(path),
        }
        only = [name for name in os.environ.get("BENCH_ONLY", "").split(",") if name]
        unknown = set(only) - set(figures)
        if unknown:
            raise SystemExit(f"BENCH_ONLY: no figure called {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(figures)}")
        ours_stream(model, 16)  # warm up
        for name, figure in figures.items():
            if not only or name in only:
                rows += figure()
        table = render(rows, model, time.perf_counter() - began)
    print(table)
    if not only:  # a partial run must not replace the full table
        write_readme(table)


if __name__ == "__main__":
    run()
