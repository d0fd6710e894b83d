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

__all__ = ["CSS", "MAX_RATE", "Throttle", "TokenSource", "alternatives", "esm", "prob", "token_dicts"]


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
