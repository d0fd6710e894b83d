"""A generated reply in a cell: streamed into the output, then made into what ``--format`` asks for.

``%%rocm_generate`` is a thin adapter over these: :func:`json_schema` picks
the schema to constrain the reply to, :func:`show` streams the reply into
one output, and :func:`formatted` turns the finished :class:`Completion`
into the cell's result, the value ``--out`` stores and, for ``--format code``,
the text of a new cell.

Example:
    >>> reply = formatted(Completion('{"n": 1}', "stop", None), "json", {"type": "object"})
    >>> reply.value, reply.new_cell
    ({'n': 1}, None)
    >>> reply.result(out=None, namespace={})
    {'n': 1}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from rocm_nb._extras import needs_extra
from rocm_nb.client.completion import Completion
from rocm_nb.client.stream import TokenStream
from rocm_nb.notebook.display import Publisher, StreamDisplay

with needs_extra("notebook"):
    from IPython.core.error import UsageError

if TYPE_CHECKING:
    from rocm_nb.client.stream import Delta

__all__ = ["FORMATS", "Format", "LiveView", "Reply", "formatted", "json_schema", "show"]

Format = Literal["markdown", "text", "code", "json"]
FORMATS: tuple[Format, ...] = get_args(Format)
"""The ``--format`` choices; the first is the default."""

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
"""What ``--format json`` asks for without a schema (OpenAI's ``response_format`` ``json_object``)."""


def json_schema(fmt: Format, name: str | None, namespace: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema to constrain the reply to: the dict variable ``name``, any JSON object for ``json``, else none.

    Example:
        >>> json_schema("json", None, {})
        {'type': 'object'}
        >>> json_schema("markdown", "pet", {"pet": {"required": ["name"]}})
        {'required': ['name']}
        >>> json_schema("text", None, {}) is None
        True
        >>> json_schema("json", "nowhere", {})
        Traceback (most recent call last):
        ...
        IPython.core.error.UsageError: --json-schema nowhere: no dict variable of that name
    """
    if name is not None:
        schema = namespace.get(name)
        if not isinstance(schema, Mapping):
            raise UsageError(f"--json-schema {name}: no dict variable of that name")
        return schema
    return ANY_OBJECT if fmt == "json" else None


PREFILL_CANCEL_NOTE = ("■ cancelling… llama-server stops only once it has read the whole prompt "
                       "(it checks for a cancel between tokens); the next request waits for it")
PREFILL_FREE_NOTE = "■ stopped during the prompt; the server has finished reading it and is free again"
_WATCH_LIMIT_S = 600.0


class LiveView(Protocol):
    """What :func:`show` also feeds every update to: a :class:`~rocm_nb.notebook.reply_view.ReplyView`.

    Example:
        >>> def ended(view: LiveView) -> None:
        ...     view.finish(None, footer="stopped")
    """

    def feed(self, delta: Delta) -> None:
        """Take one update of the stream (answer, reasoning, tokens, progress)."""
        ...

    def finish(self, completion: Completion | None = None, *, footer: str = "", markdown: bool = True) -> None:
        """The stream ended (``completion`` ``None``: it was stopped)."""
        ...


def show(stream: TokenStream, fmt: Format, *, live: bool = True, publish: Publisher | None = None,
         busy: Callable[[], bool] | None = None, view: LiveView | None = None) -> Completion:
    """Stream the reply into one output (or show it once, at the end); return the finished completion.

    ``markdown`` and ``code`` end as Markdown, ``text`` and ``json`` as plain
    text. A stream that ends early (Kernel → Interrupt, an error) leaves a
    "■ stopped after N characters" footer; an interrupt is re-raised without
    the HTTP library's frames. An interrupt before the first token (the
    server is still reading the prompt, which llama-server does not cancel)
    frees the kernel at once but shows "■ cancelling…" until ``busy()`` says
    the server is free, watched from a daemon thread.

    Reasoning shows in a Thinking block and a long prompt's prefill as a
    progress bar (:class:`~rocm_nb.notebook.display.StreamDisplay`). A ``view`` (``--probs``)
    is also fed every :class:`~rocm_nb.client.stream.Delta` and finished with the
    reply, the statistics line as its footer.

    Example:
        >>> completion = show(model.stream("Hi"), "markdown")  # doctest: +SKIP
    """
    shown = StreamDisplay(publish, live=live)
    try:
        with stream:
            for delta in stream.deltas():
                if delta.text:
                    shown.append(delta.text)
                if delta.reasoning:
                    shown.think(delta.reasoning)
                if delta.progress is not None:
                    shown.prefill(delta.progress)
                if view is not None:
                    view.feed(delta)
    except BaseException as exc:
        during_prefill = isinstance(exc, KeyboardInterrupt) and not shown.text and busy is not None
        note = PREFILL_CANCEL_NOTE if during_prefill else f"■ stopped after {len(shown.text)} characters"
        shown.finish(note)
        if view is not None:
            view.finish(None, footer=note)
        if during_prefill and busy is not None:
            watch_until_free(shown, busy)
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt() from None  # a short traceback, without the HTTP library's frames
        raise
    completion = stream.completion
    assert completion is not None  # set once the stream has ended
    shown.finish(completion.stats(), markdown=fmt in ("markdown", "code"))
    if view is not None:
        view.finish(completion, footer=completion.stats())
    return completion


def watch_until_free(shown: StreamDisplay, busy: Callable[[], bool], *, interval: float = 0.25,
                     limit: float = _WATCH_LIMIT_S) -> threading.Thread:
    """Replace the "cancelling…" footer once ``busy()`` turns false (or fails), from a daemon thread.

    The output is updated through its display handle, so it lands in the
    cell it belongs to even after the kernel has moved on.

    Example:
        >>> shown = StreamDisplay(lambda bundle, update: None)
        >>> watch_until_free(shown, lambda: False).join(5)
        >>> shown.text
        ''
    """
    def watch() -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if not busy():
                    break
            except Exception:  # the server went away: it is not reading the prompt any more
                break
            time.sleep(interval)
        else:
            return
        shown.finish(PREFILL_FREE_NOTE)

    thread = threading.Thread(target=watch, name="rocm_nb-cancel-watch", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class Reply:
    """A finished reply, formatted.

    Attributes:
        value: what ``--out`` stores: the parsed JSON for ``--format json``, else the ``Completion``.
        returns: whether the cell's result (``Out[n]``) is ``value``; only ``--format json`` returns it.
        new_cell: the code to put in a new cell below, not run (``--format code``), else ``None``.

    Example:
        >>> reply = Reply(value=Completion("Hi", "stop", None), returns=False, new_cell=None)
        >>> names = {}
        >>> reply.result(out="r", namespace=names), names["r"].text
        (None, 'Hi')
    """

    value: Any
    returns: bool
    new_cell: str | None

    def result(self, *, out: str | None, namespace: MutableMapping[str, Any]) -> Any:
        """The cell's result; with ``out``, the value is stored in ``namespace[out]`` instead."""
        if out:
            namespace[out] = self.value
            return None
        return self.value if self.returns else None


def formatted(completion: Completion, fmt: Format, schema: Mapping[str, Any] | None) -> Reply:
    """Parse and check the reply against ``schema`` (if any), and make it what ``fmt`` asks for.

    A reply that is not valid JSON or breaks the schema raises
    ``GenerationError`` naming the problem, with the raw reply in ``.body``.

    Example:
        >>> reply = formatted(Completion("Try:\\n```python\\nprint(1)\\n```", "stop", None), "code", None)
        >>> reply.new_cell, reply.value.finish_reason, reply.returns
        ('print(1)', 'stop', False)
        >>> from rocm_nb.errors import GenerationError
        >>> try:
        ...     formatted(Completion('{"n": "one"}', "stop", None), "text", {"required": ["m"]})
        ... except GenerationError as exc:
        ...     print(exc.body)
        {"n": "one"}
    """
    data = completion.json(schema) if schema is not None or fmt == "json" else None
    if fmt == "json":
        return Reply(data, returns=True, new_cell=None)
    return Reply(completion, returns=False, new_cell=completion.code() if fmt == "code" else None)
