"""One error tree: drawn from the classes in rocm_nb.errors, and drawn by hand nowhere else."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

import rocm_nb
from rocm_nb import errors
from rocm_nb.errors import RocmNbError, error_classes, error_tree

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DRAWN = re.compile(r"^[\s│]*[├└]── (ModelClosed|GenerationError|BinaryNotFound)\b", re.MULTILINE)
"""A line of a drawing of the tree."""


def every_subclass(cls: type[BaseException]) -> set[type[BaseException]]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *every_subclass(direct)}}


def test_the_docstring_holds_the_drawing_made_from_the_classes() -> None:
    drawn = "\n".join("    " + line for line in error_tree().splitlines())
    assert drawn in (errors.__doc__ or ""), "regenerate the drawing in rocm_nb/errors.py from error_tree()"


def test_every_public_error_is_in_the_tree_with_its_summary() -> None:
    for info in pkgutil.walk_packages(rocm_nb.__path__, "rocm_nb."):  # wherever an error is defined, it is found
        importlib.import_module(info.name)
    public = {RocmNbError} | {cls for cls in every_subclass(RocmNbError) if not cls.__name__.startswith("_")}
    assert all(cls.__module__ == "rocm_nb.errors" for cls in public), "every error lives in rocm_nb.errors"
    assert public >= {getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    lines = error_tree().splitlines()
    assert len(lines) == len(public)
    for cls in public:
        [line] = [line for line in lines if line.lstrip("│├└─ ").startswith(f"{cls.__name__} ")]
        assert (cls.__doc__ or "").strip().splitlines()[0].replace("``", "") in line
    assert "AmbiguousModel (ValueError)" in error_tree() and "ModelNotStarted (RuntimeError)" in error_tree()
    assert "_ProcessError" not in error_tree()  # a private base is skipped over, its children kept
    assert [line.lstrip("│├└─ ").split(" ")[0] for line in lines] == [cls.__name__ for cls in error_classes()]


def test_nothing_else_draws_the_tree_by_hand() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    drawn = error_tree()
    for name in tracked.splitlines():
        path = ROOT / name
        if name == "rocm_nb/errors.py" or path.suffix not in {".md", ".py", ".ipynb", ".txt", ".rst", ".html"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if DRAWN.search(text):
            assert drawn in text, f"{name} draws the error tree by hand: render it with rocm_nb.errors.error_tree()"
