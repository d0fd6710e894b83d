"""Embedding throughput against raw ``/v1/embeddings``, and the tool loop's own overhead per step.

* **embed() / raw**: the MiniLM embedding server (``rocm-nb pull minilm``,
  2 slots), 64 texts of 256 tokens each. ``model.embed()`` sends them in
  chunks of ``CHUNK`` over the slots; the raw side posts the same chunks
  with a plain httpx client from as many threads as there are slots (the
  same concurrency, the same batching). Repetitions alternate the two, so a
  busy spell of a shared machine hits both alike.
* **tool loop overhead**: ``run_tools`` on the default model (JSON mode,
  the first call required, three steps): the wall time of the loop minus
  the time of its server calls (``props`` and ``chat``, measured around
  each), per step.
  That is what the loop itself costs: building the schemas, validating the
  arguments, calling the tool, writing the transcript.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import NO_TARGET, RAW, REPS, Row, spread

from rocm_nb import LocalModel
from rocm_nb.client.embeddings import CHUNK
from rocm_nb.client.tool_loop import run_tools

TEXTS = 64
SENTENCE = "the quick brown fox jumps over a lazy dog while seven bright stars watch quietly from above"


def _texts(model: LocalModel) -> list[str]:
    vocabulary = SENTENCE.split()  # each word one WordPiece token: 254 words and [CLS] [SEP] make 256
    texts = [" ".join(vocabulary[(i + j) % len(vocabulary)] for j in range(254)) for i in range(TEXTS)]
    assert {len(model.tokenize(t, add_special=True)) for t in texts[:3]} == {256}
    return texts


def _raw(model: LocalModel, texts: list[str], slots: int) -> float:
    headers = {"Authorization": f"Bearer {model.api_key}"}
    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]

    def post(chunk: list[str]) -> Any:
        reply = RAW.post(f"{model.base_url}/v1/embeddings", headers=headers,
                         json={"input": chunk, "encoding_format": "float", "embd_normalize": 2})
        reply.raise_for_status()
        return reply.json()["data"]

    began = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        done = sum(len(d) for d in pool.map(post, chunks))
    assert done == len(texts)
    return len(texts) / (time.perf_counter() - began)


def _ours(model: LocalModel, texts: list[str]) -> float:
    began = time.perf_counter()
    vectors = model.embed(texts, progress=False)
    assert vectors.shape[0] == len(texts)
    return len(texts) / (time.perf_counter() - began)


def bench_embeddings() -> list[Row]:
    slots = 2
    with LocalModel("minilm", embedding=True, parallel=slots) as model:
        texts = _texts(model)
        _ours(model, texts[:8])  # warm up
        ours, raw = [], []
        for rep in range(REPS):
            pair = [lambda: raw.append(_raw(model, texts, slots)), lambda: ours.append(_ours(model, texts))]
            for measure in pair if rep % 2 else reversed(pair):
                measure()
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    return [Row(f"embedding throughput, `embed()` / raw `/v1/embeddings` ({TEXTS} texts × 256 tokens, "
                f"{slots} slots)", "≥ 0.95", spread(ratios), statistics.median(ratios) >= 0.95,
                f"raw {statistics.median(raw):.1f} texts/s")]


def bench_tool_loop(model: LocalModel) -> list[Row]:
    def lookup(word: str) -> str:
        """Translate an English word into French."""
        return {"cat": "chat", "dog": "chien"}.get(word, "?")

    class Timed:  # the model, with the time spent in its server calls (props, chat) counted
        spent = 0.0

        def props(self) -> dict[str, Any]:
            return Timed.timed(model.props)

        def chat(self, *args: Any, **kwargs: Any) -> Any:
            return Timed.timed(lambda: model.chat(*args, **kwargs))

        @staticmethod
        def timed(call: Any) -> Any:
            began = time.perf_counter()
            try:
                return call()
            finally:
                Timed.spent += time.perf_counter() - began

    overheads = []
    for _ in range(REPS):
        Timed.spent = 0.0
        began = time.perf_counter()
        run = run_tools(Timed(), [{"role": "user", "content": "cat in French?"}], [lookup], max_steps=3,
                        tool_choice="required", temperature=0.0, max_tokens=48)
        overheads.append((time.perf_counter() - began - Timed.spent) / run.steps * 1000)
    return [Row("tool loop overhead per step, outside the model's calls (`run_tools`, JSON mode)", NO_TARGET,
                spread(overheads, " ms"), True)]
