"""What greedy decoding and cancellation on a real llama-server may be expected to show."""

from __future__ import annotations

from collections.abc import Sequence

from rocm_nb import Client, LocalModel
from tests.support.processes import wait_until

GPU_PREFIX_CHARS = 12
"""How much of a greedy text two runs must share on a GPU backend (see :func:`assert_same_greedy`)."""


def assert_same_greedy(got: Sequence[str], expected: Sequence[str], backend: str, what: str) -> None:
    """Greedy texts from batched (or split) runs against the same prompts run one at a time.

    Exact on the CPU backend only: llama.cpp's CPU kernels give the same logits
    whatever the batch, so greedy decoding is batch-invariant there. Its CUDA and
    HIP kernels are not batch-invariant (the reduction order changes with the
    batch), so two near-tied tokens may swap after a few steps: on a GPU backend
    only the first ``GPU_PREFIX_CHARS`` characters of each text must agree, which
    still catches streams that are mixed up or truncated.
    """
    assert len(got) == len(expected), f"{what}: {len(got)} results for {len(expected)} prompts"
    if backend == "cpu":
        assert list(got) == list(expected), f"{what}: on the CPU backend greedy output must equal the sequential output"
    else:
        n = GPU_PREFIX_CHARS
        assert [g[:n] for g in got] == [e[:n] for e in expected], (
            f"{what}: on the {backend} backend (not batch-invariant) the first {n} characters must agree"
        )


def still_serves(server: LocalModel | Client) -> None:
    """The server answers a short greedy generation with text: what "the server survived" means."""
    reply = server.generate("Hi", max_tokens=2, temperature=0.0, seed=7)
    assert isinstance(reply.text, str) and reply.text, f"an empty reply: {reply!r}"
    assert reply.timings is not None and reply.timings.predicted_tokens == 2, reply.timings


def assert_decoding_stopped(server: LocalModel | Client, timeout: float = 10.0) -> float:
    """No request left in flight, and nothing decoding behind the caller's back; return the token counter.

    Counters, not a sleep: once ``requests_processing`` is 0 (``timeout`` only
    guards against a hang), a short generation must move
    ``tokens_predicted_total`` by exactly the tokens it decoded itself (the
    server counts a request's tokens when it releases the slot, cancelled
    requests included). A cancelled request still decoding would be counted
    in flight, or add its own tokens.
    """
    wait_until(lambda: server.metrics()["llamacpp:requests_processing"] == 0, timeout=timeout)
    before = server.metrics()["llamacpp:tokens_predicted_total"]
    probe = server.generate("Hi", max_tokens=2, temperature=0.0, seed=7)
    assert probe.timings is not None
    after = server.metrics()
    assert after["llamacpp:tokens_predicted_total"] - before == probe.timings.predicted_tokens, (
        "tokens were decoded for a request that had been cancelled"
    )
    assert after["llamacpp:requests_processing"] == 0
    return before
