"""Vulkan on Mesa's lavapipe against the CPU backend, and the fit plan against the device memory the server reports.

Two tables (issue 22), printed as Markdown for benchmarks/README.md:

1. **Speed.** The default model with every layer on lavapipe (``backend="vulkan"``)
   and on the CPU backend, same context (512) and one slot, in the same run,
   interleaved (CPU, Vulkan, CPU, Vulkan…). Decode and prefill tokens/s are
   the server's own ``timings`` (``predicted_per_second``, ``prompt_n /
   prompt_ms``): greedy replies of ``DECODE`` tokens, and a ~``PREFILL``-token
   prompt with a unique first word each time (no prompt cache) and one token
   generated. The row is Vulkan ÷ CPU: why a software device is never chosen
   automatically.
2. **Memory.** For full offload and for ``gpu_memory="64MiB"``, per buffer
   kind: rocm_nb's plan (``model.fit.estimate``: weights, KV cache, compute on
   the GPU), what the server allocated on ``Vulkan0`` (its ``-lv 4`` buffer
   lines), and its own projection before loading (``common_memory_breakdown_print``:
   model, context, compute, whole MiB).

Run with ``.venv/bin/python benchmarks/vulkan.py`` after ``make server-vulkan``;
``VULKAN_REPS`` sets the repetitions (default 3). It writes nothing.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

from rocm_nb import LocalModel
from rocm_nb._units import human_bytes

REPS = int(os.environ.get("VULKAN_REPS", "3"))
CTX = 512
DECODE = 16
PREFILL = 48
SENTENCE = "the lighthouse keeper wrote the weather and the tides into his logbook every hour "


def vulkan(**options: object) -> LocalModel:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Vulkan device \d+, .* is a software device")
        return LocalModel(backend="vulkan", ctx_size=CTX, **options).start()  # type: ignore[arg-type]


def speeds(model: LocalModel, rep: int) -> tuple[float, float]:
    """(decode tok/s, prefill tok/s) from the server's own timings."""
    decode = model.generate("Once upon a time", max_tokens=DECODE, temperature=0, cache_prompt=False)
    words = (SENTENCE * 8).split()
    prompt = f"run{rep}-{time.time_ns()} " + " ".join(words[:PREFILL])
    prefill = model.generate(prompt, max_tokens=1, temperature=0, cache_prompt=False)
    assert decode.timings is not None and prefill.timings is not None
    return decode.timings.predicted_per_second, prefill.timings.prompt_tokens / prefill.timings.prompt_ms * 1000


def speed_table() -> str:
    cpu = LocalModel(backend="cpu", ctx_size=CTX).start()
    device = vulkan()
    measured: dict[str, list[tuple[float, float]]] = {"cpu": [], "vulkan": []}
    try:
        for rep in range(REPS):
            for name, model in (("cpu", cpu), ("vulkan", device)):
                measured[name].append(speeds(model, rep))
    finally:
        cpu.close()
        device.close()
    rows = ["| | CPU backend (tok/s) | lavapipe, all layers (tok/s) | lavapipe ÷ CPU (min–max) |",
            "| --- | --- | --- | --- |"]
    for i, what in enumerate(("decode", "prefill")):
        ours = [run[i] for run in measured["vulkan"]]
        theirs = [run[i] for run in measured["cpu"]]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        rows.append(f"| {what} | {statistics.median(theirs):.1f} | {statistics.median(ours):.2f} | "
                    f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |")
    return "\n".join(rows)


def memory_rows(label: str, model: LocalModel) -> list[str]:
    fit, report = model.fit.estimate, model.server.memory_report()
    [device] = report.gpu_devices
    [projection] = [row for row in report.projected if row.device == device.device]
    kinds = (("weights / model", fit.weights_vram, device.bytes_of("model"), projection.model),
             ("KV cache / context", fit.kv_vram, device.bytes_of("KV"), projection.context),
             ("compute", fit.compute_vram, device.bytes_of("compute"), projection.compute),
             ("all", fit.vram, device.total, projection.self))
    rows = []
    for kind, planned, allocated, projected in kinds:
        error = (planned - allocated) / allocated * 100 if allocated else float("nan")
        rows.append(f"| {label} | {kind} | {planned / 2**20:.2f} | {allocated / 2**20:.2f} | "
                    f"{projected / 2**20:.0f} | {error:+.1f} % |")
    return rows


def memory_table() -> str:
    rows = ["| load | buffer | plan (MiB) | allocated on Vulkan0 (MiB) | server's projection (MiB) | plan error |",
            "| --- | --- | --- | --- | --- | --- |"]
    for label, options in (("all layers", {}), ("gpu_memory=64MiB", {"gpu_memory": "64MiB"})):
        with vulkan(**options) as model:
            status = model.status()
            name = f"{label}: {status.offloaded_layers}/{status.layers} layers ({human_bytes(status.vram_bytes or 0)})"
            rows += memory_rows(name, model)
    return "\n".join(rows)


def main() -> None:
    began = time.perf_counter()
    print(speed_table())
    print()
    print(memory_table())
    print(f"\n{REPS} repetitions, {time.perf_counter() - began:.0f} s, load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
