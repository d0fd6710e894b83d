"""What ``import rocm_nb`` costs, beside ``import httpx``, each in a fresh interpreter, in the same run.

Three statements are timed in new Python processes, in rotated order every
round: ``import httpx`` (the baseline), ``import rocm_nb`` and ``from rocm_nb
import LocalModel`` (the usual first line, which imports what a model needs).
Each child times its own import with ``time.perf_counter``, so interpreter
start-up is not counted; the figure is the ratio per round, against the
baseline of the same round.

Two things keep the comparison fair:

- **Bytecode is cached, as users have it.** pip compiles an installed
  package's ``.pyc`` files, and an editable install writes them on its first
  import; this machine sets ``PYTHONDONTWRITEBYTECODE=1``, under which every
  import of the source tree compiles it again (that is how ``import rocm_nb``
  once measured 230 ms here). The children run without that variable, after
  one warm-up run of each statement.
- **httpx as ``pip install httpx`` has it.** httpx imports its command line
  (click, rich, pygments: about 40 ms) when those happen to be installed, as
  they are in the test environment (import-linter needs rich). Every child
  starts by marking them missing, so the baseline is httpx itself.

``BENCH_ONLY=import make bench`` runs this row in the full harness;
``.venv/bin/python benchmarks/import_cost.py`` runs it alone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from common import REPS, Row, spread

TARGET = 1.5
"""Issue 20: ``import rocm_nb`` costs at most 1.5× ``import httpx``."""

_NO_HTTPX_CLI = "import sys; sys.modules.update(dict.fromkeys(('click', 'rich', 'pygments')))"
_STATEMENTS = {
    "httpx": "import httpx",
    "rocm_nb": "import rocm_nb",
    "LocalModel": "from rocm_nb import LocalModel",
}


def _seconds(statement: str, env: dict[str, str]) -> float:
    """The time one fresh interpreter takes for ``statement`` (start-up not counted)."""
    code = f"{_NO_HTTPX_CLI}\nimport time\nbegan = time.perf_counter()\n{statement}\nprint(time.perf_counter() - began)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


def bench_import(rounds: int | None = None) -> list[Row]:
    rounds = rounds or max(21, 3 * REPS)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    for statement in _STATEMENTS.values():  # warm-up: writes the .pyc files a first import writes
        _seconds(statement, env)
    times: dict[str, list[float]] = {name: [] for name in _STATEMENTS}
    names = list(_STATEMENTS)
    for i in range(rounds):
        for name in names[i % 3:] + names[:i % 3]:
            times[name].append(_seconds(_STATEMENTS[name], env) * 1000)
    rows = []
    for name, figure in (("rocm_nb", "`import rocm_nb`"), ("LocalModel", "`from rocm_nb import LocalModel`")):
        ratios = [ours / base for ours, base in zip(times[name], times["httpx"], strict=True)]
        rows.append(Row(
            f"{figure} ÷ `import httpx`, fresh interpreters side by side (bytecode cached)", f"≤ {TARGET:g}",
            spread(ratios), statistics.median(ratios) <= TARGET,
            f"{name}: {spread(times[name], ' ms')}; httpx (without its CLI extra): {spread(times['httpx'], ' ms')}",
        ))
    return rows


if __name__ == "__main__":
    for row in bench_import():
        print(f"| {row.figure} | {row.target} | {row.measured} — {row.detail} | {'yes' if row.ok else '**no**'} |")
