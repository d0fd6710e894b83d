"""Close callbacks, as ``Future.add_done_callback``: what watches an object registers, the object knows nothing of it.

Example:
    >>> closed = False
    >>> callbacks = CloseCallbacks("m.gguf", lambda: closed)
    >>> callbacks.add(lambda: print("closed"))
    >>> callbacks.run()
    closed
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

__all__ = ["CloseCallbacks"]


class CloseCallbacks:
    """Callbacks to run once when their owner (``name``) closes; ``is_closed()`` says whether it has.

    The owner marks itself closed *before* it calls :meth:`run`, so a
    callback added meanwhile runs at once instead of being lost. One that
    raises is reported as a ``RuntimeWarning``; the others still run.

    Example:
        >>> callbacks = CloseCallbacks("m.gguf", lambda: True)
        >>> callbacks.add(lambda: print("at once"))  # already closed
        at once
    """

    def __init__(self, name: str, is_closed: Callable[[], bool]) -> None:
        self._name = name
        self._is_closed = is_closed
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] = []

    def add(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` once when the owner closes; at once if it already has."""
        with self._lock:
            if not self._is_closed():
                self._pending.append(fn)
                return
        fn()

    def run(self) -> None:
        """Run (and forget) every pending callback, in the order added."""
        with self._lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            try:
                callback()
            except Exception as exc:  # as Future.add_done_callback: one failing callback stops nothing
                warnings.warn(f"a close callback of {self._name} failed: {exc!r}", RuntimeWarning, stacklevel=4)
