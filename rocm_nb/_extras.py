"""Optional dependencies: importing one that is missing names the extra to install.

The core (``import rocm_nb``, ``LocalModel``, ``connect``) needs only the
runtime dependencies. The magics, the chat panel and the GPU monitor need the
``notebook`` extra; ``hf:owner/repo/file.gguf`` models need the ``hub`` extra;
images in chats (:mod:`rocm_nb.client.images`) need the ``vision`` extra (Pillow).

Example:
    >>> import sys
    >>> from unittest import mock
    >>> with mock.patch.dict(sys.modules, {"huggingface_hub": None}), needs_extra("hub"):
    ...     import huggingface_hub
    Traceback (most recent call last):
    ...
    ModuleNotFoundError: huggingface_hub is not installed; hf: models need it: pip install "rocm_nb[hub]"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

__all__ = ["EXTRAS", "Extra", "needs_extra"]

Extra = Literal["notebook", "hub", "vision"]

EXTRAS: dict[Extra, tuple[str, frozenset[str]]] = {
    "notebook": ("the magics, the chat panel and the GPU monitor",
                 frozenset({"IPython", "ipywidgets", "anywidget", "traitlets"})),
    "hub": ("hf: models", frozenset({"huggingface_hub"})),
    "vision": ("images in chats", frozenset({"PIL"})),
}
"""Each extra: what needs it, and the top-level modules it provides."""


@contextmanager
def needs_extra(extra: Extra) -> Iterator[None]:
    """Turn a missing module of ``extra`` into a ``ModuleNotFoundError`` that says what to install.

    Other import errors pass through unchanged.

    Example:
        >>> with needs_extra("notebook"):
        ...     import json  # present: nothing happens
    """
    needed_by, modules = EXTRAS[extra]
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in modules:
            raise
        raise ModuleNotFoundError(
            f'{missing} is not installed; {needed_by} need it: pip install "rocm_nb[{extra}]"', name=missing
        ) from None
