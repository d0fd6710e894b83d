"""Run a snippet in a child Python under an address-space limit and a time limit.

Memory and time findings (a compressed body that inflates to gigabytes, a
GGUF header that makes a 16 GB list) are checked here, so that a regression
fails the test with a ``MemoryError`` or a timeout instead of taking the
machine down. The limit is set after the snippet's imports, as the address
space the child already has plus ``budget`` (plus ``mapped``: the size of
files the snippet memory-maps, which take address space but not memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_LIMIT = """
import resource as _resource, psutil as _psutil
_limit = _psutil.Process().memory_info().vms + {budget} + {mapped}
_resource.setrlimit(_resource.RLIMIT_AS, (_limit, _limit))
"""


def run_bounded(code: str, *, setup: str = "", budget: int = 2**30, mapped: int = 0, timeout: float = 60.0,
                env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``setup`` then, limited to ``budget`` more bytes of address space, ``code``; return its ``out`` dict.

    ``code`` fills a dict named ``out`` with JSON values. A child that fails
    (a ``MemoryError``, any exception) or outlives ``timeout`` seconds fails
    the calling test with what it printed. ``env`` is added to this
    process's environment.
    """
    script = "\n".join([
        "import json",
        textwrap.dedent(setup),
        _LIMIT.format(budget=budget, mapped=mapped),
        "out = {}",
        textwrap.dedent(code),
        "print('\\n' + json.dumps(out))",
    ])
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, check=False, env={
                                  **os.environ, "PYTHONPATH": str(ROOT),
                                  "OPENBLAS_NUM_THREADS": "1",  # numpy's thread buffers are address space too
                                  **(env or {})})
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr if isinstance(exc.stderr, bytes) else b""
        raise AssertionError(f"the bounded child took longer than {timeout} s; it said:\n"
                             f"{said[-2000:].decode(errors='replace')}") from None
    assert done.returncode == 0, f"the bounded child failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
