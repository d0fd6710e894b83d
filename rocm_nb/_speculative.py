"""Speculative decoding: what ``LocalModel(speculative=...)`` asks llama-server for.

llama-server can decode several tokens per step by *speculation*: something
cheap drafts the next few tokens, and the model checks them all in one batch,
keeping the longest prefix it agrees with and its own next token. Each kept
token is the token the model itself chose (greedy) or sampled (the server
verifies drafts with the request's sampler), so speculation changes the
speed, not the output's distribution. Greedy text is identical with and
without it on ``tests/test_speculative.py``'s prompts for every mode; over
long replies it can differ after a near-tie, because a batch of tokens is
computed with slightly different rounding than one token at a time
(``benchmarks/README.md`` counts how often).

``speculative=`` takes:

* ``"off"``: no speculation (llama-server's own default).
* ``"ngram"``: drafts from n-grams the conversation has already seen
  (:data:`NGRAM_FLAGS`), with no second model. It pays when the output repeats
  what came before (a code block rewritten with one change, a list given again
  as JSON); ``benchmarks/README.md`` has the measurements per workload and
  why this type and these sizes were chosen.
* a draft model: a ``.gguf`` path or catalogue name of a smaller model with the
  same vocabulary (``--spec-draft-model``), with ``draft_gpu_layers`` of its
  layers on the GPU (default: all on a GPU backend, none on the CPU). Its
  memory is counted in ``model.fit``.

The default is :data:`DEFAULT_SPECULATIVE`; the README says why.

Example:
    >>> speculation_flags("ngram", None, None)
    ('--spec-type', 'ngram-mod')
    >>> speculation_flags("off", None, None)
    ()
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_SPECULATIVE", "NGRAM_FLAGS", "SPECULATIVE_MODES", "draft_spec", "speculation_flags"]

SPECULATIVE_MODES = ("off", "ngram")
"""The modes named by a word; anything else given to ``speculative=`` is a draft model."""

DEFAULT_SPECULATIVE = "off"
"""``LocalModel``'s default, chosen by measurement (``benchmarks/README.md``, "Speculative decoding")."""

NGRAM_FLAGS: tuple[str, ...] = ("--spec-type", "ngram-mod")
"""What ``speculative="ngram"`` adds to llama-server's command line: the n-gram type that measured best."""


def draft_spec(speculative: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The draft model ``speculative`` names, or ``None`` for a mode (``"off"``, ``"ngram"``, ``None``).

    Example:
        >>> draft_spec("ngram"), draft_spec(None), draft_spec("tiny.gguf")
        (None, None, 'tiny.gguf')
        >>> draft_spec("")
        Traceback (most recent call last):
        ...
        ValueError: speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; got ''
    """
    if speculative is None or (isinstance(speculative, str) and speculative in SPECULATIVE_MODES):
        return None
    if not os.fspath(speculative):
        raise ValueError("speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; "
                         f"got {speculative!r}")
    return speculative


def speculation_flags(speculative: str | os.PathLike[str] | None, draft: Path | None,
                      draft_gpu_layers: int | None) -> tuple[str, ...]:
    """llama-server's flags for a speculation mode, or for ``draft`` (the resolved draft model's path).

    Example:
        >>> speculation_flags("tiny.gguf", Path("/m/tiny.gguf"), 0)
        ('--spec-type', 'draft-simple', '--spec-draft-model', '/m/tiny.gguf', '--spec-draft-ngl', '0')
    """
    if draft is not None:
        layers = ("--spec-draft-ngl", str(draft_gpu_layers)) if draft_gpu_layers is not None else ()
        return ("--spec-type", "draft-simple", "--spec-draft-model", str(draft), *layers)
    if speculative == "ngram":
        return NGRAM_FLAGS
    return ()
