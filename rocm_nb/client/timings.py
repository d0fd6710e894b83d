"""What the server measured of one generation: token counts (:class:`Usage`) and speeds (:class:`Timings`).

Both are read from the stream (llama.cpp's ``timings``, OpenAI's ``usage``)
by :mod:`rocm_nb.client._accumulator`; a :class:`~rocm_nb.client.completion.Completion`
carries them.

Example:
    >>> Timings.from_server({"prompt_n": 3, "predicted_n": 8, "predicted_per_second": 90.0}).predicted_tokens
    8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Timings", "Usage", "draft_counts"]


@dataclass(frozen=True)
class Usage:
    """Token counts as the server reports them (OpenAI's ``usage``; ``cached_tokens``: ``None`` when not said).

    Example:
        >>> Usage.from_server({"prompt_tokens": 31, "completion_tokens": 4,
        ...                    "prompt_tokens_details": {"cached_tokens": 0}})
        Usage(prompt_tokens=31, completion_tokens=4, cached_tokens=0)
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None

    @classmethod
    def from_server(cls, data: Mapping[str, Any]) -> Usage:
        """Build from a stream's ``usage`` object."""
        details = data.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0),
                   int(cached) if isinstance(cached, int) else None)


@dataclass(frozen=True)
class Timings:
    """Speed figures as the server reports them for one generation.

    Example:
        >>> t = Timings.from_server({"prompt_n": 5, "prompt_ms": 10.0, "predicted_n": 20,
        ...                          "predicted_ms": 100.0, "predicted_per_second": 200.0})
        >>> t.predicted_per_second
        200.0

    With speculative decoding on, ``draft_tokens`` is how many tokens were
    drafted and ``draft_accepted`` how many of them the model kept (the
    server's ``draft_n`` and ``draft_n_accepted``); both are ``None`` when
    nothing was drafted (speculation off, or no draft found).

    Example:
        >>> Timings(5, 10.0, 20, 100.0, 200.0, draft_tokens=16, draft_accepted=12).acceptance
        0.75
    """

    prompt_tokens: int
    prompt_ms: float
    predicted_tokens: int
    predicted_ms: float
    predicted_per_second: float
    cached_tokens: int | None = None
    source: Literal["server", "client"] = "server"
    """Who measured them: ``"server"`` (llama.cpp's ``timings``) or ``"client"`` (see :meth:`from_client`)."""
    draft_tokens: int | None = None
    draft_accepted: int | None = None

    @property
    def acceptance(self) -> float | None:
        """The share of drafted tokens the model kept (``None`` when none were drafted)."""
        if not self.draft_tokens or self.draft_accepted is None:
            return None
        return self.draft_accepted / self.draft_tokens

    @classmethod
    def from_client(cls, usage: Usage | None, pieces: int, ttft_s: float | None, elapsed_s: float) -> Timings:
        """Figures from the client's clocks, for a server that sends no timings (vLLM, Ollama…).

        The prompt time is the time to first token (it includes the network);
        the decode rate counts the tokens after the first over the time after
        it. The tokens are the server's ``usage`` counts, else the text pieces
        streamed (one per token on the servers that stream token by token).

        Example:
            >>> t = Timings.from_client(Usage(5, 11, None), 11, ttft_s=0.1, elapsed_s=0.6)
            >>> t.predicted_per_second, t.source
            (20.0, 'client')
        """
        generated = usage.completion_tokens if usage is not None else pieces
        decode_s = max(elapsed_s - (ttft_s or 0.0), 0.0)
        rate = (generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0
        return cls(
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            prompt_ms=(ttft_s or 0.0) * 1000, predicted_tokens=generated, predicted_ms=decode_s * 1000,
            predicted_per_second=rate, cached_tokens=usage.cached_tokens if usage is not None else None,
            source="client",
        )

    @classmethod
    def from_server(cls, data: Mapping[str, Any]) -> Timings:
        """Build from llama-server's ``timings`` object."""
        drafted, accepted = draft_counts(data)
        return cls(
            prompt_tokens=int(data.get("prompt_n", 0)),
            prompt_ms=float(data.get("prompt_ms", 0.0)),
            predicted_tokens=int(data.get("predicted_n", 0)),
            predicted_ms=float(data.get("predicted_ms", 0.0)),
            predicted_per_second=float(data.get("predicted_per_second", 0.0)),
            cached_tokens=int(data["cache_n"]) if "cache_n" in data else None,
            draft_tokens=drafted,
            draft_accepted=accepted,
        )


def draft_counts(timings: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Drafted and accepted tokens in llama-server's ``timings`` (it sends them only when something was drafted).

    Example:
        >>> draft_counts({"predicted_n": 9, "draft_n": 8, "draft_n_accepted": 6})
        (8, 6)
        >>> draft_counts({"predicted_n": 9})
        (None, None)
    """
    if "draft_n" not in timings:
        return None, None
    return int(timings["draft_n"]), int(timings.get("draft_n_accepted", 0))
