"""What rocm_nb's teaching widgets share: their front-end code, token data for it, and a throttle.

Each widget is an `anywidget <https://anywidget.dev>`_ (JupyterLab,
Notebook 7, VS Code, Colab). Its ES module is ``static/common.js`` (helpers:
shaded tokens with a tooltip of alternatives, bar charts, meters) followed by
its own file; all share ``static/probs.css``. Files are read as text, as
:mod:`rocm_nb.notebook.monitor` explains.

Example:
    >>> throttle = Throttle(rate=20, clock=iter([0.0, 0.01, 0.06]).__next__)
    >>> [throttle.due() for _ in range(3)]
    [True, False, True]
"""

from __future__ import annotations

import importlib.resources
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

if TYPE_CHECKING:
    from rocm_nb.client._batch import Prompt
    from rocm_nb.client.completion import Completion, Message
    from rocm_nb.client.logprobs import TokenPiece, TokenProb
    from rocm_nb.client.request import Options

__all__ = [
    "CSS", "FRAGMENT", "HELD_BACK", "MAX_RATE", "WHOLE_CHARACTER", "Throttle", "TokenSource", "alternatives", "esm",
    "next_tokens", "prob", "token_dicts",
]


class TokenSource(Protocol):
    """What the teaching widgets ask of a model: a :class:`~rocm_nb.LocalModel` or a :class:`~rocm_nb.Client`.

    The next-token explorer uses ``generate`` (one token with its
    alternatives) and ``apply_template``; the sampler playground ``generate``
    and ``map``; the token view ``tokenize`` and ``apply_template``. Any
    object with these methods will do (a wrapper that logs, a fake in a test).

    Example:
        >>> from rocm_nb.client import Client
        >>> source: TokenSource = Client("http://127.0.0.1:9")  # a Client (and a LocalModel) is one
    """

    def generate(self, prompt: str, **options: Unpack[Options]) -> Completion: ...

    def map(self, prompts: Iterable[Prompt], *, chat: bool = True, concurrency: int | None = None,
            progress: bool = True, **options: Unpack[Options]) -> list[Completion | Exception]: ...

    def apply_template(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                       chat_template_kwargs: Mapping[str, Any] | None = None) -> str: ...

    def tokenize(self, text: str, *, add_special: bool = False, pieces: Literal[True]) -> list[TokenPiece]: ...

_STATIC = importlib.resources.files("rocm_nb.notebook") / "static"

CSS = (_STATIC / "probs.css").read_text(encoding="utf-8")
"""The style sheet of every teaching widget."""

MAX_RATE = 30.0
"""The most kernel→browser updates per second a widget sends while a model decodes (the issue's ceiling)."""


def esm(name: str) -> str:
    """The ES module of the widget whose view is ``static/<name>.js``: the shared helpers, then its own code.

    Example:
        >>> "export default" in esm("reply") and "function tokenSpan" in esm("reply")
        True
    """
    return (_STATIC / "common.js").read_text(encoding="utf-8") + (_STATIC / f"{name}.js").read_text(encoding="utf-8")


def prob(logprob: float) -> float:
    """A probability from a log probability, ``-inf`` (what a sampler removed) giving 0.

    Example:
        >>> prob(0.0), prob(float("-inf"))
        (1.0, 0.0)
    """
    return 0.0 if logprob == -math.inf else math.exp(logprob)


def token_dicts(tokens: Iterable[TokenProb]) -> list[dict[str, Any]]:
    """Tokens as the views draw them: ``{"t": text, "p": probability, "top": [[text, p], ...]}``.

    Example:
        >>> from rocm_nb.client.logprobs import TokenProb
        >>> token_dicts([TokenProb(" cat", -0.5, [(" cat", -0.5), (" dog", -1.5)], b" cat")])[0]["top"][1][0]
        ' dog'
    """
    return [{"t": t.text, "p": prob(t.logprob), "top": [[text, prob(lp)] for text, lp in t.top]} for t in tokens]


def alternatives(top: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """``(text, probability)`` of ``top`` (``(text, logprob)`` pairs), most likely first.

    Example:
        >>> alternatives([(" a", 0.0)])
        [(' a', 1.0)]
    """
    return [(text, prob(lp)) for text, lp in top]


WHOLE_CHARACTER = "root ::= [\\x00-\\x7f]"
"""A grammar for one ASCII character: what :func:`next_tokens` makes the server draw when a draw was a fragment."""

FRAGMENT = "\ufffd"
"""How a candidate that is part of a character shows (its bytes are not UTF-8 on their own)."""

HELD_BACK = ("part of a character (the model spells emoji and many other characters in several tokens), and "
             "llama-server reports probabilities only once a character is whole")
"""Why the server said nothing about a token it drew: the words :func:`next_tokens` uses."""


def next_tokens(source: TokenSource, prompt: str, *, k: int, post_sampling: bool = False, seeds: int = 8,
                **options: Any) -> tuple[list[tuple[str, float]], str]:
    """The ``k`` most likely next tokens after ``prompt``, ``(text, probability)``, and a note ('' if none is due).

    One request for one token (``max_tokens=1``) usually answers. But when the
    token the server *draws* is part of a character (after "Party time! 🎉"
    or "こんにちは、", SmolLM2's favourite next token is the first two bytes
    of another emoji or kana), llama-server holds it back until the
    character is whole, and with one token that is never: the reply has no
    token and no probabilities. So:

    * the model's own probabilities (``post_sampling=False``) are asked for
      again with a grammar that admits one ASCII character
      (:data:`WHOLE_CHARACTER`): the draw is then whole, and the
      probabilities reported are still the model's, from its logits before
      any sampler (a grammar only restricts the draw). Fragments stay among
      the candidates, shown as :data:`FRAGMENT`;
    * what the sampler chain leaves (``post_sampling=True``) would be cut
      down by a grammar, so it is asked for again with seeds ``1`` to
      ``seeds``: the chain's probabilities do not depend on the seed, only
      the draw does, and the first whole draw reports them. When every draw
      is a fragment (greedy, or top-k 1, on a fragment) the candidates are
      empty and the note says why.

    Example:
        >>> next_tokens(model, "Party time! 🎉", k=3)  # doctest: +SKIP
        ([('\\ufffd', 0.22), ('\\n', 0.17), (' I', 0.07)], '')
    """
    ask: dict[str, Any] = {"max_tokens": 1, "logprobs": True, "top_logprobs": k, "post_sampling": post_sampling,
                           **options}
    completion = source.generate(prompt, **ask)
    retries = [{"seed": seed} for seed in range(1, seeds + 1)] if post_sampling else [{"grammar": WHOLE_CHARACTER}]
    for retry in retries:
        if completion.tokens or completion.finish_reason != "length":
            break
        completion = source.generate(prompt, **ask, **retry)
    if completion.tokens:
        return alternatives(completion.tokens[0].top), ""
    if completion.finish_reason == "length":
        return [], (f"no probabilities here: every one of {seeds} draws was {HELD_BACK}; the raw bars are the "
                    "model's own" if post_sampling else f"no probabilities here: the token drawn was {HELD_BACK}")
    return [], "the model gave no next token here (end of text?)"


class Throttle:
    """Says when an update may go to the browser: at most ``rate`` per second.

    A widget keeps its latest state in Python and pushes it only when
    :meth:`due` says so (and once more at the end), so a fast model does not
    flood the front end: every push resends the state, and Jupyter caps
    iopub traffic.

    Example:
        >>> Throttle(rate=10, clock=lambda: 0.0).interval
        0.1
    """

    def __init__(self, rate: float = 20.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate must be above 0 and at most {MAX_RATE:g} updates per second, got {rate!r}")
        self.interval = 1.0 / rate
        self._clock = clock
        self._last = -math.inf

    def due(self) -> bool:
        """True (and the clock restarts) when the last update is at least ``1/rate`` s old."""
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False
