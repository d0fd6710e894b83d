"""A thinking chat template for the default model, and a grammar that makes it think, then answer."""

from __future__ import annotations

from pathlib import Path

THINK_TEMPLATE = Path(__file__).parents[1] / "fixtures" / "templates" / "think.jinja"
"""ChatML whose assistant turn opens with ``<think>`` (and which shows past thinking as ``<think>…</think>``)."""

THINK_THEN_ANSWER = r'root ::= [^<\n]+ "\n</think>\n\n" [^<]+'
"""A thought of one line, the end-of-thinking tag, then the answer."""
