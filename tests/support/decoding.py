"""What greedy decoding and cancellation on a real llama-server may be expected to show.

When may two greedy runs of one prompt be compared character for character?
Only when every step computed the same rows with the same kernels, and that
depends on the batch shapes. This was read from the pinned llama.cpp
(``ggml/src/ggml-cpu``) for the default model (Q4_1 weights, a tied Q8_0
output matrix, flash attention on, as ``auto`` picks on the CPU) and then
measured:

* the weight matrices are Q4_1: llamafile's sgemm does not take that type,
  so every output element is one ``vec_dot`` of a weight row with an
  activation row, whatever the number of rows in the batch;
* the attention is not: ``flash_attn_ext`` picks one of three kernels from the
  shape of the batch, per sequence. One query row on 512 or more KV cells
  splits the cells between the threads and adds their partial sums; 2 to 63
  rows (or 1 row on fewer cells, or several sequences at once) run one row at
  a time; 64 rows or more (a prompt, a batch of drafts to check) run in tiles.
  The three round differently;
* which cells a sequence uses, and so how many the attention reads, depends
  on what the slot held before, and a cached prompt is not computed again:
  only its last token is, as a batch of one.

So a greedy text is compared exactly (``==``) only between requests that
compute the same prompt afresh (:data:`FRESH_PROMPT`), one request at a time,
with prompts and replies of a few dozen tokens (well under 256 cells each).
That holds for the same request sent through two clients or two servers.

Everywhere else the shapes differ: slots decoding together, speculation
checking drafts as one batch, ``map()``, a model split over RPC workers.
``benchmarks/batch_invariance.py`` shows what that does: a continuation
computed from a batch-computed prefix parts from the one-token-at-a-time
text now and then, always where the model's two best tokens were nearly
tied (the gaps it measured are in ``benchmarks/README.md``).
:func:`assert_greedy_agrees` checks exactly that: the texts agree up to
where they part, and they part only at such a near-tie. A stream that was
mixed up with another, truncated or decoded wrongly parts where the model
was sure, and fails.

This replaces the premise that the CPU kernels give the same logits whatever
the batch. It held on this machine's AVX-512 kernels for the prompts tested,
by luck: a llama-server built from the same pinned source with AVX2 and no
AVX-512 (``GGML_NATIVE=OFF``, ``GGML_AVX512=OFF``; no ``zmm`` register in its
code), run here, failed ``test_speculative.py[ngram]`` as the AVX2-only EPYC
of issue 20 did. There the cell's repeat of a cached Japanese prompt was
checked with 64 drafts in one batch of 65 rows (tiled attention), and the
first token went to the runner-up of a tie 0.005 nats wide.

GPU backends (CUDA, HIP) are not batch-invariant either, and their rounding
differences were not measured here: there the first ``GPU_PREFIX_CHARS``
characters must agree, which still catches streams that are mixed up or
truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

from rocm_nb import Client, Completion, LocalModel
from tests.support.processes import wait_until

FRESH_PROMPT = {"cache_prompt": False}
"""Options that make a request compute its whole prompt afresh, as one batch (no prompt cache).

Two greedy requests with these, one at a time, run the same shapes and may be compared exactly.
"""

REFERENCE = {"logprobs": True, "top_logprobs": 3}
"""Options for the reference run of :func:`assert_greedy_agrees`: each token with the model's three best."""

NEAR_TIE = 0.5
"""The largest gap, in natural-log probability, between the two best tokens where two greedy runs may part.

Measured (``benchmarks/README.md``, "Batch shape and greedy text"): where a
batch-computed continuation parted from the one-token-at-a-time text, the
gap was at most 0.21 nats with AVX-512 kernels and at most 0.09 with
AVX2 kernels; a cached prompt checked with drafts parted at a gap of 0.005
(AVX2). The median gap along a reply is about 5.5 nats, so a mixed-up or
wrongly decoded stream, which parts where the model was sure, still fails.
"""

GPU_PREFIX_CHARS = 12
"""How much of a greedy text two runs must share on a GPU backend (see the module docstring)."""


def assert_greedy_agrees(got: Sequence[str], reference: Sequence[Completion], backend: str, what: str) -> None:
    """Greedy texts from runs with other batch shapes agree with reference runs up to a near-tie.

    ``reference`` holds greedy completions of the same prompts, run one at a
    time with :data:`REFERENCE` (so each token carries the model's best
    alternatives). Each text in ``got`` must be its reference's text, or part
    from it at a token whose two best alternatives were within
    :data:`NEAR_TIE` of each other, continuing with one of those alternatives.
    On a GPU backend only the first ``GPU_PREFIX_CHARS`` characters must agree.
    """
    assert len(got) == len(reference), f"{what}: {len(got)} results for {len(reference)} prompts"
    for i, (text, ref) in enumerate(zip(got, reference, strict=True)):
        if backend != "cpu":
            n = GPU_PREFIX_CHARS
            assert text[:n] == ref.text[:n], (
                f"{what}, prompt {i}: on the {backend} backend (not batch-invariant) the first {n} characters must "
                f"agree: {text!r} against {ref.text!r}")
            continue
        problem = _parting(text, ref)
        assert problem is None, f"{what}, prompt {i}: {problem}\n  got:       {text!r}\n  reference: {ref.text!r}"


def _parting(text: str, reference: Completion) -> str | None:
    """Why ``text`` is not a greedy decoding of ``reference``'s prompt, or ``None`` if it may be one."""
    assert reference.tokens is not None, "the reference ran without logprobs: pass REFERENCE's options"
    data, at = text.encode(), 0
    for index, token in enumerate(reference.tokens):
        if data.startswith(token.bytes, at):
            at += len(token.bytes)
            continue
        if len(token.top) < 2:
            return f"parts at token {index} ({token.text!r}), and the reference has no second-best token there"
        best = token.top[0][1]
        near = [alt for alt, logprob in token.top[1:] if best - logprob <= NEAR_TIE]
        gap = best - token.top[1][1]
        if not near:
            return (f"parts at token {index}, where the model was sure: {token.text!r} led {token.top[1][0]!r} "
                    f"by {gap:.3f} nats (a near-tie is at most {NEAR_TIE})")
        rest, clean = data[at:], [alt for alt in near if "\ufffd" not in alt]
        if rest and len(clean) == len(near) and not any(rest.startswith(alt.encode()) for alt in clean):
            return (f"parts at token {index} (a near-tie of {gap:.3f} nats) but goes on with none of the tied "
                    f"tokens {near!r}: {rest[:20]!r}")
        return None
    if at != len(data):
        return f"goes on after the reference's {len(reference.tokens)} tokens: {data[at:at + 20]!r}"
    return None


def still_serves(server: LocalModel | Client) -> None:
    """The server answers a short greedy generation with text: what "the server survived" means."""
    reply = server.generate("Hi", max_tokens=2, temperature=0.0, seed=7)
    assert isinstance(reply.text, str) and reply.text, f"an empty reply: {reply!r}"
    assert reply.timings is not None and reply.timings.predicted_tokens == 2, reply.timings


def assert_decoding_stopped(server: LocalModel | Client, timeout: float = 60.0) -> float:
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
