"""What every benchmark figure shares: the row type, the spread, and the raw llama-server baseline.

``bench.py`` collects the figures; a figure that needs more than a few lines
lives in its own module here and returns a list of :class:`Row`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from rocm_nb import LocalModel

REPS = int(os.environ.get("BENCH_REPS", "7"))
GREEDY = {"temperature": 0.0, "seed": 42}
PROMPT = "Once upon a time, in a faraway kingdom, there lived"


NO_TARGET = "reported, no target"


@dataclass
class Row:
    figure: str
    target: str
    measured: str
    ok: bool
    detail: str = ""


def spread(values: list[float], unit: str = "", scale: float = 1.0) -> str:
    lo, mid, hi = min(values) * scale, statistics.median(values) * scale, max(values) * scale
    return f"{mid:.3g}{unit} (min {lo:.3g}, max {hi:.3g}, n={len(values)})"


# -- the raw baseline ---------------------------------------------------------------------------


# Made once, outside every timing, as a careful user would. No keep-alive: llama-server closes
# the connection after each streamed response, and reusing one before its FIN arrives fails with
# "Server disconnected without sending a response" (rocm_nb keeps none alive to a loopback server either:
# rocm_nb/client/_transports.py says why and what it costs).
RAW = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def raw_stream(base_url: str, api_key: str, max_tokens: int) -> tuple[float, float, int]:
    """Minimal SSE client: returns (ttft s, decode tokens/s between first and last piece, pieces)."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "stream": True, **GREEDY}
    headers = {"Authorization": f"Bearer {api_key}"}
    began = time.perf_counter()
    first = last = 0.0
    pieces = 0
    with RAW.stream("POST", f"{base_url}/v1/completions", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0].get("text")
            if text:
                last = time.perf_counter()
                if not pieces:
                    first = last
                pieces += 1
    return first - began, (pieces - 1) / (last - first), pieces


def ours_stream(model: LocalModel, max_tokens: int) -> tuple[float, float, int]:
    began = time.perf_counter()
    first = last = 0.0
    pieces = 0
    for _ in model.stream(PROMPT, max_tokens=max_tokens, **GREEDY):
        last = time.perf_counter()
        if not pieces:
            first = last
        pieces += 1
    return first - began, (pieces - 1) / (last - first), pieces


def raw_start(argv: list[str]) -> tuple[float, subprocess.Popen[bytes]]:
    port = argv[argv.index("--port") + 1]
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if RAW.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return time.perf_counter() - began, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.001)


def raw_server(flags: Sequence[str], ctx: int = 4096) -> tuple[subprocess.Popen[bytes], str]:
    """A raw llama-server for the default model with ``flags``, in a session of its own, once ``/health`` is 200.

    Returns the process and its base URL; the caller terminates it.
    """
    from rocm_nb._exposure import free_port
    from rocm_nb.binary import find_server
    from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model

    port = free_port()
    argv = [str(find_server().path), "-m", str(resolve_model(DEFAULT_MODEL)), "--host", "127.0.0.1",
            "--port", str(port), "-c", str(ctx), *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited ({proc.returncode}) with flags {list(flags)}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"llama-server with flags {list(flags)} did not become ready within 120 s")
