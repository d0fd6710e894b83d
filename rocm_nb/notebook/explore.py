"""``NextTokenExplorer``: the model's top-K next tokens as bars; click one to append it and ask again.

``NextTokenExplorer(model, "The capital of France is")`` shows what the model would
say next, one token at a time: the ``k`` most likely next tokens with their
probabilities. Clicking a token (or :meth:`NextTokenExplorer.pick`) appends
it to the text and asks the server again; **Back** (:meth:`~NextTokenExplorer.back`)
undoes the last step, from memory. Each step is one request for one token
(``max_tokens=1, logprobs=True, top_logprobs=k``) on the plain completion
endpoint; ``chat=True`` first wraps the prompt in the model's chat template
(:meth:`~rocm_nb.LocalModel.apply_template`), so you explore the assistant's reply.

**Temperature** is applied here, not by the server: each bar is
``exp(logprob / T)`` normalised over the ``k`` tokens shown (at ``T = 0`` the
most likely token gets 100 %). Moving the slider therefore costs no request;
the faint bar behind each one is the model's own probability (``T = 1``,
over the whole vocabulary). For the server's real sampler chain, with
top-k, top-p and min-p, use :meth:`~rocm_nb.LocalModel.playground`.

Appended tokens are joined as text and the text is tokenised again on the
next request, which usually, not always, gives the same tokens back.

**Characters in several tokens.** SmolLM2 spells an emoji, or a kana, in
two or three tokens, none of them a character on its own. Such a candidate
shows as ``�`` (:data:`~rocm_nb.notebook._widget_kit.FRAGMENT`), with its
probability, and cannot be picked: the explorer extends a text, and half a
character is no text. When the server's own draw is such a fragment it
reports nothing until the character is whole; the explorer then asks again
so that the draw is whole, and the probabilities are the model's all the
same (:func:`~rocm_nb.notebook._widget_kit.next_tokens` says how).

Example:
    >>> explorer = NextTokenExplorer(model, "The capital of France is", k=8)  # doctest: +SKIP
    >>> explorer.candidates[0]  # doctest: +SKIP
    (' Paris', 0.83)
    >>> explorer.pick(0).text  # doctest: +SKIP
    'The capital of France is Paris'
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from rocm_nb._extras import needs_extra
from rocm_nb.client.logprobs import MAX_TOP_LOGPROBS
from rocm_nb.notebook._widget_kit import CSS, FRAGMENT, HELD_BACK, TokenSource, esm, next_tokens

with needs_extra("notebook"):
    import anywidget
    import traitlets

__all__ = ["NextTokenExplorer", "with_temperature"]


def with_temperature(candidates: list[tuple[str, float]], temperature: float) -> list[float]:
    """Probabilities of ``candidates`` (``(text, probability)``) at ``temperature``, normalised over them.

    Example:
        >>> [round(p, 3) for p in with_temperature([("a", 0.6), ("b", 0.2)], 1.0)]
        [0.75, 0.25]
        >>> with_temperature([("a", 0.6), ("b", 0.2)], 0.0)
        [1.0, 0.0]
    """
    if not candidates:
        return []
    if temperature <= 0:
        best = max(range(len(candidates)), key=lambda i: candidates[i][1])
        return [1.0 if i == best else 0.0 for i in range(len(candidates))]
    logs = [math.log(p) / temperature if p > 0 else -math.inf for _, p in candidates]
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    total = sum(weights)
    return [w / total for w in weights]


class NextTokenExplorer(anywidget.AnyWidget):
    """Top-``k`` next tokens of a text as bars; pick one to extend the text (see the module docstring).

    Args:
        source: the model (a :class:`~rocm_nb.LocalModel` or :class:`~rocm_nb.Client`).
        prompt: the text to continue (with ``chat=True``: the user's message).
        k: how many candidates to show (1 to
            :data:`~rocm_nb.client.logprobs.MAX_TOP_LOGPROBS`, 20: ``top_logprobs``).
        temperature: the starting temperature of the slider.
        chat: wrap ``prompt`` in the model's chat template first.

    Example:
        >>> explorer = NextTokenExplorer(model, "Once upon a", k=5)  # doctest: +SKIP
        >>> explorer.back().text  # doctest: +SKIP
        'Once upon a'
    """

    _esm = esm("explore")
    _css = CSS

    prompt = traitlets.Unicode("").tag(sync=True)
    """The text the exploration started from (after the chat template, if any)."""
    added = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The tokens appended so far, in order."""
    options = traitlets.List(traitlets.List()).tag(sync=True)
    """The candidates at the current position: ``[text, probability]`` pairs, most likely first."""
    temperature = traitlets.Float(1.0).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, source: TokenSource, prompt: str, *, k: int = 10, temperature: float = 1.0,
                 chat: bool = False) -> None:
        if not 1 <= k <= MAX_TOP_LOGPROBS:
            raise ValueError(f"k must be between 1 and {MAX_TOP_LOGPROBS} next tokens, got {k!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature!r}")
        text = source.apply_template([{"role": "user", "content": prompt}]) if chat else prompt
        super().__init__(prompt=text, temperature=float(temperature))
        self._source = source
        self.k = k
        self._steps: list[list[tuple[str, float]]] = []  # the candidates at each position so far
        self.on_msg(self._on_view_message)
        self._ask()

    @property
    def text(self) -> str:
        """The prompt with every appended token."""
        return self.prompt + "".join(self.added)

    @property
    def candidates(self) -> list[tuple[str, float]]:
        """The next tokens at this position, ``(text, probability)`` at temperature 1, most likely first."""
        return [(str(t), float(p)) for t, p in self.options]

    def distribution(self) -> list[tuple[str, float]]:
        """The candidates with the slider's temperature applied (normalised over them)."""
        candidates = self.candidates
        return list(zip([t for t, _ in candidates], with_temperature(candidates, self.temperature), strict=True))

    def pick(self, index: int) -> NextTokenExplorer:
        """Append candidate ``index`` (0 = the most likely) and ask for the next position.

        A candidate that is part of a character (``�``) is refused with a
        ``ValueError`` that says so (also shown in the view).
        """
        if not 0 <= index < len(self.options):
            raise IndexError(f"there are {len(self.options)} candidates here; pick 0 to {len(self.options) - 1}")
        if FRAGMENT in self.candidates[index][0]:
            self.error = (f"candidate {index + 1} ({FRAGMENT}) is {HELD_BACK}: the explorer extends the text, "
                          "and half a character is no text; pick a whole token")
            raise ValueError(self.error)
        self.added = [*self.added, self.candidates[index][0]]
        self._ask()
        return self

    def back(self) -> NextTokenExplorer:
        """Undo the last pick (nothing to undo: nothing happens); the earlier candidates come from memory."""
        if self.added:
            self._steps.pop()
            with self.hold_sync():
                self.added = self.added[:-1]
                self.options = [list(c) for c in self._steps[-1]]
                self.error = ""
        return self

    def _ask(self) -> None:
        self.busy = True
        try:
            candidates, note = next_tokens(self._source, self.text, k=self.k, temperature=0.0)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.busy = False
        self._steps.append(candidates)
        with self.hold_sync():
            self.options = [list(c) for c in candidates]
            self.error = note

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        with contextlib.suppress(Exception):  # a click has no caller: the error is in the view (self.error)
            if content.get("event") == "pick" and isinstance(content.get("index"), int):
                self.pick(content["index"])
            elif content.get("event") == "back":
                self.back()

    def __repr__(self) -> str:
        rows = [f"{t!r:>16} {p:6.1%}" for t, p in self.distribution()]
        return "\n".join([f"NextTokenExplorer: {self.text!r} (temperature {self.temperature:g})", *rows])
