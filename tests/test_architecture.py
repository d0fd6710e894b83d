"""docs/architecture.md is the design's source of truth: it names every module, in the layer the contract says.

The import-linter contract in ``pyproject.toml`` (run by ``lint-imports`` in ``make lint``) holds
the code to the layers; these tests hold the page to the contract and to the package, so a new
module, or a module moved to another layer, cannot be left out of the page.
"""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

import rocm_nb

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
CONTRACT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
LAYERS = [{name.strip() for name in layer.split("|")} for layer in CONTRACT["layers"]]
"""The contract's layers, top first: each a set of packages and modules."""


def table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table under ``## heading``, header and rule left out."""
    section = PAGE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def names(cell: str) -> set[str]:
    return set(re.findall(r"`(rocm_nb[\w.]*)`", cell))


def contract_layer(module: str) -> int | None:
    """The 1-based layer of ``module`` in the contract (its package's, if the package is a layer member)."""
    for number, members in enumerate(LAYERS, 1):
        if any(module == member or module.startswith(member + ".") for member in members):
            return number
    return None


def test_the_layer_table_is_the_contract() -> None:
    rows = table("The layers")
    assert [row[0] for row in rows] == [str(n) for n in range(1, len(LAYERS) + 1)]
    assert [names(row[1]) for row in rows] == LAYERS


def test_every_module_of_the_package_has_one_row_in_its_contract_layer() -> None:
    modules = ["rocm_nb", *(name for _, name, _ in pkgutil.walk_packages(rocm_nb.__path__, "rocm_nb."))]
    rows = table("Every module")
    listed = [(row[0], name) for row in rows for name in names(row[1])]
    assert sorted(name for _, name in listed) == sorted(modules), "one row per module, no more, no fewer"
    for layer, name in listed:
        expected = contract_layer(name)
        assert layer == ("–" if expected is None else str(expected)), f"{name} is in layer {expected} of the contract"
    assert all(row[2] for row in rows), "every module's row says its job"
