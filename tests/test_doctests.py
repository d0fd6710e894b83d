"""The examples in rocm_nb's docstrings run as written.

Examples that need a running server or a notebook are marked ``+SKIP`` in
their docstrings and are exercised by the other tests; everything else here
runs for real. ``doctest.testmod`` is used directly (not pytest's
``--doctest-modules``) so that those marked examples are not reported as
skipped tests. The few modules whose examples use the installed llama-server
or the default model (``NEEDS_THE_MODEL``) are tier ``server``; the rest are
``unit``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rocm_nb

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(rocm_nb.__path__, "rocm_nb."))
NEEDS_THE_MODEL = {
    "rocm_nb.cli": "`rocm-nb pull smollm2-135m` finds the model in the cache (or downloads it)",
    "rocm_nb.model": "LocalModel('smollm2-135m') resolves the model and finds llama-server",
}
"""Modules whose examples run against the installed llama-server or the default model: tier ``server``."""


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.server if name in NEEDS_THE_MODEL else pytest.mark.unit) for name in MODULES
])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


@pytest.mark.unit
def test_every_module_has_examples() -> None:
    """A module whose examples are all skipped would pass the test above vacuously."""
    finder = doctest.DocTestFinder()
    silent = [name for name in MODULES
              if not any(example for test in finder.find(importlib.import_module(name))
                         for example in test.examples if not example.options.get(doctest.SKIP))]
    assert silent == []
