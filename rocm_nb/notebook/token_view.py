"""``TokenView``: text as the model sees it, token pills with ids; a chat as its template renders it.

``TokenView(model, "Hello, world!")`` shows each token as a pill with its id
underneath (``/tokenize`` with ``with_pieces``). Given chat messages,
``TokenView(model, messages)`` shows the exact prompt the model's chat
template makes (:meth:`~rocm_nb.LocalModel.apply_template`), split into one
segment per message plus the generation prompt the template appends, each
headed by its token count, with the special tokens (``<|im_start|>`` and
the like) highlighted.

How segments are found: the template is rendered for the first message,
then the first two, and so on; each message's segment is what its render
added. Templates that rewrite earlier turns (rare) break that prefix rule;
the view then shows one segment, "prompt". Tokens are counted once, over the
whole prompt, and each belongs to the segment where it starts, so the
counts add up to the prompt's length exactly.

Which tokens are special: the server's pieces carry no flag, so a piece
written like a control token (``<|…|>``, ``<s>``, ``</s>``, ``[INST]``…) is
highlighted. That is a convention of chat templates, not a guarantee.

Example:
    >>> is_special("<|im_start|>"), is_special("Hello")
    (True, False)
    >>> view = TokenView(model, [{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    >>> [(s.label, s.count) for s in view.parts]  # doctest: +SKIP
    [('user', 5), ('generation prompt', 3)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rocm_nb._extras import needs_extra
from rocm_nb.client.completion import Message
from rocm_nb.notebook._widget_kit import CSS, TokenSource, esm

with needs_extra("notebook"):
    import anywidget
    import traitlets

if TYPE_CHECKING:
    from rocm_nb.client.logprobs import TokenPiece

__all__ = ["Segment", "TokenView", "is_special", "segments"]

_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|\[/?[A-Z_]{2,20}\]|<(?:start|end)_of_turn>|<unk>|<pad>")


def is_special(piece: str) -> bool:
    """True for a piece written like a chat template's control token.

    Example:
        >>> [is_special(p) for p in ["<|im_end|>", "[INST]", "</s>", " <b>"]]
        [True, True, True, False]
    """
    return _SPECIAL.fullmatch(piece) is not None


@dataclass(frozen=True)
class Segment:
    """One part of a rendered prompt: a message (``label`` its role) or the template's generation prompt.

    Example:
        >>> Segment("user", "<|im_start|>user\\nHi<|im_end|>\\n", ()).count
        0
    """

    label: str
    text: str
    tokens: tuple[TokenPiece, ...]

    @property
    def count(self) -> int:
        """How many tokens start in this segment."""
        return len(self.tokens)


def segments(source: TokenSource, messages: Sequence[Message]) -> list[Segment]:
    """The prompt ``messages`` render to, in segments with their tokens (see the module docstring).

    Example:
        >>> [s.label for s in segments(model, [{"role": "user", "content": "Hi"}])]  # doctest: +SKIP
        ['user', 'generation prompt']
    """
    full = source.apply_template(messages)
    texts: list[tuple[str, str]] = []
    done = ""
    for i, message in enumerate(messages):
        rendered = source.apply_template(messages[: i + 1], add_generation_prompt=False)
        if not rendered.startswith(done):
            texts = []
            break
        texts.append((str(message.get("role", "message")), rendered[len(done):]))
        done = rendered
    if not texts or not full.startswith(done):
        texts, done = [], ""
    texts.append(("generation prompt" if texts else "prompt", full[len(done):]))
    pieces = source.tokenize(full, pieces=True)
    out: list[Segment] = []
    start, taken, offset = 0, 0, 0  # offset: bytes of the prompt the tokens so far cover
    for label, text in texts:
        start += len(text.encode())
        mine: list[TokenPiece] = []
        while taken < len(pieces) and offset < start:
            mine.append(pieces[taken])
            offset += len(pieces[taken].bytes)
            taken += 1
        out.append(Segment(label, text, tuple(mine)))
    if taken < len(pieces):  # bytes that did not add up (should not happen): keep every token somewhere
        last = out[-1]
        out[-1] = Segment(last.label, last.text, (*last.tokens, *pieces[taken:]))
    return out


def _pills(tokens: Sequence[TokenPiece]) -> list[dict[str, object]]:
    return [{"id": t.id, "text": t.text, "special": is_special(t.text)} for t in tokens]


class TokenView(anywidget.AnyWidget):
    """Token pills with ids for a text, or a chat's rendered template in segments (see the module docstring).

    Args:
        source: the model whose tokenizer and template are used.
        text_or_messages: a string, or chat messages.

    Example:
        >>> TokenView(model, "Hello").total  # doctest: +SKIP
        1
    """

    _esm = esm("tokenview")
    _css = CSS

    parts_data = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Segments as the view draws them: ``{label, count, tokens: [{id, text, special}]}``."""
    total = traitlets.Int(0).tag(sync=True)
    chars = traitlets.Int(0).tag(sync=True)

    def __init__(self, source: TokenSource, text_or_messages: str | Sequence[Message]) -> None:
        if isinstance(text_or_messages, str):
            pieces = source.tokenize(text_or_messages, pieces=True)
            self.parts = [Segment("text", text_or_messages, tuple(pieces))]
        else:
            self.parts = segments(source, text_or_messages)
        """The :class:`Segment` s shown."""
        super().__init__(
            parts_data=[{"label": s.label, "count": s.count, "tokens": _pills(s.tokens)} for s in self.parts],
            total=sum(s.count for s in self.parts), chars=sum(len(s.text) for s in self.parts),
        )

    @property
    def ids(self) -> list[int]:
        """Every token id, in order."""
        return [t.id for s in self.parts for t in s.tokens]

    def __repr__(self) -> str:
        lines = [f"TokenView: {self.chars} characters → {self.total} tokens"]
        for s in self.parts:
            lines.append(f"  {s.label} ({s.count} tokens): " + " ".join(f"{t.text!r}:{t.id}" for t in s.tokens))
        return "\n".join(lines)
