"""What a GGUF file, a file name, a server or a model says stays text wherever rocm_nb shows it (issue 21, items 1, 12).

Every rich output of the package (each ``_repr_*_`` a class defines, and the
bundles the magics and displays publish) is swept with hostile text
(:mod:`tests.support.hostile`: ``<img onerror>``, ``<svg onload>``,
``<script>``, Markdown raw HTML, ``javascript:`` links, autolinks, reference
links and images, terminal escapes) in every string field of a GGUF and in
file and folder names. HTML must hold only inert elements, with the
payloads shown as text; terminal text must carry no control character; no
output is ``text/markdown``. The same files in a real browser, in JupyterLab
and Notebook 7: ``tests/test_browser_inert.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.formatters import DisplayFormatter
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import rocm_nb
from rocm_nb import LocalModel, LocalRouter
from rocm_nb._escape import printable
from rocm_nb.cli import main
from rocm_nb.client import Client
from rocm_nb.client.completion import Completion, ToolCall
from rocm_nb.client.status import ServerStatus
from rocm_nb.client.tool_loop import ToolRun
from rocm_nb.hardware import Hardware
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, ModelInfo, read_info, resolve_model
from rocm_nb.modelfiles.library import models
from rocm_nb.notebook.chat import ChatPanel, render_markdown, run_bubbles, tool_bubbles
from rocm_nb.notebook.display import StreamDisplay, status_bundle
from tests.support.hostile import (
    FILE_NAMES,
    HOSTILE,
    PAYLOADS,
    copy_with_name,
    inert_html,
    inert_text,
    shown,
    write_hostile_files,
    write_hostile_gguf,
)

CPU_ONLY = Hardware("cpu", (), None, ())
FOLDER = '<svg onload="window.__rocm_nb_pwned_20=1"> models\x1b]0;t\x07'
"""A hostile folder name above the hostile files."""

SWEPT = {
    "rocm_nb.client.completion.Completion._repr_html_": "test_a_hostile_model_reply_is_inert",
    "rocm_nb.modelfiles.catalog.ModelInfo._repr_html_": "test_hostile_files_are_inert_in_every_rich_output",
    "rocm_nb.modelfiles.library.ModelLibrary._repr_html_": "test_hostile_files_are_inert_in_every_rich_output",
    "rocm_nb.notebook.chat.ChatPanel._repr_mimebundle_": "test_a_hostile_model_reply_is_inert",
}
"""Every ``_repr_*_`` the package defines, and the test here that sweeps it."""


def bundle(obj: object) -> dict[str, Any]:
    """What IPython sends a front end for ``obj`` as a cell's result: every ``_repr_*_`` it has, by mime type."""
    data, _ = DisplayFormatter().format(obj)
    assert "text/markdown" not in data, f"{type(obj).__name__} sends text/markdown: {data['text/markdown'][:500]}"
    return data


def check_bundle(data: dict[str, Any]) -> tuple[str, str]:
    """Check a bundle (HTML inert, text free of control characters); return its HTML's text and its plain text."""
    assert set(data) <= {"text/plain", "text/html"}, sorted(data)
    return inert_html(data.get("text/html", "")), inert_text(data["text/plain"])


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A folder with a hostile name holding a GGUF hostile inside and one per hostile file name."""
    folder = tmp_path / FOLDER
    write_hostile_gguf(folder / "inside.gguf")
    write_hostile_files(folder)
    return folder


@pytest.mark.unit
def test_every_rich_repr_in_the_package_is_swept() -> None:
    """A new ``_repr_*_`` must join the sweep; none may be Markdown, JavaScript, LaTeX or SVG."""
    found = set()
    for module in pkgutil.walk_packages(rocm_nb.__path__, "rocm_nb."):
        loaded = importlib.import_module(module.name)
        for cls in vars(loaded).values():
            if isinstance(cls, type) and cls.__module__ == loaded.__name__:
                found |= {f"{cls.__module__}.{cls.__qualname__}.{name}" for name in vars(cls)
                          if re.fullmatch(r"_repr_[a-z]+_", name)}
    assert found == set(SWEPT)
    source = "\n".join(path.read_text() for path in Path(rocm_nb.__file__).parent.rglob("*.py"))
    assert set(re.findall(r"""["']((?:text|application|image)/[\w.+-]+)["']\s*:""", source)) <= {
        "text/plain", "text/html"}, "a display bundle of a type other than text/plain and text/html"


@pytest.mark.unit
def test_hostile_files_are_inert_in_every_rich_output(hostile: Path) -> None:
    files = sorted(hostile.glob("*.gguf"))
    assert len(files) == len(FILE_NAMES) + 1
    for file in files:
        info = read_info(file)
        assert info.name == HOSTILE and info.architecture == HOSTILE  # kept as it came: escaped where shown
        html_text, plain = check_bundle(bundle(info))
        for text in (HOSTILE, file.name):
            assert printable(text) in html_text, f"{text!r} is not shown as text"
        assert printable(HOSTILE) in inert_text(info.summary()) and "\n" not in info.summary()
        assert plain == repr(info)

    library = models(hostile, environ={"ROCM_NB_CACHE": str(hostile / "no-cache"),
                                        "HF_HUB_CACHE": str(hostile / "no-hub")}, hardware=CPU_ONLY)
    assert len(library) == len(files)
    html_text, plain = check_bundle(bundle(library))
    for file in files:
        assert printable(file) in html_text or printable(f"~/{file.relative_to(Path.home())}") in html_text
    lines = plain.splitlines()
    assert len(lines) == 1 + len(files) + 1 + len(library.notes), "a name split a row, or a row went missing"
    for name in shown(FILE_NAMES):
        assert sum(name in line for line in lines[1:1 + len(files)]) == 1, f"no one row for {name!r}"


@pytest.mark.unit
def test_the_status_table_shows_every_field_as_text() -> None:
    """Each string a ServerStatus holds comes from a file or a server: all hostile at once."""
    texts = {f.name: f"{HOSTILE} {f.name}" for f in dataclasses.fields(ServerStatus) if f.type in ("str", "str | None")}
    assert {"model", "file", "backend", "state", "error"} <= set(texts)
    status = ServerStatus(**texts, rpc=(HOSTILE,))  # type: ignore[arg-type]
    html_text, plain = check_bundle(status_bundle({HOSTILE: status}, current=HOSTILE, notes=[HOSTILE]))
    for text in (*texts.values(), HOSTILE):
        if text.endswith(" model"):
            continue  # the model's name is not a column: the file's is
        assert printable(text) in html_text and printable(text) in plain
    lines = plain.splitlines()
    assert len(lines) == 5 and lines[1].startswith("*  " + printable(HOSTILE)), "a row was split"


@pytest.mark.unit
def test_a_hostile_model_reply_is_inert() -> None:
    """Model output: the final Markdown, the live text, the thinking block, a tool call, the chat panel."""
    sent: list[dict[str, str]] = []
    display = StreamDisplay(lambda b, _u: sent.append(b), clock=iter(range(10_000)).__next__)
    display.think(HOSTILE)
    display.append(HOSTILE)
    display.finish(HOSTILE)
    final = inert_html(sent[-1]["text/html"])  # the thinking block, the Markdown, the footer
    assert final.count('<img src=x onerror="window.__rocm_nb_pwned_1=1">') == 3
    plain_display = StreamDisplay(lambda b, _u: sent.append(b), clock=iter(range(10_000)).__next__)
    plain_display.think(HOSTILE)
    plain_display.append(HOSTILE)
    plain_display.finish(HOSTILE, markdown=False)
    assert printable(HOSTILE, lines=True) in inert_html(sent[-1]["text/html"])  # the reply, as text
    for each in sent:
        assert set(each) <= {"text/plain", "text/html"}
        inert_html(each.get("text/html", ""))

    reply = Completion(text=HOSTILE, finish_reason="stop", timings=None)
    html_text = inert_html(bundle(reply)["text/html"])
    assert '<script>window.__rocm_nb_pwned_3=1</script>' in html_text and "[image: an image](http" in html_text

    panel = ChatPanel(Client("http://127.0.0.1:9"))  # a chat source; nothing is asked of it
    run = ToolRun(HOSTILE, [
        {"role": "user", "content": HOSTILE},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "function": {"name": HOSTILE, "arguments": json.dumps({"x": HOSTILE})}}]},
        {"role": "tool", "name": HOSTILE, "content": HOSTILE},
        {"role": "assistant", "content": HOSTILE},
    ], 2, True)
    panel.show_run(run)
    bubbles = [child.value for child in panel.transcript.children]
    assert len(bubbles) == 4  # the question, the call, its result, the answer
    for piece in [*bubbles, *tool_bubbles([ToolCall("1", HOSTILE, {HOSTILE: HOSTILE})]), *run_bubbles(run),
                  render_markdown(HOSTILE)]:
        assert "window.__rocm_nb_pwned_1=1" in inert_html(piece)
    widget = bundle(panel)
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()
    inert_text(widget["text/plain"])


@pytest.mark.unit
def test_rocm_nb_models_prints_no_control_character_and_one_row_per_file(
        hostile: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROCM_NB_CACHE", str(hostile / "no-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hostile / "no-hub"))
    assert main(["models", str(hostile)]) == 0
    out = inert_text(capsys.readouterr().out)
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith(printable(str(hostile)))]
    assert len(rows) == len(FILE_NAMES) + 1
    for name in shown(FILE_NAMES):
        assert sum(name in row for row in rows) == 1, f"no one row for {name!r}"


# -- a real model with a hostile name, served -----------------------------------------------------


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model, copied under a hostile file name with a hostile ``general.name``."""
    folder = tmp_path_factory.mktemp("evil") / FOLDER
    return copy_with_name(resolve_model(DEFAULT_MODEL), folder / f"{FILE_NAMES[0]} {FILE_NAMES[-2]}.gguf")


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    yield ip
    ip.run_line_magic("rocm_stop", "--all")


@pytest.mark.server
def test_a_served_model_with_a_hostile_name_and_file_is_inert(evil: Path, shell: InteractiveShell) -> None:
    """%rocm_load's lines (they quote the server's log, which prints the name), %rocm_status, %rocm_models,
    and the model's and a router's reprs."""
    model = LocalModel(evil)
    assert inert_text(repr(model)).startswith(f"<LocalModel {printable(evil.stem)} file={printable(evil.name)} ")
    assert printable(HOSTILE) in inert_html(bundle(model.info)["text/html"])
    with capture_output() as out:
        shell.run_line_magic("rocm_load", f"{shlex.quote(str(evil))} --ctx 1024 --alias evil")
        shell.run_line_magic("rocm_status", "")
    outputs = [o.data for o in out.outputs if "text/plain" in o.data or "text/html" in o.data]
    assert outputs, "nothing was shown"
    for data in outputs:
        check_bundle({k: v for k, v in data.items() if k in ("text/plain", "text/html")})
    loaded = next(o["text/plain"] for o in outputs if o["text/plain"].startswith("✓ evil: "))
    assert printable(HOSTILE) in loaded and len(loaded.splitlines()) == 3
    status = next(o for o in outputs if "RPC workers" in o["text/plain"])
    assert printable(evil.name) in inert_html(status["text/html"])
    library = shell.run_line_magic("rocm_models", shlex.quote(str(evil.parent)))
    assert printable(evil.name) in inert_html(bundle(library)["text/html"])
    folder = evil.parent.parent / FILE_NAMES[-1]
    folder.mkdir()
    (folder / "smol.gguf").symlink_to(resolve_model(DEFAULT_MODEL))
    assert inert_text(repr(LocalRouter(folder))).startswith(f"<LocalRouter {printable(folder)} ")


@pytest.mark.unit
@pytest.mark.parametrize("payload", PAYLOADS)
def test_each_payload_alone_stays_text_in_model_info(payload: str, tmp_path: Path) -> None:
    """One payload per file, so that no payload hides behind another one's quoting."""
    info = read_info(write_hostile_gguf(tmp_path / "one.gguf", payload))
    html_text, _ = check_bundle(bundle(info))
    assert printable(payload) in html_text
    assert isinstance(info, ModelInfo) and printable(payload) in inert_text(info.summary())

