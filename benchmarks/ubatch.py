"""Prefill throughput and cancel-during-prefill latency against llama-server's batch sizes.

llama-server checks for a closed connection only between the batches it
decodes, so a prompt cancelled during prefill keeps the server busy until the
batch in progress ends. This measures, on raw llama-server with the default
model, for each ``(--batch-size, --ubatch-size)`` pair:

* **prefill throughput**: the server's own ``prompt_per_second`` for a
  ~1,500-token prompt (``cache_prompt`` off, a unique prefix every time, one
  token generated), as a ratio to llama-server's defaults (2048/512);
* **cancel latency**: a streamed request for the same prompt is closed
  ``CANCEL_AT`` of the way into its expected prefill; the figure is the time
  from the close until ``/metrics`` reports no request in flight (polled
  every 50 ms, so the poll takes little CPU from the prefill): how long the
  next request would wait. Next to it, the prefill time that was left at
  the close (from the measured throughput): equal figures mean the server
  finished the prefill before it noticed the cancel.

All servers run at once and every repetition visits them in a rotated order
(interleaved), so a busy spell of a shared machine hits them alike. Run with
``.venv/bin/python benchmarks/ubatch.py``; ``UBATCH_REPS`` sets repetitions.
"""

from __future__ import annotations

import os
import statistics
import time

import httpx
from common import raw_server

REPS = int(os.environ.get("UBATCH_REPS", "7"))
CONFIGS = [(2048, 512), (2048, 128), (512, 512), (256, 256), (128, 128)]
"""(--batch-size, --ubatch-size); the first is llama-server's default and the baseline."""
CANCEL_AT = 0.3
PROMPT_TOKENS = 1500
SENTENCE = "The lighthouse keeper wrote the weather, the ships and the tides into his logbook every hour. "


def long_prompt(url: str) -> str:
    """About PROMPT_TOKENS tokens of plain prose."""
    per = len(httpx.post(f"{url}/tokenize", json={"content": SENTENCE}).json()["tokens"])
    return SENTENCE * (PROMPT_TOKENS // per)


def prefill(url: str, prompt: str, tag: str) -> tuple[float, int]:
    """The server's prompt tokens/s and prompt token count for one uncached prefill."""
    body = {"prompt": f"[{tag}] {prompt}", "max_tokens": 1, "temperature": 0, "cache_prompt": False}
    timings = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()["timings"]
    return float(timings["prompt_per_second"]), int(timings["prompt_n"])


def processing(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=300).text.splitlines():
        if line.startswith("llamacpp:requests_processing "):
            return float(line.split()[1])
    raise RuntimeError("no requests_processing in /metrics")


def cancel(url: str, prompt: str, tag: str, expected_s: float) -> tuple[float, float]:
    """Seconds from closing a stream mid-prefill until the server reports nothing in flight, and the prefill left."""
    body = {"prompt": f"[{tag}] {prompt}", "max_tokens": 64, "temperature": 0, "cache_prompt": False,
            "stream": True}
    with httpx.Client(timeout=300) as client:
        request = client.build_request("POST", f"{url}/v1/completions", json=body)
        began = time.perf_counter()
        response = client.send(request, stream=True)  # headers come before the prefill starts
        time.sleep(max(CANCEL_AT * expected_s - (time.perf_counter() - began), 0.0))
        response.close()
        closed = time.perf_counter()
    while processing(url) != 0:
        time.sleep(0.05)
    return time.perf_counter() - closed, expected_s - (closed - began)


def main() -> None:
    servers = {cfg: raw_server(["--parallel", "1", "--metrics", "-b", str(cfg[0]), "-ub", str(cfg[1])])
               for cfg in CONFIGS}
    try:
        prompt = long_prompt(servers[CONFIGS[0]][1])
        rates: dict[tuple[int, int], list[float]] = {cfg: [] for cfg in CONFIGS}
        cancels: dict[tuple[int, int], list[float]] = {cfg: [] for cfg in CONFIGS}
        left: dict[tuple[int, int], list[float]] = {cfg: [] for cfg in CONFIGS}
        n_tokens = 0
        for cfg in CONFIGS:  # warm-up, not counted
            prefill(servers[cfg][1], prompt, "warm")
        for rep in range(REPS):
            order = CONFIGS[rep % len(CONFIGS):] + CONFIGS[:rep % len(CONFIGS)]
            for cfg in order:
                rate, n_tokens = prefill(servers[cfg][1], prompt, f"p{rep}")
                rates[cfg].append(rate)
            for cfg in order:
                expected = n_tokens / statistics.median(rates[cfg])
                latency, remaining = cancel(servers[cfg][1], prompt, f"c{rep}", expected)
                cancels[cfg].append(latency)
                left[cfg].append(remaining)
            print(f"rep {rep + 1}/{REPS} done", flush=True)
        base = statistics.median(rates[CONFIGS[0]])
        print(f"\nprompt: {n_tokens} tokens; {REPS} interleaved repetitions; cancel at {CANCEL_AT:.0%} of the prefill")
        print("| -b / -ub | prefill tok/s (median, min–max) | ÷ default | cancel → server free (median, min–max) "
              "| prefill left at the close (median) |")
        print("| --- | --- | --- | --- | --- |")
        for cfg in CONFIGS:
            r, c = rates[cfg], cancels[cfg]
            print(f"| {cfg[0]} / {cfg[1]} | {statistics.median(r):.0f} ({min(r):.0f}–{max(r):.0f}) | "
                  f"{statistics.median(r) / base:.3f} | {statistics.median(c):.2f} s "
                  f"({min(c):.2f}–{max(c):.2f}) | {statistics.median(left[cfg]):.2f} s |")
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
