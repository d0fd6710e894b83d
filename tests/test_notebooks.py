"""The notebooks in ``notebooks/``, executed top to bottom with nbclient in a real kernel.

Each notebook runs once per session in a fresh kernel that uses this very
interpreter (``notebooks/run_demo.py`` provides the runner ``make demo``
uses too); the tests then check what its cells produced. Executed copies
are written to ``test-artifacts/notebooks/`` for reading after a failure,
and the run times are printed (``pytest -s``): timings are reported, never
asserted.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nbformat
import psutil
import pytest
from nbformat import NotebookNode

from tests.support.processes import llama_servers, wait_until
from tests.support.vision import IMAGE_TOKENS, write_tiny_vlm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MARK = "ROCM_NB_NOTEBOOK_TEST"
"""Set in each notebook kernel's environment, which its llama-servers inherit."""


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rocm_nb_run_demo", NOTEBOOKS / "run_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_demo = _load_runner()


# -- reading executed cells -------------------------------------------------------------------


def cell(nb: NotebookNode, tag: str) -> NotebookNode:
    """The one cell tagged ``tag``."""
    found = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected one cell tagged {tag!r}, found {len(found)}"
    only: NotebookNode = found[0]
    return only


def stdout(c: NotebookNode) -> str:
    """What the cell printed."""
    return "".join(o["text"] for o in c.outputs if o["output_type"] == "stream" and o["name"] == "stdout")


def data(c: NotebookNode, mime: str) -> list[str]:
    """Every ``mime`` representation among the cell's display outputs and result."""
    found = []
    for output in c.outputs:
        if output["output_type"] in ("display_data", "execute_result") and mime in output["data"]:
            value = output["data"][mime]
            if isinstance(value, list):
                value = "".join(value)
            found.append(value if isinstance(value, str) else json.dumps(value))
    return found


def number(text: str, label: str) -> int:
    """The integer printed after ``label`` in ``text``."""
    match = re.search(re.escape(label) + r"\s*(\d+)", text)
    assert match is not None, f"{label!r} not in {text!r}"
    return int(match.group(1))


# -- running notebooks ------------------------------------------------------------------------


CELL_HANG_GUARD_S = 600
"""How long one cell may run: a guard against a hang, not a measurement. On a machine kept busy the
sampling notebook's 40 short generations took 81 s in one cell (2 s for 12 tokens)."""
NOTEBOOK_HANG_GUARD_S = 1200
"""The per-test limit here (pytest-timeout's default is 300 s): the first test that asks for a
notebook runs all of it, in its fixture."""

pytestmark = pytest.mark.timeout(NOTEBOOK_HANG_GUARD_S)


def servers_marked(value: str) -> list[int]:
    """Live llama-servers started from a kernel whose environment had ``MARK=value``."""
    found = []
    for proc in llama_servers():
        try:
            if proc.environ().get(MARK) == value:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], NotebookNode]:
    """Execute a notebook (once per session) and return it with its outputs.

    Also checks that no llama-server the notebook started outlives its kernel
    (each kernel's environment carries a mark its servers inherit). A vision
    notebook gets the tiny vision model (tests/support/vision.py) through
    ``ROCM_NB_VISION_MODEL`` and ``ROCM_NB_VISION_MMPROJ``.
    """
    cache: dict[str, NotebookNode] = {}
    model, mmproj = write_tiny_vlm(tmp_path_factory.mktemp("vision"))
    vision = {"ROCM_NB_VISION_MODEL": str(model), "ROCM_NB_VISION_MMPROJ": str(mmproj)}

    def run(name: str) -> NotebookNode:
        if name not in cache:
            mark = {MARK: f"{name}-{uuid.uuid4().hex}"}
            began = time.perf_counter()
            nb = run_demo.execute(NOTEBOOKS / name, timeout=CELL_HANG_GUARD_S, env={**mark, **vision})
            elapsed = time.perf_counter() - began
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, ARTIFACTS / name)
            print(f"\n{name}: executed in {elapsed:.1f} s")
            wait_until(lambda: not servers_marked(mark[MARK]))  # left alone they would serve on for good
            cache[name] = nb
        return cache[name]

    return run


@pytest.mark.kernel
def test_the_kernel_runs_this_python_with_the_mark(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(f"import os, sys\nprint(sys.executable)\nprint(os.environ[{MARK!r}])"))
    run_demo.run(nb, tmp_path, timeout=60, env={MARK: "here"})
    assert stdout(nb.cells[0]).splitlines() == [sys.executable, "here"]


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs before committing"
    assert re.search(r"\.close\(\)|%rocm_stop", code[-1].source), "the last cell must close the notebook's models"


@pytest.mark.unit
def test_all_notebooks_are_tested() -> None:
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == {
        "01-quickstart.ipynb", "02-chat-panel.ipynb", "03-sampling.ipynb", "04-tokens-and-templates.ipynb",
        "05-gpu-memory.ipynb", "06-retrieval-and-tools.ipynb", "07-what-the-model-is-thinking.ipynb",
        "08-ask-about-a-figure.ipynb",
    }


# -- 01: quick start --------------------------------------------------------------------------


@pytest.mark.kernel
def test_quickstart(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("01-quickstart.ipynb")
    assert "ready in" in "".join(data(cell(nb, "load"), "text/plain"))

    generated = [o["data"] for o in cell(nb, "generate").outputs if "text/html" in o.get("data", {})]
    assert len(generated) == 1, "the streamed display should end as one output, Markdown rendered to HTML"
    answer, footer = "".join(generated[0]["text/plain"]).rsplit("\n\n", 1)
    assert answer.strip() and "tok/s" in footer and "first token" in footer
    assert "finish reason:" in stdout(cell(nb, "answer"))

    assert "llama-server processes in this kernel: 1" in stdout(cell(nb, "python-model"))
    assert stdout(cell(nb, "stream")).strip()
    assert "'" in stdout(cell(nb, "break"))

    [chat] = data(cell(nb, "chat"), "text/html")
    assert "tok/s" in chat
    assert number(stdout(cell(nb, "chat-follow-up")), "taken from the cache:") > 0

    status = "".join(data(cell(nb, "status"), "text/plain"))
    assert "smollm2-135m" in status and "running" in status
    assert "stopped smollm2-135m" in "".join(data(cell(nb, "stop"), "text/plain"))
    assert "llama-server processes left in this kernel: 0" in stdout(cell(nb, "stop"))


# -- 02: chat panel ---------------------------------------------------------------------------


@pytest.mark.kernel
def test_chat_panel(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("02-chat-panel.ipynb")
    assert data(cell(nb, "panel"), WIDGET_VIEW), "the panel should display as a widget"

    [history] = data(cell(nb, "first-turn"), "text/plain")
    assert "'role': 'user'" in history and "'role': 'assistant'" in history
    assert "prompt tokens from cache" in stdout(cell(nb, "second-turn"))
    exported = stdout(cell(nb, "export"))
    assert exported.index('"system"') < exported.index('"user"')

    stopped = stdout(cell(nb, "stop"))
    assert "stopped after" in stopped
    kept = re.search(r"(\d+) characters kept in the history", stopped)
    assert kept is not None and int(kept.group(1)) > 0, "the partial reply stays in the history"
    assert number(stdout(cell(nb, "metrics")), "requests in progress on the server:") == 0
    assert stdout(cell(nb, "clear")).splitlines()[0] == "[]"


# -- 03: sampling -----------------------------------------------------------------------------


def counts(nb: NotebookNode, tag: str) -> tuple[list[int], list[int]]:
    """The 'distinct first words' and 'distinct texts' rows of a sampling table."""
    [table] = data(cell(nb, tag), "text/markdown")
    *_, first_words, texts = table.strip().splitlines()
    assert "first words" in first_words and "texts" in texts
    return (
        [int(n) for n in re.findall(r"\*\*(\d+)\*\*", first_words)],
        [int(n) for n in re.findall(r"\*\*(\d+)\*\*", texts)],
    )


@pytest.mark.kernel
def test_sampling(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("03-sampling.ipynb")
    assert "of the probability is on these ten tokens" in stdout(cell(nb, "candidates"))
    assert data(cell(nb, "temperature-chart"), "image/png")
    assert "after one pick: 'The best thing about a rainy day is" in stdout(cell(nb, "explorer"))
    assert data(cell(nb, "explorer"), WIDGET_VIEW), "the explorer should display as a widget"
    kept = [int(n) for n in re.findall(r"the server kept (\d+):", stdout(cell(nb, "post-sampling")))]
    assert len(kept) == 3 and kept == sorted(kept), "a larger top_p keeps at least as many tokens"
    left = re.search(r"top_k=2 leaves (\d+) tokens; min_p=0.5 leaves (\d+)", stdout(cell(nb, "playground")))
    assert left is not None and 1 <= int(left.group(1)) <= 2 and int(left.group(2)) >= 1
    assert data(cell(nb, "playground"), WIDGET_VIEW)
    assert "samplers" in stdout(cell(nb, "defaults"))

    greedy = stdout(cell(nb, "greedy"))
    assert "identical: True" in greedy
    outputs = greedy.splitlines()[:3]
    assert len(outputs) == 3 and len(set(outputs)) == 1
    assert "same seed, same text: True" in stdout(cell(nb, "seeds"))

    first_words, texts = counts(nb, "temperature-table")
    assert len(first_words) == len(texts) == 5
    assert first_words[0] == texts[0] == 1, "temperature 0 is greedy: the same text for every seed"
    assert max(first_words) > 1 and max(texts) > 1, "sampling above temperature 0 varies with the seed"
    first_words, texts = counts(nb, "top-p-table")
    assert len(first_words) == len(texts) == 4
    assert max(texts) > 1


# -- 04: tokens and templates -----------------------------------------------------------------


@pytest.mark.kernel
def test_tokens_and_templates(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("04-tokens-and-templates.ipynb")
    tokenized = cell(nb, "tokenize")
    assert "characters →" in stdout(tokenized) and data(tokenized, WIDGET_VIEW)
    assert "round trip exact: True" in stdout(cell(nb, "round-trip"))
    assert "the pieces' bytes add up to the text: True" in stdout(cell(nb, "round-trip"))
    assert "{%" in stdout(cell(nb, "template"))
    assert "identical to the file's: True" in stdout(cell(nb, "props"))
    assert "Hi!" in stdout(cell(nb, "apply-template"))
    segments = stdout(cell(nb, "template-view")).splitlines()
    assert [s.split(":")[0].strip() for s in segments] == ["user", "generation prompt"]
    assert data(cell(nb, "template-view"), WIDGET_VIEW)

    cost = stdout(cell(nb, "cost"))
    message = number(cost, "tokens in the message:")
    rendered = number(cost, "tokens in the rendered prompt:")
    assert message < rendered == number(cost, "prompt tokens the server reports:")

    [turns] = data(cell(nb, "cache"), "text/markdown")
    rows = [[int(x) for x in re.findall(r"\d+", line)] for line in turns.splitlines()[2:]]
    assert [r[0] for r in rows] == [1, 2, 3]
    assert all(r[3] > 0 for r in rows[1:]), "later turns reuse the prompt cache"

    throughput = cell(nb, "throughput")
    assert data(throughput, "image/png"), "the throughput plot should be a PNG"
    assert len(stdout(throughput).splitlines()) == 5


# -- 05: GPU memory ---------------------------------------------------------------------------


def markdown_rows(c: NotebookNode) -> list[list[str]]:
    """The body cells of the one Markdown table the cell displayed."""
    [table] = data(c, "text/markdown")
    return [[x.strip() for x in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]


@pytest.mark.kernel
def test_gpu_memory(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("05-gpu-memory.ipynb")
    assert stdout(cell(nb, "hardware")).startswith("backend: ")
    kv = re.search(r"= ([\d.]+) MiB \(the estimate's KV cache: ([\d.]+) MiB\)", stdout(cell(nb, "parts")))
    assert kv is not None and kv.group(1) == kv.group(2), "the KV cache worked out by hand is the estimator's"
    assert len(markdown_rows(cell(nb, "estimates"))) == 4

    measured = {(int(r[0]), r[1], int(r[2])): r for r in markdown_rows(cell(nb, "measured"))}
    assert len(measured) == 5
    for setting, row in measured.items():
        assert abs(float(row[-1].rstrip("%"))) < 10, f"estimate against measured RSS for {setting}: {row}"
    rss = {setting: float(row[5].removesuffix(" MiB")) for setting, row in measured.items()}
    assert int(measured[8192, "f16", 4][3]) == 2048, "four slots split the context"
    assert rss[8192, "f16", 4] == pytest.approx(rss[8192, "f16", 1], rel=0.05), "slots do not multiply the memory"
    assert rss[1024, "f16", 1] < rss[4096, "f16", 1] < rss[8192, "f16", 1]
    assert rss[8192, "q8_0", 1] < rss[8192, "f16", 1]
    assert data(cell(nb, "memory-plot"), "image/png")

    speeds = [float(s) for s in re.findall(r"([\d.]+) tokens/s", stdout(cell(nb, "speed")))]
    assert len(speeds) == 6 and all(s > 0 for s in speeds)

    small = stdout(cell(nb, "plan-small"))
    assert "runs on the CPU" in small.splitlines()[0]
    assert "RX 6600, 8 GiB: gpu_layers=31 of 31" in small and "RX 7900 XTX, 24 GiB: gpu_layers=31 of 31" in small
    assert "8.0B params · Q4_K_M" in stdout(cell(nb, "big-model"))
    layers = {(int(r[0]), r[1]): [int(c.split(" of ")[0]) for c in r[2:]] for r in markdown_rows(cell(nb, "plan-big"))}
    assert layers[8192, "f16"] == [33, 33], "the 8B model fits either card at 8192 tokens"
    assert 0 < layers[32768, "f16"][0] < layers[32768, "q8_0"][0] and layers[32768, "f16"][1] == 33
    assert data(cell(nb, "offload-plot"), "image/png")
    ceilings = [int(n) for n in re.findall(r"at most (\d+) tokens/s", stdout(cell(nb, "ceiling")))]
    assert len(ceilings) == 3 and ceilings[0] < ceilings[1] <= ceilings[2], "layers in RAM cost speed"

    assert data(cell(nb, "monitor"), WIDGET_VIEW), "the monitor should display as a widget"
    during = stdout(cell(nb, "monitor-during"))
    assert "before: generating: False" in during and "during: generating: True" in during
    assert number(during.split("during:")[1], "CPU") > 0 and "CPU stand-in" in during
    assert "llama-server processes left in this kernel: 0" in stdout(cell(nb, "close"))


# -- 06: retrieval and tools --------------------------------------------------------------------


@pytest.mark.kernel
def test_retrieval_and_tools(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("06-retrieval-and-tools.ipynb")
    assert "bert" in stdout(cell(nb, "load"))
    sections = number(stdout(cell(nb, "sections")), "sections:")
    assert sections >= 10
    assert f"embeddings: ({sections}, 384) float32" in stdout(cell(nb, "embed"))
    hits = markdown_rows(cell(nb, "search"))
    assert len(hits) == 3 and "architecture.md § Where things live" in [row[1] for row in hits], hits
    answer = stdout(cell(nb, "answer"))
    sources = answer.split("Sources:\n", 1)[1]
    assert len(re.findall(r"^\[[123]\] [\w-]+\.md § ", sources, re.MULTILINE)) == 3, answer
    tools = stdout(cell(nb, "tools"))
    assert re.search(r"steps: [123] finished: (True|False)", tools)
    assert '"tool": "population"' in tools or '"tool": "calculator"' in tools, "the first reply is a call"
    assert "84" in stdout(cell(nb, "tool-error"))
    assert "calculator raised ZeroDivisionError" in stdout(cell(nb, "tool-error"))
    assert data(cell(nb, "panel"), WIDGET_VIEW), "the panel is a widget"


# -- 07: what the model is thinking -------------------------------------------------------------


@pytest.mark.kernel
def test_what_the_model_is_thinking(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("07-what-the-model-is-thinking.ipynb")
    probabilities = stdout(cell(nb, "probabilities"))
    assert "greedy took the most likely token every time: True" in probabilities
    assert "the tokens join to the text: True" in probabilities
    assert data(cell(nb, "probs-magic"), WIDGET_VIEW), "--probs shows the token view"
    assert "most likely first token of the reply:" in stdout(cell(nb, "explore"))
    assert data(cell(nb, "explore"), WIDGET_VIEW)
    assert "top_k=1 leaves 1 token; top_k=3 leaves" in stdout(cell(nb, "playground"))
    parts = stdout(cell(nb, "template"))
    assert parts.startswith("system ") and " + user " in parts and " + generation prompt " in parts
    assert data(cell(nb, "template"), WIDGET_VIEW)


# -- 08: ask about a figure -----------------------------------------------------------------------


@pytest.mark.kernel
def test_ask_about_a_figure(executed: Callable[[str], NotebookNode]) -> None:
    nb = executed("08-ask-about-a-figure.ipynb")
    loaded = stdout(cell(nb, "load"))
    assert "mmproj-tiny.gguf · mlp projector, images up to 32 pixels" in loaded
    assert "set aside first for the image projector" in loaded and "takes images: True" in loaded
    assert data(cell(nb, "figure"), "image/png"), "the plot is drawn"
    tokens = re.search(r"prompt tokens: (\d+) with the figure, (\d+) without", stdout(cell(nb, "ask")))
    assert tokens is not None and int(tokens.group(1)) - int(tokens.group(2)) == IMAGE_TOKENS
    assert data(cell(nb, "ask"), "text/html"), "the reply is shown"
    sent = stdout(cell(nb, "sent"))
    assert re.search(r"sent as a 32×\d+ PNG", sent) and "follow-up:" in sent  # scaled to the projector's 32
    assert "✓ eyes:" in "".join(data(cell(nb, "magic-load"), "text/plain"))
    assert "tok/s" in "".join(data(cell(nb, "magic-generate"), "text/html"))
    status = "".join(data(cell(nb, "status"), "text/plain"))
    header, row = status.splitlines()[:2]
    assert "eyes" in row and row[header.index(" images ") + 1:].split()[0] == "yes"
    panel = cell(nb, "panel")
    assert "['image_url', 'text']" in stdout(panel) and data(panel, WIDGET_VIEW)
    assert "llama-server" not in stdout(cell(nb, "close"))
