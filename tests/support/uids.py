"""Run a function as another local user (``nobody``): a forked child of the test process that drops to that uid.

A fork, not a fresh interpreter: the test's interpreter and virtual
environment may live where ``nobody`` cannot reach (pyenv under ``/root``),
but a forked child already has every module the function needs. Import what
it uses before calling (the child cannot read ``/root`` either).
"""

from __future__ import annotations

import os
import pickle
import pwd
import traceback
from collections.abc import Callable
from typing import TypeVar

NOBODY = pwd.getpwnam("nobody")
T = TypeVar("T")


def as_nobody(fn: Callable[[], T]) -> T:
    """``fn()`` run as uid/gid ``nobody`` with no supplementary groups; its result, or an AssertionError."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, send the result back, and leave without any cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            result: tuple[str, object] = ("ok", fn())
        except BaseException:
            result = ("error", traceback.format_exc())
        try:
            data = pickle.dumps(result)
        except Exception:
            data = pickle.dumps(("error", f"unpicklable result: {result!r}"))
        with os.fdopen(write, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as incoming:
        data = incoming.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status != "ok":
        raise AssertionError(f"as nobody:\n{value}")
    return value  # type: ignore[no-any-return]
