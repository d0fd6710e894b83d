"""Stream tokens into one cell output, updated in place.

A :class:`StreamDisplay` owns one display id. While tokens arrive it shows
plain text (cheap for every front-end to re-render), updating at most
``rate`` times per second however fast the model decodes: each update resends
the whole text, and Jupyter caps iopub traffic. Nothing is lost or reordered:
pieces are appended to one buffer and the last update always carries all of
it. At the end the text is rendered as Markdown with a one-line footer.

One display id and plain mime bundles work in JupyterLab, Notebook 7, VS Code
and Colab alike, without a widget manager.

Example:
    >>> shown = []
    >>> d = StreamDisplay(publish=lambda bundle, update: shown.append(bundle), clock=iter(range(100)).__next__)
    >>> d.append("Hello"); d.append(", world")
    >>> d.finish("3 tokens")
    >>> shown[-1]["text/markdown"]
    'Hello, world\\n\\n<sub>3 tokens</sub>'
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from rocm_nb._units import human_bytes

__all__ = ["StreamDisplay", "ipython_publisher"]

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
        if not self._live:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            self._send({"text/plain": self.text + "▌"})

    def finish(self, footer: str = "", *, markdown: bool = True) -> None:
        """Show the whole text, as Markdown unless ``markdown=False``, with a footer line."""
        text = self.text
        bundle: Bundle = {"text/plain": f"{text}\n\n{footer}" if footer else text}
        if markdown:
            bundle["text/markdown"] = f"{text}\n\n<sub>{footer}</sub>" if footer else text
        self._send(bundle)


_STATUS_COLUMNS = (
    ("alias", "model"), ("file", "file"), ("backend", "backend"), ("state", "state"), ("pid", "pid"),
    ("port", "port"), ("uptime_s", "uptime"), ("rss_bytes", "memory"), ("gpu_layers", "GPU layers"),
    ("ctx_size", "ctx"), ("decode_tps", "tok/s"), ("rpc", "RPC workers"),
)


def _memory(row: dict[str, Any]) -> str:
    """Measured RSS beside the load's estimate ("estimated X, measured Y"), plus the estimated VRAM."""
    measured, estimated, vram = row.get("rss_bytes"), row.get("estimate_bytes"), row.get("estimate_vram_bytes")
    if estimated is None:
        return "–" if measured is None else human_bytes(measured)
    text = f"estimated {human_bytes(estimated)}, measured {'–' if measured is None else human_bytes(measured)}"
    return f"{text}; VRAM estimated {human_bytes(vram)}" if vram else text


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if key == "rss_bytes":
        return _memory(row)
    if value is None:
        return "–"
    if key == "uptime_s":
        minutes, seconds = divmod(int(value), 60)
        return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"
    if key == "decode_tps":
        return f"{value:.1f}"
    if key == "rpc":
        return ", ".join(value) or "–"
    return str(value)


def status_bundle(rows: list[dict[str, Any]], *, current: str | None, notes: list[str]) -> Bundle:
    """A text and HTML table of running models, followed by hardware notes.

    The memory column holds the measured RSS of each server beside the
    memory estimate of its load (``estimated X, measured Y``).

    Example:
        >>> b = status_bundle([{"alias": "m", "state": "running"}], current="m", notes=["backend cpu"])
        >>> b["text/plain"].splitlines()[1].split()[:2]
        ['*', 'm']
    """
    cells = [[_cell(key, row) for key, _ in _STATUS_COLUMNS] for row in rows]
    marks = ["*" if row.get("alias") == current else " " for row in rows]
    headers = [title for _, title in _STATUS_COLUMNS]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += [
        f"{m} " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        for m, r in zip(marks, cells, strict=True)
    ]
    if not rows:
        lines = ["no model loaded in this notebook (%rocm_load MODEL)"]
    html_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [m.strip(), *r]) + "</tr>"
        for m, r in zip(marks, cells, strict=True)
    )
    table = (
        "<table><thead><tr><th></th>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        + f"</tr></thead><tbody>{html_rows}</tbody></table>"
    ) if rows else f"<p>{html.escape(lines[0])}</p>"
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return {
        "text/plain": "\n".join([*lines, "", *notes]),
        "text/html": f"{table}<ul>{notes_html}</ul>",
    }
