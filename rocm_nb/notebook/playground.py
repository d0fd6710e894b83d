"""``SamplerPlayground``: sliders for the sampler chain over the server's real distribution at one position.

``SamplerPlayground(model, "My favourite colour is")`` shows the ``k`` most likely
next tokens twice: faint, the model's own probabilities; solid, what
llama-server's sampler chain leaves of them with the sliders' temperature,
top-k, top-p and min-p (``post_sampling=True``: the server's numbers, not a
re-implementation). Moving a slider asks the server again (one request for one
token). **Sample** draws ``n`` continuations of ``max_tokens`` tokens with
those settings, each with its own random seed.

Where the model's likely next tokens are parts of a character (an emoji,
a kana), the server reports nothing for a draw of such a part: the bars are
then asked for again (:func:`~rocm_nb.notebook._widget_kit.next_tokens` says
how), and when every draw is a part, the view says so instead of going blank.

Why ``n`` requests and not one with ``n_cmpl``: the pinned llama-server has
``n_cmpl`` but caps it at the server's slots (``--parallel``; 1 by default),
and a :class:`~rocm_nb.client.completion.Completion` holds one text. The
continuations therefore go through :meth:`~rocm_nb.LocalModel.map`, which
spreads them over the same slots ``n_cmpl`` would use.

Example:
    >>> SAMPLERS
    ('temperature', 'top_k', 'top_p', 'min_p')
    >>> playground = SamplerPlayground(model, "My favourite colour is", n=4)  # doctest: +SKIP
    >>> playground.set(top_k=3).post  # doctest: +SKIP
    [(' blue', 0.61), (' red', 0.24), (' green', 0.15)]
    >>> playground.sample()  # doctest: +SKIP
    [' blue, because', ' red. I', ...]
"""

from __future__ import annotations

import contextlib
from typing import Any

from rocm_nb._extras import needs_extra
from rocm_nb.client.completion import Completion
from rocm_nb.client.logprobs import MAX_TOP_LOGPROBS
from rocm_nb.client.request import DEFAULT_TEMPERATURE
from rocm_nb.notebook._widget_kit import CSS, TokenSource, esm, next_tokens

with needs_extra("notebook"):
    import anywidget
    import traitlets

__all__ = ["SAMPLERS", "SamplerPlayground"]

SAMPLERS = ("temperature", "top_k", "top_p", "min_p")
"""The settings the sliders control (llama-server's names, also rocm_nb's options)."""


class SamplerPlayground(anywidget.AnyWidget):
    """The server's post-sampling distribution at one position under slider settings (see the module docstring).

    Args:
        source: the model.
        prompt: the text whose next token is shown (with ``chat=True``: the user's message).
        k: how many tokens to show (1 to :data:`~rocm_nb.client.logprobs.MAX_TOP_LOGPROBS`, 20).
        n: how many continuations **Sample** draws.
        max_tokens: the length of each continuation.
        chat: wrap ``prompt`` in the model's chat template first.
        temperature, top_k, top_p, min_p: the sliders' starting values (llama-server's own defaults).

    Example:
        >>> SamplerPlayground(model, "2 + 2 =", top_k=1).post  # doctest: +SKIP
        [(' 4', 1.0)]
    """

    _esm = esm("playground")
    _css = CSS

    prompt = traitlets.Unicode("").tag(sync=True)
    settings = traitlets.Dict().tag(sync=True)
    """``temperature``, ``top_k``, ``top_p``, ``min_p``: the sliders (the view writes them)."""
    raw_options = traitlets.List(traitlets.List()).tag(sync=True)
    post_options = traitlets.List(traitlets.List()).tag(sync=True)
    drawn_for = traitlets.Dict().tag(sync=True)
    """The settings ``post_options`` were drawn with (the view marks its bars with them)."""
    samples = traitlets.List(traitlets.Unicode()).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    n = traitlets.Int(5).tag(sync=True)

    def __init__(self, source: TokenSource, prompt: str, *, k: int = 10, n: int = 5, max_tokens: int = 16,
                 chat: bool = False, temperature: float = DEFAULT_TEMPERATURE, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05) -> None:
        if not 1 <= k <= MAX_TOP_LOGPROBS:
            raise ValueError(f"k must be between 1 and {MAX_TOP_LOGPROBS} tokens, got {k!r}")
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be at least 1, got n={n!r}, max_tokens={max_tokens!r}")
        text = source.apply_template([{"role": "user", "content": prompt}]) if chat else prompt
        settings = {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p),
                    "min_p": float(min_p)}
        super().__init__(prompt=text, n=n)
        self._source = source
        self.k, self.max_tokens = k, max_tokens
        raw, self._raw_note = next_tokens(source, text, k=k, temperature=1.0)  # a note if even these failed
        self.raw_options = [list(c) for c in raw]
        self.observe(lambda _change: self._redraw(), names="settings")
        self.on_msg(self._on_view_message)
        self.settings = settings  # draws the post-sampling bars

    @property
    def raw(self) -> list[tuple[str, float]]:
        """The model's own top-``k`` next tokens, ``(text, probability)``."""
        return [(str(t), float(p)) for t, p in self.raw_options]

    @property
    def post(self) -> list[tuple[str, float]]:
        """What the sampler chain leaves at the current settings, ``(text, probability)``, most likely first."""
        return [(str(t), float(p)) for t, p in self.post_options]

    def set(self, **settings: float) -> SamplerPlayground:
        """Change sliders (``temperature``, ``top_k``, ``top_p``, ``min_p``) and redraw, as moving them does."""
        unknown = set(settings) - set(SAMPLERS)
        if unknown:
            raise TypeError(f"unknown sampler setting(s) {sorted(unknown)}; the playground has {list(SAMPLERS)}")
        self.settings = {**self.settings, **settings}
        return self

    def sample(self) -> list[str]:
        """Draw ``n`` continuations with the current settings (each its own seed); also shown in the view."""
        self.busy = True
        try:
            results = self._source.map([self.prompt] * self.n, chat=False, progress=False,
                                       max_tokens=self.max_tokens, **self._options())
        finally:
            self.busy = False
        failed = [r for r in results if not isinstance(r, Completion)]
        if failed:
            self.error = f"{len(failed)} of {len(results)} samples failed: {failed[0]}"
            raise failed[0]
        self.samples = [r.text for r in results if isinstance(r, Completion)]
        return list(self.samples)

    def _options(self) -> dict[str, Any]:
        s = self.settings
        return {"temperature": float(s["temperature"]), "top_k": int(s["top_k"]), "top_p": float(s["top_p"]),
                "min_p": float(s["min_p"])}

    def _redraw(self) -> None:
        self.busy = True
        try:
            post, note = next_tokens(self._source, self.prompt, k=self.k, post_sampling=True, **self._options())
            with self.hold_sync():
                self.post_options = [list(c) for c in post]
                self.drawn_for = dict(self.settings)
                self.error = note or self._raw_note
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.busy = False

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "sample":
            with contextlib.suppress(Exception):  # a click has no caller: the error is in the view (self.error)
                self.sample()

    def __repr__(self) -> str:
        kept = dict(self.post)
        rows = [f"{t!r:>16} raw {p:6.1%}  after sampling {kept.get(t, 0.0):6.1%}" for t, p in self.raw]
        return "\n".join([f"SamplerPlayground: {self.prompt!r} {self.settings}", *rows])
