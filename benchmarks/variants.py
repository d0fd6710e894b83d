"""Raw llama-server with different flags, measured on the fixed workloads, interleaved.

:func:`compare` starts one raw llama-server per variant (the default model,
``-c 4096``, the variant's extra flags, nothing else), then for each
repetition runs every workload of :mod:`workloads` on every variant, in an
order rotated per repetition and per workload, so a busy spell of a shared
machine hits the variants alike. Each repetition gets fresh servers: the
n-gram speculators keep state across requests, and a server that has already
seen a workload's answer drafts it from memory (the issue measured 2.2× on a
repeated count, 1.0× on the first try); fresh servers measure a session's
first encounter with each workload, which is what a user gets.

A workload's decode rate is the sum of the server's ``predicted_n`` over its
turns divided by the sum of ``predicted_ms`` (prefill is not counted); the
figure per variant is that rate ÷ the first variant's (the baseline) in the
same repetition. Greedy decoding (temperature 0, fixed seed): every variant
must produce the same text, and :func:`compare` counts where one did not.

Run alone with ``.venv/bin/python benchmarks/speculative.py`` (see there).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from common import raw_server
from workloads import WORKLOADS, Workload

GREEDY = {"temperature": 0.0, "seed": 42}


@dataclass
class Sample:
    """One workload on one variant in one repetition."""

    tokens: int
    decode_ms: float
    prompt_ms: float
    first_turn_prompt_ms: float
    last_turn_prompt_ms: float
    drafted: int
    accepted: int
    text: str

    @property
    def rate(self) -> float:
        return self.tokens / (self.decode_ms / 1000)


@dataclass
class Results:
    """Every sample, by variant then workload name, in repetition order."""

    variants: list[str]
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)

    def ratios(self, variant: str, workload: str) -> list[float]:
        base = self.samples[self.variants[0]][workload]
        return [s.rate / b.rate for s, b in zip(self.samples[variant][workload], base, strict=True)]

    def mismatches(self, variant: str) -> int:
        base = self.samples[self.variants[0]]
        return sum(s.text != b.text for w in base for s, b in zip(self.samples[variant][w], base[w], strict=True))

    def geomean(self, variant: str) -> float:
        medians = [statistics.median(self.ratios(variant, w)) for w in self.samples[variant]]
        return math.exp(sum(math.log(m) for m in medians) / len(medians))

    def acceptance(self, variant: str) -> float | None:
        drafted = sum(s.drafted for w in self.samples[variant].values() for s in w)
        accepted = sum(s.accepted for w in self.samples[variant].values() for s in w)
        return accepted / drafted if drafted else None


def run_session(client: httpx.Client, url: str, workload: Workload, **options: Any) -> Sample:
    """Every turn of ``workload``; each reply joins the conversation."""
    messages: list[dict[str, str]] = []
    tokens = drafted = accepted = 0
    decode_ms = prompt_ms = first_prompt = last_prompt = 0.0
    texts = []
    for turn, content in enumerate(workload.turns):
        messages.append({"role": "user", "content": content})
        body = {"messages": messages, "max_tokens": workload.max_tokens, **GREEDY, **options}
        reply = client.post(f"{url}/v1/chat/completions", json=body).json()
        text = reply["choices"][0]["message"]["content"]
        timings = reply["timings"]
        messages.append({"role": "assistant", "content": text})
        texts.append(text)
        tokens += timings["predicted_n"]
        decode_ms += timings["predicted_ms"]
        prompt_ms += timings["prompt_ms"]
        first_prompt = timings["prompt_ms"] if turn == 0 else first_prompt
        last_prompt = timings["prompt_ms"]
        drafted += timings.get("draft_n", 0)
        accepted += timings.get("draft_n_accepted", 0)
    return Sample(tokens, decode_ms, prompt_ms, first_prompt, last_prompt, drafted, accepted, "\n".join(texts))


def compare(variants: Mapping[str, Sequence[str]], reps: int, workloads: Sequence[Workload] = WORKLOADS,
            **options: Any) -> Results:
    """Measure every variant (name → extra flags; the first is the baseline) on ``workloads``."""
    names = list(variants)
    results = Results(names, {n: {w.name: [] for w in workloads} for n in names})
    with httpx.Client(timeout=600) as client:
        for rep in range(reps):
            servers = {name: raw_server(["--jinja", *flags]) for name, flags in variants.items()}
            try:
                for i, workload in enumerate(workloads):
                    shift = (rep + i) % len(names)
                    for name in names[shift:] + names[:shift]:
                        sample = run_session(client, servers[name][1], workload, **options)
                        results.samples[name][workload.name].append(sample)
                        print(f"    {rep + 1} {workload.name[:24]:24} {name:18} {sample.rate:7.2f} tok/s "
                              f"{sample.tokens:4} tokens, drafted {sample.drafted}, accepted {sample.accepted}",
                              flush=True)
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait(10)
    return results


def table(results: Results, reps: int) -> str:
    """A Markdown table: per workload, each variant's decode rate ÷ the baseline's (median, min–max)."""
    base = results.variants[0]
    others = results.variants[1:]
    lines = [f"| workload | {base} tok/s (median) | " + " | ".join(f"{v} ÷ {base}" for v in others) + " |",
             "| --- | --- |" + " --- |" * len(others)]
    for workload in results.samples[base]:
        rate = statistics.median(s.rate for s in results.samples[base][workload])
        cells = []
        for v in others:
            r = results.ratios(v, workload)
            cells.append(f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})")
        lines.append(f"| {workload} | {rate:.1f} | " + " | ".join(cells) + " |")
    lines.append("| **geometric mean** | | " + " | ".join(f"**{results.geomean(v):.2f}**" for v in others) + " |")
    accept = [results.acceptance(v) for v in others]
    lines.append("| draft acceptance | | " + " | ".join("–" if a is None else f"{a:.0%}" for a in accept) + " |")
    lines.append("| greedy text ≠ baseline | | " + " | ".join(
        f"{results.mismatches(v)} of {reps * len(results.samples[base])}" for v in others) + " |")
    return "\n".join(lines)
