"""Is greedy decoding on this CPU the same whether tokens are computed one at a time or as a batch?

Speculative decoding checks drafted tokens as a batch; when its greedy text
differs from plain decoding, the question is whether speculation is wrong or
batching alone changes the arithmetic. This answers it with no speculation
at all, on raw llama-server's native ``/completion`` with token ids:

1. decode the copy/edit workload's reply greedily, one token at a time (A),
   with the two best tokens' log-probabilities at each step;
2. for k = 20, 40, …: send the prompt plus A's first k tokens as the prompt
   (computed as one batch) and decode 40 more greedily;
3. count the continuations that differ from A's own tokens k, k+1, …, and
   for each, the gap between A's two best tokens where it parts.

With batch-invariant arithmetic none would differ. Where one does, the gap
says how close a tie the batch shape tipped: ``tests/support/decoding.py``
allows texts compared across batch shapes to part only at such a near-tie
(``NEAR_TIE``), so the largest gap seen here is what that bound must exceed.
Run with ``.venv/bin/python benchmarks/batch_invariance.py`` (set
``ROCM_NB_LLAMA_SERVER`` to try another build); it writes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
from workloads import WORKLOADS

from rocm_nb import LocalModel

STEP, CONTINUE = 20, 40


def greedy(model: LocalModel, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """``n`` greedily decoded token ids after the token ids ``prompt`` (no prompt cache), and each step's top-2 gap."""
    body: dict[str, Any] = {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": False,
                            "n_probs": 2, "samplers": ["top_k"], "top_k": 1}
    reply = httpx.post(f"{model.base_url}/completion", json=body, timeout=600,
                       headers={"Authorization": f"Bearer {model.api_key}"})
    reply.raise_for_status()
    steps = reply.json()["completion_probabilities"]
    gaps = [step["top_logprobs"][0]["logprob"] - step["top_logprobs"][1]["logprob"] for step in steps]
    return [int(step["id"]) for step in steps], gaps


def main() -> None:
    workload = WORKLOADS[0]
    with LocalModel("smollm2-135m", ctx_size=4096) as model:
        prompt = model.tokenize(model.apply_template([{"role": "user", "content": workload.turns[0]}]),
                                add_special=True)
        reply, gaps = greedy(model, prompt, workload.max_tokens)
        differ = []
        for k in range(STEP, len(reply) - CONTINUE, STEP):
            again, _ = greedy(model, prompt + reply[:k], CONTINUE)
            if again != reply[k:k + len(again)]:
                first = next(i for i, (x, y) in enumerate(zip(again, reply[k:], strict=False)) if x != y)
                differ.append((k, k + first, gaps[k + first]))
        tried = len(range(STEP, len(reply) - CONTINUE, STEP))
        print(f"{workload.name} ({model.binary.path}): {len(reply)} tokens decoded one at a time; "
              f"{len(differ)} of {tried} continuations from a batch-computed prefix differ: "
              + (", ".join(f"k={k} (token {at}, top-2 gap {gap:.4f} nats)" for k, at, gap in differ) or "none"))
        if differ:
            print(f"largest gap where a continuation parts: {max(gap for *_, gap in differ):.4f} nats; "
                  f"smallest gap anywhere in the reply: {min(gaps):.4f}, median {sorted(gaps)[len(gaps) // 2]:.4f}")


if __name__ == "__main__":
    main()
