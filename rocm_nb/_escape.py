"""Untrusted text made inert where rocm_nb shows it: in a terminal, in a text table, in HTML.

What a GGUF file says (its name, architecture, file type, chat template), a
file's own name, what a server or a model answers: none of it is trusted.
rocm_nb keeps such text as it came and escapes it at the point where it is
shown, with the helpers here, so that whatever name a caller chooses to show
is escaped the same way:

* :func:`printable`, for a terminal and for ``text/plain``: every control
  character becomes its Python escape (``\\x1b``, ``\\n``, ``\\u202e``):
  C0 and C1 controls and DEL (so an escape sequence can neither colour the
  terminal nor set its title, and a newline in a file name cannot split a
  table row), the line and paragraph separators, the bidirectional
  overrides and isolates (which would show the rest of a line reversed), and
  lone surrogates (a file name that is not UTF-8, which ``print`` would
  refuse).
* :func:`text_table`: a table whose every cell went through :func:`printable`.
* :func:`html_text`, for HTML: :func:`printable`, then ``<``, ``>``, ``&``,
  ``"`` and ``'`` as entities, so the text is text inside an element or an
  attribute value.

Untrusted text is never sent to a front end as ``text/markdown``: a Markdown
renderer keeps raw HTML, links and images, and a notebook trusts the output
of its own session, so it does not sanitise it (a GGUF named ``<img src=x
onerror=…>`` would run its script). Rich output is HTML built with
:func:`html_text`; model output that is meant as Markdown is rendered by
:mod:`rocm_nb._markdown`.

Example:
    >>> printable("Evil\\x1b]0;pwned\\x07 model")
    'Evil\\\\x1b]0;pwned\\\\x07 model'
    >>> html_text('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

__all__ = ["html_text", "printable", "text_table"]

_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNPRINTABLE = re.compile(f"[{_CONTROLS}]")
_UNPRINTABLE_BUT_LINES = re.compile(f"(?![\n\t])[{_CONTROLS}]")


def _escape(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]


def printable(text: object, *, lines: bool = False) -> str:
    """``str(text)`` with every control character replaced by its Python escape (see the module docstring).

    ``lines=True`` keeps newlines and tabs (for text of several lines, such as
    an error message or a model's reply); a table cell or a one-line summary
    keeps none.

    Example:
        >>> printable("a\\nb\\u202ec"), printable("a\\nb", lines=True)
        ('a\\\\nb\\\\u202ec', 'a\\nb')
    """
    return (_UNPRINTABLE_BUT_LINES if lines else _UNPRINTABLE).sub(_escape, str(text))


def html_text(text: object, *, lines: bool = False) -> str:
    """``text`` as HTML text: :func:`printable` (``lines`` as there), then HTML's special characters escaped.

    Safe inside an element and inside a quoted attribute value.

    Example:
        >>> html_text("a < b & 'c'\\x1b")
        'a &lt; b &amp; &#x27;c&#x27;\\\\x1b'
    """
    return html.escape(printable(text, lines=lines), quote=True)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a text table: columns two spaces apart, every cell :func:`printable`, trailing spaces dropped.

    A row with fewer cells than there are headers is padded up to its last
    cell, which runs on (an error that spans the rest of the row); its last
    cell does not widen the column it starts in.

    Example:
        >>> text_table(["name", "size"], [["a\\nb", "1 MiB"], ["c", "2 MiB"], ["d", "✗ unreadable: bad header"]])
        ['name  size', 'a\\\\nb  1 MiB', 'c     2 MiB', 'd     ✗ unreadable: bad header']
    """
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row if len(row) == len(headers) else row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return lines
