"""mkdocs hooks: the parts of the docs site rendered from the code at build time, so they cannot drift.

A page asks for one with a line of its own, ``<!-- generated: NAME -->``, NAME one of :data:`GENERATORS`:

- ``error-tree``: the exception tree, drawn from the classes in ``rocm_nb/errors.py``;
- ``error-reference``: the API reference of each of those classes, in the tree's order;
- ``magic-help``: what ``%rocm_load?`` and the other magics' ``?`` show (their argparse help);
- ``cli-help``: ``rocm-nb --help`` and every subcommand's ``--help``.

An unknown NAME stops the build. Run by ``mkdocs build`` (``make docs``, and so ``make check``
and ``make test``); listed in ``mkdocs.yml``.

:class:`Docstrings`, a griffe extension (also listed in ``mkdocs.yml``), reads the package's
docstrings as the project writes them (Google style, with reStructuredText inline roles) for the API
reference: see its docstring.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe
from mkdocs.exceptions import PluginError

os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width: the site's must not depend on it

MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)


ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`")
"""A Sphinx role in a docstring (``:func:`~a.b.c```): plain text keeps its last name, ``c``."""


def _first_sentence(doc: str | None) -> str:
    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return ROLE.sub(r"\1", sentence).replace("``", "").rstrip(".")


def error_tree() -> str:
    """The tree of ``RocmNbError`` and its public subclasses, then a table: each one's built-in bases and meaning.

    Both come from ``rocm_nb.errors`` (``error_tree()`` draws the tree from the classes, ``error_classes()``
    lists them in its order), so this page, the module's docstring and the classes cannot disagree.
    """
    from rocm_nb.errors import RocmNbError, error_classes
    from rocm_nb.errors import error_tree as drawn

    def builtins(cls: type) -> list[str]:
        return [b.__name__ for b in cls.__bases__ if not issubclass(b, RocmNbError) and b is not Exception]

    rows = "\n".join(f"| [`{cls.__name__}`](#rocm_nb.errors.{cls.__name__}) | "
                     f"{', '.join(f'`{b}`' for b in builtins(cls))} | {_first_sentence(cls.__doc__)} |"
                     for cls in error_classes())
    return f"```text\n{drawn()}\n```\n\n| error | also a | what it means |\n| --- | --- | --- |\n{rows}"


def error_reference() -> str:
    """A mkdocstrings block per exception, in the tree's order (the module's own docstring is not repeated)."""
    from rocm_nb.errors import error_classes

    return "\n\n".join(f"::: rocm_nb.errors.{cls.__name__}\n    options:\n      heading_level: 3"
                         for cls in error_classes())


def magic_help() -> str:
    """Each ``%rocm_*`` magic's help, as ``%magic?`` shows it, in the order the magics are defined."""
    from rocm_nb.notebook.magics import RocmMagics

    prefixes = {method: "%" + ("%" if kind == "cell" else "")
                for kind, table in RocmMagics.magics.items() for method in table.values()}
    sections = []
    for method in vars(RocmMagics):
        if method in prefixes:
            doc = inspect.cleandoc(getattr(RocmMagics, method).__doc__ or "").removeprefix("::").strip("\n")
            usage, _, rest = doc.partition("\n\n")  # IPython indents the usage lines of the help
            doc = f"{textwrap.dedent(usage)}\n\n{rest}" if rest else textwrap.dedent(usage)
            sections.append(f"### `{prefixes[method]}{method}`\n\n```text\n{doc}\n```")
    return "\n\n".join(sections)


def cli_help() -> str:
    """``rocm-nb --help`` and the help of every subcommand, walked from the command's own parser."""
    from rocm_nb.cli import _parser

    sections = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        sections.append(f"### `{' '.join(words)}`\n\n```text\n{parser.format_help().rstrip()}\n```")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])

    walk(_parser(), ["rocm-nb"])
    return "\n\n".join(sections)


GENERATORS: dict[str, Callable[[], str]] = {
    "error-tree": error_tree,
    "error-reference": error_reference,
    "magic-help": magic_help,
    "cli-help": cli_help,
}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` line with what ``GENERATORS[NAME]`` renders."""

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_path}: no generator called {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(render, markdown)


class Docstrings(griffe.Extension):
    """The project's docstring conventions, rendered by mkdocstrings' Google-style reader.

    - ``Example:`` heads a section of doctests, as ``Examples:`` does for griffe;
    - a reStructuredText role (``:class:`~rocm_nb.client.Client```) is shown as code (``Client``);
    - a reStructuredText literal block's ``::`` is a colon (the indented block is code in Markdown too);
    - ``# doctest: +SKIP`` and other directives are dropped from the shown examples;
    - ``a, b: text`` in ``Args:`` documents each of ``a`` and ``b`` with the text, as numpydoc allows.
    """

    SECTION = re.compile(r"^(\s*)Example:$", re.MULTILINE)
    DIRECTIVE = re.compile(r"[ \t]*# doctest:[^\n]*$", re.MULTILINE)
    LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)
    LITERAL_ALONE = re.compile(r"^[ \t]*::\n", re.MULTILINE)
    SHARED = re.compile(r"^(\s+)(\w+(?:, \w+)+): (.*)$")

    def on_instance(self, *, obj: griffe.Object, **_: Any) -> None:
        if obj.docstring is None:
            return
        text = self.SECTION.sub(r"\1Examples:", obj.docstring.value)
        text = ROLE.sub(r"``\1``", text)
        text = self.DIRECTIVE.sub("", text)
        text = self.LITERAL_ALONE.sub("", self.LITERAL.sub(":", text))
        obj.docstring.value = "\n".join(self._split_shared(text.splitlines()))

    def _split_shared(self, lines: list[str]) -> Iterator[str]:
        args: str | None = None  # the indentation of the "Args:" line while inside that section
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.strip() == "Args:":
                args = line[:len(line) - len(line.lstrip())]
            elif args is not None and line.strip() and not line.startswith(args + " "):
                args = None
            match = self.SHARED.match(line) if args is not None else None
            if match is None:
                yield line
                i += 1
                continue
            indent, names, first = match.groups()
            end = i + 1
            while end < len(lines) and lines[end].startswith(indent + " "):  # the entry's continuation lines
                end += 1
            for name in names.split(", "):
                yield f"{indent}{name}: {first}"
                yield from lines[i + 1:end]
            i = end
