"""Is greedy decoding on this CPU the same whether tokens are computed one at a time or as a batch?

Speculative decoding checks drafted tokens as a batch; when its greedy text
differs from plain decoding, the question is whether speculation is wrong or
batching alone changes the arithmetic. This answers it with no speculation
at all, on raw llama-server's native ``/completion`` with token ids:

1. decode the copy/edit workload's reply greedily, one token at a time (A);
2. for k = 20, 40, …: send the prompt plus A's first k tokens as the prompt
   (computed as one batch) and decode 40 more greedily;
3. count the continuations that differ from A's own tokens k, k+1, ….

With batch-invariant arithmetic none would differ. Run with
``.venv/bin/python benchmarks/batch_invariance.py``; it writes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
from workloads import WORKLOADS

from rocm_nb import LocalModel

STEP, CONTINUE = 20, 40


def greedy_ids(model: LocalModel, prompt: list[int], n: int) -> list[int]:
    """The ids of ``n`` greedily decoded tokens after the token ids ``prompt`` (no prompt cache)."""
    body: dict[str, Any] = {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": False,
                            "n_probs": 1, "samplers": ["top_k"], "top_k": 1}
    reply = httpx.post(f"{model.base_url}/completion", json=body, timeout=600,
                       headers={"Authorization": f"Bearer {model.api_key}"})
    reply.raise_for_status()
    return [int(entry["id"]) for entry in reply.json()["completion_probabilities"]]


def main() -> None:
    workload = WORKLOADS[0]
    with LocalModel("smollm2-135m", ctx_size=4096) as model:
        prompt = model.tokenize(model.apply_template([{"role": "user", "content": workload.turns[0]}]),
                                add_special=True)
        reply = greedy_ids(model, prompt, workload.max_tokens)
        differ = []
        for k in range(STEP, len(reply) - CONTINUE, STEP):
            again = greedy_ids(model, prompt + reply[:k], CONTINUE)
            if again != reply[k:k + len(again)]:
                first = next(i for i, (x, y) in enumerate(zip(again, reply[k:], strict=False)) if x != y)
                differ.append(f"k={k} (token {k + first})")
        tried = len(range(STEP, len(reply) - CONTINUE, STEP))
        print(f"{workload.name}: {len(reply)} tokens decoded one at a time; {len(differ)} of {tried} "
              f"continuations from a batch-computed prefix differ: {', '.join(differ) or 'none'}")


if __name__ == "__main__":
    main()
