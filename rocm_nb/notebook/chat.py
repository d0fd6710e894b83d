"""``ChatPanel``: a chat with the model in an ipywidgets panel.

History as Markdown bubbles, a text box (Enter or Send), Stop, Clear, a
system prompt, temperature and max-tokens controls, and per-reply statistics
with a context meter (tokens in the slot against its context).

**Images.** The Attach button uploads images (or :meth:`ChatPanel.attach`
takes figures, arrays, files…); they show as thumbnails under the text box
and go with the next message, encoded as the source's ``user_message``
encodes them (scaled to what its projector uses: :mod:`rocm_nb.client.images`).
The history and :meth:`ChatPanel.export` keep the images as they were sent
(``image_url`` parts with ``data:`` URLs); a bubble shows small thumbnails
made from them, and only from ``data:`` URLs of PNG or JPEG this panel made.
A model without a projector refuses before any request; the error shows in
the panel and the text and the images stay, so nothing is lost.

A reply's reasoning shows live in a collapsible "Thinking" block above its
bubble, and a long prompt shows a progress bar while the server reads it
(a :class:`~rocm_nb.notebook.reply_view.ReplyView`, added only when there is
something to show). With ``show_probs=True`` each reply is a ``ReplyView``
instead of a bubble: tokens shaded by probability, their alternatives on
hover or keyboard focus, and a before/after sampling toggle (each reply is
sent with its own seed, so that the toggle can ask for it again).

Replies are generated in an asyncio task on the kernel's own event loop with
the async client, so the kernel stays free to handle clicks: Stop cancels the
task, which closes the HTTP stream, which cancels the generation on the
server. Tokens are written to the bubble's ``value`` trait (never printed
from the task), coalesced to about 20 updates per second.

The whole conversation is sent each turn; llama-server's prompt cache keeps
the KV cache of the shared prefix, so turn 10 does not pay the prefill of
turns 1-9 again.

The panel takes any :class:`ChatSource` (whatever has
``achat_stream``): a :class:`~rocm_nb.model.LocalModel`, a
:class:`~rocm_nb.client.Client` from ``connect()``, or a fake in a test.

Example:
    >>> panel = model.panel(system="You are terse.", temperature=0.2)  # doctest: +SKIP
    >>> panel  # shows the panel  # doctest: +SKIP
    >>> panel.export()  # doctest: +SKIP
    [{'role': 'system', 'content': 'You are terse.'}, ...]
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, Unpack, runtime_checkable

from rocm_nb import _markdown
from rocm_nb._escape import html_text
from rocm_nb._extras import needs_extra
from rocm_nb.client import images as image_parts
from rocm_nb.client.completion import Completion, Message, ToolCall
from rocm_nb.client.logprobs import DEFAULT_TOP_LOGPROBS
from rocm_nb.client.request import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, Options, check_options
from rocm_nb.client.tool_loop import ToolRun
from rocm_nb.notebook.display import Bundle, Publisher, StreamDisplay, long_prefill, progress_option

with needs_extra("notebook"):
    import ipywidgets as widgets

if TYPE_CHECKING:
    from rocm_nb.client.logprobs import ContextUse
    from rocm_nb.client.stream import AsyncTokenStream

__all__ = ["ChatPanel", "ChatSource", "context_meter_html", "message_html", "render_markdown", "run_bubbles",
           "tool_bubbles"]

_BUBBLE = {
    "user": "background:#e8f0fe;margin:4px 0 4px 15%;",
    "assistant": "background:#f1f3f4;margin:4px 15% 4px 0;",
    "error": "background:#fdecea;color:#8a1c12;margin:4px 15% 4px 0;",
    "tool": "background:#fff8e1;font-family:monospace;font-size:90%;margin:4px 25% 4px 5%;",
}


def render_markdown(text: str) -> str:
    """Markdown to HTML that makes the browser fetch nothing: raw HTML escaped, images shown as text.

    Both the user's and the model's bubbles are rendered so
    (:mod:`rocm_nb._markdown` says why and how).

    Example:
        >>> render_markdown("**hi** <script> ![x](http://evil/?q=1)")
        '<p><strong>hi</strong> &lt;script&gt; <span class="rocm-nb-image">[image: x](http://evil/?q=1)</span></p>\\n'
    """
    return _markdown.render(text)


def _bubble_html(role: str, body_html: str) -> str:
    style = _BUBBLE.get(role, _BUBBLE["assistant"])
    return f'<div class="rocm-nb-{role}" style="{style}padding:6px 10px;border-radius:8px;">{body_html}</div>'


def _plain_html(text: str) -> str:
    return f'<div style="white-space:pre-wrap">{html_text(text, lines=True)}</div>'


def _thumbnails_html(urls: Sequence[str]) -> str:
    """Small images in a row, for a bubble or the attachments; a ``src`` is only ever a PNG/JPEG ``data:`` URL."""
    shown = "".join(f'<img class="rocm-nb-thumbnail" src="{url}" alt="image {i}" '
                    'style="max-height:96px;max-width:160px;margin:2px 4px 2px 0;border-radius:4px">'
                    for i, url in enumerate(urls, 1) if image_parts.is_image_url(url))
    return f'<div class="rocm-nb-images">{shown}</div>' if shown else ""


def message_html(message: Message) -> str:
    """A user's or assistant's message as bubble HTML: its text rendered safely, its images as thumbnails.

    Example:
        >>> message_html({"role": "user", "content": "**hi** <b>"})
        '<p><strong>hi</strong> &lt;b&gt;</p>\\n'
        >>> 'src="javascript' in message_html({"role": "user", "content": [
        ...     {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}}]})
        False
    """
    content = message.get("content")
    if not isinstance(content, list):
        return render_markdown(str(content or ""))
    text = "\n\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    urls = [p["image_url"].get("url") for p in content if isinstance(p, dict) and p.get("type") == "image_url"
            and isinstance(p.get("image_url"), dict)]
    thumbs = [image_parts.thumbnail(url) for url in urls if image_parts.is_image_url(url)]
    return _thumbnails_html(thumbs) + (render_markdown(text) if text else "")


def context_meter_html(context: ContextUse | None) -> str:
    """A small bar of the slot's context in use, after the statistics line's figures ('' when unknown).

    Red from 90 %: the next turns will soon not fit.

    Example:
        >>> from rocm_nb.client.logprobs import ContextUse
        >>> 'width:25.0%' in context_meter_html(ContextUse(used=1024, n_ctx=4096))
        True
    """
    if context is None or not context.n_ctx:
        return ""
    share = min(1.0, context.used / context.n_ctx)
    colour = "#d9381e" if share >= 0.9 else "#1a73e8"
    return (f'<span class="rocm-nb-context" title="context: {context.used} of {context.n_ctx} tokens in use" '
            f'style="display:inline-block;width:120px;height:8px;margin-left:8px;background:#eee;'
            f'border-radius:4px;vertical-align:middle"><span style="display:block;height:100%;'
            f'width:{100 * share:.1f}%;background:{colour};border-radius:4px"></span></span>')


@runtime_checkable
class ChatSource(Protocol):
    """Whatever can stream a chat reply asynchronously: what the chat panel needs of a model.

    :class:`~rocm_nb.client.Client` and :class:`~rocm_nb.model.LocalModel`
    are chat sources; so is any object with this one method (a fake in a
    test, a wrapper that logs).

    Example:
        >>> from rocm_nb.client import Client
        >>> def first_words(source: ChatSource) -> AsyncTokenStream:
        ...     return source.achat_stream([{"role": "user", "content": "Hi"}], max_tokens=4)
        >>> isinstance(Client("http://127.0.0.1:9"), ChatSource)
        True
    """

    def achat_stream(self, messages: Sequence[Message], **options: Unpack[Options]) -> AsyncTokenStream:
        """Stream the assistant's reply to ``messages`` (the async twin of ``chat_stream``)."""
        ...


class ChatPanel:
    """An ipywidgets chat with a model; display it as the last line of a cell.

    Args:
        source: what generates the replies: a
            :class:`~rocm_nb.model.LocalModel`, a :class:`~rocm_nb.client.Client`
            or anything else with ``achat_stream`` (a :class:`ChatSource`).
        system: the system prompt (editable in the panel).
        show_probs: show each reply as tokens shaded by probability, with
            their top alternatives (``top_logprobs``, default
            :data:`~rocm_nb.client.logprobs.DEFAULT_TOP_LOGPROBS`) and a
            before/after sampling toggle.
        **options: sampling options for every reply
            (``temperature`` and ``max_tokens`` get controls in the panel). The
            temperature slider starts at the one given, else at llama-server's
            default (:data:`~rocm_nb.client.request.DEFAULT_TEMPERATURE`), and
            a reply is sent with it only once it was given or moved: until then
            the server's default applies, as for ``model.chat()``.

    Example:
        >>> panel = ChatPanel(model, system="Answer in one sentence.")  # doctest: +SKIP
        >>> await panel.send("What is a GPU?")  # doctest: +SKIP
        >>> panel.history[-1]["role"]  # doctest: +SKIP
        'assistant'
    """

    def __init__(self, source: ChatSource, *, system: str = "", show_probs: bool = False,
                 **options: Unpack[Options]) -> None:
        self._source = source
        self.show_probs = show_probs
        self._progress = progress_option(source)  # a bar while a long prompt is read, where the server can
        self._options: Options = check_options(options)  # type: ignore[assignment]  # bad ones raise here
        self._messages: list[dict[str, Any]] = []
        self._attached: list[Any] = []
        self._thumbs: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.last: Completion | None = None
        """The :class:`Completion` of the last finished reply."""

        self.transcript = widgets.VBox(layout=widgets.Layout(max_height="420px", overflow="auto"))
        self.system = widgets.Textarea(value=system, placeholder="System prompt (optional)",
                                       layout=widgets.Layout(width="100%", height="3em"))
        self.temperature = widgets.FloatSlider(value=float(options.get("temperature", DEFAULT_TEMPERATURE)),
                                               min=0.0, max=2.0, step=0.05, description="temperature",
                                               style={"description_width": "initial"})
        self._temperature_set = "temperature" in options  # else the server's default, until the slider moves
        self.temperature.observe(self._on_temperature, names="value")
        self.max_tokens = widgets.BoundedIntText(value=int(options.get("max_tokens", DEFAULT_MAX_TOKENS)), min=1,
                                                 max=1_000_000, description="max tokens",
                                                 style={"description_width": "initial"})
        self.prompt = widgets.Text(placeholder="Message (Enter to send)", continuous_update=False,
                                   layout=widgets.Layout(flex="1"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop",
                                          disabled=True)
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.attach_button = widgets.FileUpload(accept="image/*", multiple=True, description="Attach",
                                                icon="paperclip")
        self.attach_button.add_class("rocm-nb-attach")
        self.attachments = widgets.HTML(value="")
        self.attachments.add_class("rocm-nb-attachments")
        self.stats = widgets.HTML(value="")
        self.stats.add_class("rocm-nb-stats")

        self.prompt.observe(self._on_submit, names="value")
        self.attach_button.observe(self._on_upload, names="value")
        self.send_button.on_click(lambda _: self._on_submit())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.widget = widgets.VBox([
            self.system,
            self.transcript,
            widgets.HBox([self.prompt, self.attach_button, self.send_button, self.stop_button, self.clear_button]),
            self.attachments,
            widgets.HBox([self.temperature, self.max_tokens]),
            self.stats,
        ], layout=widgets.Layout(border="1px solid #ddd", padding="6px"))
        self.widget.add_class("rocm-nb-chat")

    # -- what the user has ------------------------------------------------------------------

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation so far (user and assistant turns), as copies; images as they were sent."""
        return copy.deepcopy(self._messages)

    def export(self) -> list[dict[str, Any]]:
        """The conversation as JSON-serialisable messages, system prompt first, images included.

        Example:
            >>> json.dumps(panel.export())  # doctest: +SKIP
        """
        system = self.system.value.strip()
        return ([{"role": "system", "content": system}] if system else []) + self.history

    @property
    def busy(self) -> bool:
        """True while a reply is being generated."""
        return self._task is not None and not self._task.done()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- actions ----------------------------------------------------------------------------

    def _on_temperature(self, change: Any = None) -> None:
        self._temperature_set = True

    def _on_submit(self, change: Any = None) -> None:
        text = self.prompt.value.strip()
        if not text or self.busy:
            return
        self.prompt.value = ""
        try:
            self.send(text)
        except Exception as exc:  # a click has no caller: the error shows, and the text and images stay
            self.prompt.unobserve(self._on_submit, names="value")
            self.prompt.value = text  # back in the box, not sent again
            self.prompt.observe(self._on_submit, names="value")
            self._show_error(exc)

    def _on_upload(self, change: Any = None) -> None:
        files = self.attach_button.value
        if not files:
            return
        self.attach_button.value = ()  # taken: the same file can be chosen again
        for upload in files:
            try:
                self.attach(bytes(upload["content"]))
            except (TypeError, ValueError) as exc:  # not an image: said in the panel, the other files are kept
                self._show_error(ValueError(f"{upload['name']}: {exc}"))

    def _show_error(self, exc: BaseException) -> None:
        said = "\n".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", ())])
        self._add_bubbles([_bubble_html("error", _plain_html(f"⚠ {said}"))])

    def attach(self, *images: Any) -> None:
        """Add images to the next message (what the Attach button does with uploads); thumbnails show at once.

        Each is anything ``chat(images=...)`` takes (:mod:`rocm_nb.client.images`):
        a figure, an array, a PIL image, bytes, a file path. One that cannot be
        read is refused here, naming it, and the others stay.

        Example:
            >>> panel.attach(fig)  # doctest: +SKIP
            >>> await panel.send("What trend does this show?")  # doctest: +SKIP
        """
        thumbs = [image_parts.thumbnail(image) for image in images]  # a TypeError or ValueError names a bad one
        self._attached += images
        self._thumbs += thumbs
        self.attachments.value = _thumbnails_html(self._thumbs)

    def _user_message(self, text: str) -> Message:
        """The user's message, images encoded as the source encodes them (its projector's size), else as a server's."""
        if not self._attached:
            return {"role": "user", "content": text}
        encode = getattr(self._source, "user_message", None)  # LocalModel and Client have it; a fake need not
        if callable(encode):
            message: Message = encode(text, images=self._attached)
            return message
        return image_parts.user_message(text, self._attached)

    def send(self, text: str) -> asyncio.Task[None]:
        """Add a user message (with the attached images) and start the reply as a task on the running loop.

        A model that takes no images refuses here, before any request; the
        images stay attached.

        Example:
            >>> await panel.send("Hello")  # doctest: +SKIP
        """
        if self.busy:
            raise RuntimeError("a reply is still being generated: wait for it or press Stop")
        message = dict(self._user_message(text))
        self._attached, self._thumbs, self.attachments.value = [], [], ""
        self._messages.append(message)
        self.transcript.children = (*self.transcript.children,
                                    widgets.HTML(_bubble_html("user", message_html(message))))
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.stats.value = "<i>generating…</i>"
        self._task = asyncio.get_running_loop().create_task(self._reply())
        return self._task

    def stop(self) -> None:
        """Stop the reply in progress (the server stops generating too)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def clear(self) -> None:
        """Stop any reply and forget the conversation and the attached images (the system prompt stays)."""
        self.stop()
        self._messages.clear()
        self._attached, self._thumbs, self.attachments.value = [], [], ""
        self.transcript.children = ()
        self.stats.value = ""

    async def _reply(self) -> None:
        from rocm_nb.notebook.reply_view import ReplyView, live_view

        chosen: Options = {"temperature": self.temperature.value} if self._temperature_set else {}
        options: Options = {**self._progress, **self._options, **chosen, "max_tokens": self.max_tokens.value}
        messages = self.export()
        bubble = widgets.HTML(_bubble_html("assistant", _plain_html("▌")))
        view: ReplyView | None = None
        publish: Publisher | None = None
        if self.show_probs:
            view, publish, options = live_view(lambda o: self._source.achat_stream(messages, **o), options,
                                               probs=self._options.get("top_logprobs", DEFAULT_TOP_LOGPROBS))
        self.transcript.children = (*self.transcript.children, view or bubble)

        def show_bubble(bundle: Bundle, update: bool) -> None:
            rendered = bundle.get("text/html") or _plain_html(bundle["text/plain"])  # HTML: rendered safely
            bubble.value = _bubble_html("assistant", rendered)

        shown = StreamDisplay(publish or show_bubble)
        try:
            stream = self._source.achat_stream(messages, **options)
            async with stream:
                async for delta in stream.deltas():
                    if delta.text:
                        shown.append(delta.text)
                    if view is None and (delta.reasoning or long_prefill(delta.progress)):
                        view = ReplyView(show_answer=False)  # thinking or a long prompt: a view above the bubble
                        self.transcript.children = (*self.transcript.children[:-1], view, bubble)
                    if view is not None:
                        view.feed(delta)
            assert stream.completion is not None
            self.last = stream.completion
            shown.finish()
            if view is not None:
                view.finish(stream.completion, footer=stream.completion.stats() if self.show_probs else "")
            self._messages.append({"role": "assistant", "content": shown.text})
            self._add_bubbles(tool_bubbles(stream.completion.tool_calls))
            self.stats.value = html_text(self._stats(stream.completion)) + context_meter_html(
                getattr(stream.completion, "context", None))
        except asyncio.CancelledError:
            shown.finish()
            if view is not None:
                view.finish(None, footer="■ stopped" if self.show_probs else "")
            if shown.text:
                self._messages.append({"role": "assistant", "content": shown.text})
            self.stats.value = f"■ stopped after {len(shown.text)} characters"
        except Exception as exc:  # a task has no caller to raise to: the error shows in the panel
            said = "\n".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", ())])
            bubble.value = _bubble_html("error", _plain_html(f"{shown.text}\n\n⚠ {said}"))
            if self.show_probs:
                self.transcript.children = (*self.transcript.children, bubble)
            self.stats.value = f"<b>error:</b> {html_text(type(exc).__name__)}"
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True

    # -- tool calls (see rocm_nb.client.tools) -----------------------------------------------------

    def _add_bubbles(self, bubbles: list[str]) -> None:
        if bubbles:
            self.transcript.children = (*self.transcript.children, *(widgets.HTML(b) for b in bubbles))

    def show_run(self, run: ToolRun) -> None:
        """Show a :meth:`~rocm_nb.LocalModel.run_tools` run: its question, each tool call and result
        in bubbles of their own, and the answer; the question and answer join the history.

        Example:
            >>> panel.show_run(model.run_tools([{"role": "user", "content": "6 * 7?"}], [multiply]))  # doctest: +SKIP
        """
        question = next((m for m in run.messages if m.get("role") == "user"), None)
        if question is not None:
            self._messages.append({"role": "user", "content": str(question["content"])})
            self._add_bubbles([_bubble_html("user", render_markdown(str(question["content"])))])
        self._add_bubbles(run_bubbles(run))
        self._messages.append({"role": "assistant", "content": run.answer})
        self._add_bubbles([_bubble_html("assistant" if run.finished else "error", render_markdown(run.answer))])

    @staticmethod
    def _stats(completion: Completion) -> str:
        stats = completion.stats()
        t = completion.timings
        if t is not None and t.cached_tokens:
            stats += f" · {t.cached_tokens} prompt tokens from cache"
        return stats


def tool_bubbles(calls: Sequence[ToolCall]) -> list[str]:
    """One bubble per tool call: ``🔧 name(arguments)``.

    Example:
        >>> from rocm_nb.client.completion import ToolCall
        >>> tool_bubbles([ToolCall("1", "add", {"a": 1})])[0].count("add({&quot;a&quot;: 1})")
        1
    """
    return [_bubble_html("tool", _plain_html(f"🔧 {c.name}({json.dumps(c.arguments, ensure_ascii=False)})"))
            for c in calls]


def run_bubbles(run: ToolRun) -> list[str]:
    """Bubbles for the calls and results in a ``run_tools`` transcript (after its first question).

    Example:
        >>> from rocm_nb.client.tool_loop import ToolRun
        >>> run = ToolRun("2", [{"role": "user", "content": "1+1?"}, {"role": "tool", "name": "add",
        ...                     "content": "2"}], 2, True)
        >>> "↩ add: 2" in run_bubbles(run)[0]
        True
    """
    bubbles = []
    for message in run.messages[1:]:
        calls = message.get("tool_calls") or ()
        bubbles += tool_bubbles([ToolCall(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                                 for c in calls])
        if message.get("role") == "tool":
            bubbles.append(_bubble_html("tool", _plain_html(f"↩ {message.get('name', 'tool')}: {message['content']}")))
        elif message.get("role") == "user" or (message.get("role") == "assistant" and not calls
                                              and message is not run.messages[-1]):
            bubbles.append(_bubble_html("tool", _plain_html(str(message["content"]))))  # json mode: calls and results
    return bubbles
