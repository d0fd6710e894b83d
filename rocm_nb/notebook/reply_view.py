"""``ReplyView``: one reply as it streams, with what the model did on the way.

Shown by ``%%rocm_generate`` and the chat panel. It draws:

* a collapsible **Thinking** block with the model's reasoning
  (``Completion.reasoning``), its token count and time; open while the model
  thinks, folded once the answer starts (a click keeps it as you set it);
* a **prefill progress bar** while the server reads a long prompt
  (``return_progress``; hidden once the first token is out);
* the **answer**: Markdown (rendered by rocm_nb, see :mod:`rocm_nb._markdown`),
  or with ``probs=True`` each token shaded by its probability, pale for
  likely, strong for surprising; hovering a token, or focusing it with Tab,
  shows its top-K alternatives with percentages;
* a **context meter**: tokens in the slot against its context, after the reply.

**Before/after sampling.** The probabilities a stream carries are either the
model's own distribution (the default) or what the sampler chain left
(``post_sampling=True``); one request cannot carry both. The toggle
therefore asks the server once more, when first pressed, for the same
generation with ``post_sampling=True`` and the same seed (the caller pins
one: ``%%rocm_generate --probs`` and the chat panel draw a seed when none is
given), which on one slot reproduces the same tokens. It costs nothing until
used, and needs the kernel idle, as any widget click does. The second
request's tokens are shown as they are, even if a different slot or build
made them differ.

**Message rate.** The view is fed every :class:`~rocm_nb.client.stream.Delta`, but
sends its state to the browser at most ``rate`` times per second (at most
30, :data:`rocm_nb.notebook._widget_kit.MAX_RATE`), plus once at the end;
:attr:`pushes` counts the pushes.

Example:
    >>> view = ReplyView(probs=True)  # doctest: +SKIP
    >>> for delta in model.stream("Hi", logprobs=True, top_logprobs=5).deltas():  # doctest: +SKIP
    ...     view.feed(delta)
    >>> view.finish(footer="12 tokens")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from rocm_nb._extras import needs_extra
from rocm_nb._markdown import render
from rocm_nb.notebook._widget_kit import CSS, Throttle, esm, token_dicts
from rocm_nb.notebook.display import long_prefill

with needs_extra("notebook"):
    import anywidget
    import traitlets

if TYPE_CHECKING:
    from rocm_nb.client.completion import Completion
    from rocm_nb.client.logprobs import TokenProb
    from rocm_nb.client.request import Options
    from rocm_nb.client.stream import AsyncTokenStream, Delta
    from rocm_nb.notebook.display import Publisher

__all__ = ["PostSampling", "ReplyView", "live_view"]

PostSampling = Callable[[], Awaitable["Sequence[TokenProb]"]]
"""Fetches the same reply's tokens with ``post_sampling=True`` (see the module docstring)."""


class ReplyView(anywidget.AnyWidget):
    """A reply's Thinking block, prefill progress, answer (optionally shaded by probability) and context meter.

    Args:
        probs: draw the answer as tokens shaded by probability (the stream
            must carry them: ``logprobs=True``).
        post_sampling: how to fetch the after-sampling tokens for the toggle
            (``None``: no toggle).
        show_answer: draw the answer (False: only thinking, progress and
            context, beside an answer shown elsewhere).
        rate: most pushes to the browser per second while streaming.
        clock: seconds as a float (a seam for tests).

    Example:
        >>> view = ReplyView(show_answer=False)
        >>> view.finish(footer="done")
        >>> view.footer, view.pushes
        ('done', 1)
    """

    _esm = esm("reply")
    _css = CSS

    probs = traitlets.Bool(False).tag(sync=True)
    show_answer = traitlets.Bool(True).tag(sync=True)
    streaming = traitlets.Bool(True).tag(sync=True)
    answer = traitlets.Unicode("").tag(sync=True)
    answer_html = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Dict()).tag(sync=True)
    post_tokens = traitlets.List(traitlets.Dict()).tag(sync=True)
    mode = traitlets.Unicode("raw").tag(sync=True)
    """``raw`` (the model's distribution) or ``post`` (after the sampler chain)."""
    post_state = traitlets.Unicode("off").tag(sync=True)
    """``off`` (no toggle), ``available``, ``loading``, ``ready`` or ``error: …``."""
    reasoning = traitlets.Unicode("").tag(sync=True)
    thinking = traitlets.Dict().tag(sync=True)
    progress = traitlets.Dict().tag(sync=True)
    context = traitlets.Dict().tag(sync=True)
    footer = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        *,
        probs: bool = False,
        post_sampling: PostSampling | None = None,
        show_answer: bool = True,
        rate: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(probs=probs, show_answer=show_answer)
        self._throttle = Throttle(rate, clock)
        self._clock = clock
        self._post = post_sampling
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tokens: list[TokenProb] = []
        self._thought_tokens = 0  # one per streamed chunk of reasoning: llama-server sends a token per chunk
        self._thought_started: float | None = None
        self._thought_ended: float | None = None
        self._progress: dict[str, int] = {}
        self.pushes = 0
        """How many updates went to the browser (each one comm message)."""
        self._task: asyncio.Task[None] | None = None
        self.on_msg(self._on_view_message)

    # -- feeding ----------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._text)

    def feed(self, delta: Delta) -> None:
        """Take one update of the stream; push it to the browser if the last push is old enough."""
        now = self._clock()
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
            self._thought_tokens += 1
            if self._thought_started is None:
                self._thought_started = now
        if delta.text:
            self._text.append(delta.text)
            if self._thought_started is not None and self._thought_ended is None:
                self._thought_ended = now
        self._tokens.extend(delta.tokens)
        p = delta.progress
        if p is not None and long_prefill(p):
            self._progress = {"processed": p.processed, "total": p.total, "cached": p.cached}
        if self._throttle.due():
            self._push()

    def finish(self, completion: Completion | None = None, *, footer: str = "", markdown: bool = True) -> None:
        """The stream ended (``completion`` is ``None`` when it was stopped): show everything, with ``footer``."""
        if self._thought_started is not None and self._thought_ended is None:
            self._thought_ended = self._clock()
        context = getattr(completion, "context", None)
        with self.hold_sync():
            self._push(final=True)
            self.streaming = False
            self.footer = footer
            if markdown and not self.probs and self.show_answer:
                self.answer_html = render(self.text)
            if context is not None:
                self.context = {"used": context.used, "n_ctx": context.n_ctx}
            if self.probs and self._post is not None and self._tokens:
                self.post_state = "available"

    def _push(self, *, final: bool = False) -> None:
        started, ended = self._thought_started, self._thought_ended
        with self.hold_sync():
            if self.show_answer:
                self.answer = self.text
                if self.probs and len(self.tokens) != len(self._tokens):
                    self.tokens = token_dicts(self._tokens)
            if self._reasoning:
                self.reasoning = "".join(self._reasoning)
                end = ended if ended is not None else self._clock()
                self.thinking = {"tokens": self._thought_tokens, "done": ended is not None or final,
                                 "seconds": end - (end if started is None else started)}
            if self._progress and (self._progress != self.progress or self.text or final):
                self.progress = {} if (self.text or final) else dict(self._progress)
        self.pushes += 1

    # -- before/after sampling --------------------------------------------------------------

    async def show_post_sampling(self) -> None:
        """Fetch the after-sampling tokens (once) and show them: what the toggle's second button does.

        Example:
            >>> await view.show_post_sampling()  # doctest: +SKIP
            >>> view.mode, view.post_state  # doctest: +SKIP
            ('post', 'ready')
        """
        if self._post is None:
            raise RuntimeError("this view has no after-sampling source: make it with post_sampling=...")
        if self.post_state != "ready":
            self.post_state = "loading"
            try:
                tokens = await self._post()
            except Exception as exc:  # shown in the view: a click has no caller to raise to
                self.post_state = f"error: {type(exc).__name__}: {exc}"
                raise
            self.post_tokens = token_dicts(tokens)
            self.post_state = "ready"
        self.mode = "post"

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("event") != "mode":
            return
        if content.get("mode") == "raw":
            self.mode = "raw"
        elif content.get("mode") == "post" and self._post is not None:
            self._task = asyncio.get_running_loop().create_task(self._show_post_quietly())

    async def _show_post_quietly(self) -> None:
        with contextlib.suppress(Exception):  # already shown in the view (post_state)
            await self.show_post_sampling()

    def __repr__(self) -> str:
        lines = []
        if self.reasoning:
            lines.append(f"[thinking, {self.thinking.get('tokens', 0)} tokens] {self.reasoning}")
        lines.append(self.text)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)


def live_view(reopen: Callable[[Options], AsyncTokenStream], options: Options, *,
              probs: int) -> tuple[ReplyView, Publisher, Options]:
    """A token-probability view for one generation, a publisher that silences the text output, the options to send.

    The options ask for ``logprobs`` with ``probs`` alternatives and a fixed
    seed (drawn here when none is set), so that ``reopen(options)`` with
    ``post_sampling=True`` reproduces the reply for the toggle.

    Example:
        >>> view, publish, options = live_view(lambda o: model.astream("Hi", **o), {}, probs=3)  # doctest: +SKIP
        >>> options["top_logprobs"]  # doctest: +SKIP
        3
    """
    from rocm_nb.client._batch import adrain

    sent: Options = {**options, "logprobs": True, "top_logprobs": probs}
    if sent.get("seed", -1) == -1:
        sent["seed"] = random.randrange(2**31)

    async def post_sampling() -> Sequence[TokenProb]:
        completion = await adrain(reopen({**sent, "post_sampling": True}))
        return completion.tokens or []

    return ReplyView(probs=True, post_sampling=post_sampling), lambda bundle, update: None, sent
