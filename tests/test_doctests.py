"""The examples in rocm_nb's docstrings run as written.

Examples that need a running server or a notebook are marked ``+SKIP`` in
their docstrings and are exercised by the other tests; everything else here
runs for real. ``doctest.testmod`` is used directly (not pytest's
``--doctest-modules``) so that those marked examples are not reported as
skipped tests.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rocm_nb

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(rocm_nb.__path__, "rocm_nb."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_every_module_has_examples() -> None:
    """A module whose examples are all skipped would pass the test above vacuously."""
    finder = doctest.DocTestFinder()
    silent = [name for name in MODULES
              if not any(example for test in finder.find(importlib.import_module(name))
                         for example in test.examples if not example.options.get(doctest.SKIP))]
    assert silent == []
