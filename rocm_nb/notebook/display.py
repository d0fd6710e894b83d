"""Stream tokens into one cell output, updated in place.

A :class:`StreamDisplay` owns one display id. While tokens arrive it shows
plain text (cheap for every front-end to re-render), updating at most
``rate`` times per second however fast the model decodes: each update resends
the whole text, and Jupyter caps iopub traffic. Nothing is lost or reordered:
pieces are appended to one buffer and the last update always carries all of
it. At the end the text is rendered from Markdown to HTML with a one-line
footer, by rocm_nb itself and never by the front end: raw HTML is shown as
text and images as ``[image: alt](url)``, so the model's output cannot make
the browser fetch anything (:mod:`rocm_nb._markdown`).

A model that thinks first (``Completion.reasoning``) gets a "Thinking" block
above the answer, with its token count and time: open while the model
thinks, folded (an HTML ``<details>``) once the reply is complete. A long
prompt shows a progress bar while the server reads it (``return_progress``);
it goes when the first token comes. Both go through :meth:`StreamDisplay.think`
and :meth:`StreamDisplay.prefill`, at the same capped rate as the text.

One display id and plain mime bundles work in JupyterLab, Notebook 7, VS Code
and Colab alike, without a widget manager.

Example:
    >>> shown = []
    >>> d = StreamDisplay(publish=lambda bundle, update: shown.append(bundle), clock=iter(range(100)).__next__)
    >>> d.append("Hello"); d.append(", world")
    >>> d.finish("3 tokens")
    >>> shown[-1]["text/html"]
    '<p>Hello, world</p>\\n<p><sub>3 tokens</sub></p>'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rocm_nb._escape import html_text, printable, text_table
from rocm_nb._markdown import render
from rocm_nb._units import human_bytes
from rocm_nb.client.status import ServerStatus

if TYPE_CHECKING:
    from rocm_nb.client.logprobs import Progress
    from rocm_nb.client.request import Options

__all__ = ["LONG_PROMPT", "StreamDisplay", "ipython_publisher", "long_prefill", "progress_option"]

LONG_PROMPT = 256
"""Prompt tokens left to read from which a progress bar is worth showing (fewer take well under a second)."""


def progress_option(source: object) -> Options:
    """``{"return_progress": True}`` for a source that asks for prefill progress (its ``asks_progress``), else ``{}``.

    A :class:`~rocm_nb.LocalModel` does (its own llama-server); a
    :class:`~rocm_nb.client.Client` does not, since its server may be of a
    kind that refuses the field and finding out would cost a request: pass
    ``return_progress=True`` yourself for a remote llama-server.

    Example:
        >>> progress_option(object())
        {}
    """
    return {"return_progress": True} if getattr(source, "asks_progress", False) is True else {}


def long_prefill(progress: Progress | None) -> bool:
    """True for progress on a prompt long enough to show (``LONG_PROMPT`` tokens or more not from the cache).

    Example:
        >>> from rocm_nb.client.logprobs import Progress
        >>> long_prefill(Progress(processed=0, total=1500, cached=0)), long_prefill(Progress(0, 1500, 1400))
        (True, False)
    """
    return progress is not None and progress.total - progress.cached >= LONG_PROMPT

Bundle = dict[str, str]
Publisher = Callable[[Bundle, bool], None]
"""``publish(bundle, update)``: show ``bundle`` first (update False), then replace it."""


def ipython_publisher() -> Publisher:
    """A publisher that shows bundles through IPython under one new display id.

    Example:
        >>> publish = ipython_publisher()  # doctest: +SKIP
        >>> publish({"text/plain": "Hi"}, False)  # doctest: +SKIP
    """
    from IPython.display import display, update_display

    display_id: Any = None

    def publish(bundle: Bundle, update: bool) -> None:
        nonlocal display_id
        if display_id is None:
            display_id = display(bundle, raw=True, display_id=True).display_id  # type: ignore[no-untyped-call]
        else:
            update_display(bundle, raw=True, display_id=display_id)  # type: ignore[no-untyped-call]

    return publish


class StreamDisplay:
    """Coalesced, in-place display of a token stream.

    Args:
        publish: where bundles go (default: IPython, one display id).
        live: show text while it streams (False: show it once, at the end).
        rate: most updates per second while streaming.
        clock: seconds as a float (a seam for tests).

    Example:
        >>> d = StreamDisplay()  # doctest: +SKIP
        >>> for piece in model.stream("Hi"):  # doctest: +SKIP
        ...     d.append(piece)
        >>> d.finish("12 tokens · 150 tok/s")  # doctest: +SKIP
    """

    def __init__(
        self,
        publish: Publisher | None = None,
        *,
        live: bool = True,
        rate: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish if publish is not None else ipython_publisher()
        self._interval = 1.0 / rate
        self._clock = clock
        self._live = live
        self._pieces: list[str] = []
        self._reasoning: list[str] = []
        self._thought: list[float] = []  # when the thinking started and, once the answer began, ended
        self._progress: Progress | None = None
        self._last: float | None = None
        self.updates = 0
        """How many bundles were published (for tests and benchmarks)."""
        if live:
            self._send({"text/plain": "▌"})

    @property
    def text(self) -> str:
        """Everything appended so far."""
        return "".join(self._pieces)

    def _send(self, bundle: Bundle) -> None:
        self._publish(bundle, self.updates > 0)
        self.updates += 1

    def append(self, piece: str) -> None:
        """Add a piece; publish if the last update is older than 1/rate s."""
        self._pieces.append(piece)
        if len(self._thought) == 1:
            self._thought.append(self._clock())
        self._maybe_send()

    def think(self, piece: str) -> None:
        """Add a piece of the model's reasoning (shown in the Thinking block)."""
        if not self._thought:
            self._thought.append(self._clock())
        self._reasoning.append(piece)
        self._maybe_send()

    def prefill(self, progress: Progress) -> None:
        """Show how far the server has read a long prompt (:func:`long_prefill`), until the first token."""
        if long_prefill(progress):
            self._progress = progress
            self._maybe_send()

    def _maybe_send(self) -> None:
        if not self._live:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            self._send(self._live_bundle())

    def _thinking(self, *, done: bool) -> tuple[str, str]:
        """The Thinking block's title and its HTML (both '' when the model did not think)."""
        if not self._reasoning:
            return "", ""
        ended = self._thought[1] if len(self._thought) > 1 else self._clock()
        title = (f"{'Thought' if done else 'Thinking…'} · {len(self._reasoning)} tokens"
                 f" · {ended - self._thought[0]:.1f} s")
        body = html_text("".join(self._reasoning), lines=True)
        block = (f'<details class="rocm-nb-thinking"{"" if done else " open"}><summary>{html_text(title)}'
                 f'</summary><div style="white-space:pre-wrap;color:#555">{body}</div></details>')
        return title, block

    def _live_bundle(self) -> Bundle:
        text = self.text + "▌"
        title, block = self._thinking(done=False)
        p = self._progress
        reading = "" if p is None or self._pieces or not p.total or p.processed >= p.total else (
            f"reading the prompt: {p.processed} / {p.total} tokens ({100 * p.processed / p.total:.0f} %)")
        if not title and not reading:
            return {"text/plain": text}
        plain = "\n\n".join(x for x in (f"[{title}]" if title else "", "".join(self._reasoning), reading, text) if x)
        bar = "" if not reading else (
            f'<div>{html_text(reading)} <progress max="{p.total}" value="{p.processed}"></progress></div>'
            if p is not None else "")
        return {"text/plain": plain,
                "text/html": f'{block}{bar}<div style="white-space:pre-wrap">{html_text(text, lines=True)}</div>'}

    def finish(self, footer: str = "", *, markdown: bool = True) -> None:
        """Show the whole text, rendered from Markdown unless ``markdown=False``, with a footer line.

        The Markdown is rendered to HTML here (:func:`rocm_nb._markdown.render`:
        no raw HTML, no image loaded), never sent as ``text/markdown``.
        """
        text = self.text
        title, block = self._thinking(done=True)
        plain = f"{text}\n\n{footer}" if footer else text
        bundle: Bundle = {"text/plain": f"[{title}]\n{''.join(self._reasoning)}\n\n{plain}" if title else plain}
        body = render(text) if markdown else f'<div style="white-space:pre-wrap">{html_text(text, lines=True)}</div>'
        if markdown or title:
            bundle["text/html"] = block + body + (f"<p><sub>{html_text(footer)}</sub></p>" if footer else "")
        self._send(bundle)


def _uptime(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{rest:02d}s"


def _memory(status: ServerStatus) -> str:
    """Measured RSS beside the load's estimate ("estimated X, measured Y"), then the GPU's: estimated, and what the
    server reported allocating (of the devices' total)."""
    measured, estimated, vram = status.rss_bytes, status.estimate_bytes, status.estimate_vram_bytes
    if estimated is None:
        return "–" if measured is None else human_bytes(measured)
    text = f"estimated {human_bytes(estimated)}, measured {'–' if measured is None else human_bytes(measured)}"
    if status.vram_bytes is not None:
        total = f" of {human_bytes(status.vram_total_bytes)}" if status.vram_total_bytes else ""
        return (f"{text}; GPU estimated {human_bytes(vram or 0)}, allocated {human_bytes(status.vram_bytes)}{total} "
                "(llama-server's report)")
    return f"{text}; VRAM estimated {human_bytes(vram)}" if vram else text


def _layers(status: ServerStatus) -> str:
    """The GPU layers the server reported offloading (``N/M``), else the number asked for."""
    if status.offloaded_layers is not None and status.layers is not None:
        return f"{status.offloaded_layers}/{status.layers}"
    return _known(status.gpu_layers)


def _known(value: object) -> str:
    return "–" if value is None else str(value)


_STATUS_COLUMNS: tuple[tuple[str, Callable[[ServerStatus], str]], ...] = (
    ("file", lambda s: s.file),
    ("backend", lambda s: s.backend),
    ("state", lambda s: s.state),
    ("pid", lambda s: _known(s.pid)),
    ("port", lambda s: _known(s.port)),
    ("uptime", lambda s: "–" if s.uptime_s is None else _uptime(s.uptime_s)),
    ("memory", _memory),
    ("GPU layers", _layers),
    ("ctx", lambda s: _known(s.ctx_size)),
    ("tok/s", lambda s: "–" if s.decode_tps is None else f"{s.decode_tps:.1f}"),
    ("images", lambda s: "–" if s.images is None else "yes" if s.images else "no"),
    ("RPC workers", lambda s: ", ".join(s.rpc) or "–"),
    ("restored", lambda s: "–" if s.restored_tokens is None else f"{s.restored_tokens:,} tokens"),
)
"""The status table after its first column (the alias): each column's title and how a status fills it."""


def status_bundle(statuses: Mapping[str, ServerStatus], *, current: str | None, notes: Sequence[str]) -> Bundle:
    """A text and HTML table of servers by their alias (``*`` marks ``current``), then hardware notes.

    The memory column holds the measured RSS of each server beside the
    memory estimate of its load (``estimated X, measured Y``). A server
    with an :attr:`~rocm_nb.client.status.ServerStatus.error` keeps its row, and
    the error is a note below the table.

    Example:
        >>> status = ServerStatus(model="SmolLM2", file="smol.gguf", backend="cpu", state="running")
        >>> b = status_bundle({"m": status}, current="m", notes=["backend cpu"])
        >>> b["text/plain"].splitlines()[1].split()[:4]
        ['*', 'm', 'smol.gguf', 'cpu']
    """
    rows = list(statuses.items())
    notes = [*(f"⚠ {alias}: {status.error}" for alias, status in rows if status.error), *notes]
    cells = [["*" if alias == current else "", alias] + [fill(status) for _, fill in _STATUS_COLUMNS]
             for alias, status in rows]
    headers = ["", "model"] + [title for title, _ in _STATUS_COLUMNS]
    lines = text_table(headers, cells) if rows else ["no model loaded in this notebook (%rocm_load MODEL)"]
    html_rows = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in cells)
    table = (
        "<table><thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in headers)
        + f"</tr></thead><tbody>{html_rows}</tbody></table>"
    ) if rows else f"<p>{html_text(lines[0])}</p>"
    notes_html = "".join(f"<li>{html_text(n)}</li>" for n in notes)
    return {
        "text/plain": "\n".join([*lines, "", *(printable(n) for n in notes)]),
        "text/html": f"{table}<ul>{notes_html}</ul>",
    }
