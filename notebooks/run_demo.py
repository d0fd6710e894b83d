"""Execute a notebook the way ``make demo`` does, and keep the result.

Runs the notebook (by default ``01-quickstart.ipynb``) top to bottom with
nbclient in a kernel that uses this very interpreter, prints each cell's text
output to the terminal (``print`` output as it arrives, everything else when
the cell completes), and writes the executed notebook and an HTML export to
``demo-output/``.

Usage::

    .venv/bin/python notebooks/run_demo.py [NOTEBOOK] [--out DIR]

``tests/test_notebooks.py`` executes the notebooks with :func:`execute` too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter
from nbformat import NotebookNode

HERE = Path(__file__).resolve().parent
DEFAULT_NOTEBOOK = HERE / "01-quickstart.ipynb"
DEFAULT_OUT = HERE.parent / "demo-output"
KERNEL_NAME = "rocm-nb-python"
TEXT_TYPES = ("text/markdown", "text/plain")


def kernel_manager(kernel_dir: Path) -> AsyncKernelManager:
    """A kernel manager whose kernel runs ``sys.executable``, whatever kernelspecs are installed.

    A kernelspec called ``python3`` elsewhere on the Jupyter path (for
    instance in ``~/.local/share/jupyter``) may point at another Python;
    a private kernelspec in ``kernel_dir`` rules that out.
    """
    spec = kernel_dir / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rocm_nb (this Python)",
        "language": "python",
    }))
    return AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
        transport="ipc",  # Unix sockets in kernel_dir: nothing listens on the network
        ip=str(kernel_dir / "kernel"),
    )


def cell_text(cell: NotebookNode) -> str:
    """The text of a code cell's outputs other than streams: Markdown if there is some, else plain text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") in ("display_data", "execute_result"):
            data = output.get("data", {})
            if "image/png" in data:
                parts.append("[figure]")
                continue
            text = next((data[kind] for kind in TEXT_TYPES if kind in data), None)
            if text:
                parts.append(text if isinstance(text, str) else "".join(text))
    return "\n".join(parts)


class EchoingClient(NotebookClient):
    """A NotebookClient that can echo each cell's text output to the terminal."""

    def __init__(self, nb: NotebookNode, km: AsyncKernelManager, *, echo: bool, **kwargs: Any) -> None:
        if echo:
            kwargs.update(on_cell_start=self._cell_started, on_cell_executed=self._cell_done)
        super().__init__(nb, km=km, **kwargs)
        self.echo = echo

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        if self.echo and msg["msg_type"] == "stream":
            sys.stdout.write(msg["content"]["text"])
            sys.stdout.flush()
        return super().output(outs, msg, display_id, cell_index)

    @staticmethod
    def _cell_started(cell: NotebookNode, cell_index: int) -> None:
        if cell.cell_type == "code" and cell.source:
            print(f"\n\033[2m[{cell_index}] {cell.source.splitlines()[0]}\033[0m", flush=True)

    @staticmethod
    def _cell_done(cell: NotebookNode, cell_index: int, execute_reply: dict[str, Any]) -> None:
        text = cell_text(cell)
        if text:
            print(text, flush=True)


def run(
    nb: NotebookNode,
    cwd: Path,
    *,
    echo: bool = False,
    timeout: int = 120,
    env: Mapping[str, str] | None = None,
) -> NotebookNode:
    """Execute ``nb`` in place, in a fresh kernel started in ``cwd``, and return it.

    ``env`` adds variables to the kernel's environment (and so to any
    llama-server it starts). The kernel is shut down afterwards. Raises
    ``nbclient.exceptions.CellExecutionError`` when a cell fails (the cells
    before it keep their outputs).
    """
    with tempfile.TemporaryDirectory(prefix="rocm-nb-kernel-") as kernel_dir:
        client = EchoingClient(
            nb, kernel_manager(Path(kernel_dir)), echo=echo, timeout=timeout,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute(cleanup_kc=True, env={**os.environ, **(env or {})})
    return nb


def execute(
    path: Path, *, echo: bool = False, timeout: int = 120, env: Mapping[str, str] | None = None
) -> NotebookNode:
    """Read the notebook at ``path`` and execute it in its own folder (see :func:`run`)."""
    return run(nbformat.read(path, as_version=4), path.parent, echo=echo, timeout=timeout, env=env)


def export_html(nb: NotebookNode) -> str:
    """The notebook as a standalone HTML page (nbconvert's default template)."""
    body, _ = HTMLExporter().from_notebook_node(nb)
    return str(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the executed copy and HTML")
    parser.add_argument("--timeout", type=int, default=120, help="longest a cell may run (s)")
    args = parser.parse_args(argv)
    notebook: Path = args.notebook.resolve()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    executed, html = out / notebook.name, out / f"{notebook.stem}.html"

    print(f"Running {notebook.name} with {sys.executable}")
    began = time.perf_counter()
    nb = nbformat.read(notebook, as_version=4)
    failed: CellExecutionError | None = None
    try:
        run(nb, notebook.parent, echo=True, timeout=args.timeout)
    except CellExecutionError as exc:
        failed = exc
    nbformat.write(nb, executed)
    html.write_text(export_html(nb), encoding="utf-8")
    if failed is not None:
        print(f"\n{notebook.name} failed (outputs so far in {executed}):\n{failed}", file=sys.stderr)
        return 1
    print(f"\nDone in {time.perf_counter() - began:.1f} s.\nExecuted notebook: {executed}\nHTML: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
