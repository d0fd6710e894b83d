"""The %rocm_* magics in an in-process IPython shell against the real server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import Completion, GenerationError, LocalModel
from rocm_nb.modelfiles.library import ModelLibrary
from rocm_nb.notebook.magics import RocmMagics, fill_placeholders
from tests.support.gguf_files import hf_snapshot, write_gguf


@pytest.fixture(scope="module")
def shell(model: LocalModel) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    with capture_output() as loaded:
        # the same config as the session fixture: attaches to its server
        ip.run_line_magic("rocm_load", f"{model.path} --ctx 4096 --parallel 2 --alias small")
    summary = str(loaded.outputs[-1].data["text/plain"])
    assert "ready in" in summary
    said = model.fit.note.split(";")[0].replace(model.name, model.path.stem)  # loaded by its path: named by its stem
    assert f"memory: {said}" in summary  # the fit decision, said (RAM free varies)
    yield ip
    ip.run_line_magic("rocm_stop", "--all")


def magics(shell: InteractiveShell) -> RocmMagics:
    found = shell.magics_manager.registry["RocmMagics"]
    assert isinstance(found, RocmMagics)
    return found


@pytest.mark.server
def test_load_attaches_to_the_running_server(shell: InteractiveShell, model: LocalModel) -> None:
    assert magics(shell).current == "small"
    assert magics(shell).models["small"].pid == model.pid


@pytest.mark.server
def test_generate_streams_and_stores_the_completion(shell: InteractiveShell) -> None:
    shell.user_ns["topic"] = "the moon"
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--max-tokens 24 --temperature 0 --seed 1 --out reply",
                             "Explain {topic} in one sentence.")
    reply = shell.user_ns["reply"]
    assert isinstance(reply, Completion) and reply.text
    first, *updates = out.outputs
    assert first.data["text/plain"] == "▌" and all(u.update for u in updates)
    final = updates[-1].data
    assert final["text/plain"].startswith(reply.text) and "text/markdown" not in final
    assert "tok/s" in final["text/html"]
    assert len(updates) <= 24 + 1


@pytest.mark.server
def test_probs_shows_a_token_view_instead_of_the_text(shell: InteractiveShell) -> None:
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--probs 3 --max-tokens 8 --temperature 0 --out probed", "Say hi.")
    reply = shell.user_ns["probed"]
    assert reply.tokens and all(len(t.top) <= 3 for t in reply.tokens)
    [shown] = out.outputs  # the view only: the text output is silenced
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    with pytest.raises(UsageError, match="does not go with --format json"):
        shell.run_cell_magic("rocm_generate", "--probs --format json", "Hi")


@pytest.mark.server
@pytest.mark.parametrize("name", ["__builtins__", "__name__", "In", "Out", "_ih", "_oh", "_dh", "_", "__", "___",
                                  "_i", "_ii", "_iii", "_4", "_i4", "exit", "quit", "get_ipython"])
def test_out_refuses_the_names_python_and_ipython_keep(shell: InteractiveShell, name: str) -> None:
    """Issue 21, item 11: ``--out __builtins__`` broke every later cell until a restart; ``In``, ``_ih`` replaced
    IPython's history. Refused before anything is generated, with a name to use instead; the shell works on."""
    missing = object()
    before = shell.user_ns.get(name, missing)
    with capture_output() as out, pytest.raises(UsageError, match=rf"^--out {re.escape(name)}\b.*such as reply"):
        shell.run_cell_magic("rocm_generate", f"--max-tokens 2 --temperature 0 --out {name}", "Say hi.")
    assert out.outputs == [], "nothing is generated for a name that is refused"
    assert shell.user_ns.get(name, missing) is before
    assert shell.run_cell("after = sum(range(7))").success and shell.user_ns["after"] == 21


@pytest.mark.server
def test_raw_mode_no_stream_and_system(shell: InteractiveShell) -> None:
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--raw --max-tokens 8 --temperature 0 --no-stream --out r",
                             "Once upon a time")
    assert len(out.outputs) == 1
    assert out.outputs[0].data["text/plain"].startswith(shell.user_ns["r"].text)
    with pytest.raises(UsageError, match="--system needs chat mode"):
        shell.run_cell_magic("rocm_generate", "--raw --system x", "Hi")


@pytest.mark.server
def test_json_schema_option(shell: InteractiveShell) -> None:
    shell.user_ns["schema"] = {"type": "object", "properties": {"colour": {"type": "string"}},
                               "required": ["colour"]}
    with capture_output():
        shell.run_cell_magic("rocm_generate", "--json-schema schema --max-tokens 48 --temperature 0 --out j",
                             "Name a colour as JSON.")
    assert isinstance(json.loads(shell.user_ns["j"].text)["colour"], str)


@pytest.mark.server
def test_format_code_fills_a_new_cell_below(shell: InteractiveShell) -> None:
    shell.rl_next_input = None  # where a terminal shell keeps set_next_input's text (a kernel sends a payload)
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--format code --max-tokens 96 --temperature 0 --seed 1 --out r",
                             "Write a Python function that adds two numbers.")
    reply = shell.user_ns["r"].text
    assert "```" in reply and "text/html" in out.outputs[-1].data  # shown like any reply
    fenced = reply.split("```", 2)[1].split("\n", 1)[1]  # the first fenced block, without its info line
    assert shell.rl_next_input == fenced.rstrip("\n") and "def " in fenced


@pytest.mark.server
def test_format_text_has_no_markdown(shell: InteractiveShell) -> None:
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--format text --max-tokens 8 --temperature 0 --out r", "Say hi.")
    final = out.outputs[-1].data
    assert "text/html" not in final and final["text/plain"].startswith(shell.user_ns["r"].text)


PET = {"type": "object", "required": ["name", "age"], "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 99}}}
"""A schema whose every valid reply fits in 320 tokens (a name of 12 characters, each at most a 6-character escape,
two digits, and at most 22 characters of whitespace at each of the 9 places llama.cpp's grammar allows it): the
answer is never cut at max_tokens, whatever the model picks."""


@pytest.mark.server
def test_format_json_validates_and_returns_the_data(shell: InteractiveShell) -> None:
    shell.user_ns["pet"] = PET
    with capture_output():
        data = shell.run_cell_magic("rocm_generate", "--format json --json-schema pet --max-tokens 320 --temperature 0",
                                    "Describe a pet as JSON.")
        stored = shell.run_cell_magic("rocm_generate", "--format json --json-schema pet --max-tokens 320 "
                                      "--temperature 0 --out stored", "Describe a pet as JSON.")
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    kept = shell.user_ns["stored"]  # --out stores the data instead of returning it
    assert stored is None and isinstance(kept["name"], str) and isinstance(kept["age"], int)
    # no schema: any JSON object, as long as the model makes it. One token shows that it is one: "{}" whole, or
    # the start of a longer one, cut off (raw: on the chat endpoint the server holds back an unfinished object)
    with capture_output():
        try:
            anything = shell.run_cell_magic("rocm_generate", "--raw --format json --max-tokens 1 --temperature 0",
                                            "Describe a cat in JSON with a name and an age.")
        except GenerationError as cut:
            anything = cut.body
    assert anything == {} or (isinstance(anything, str) and anything.startswith("{")), anything


@pytest.mark.server
def test_format_json_names_what_is_wrong_and_keeps_the_raw_reply(shell: InteractiveShell) -> None:
    shell.user_ns["pet"] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    cut_off = r"not valid JSON: .*cut off at max_tokens"
    # '{"name":""}' takes 4 tokens at least; raw, as the chat endpoint holds back an unfinished object
    with capture_output() as out, pytest.raises(GenerationError, match=cut_off) as cut:
        shell.run_cell_magic("rocm_generate", "--raw --format json --json-schema pet --max-tokens 3 --temperature 0",
                             "Describe a pet as JSON.")
    assert cut.value.body and out.outputs[-1].data["text/plain"].startswith(cut.value.body)
    # the server's grammar cannot express multipleOf; the validation after it can. The grammar keeps n from 1 to 6,
    # so whatever the model picks is not a multiple of 7, and the reply fits in 160 tokens
    shell.user_ns["odd"] = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 6, "multipleOf": 7}}, "required": ["n"]}
    with capture_output(), pytest.raises(GenerationError, match=r"at \$\.n: [1-6] is not a multiple of 7") as broken:
        shell.run_cell_magic("rocm_generate", "--format json --json-schema odd --max-tokens 160 --temperature 0",
                             "Give a number as JSON.")
    assert json.loads(broken.value.body)["n"] in range(1, 7)


@pytest.mark.unit
def test_bad_input_is_a_one_line_usage_error(bare_shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments"):
        bare_shell.run_cell_magic("rocm_generate", "--max-tokenz 3", "Hi")
    with pytest.raises(UsageError, match="no variable 'nowhere'"):
        bare_shell.run_cell_magic("rocm_generate", "", "Tell me about {nowhere}")
    with pytest.raises(UsageError, match="no model called 'ghost'"):
        bare_shell.run_cell_magic("rocm_generate", "-a ghost", "Hi")
    with pytest.raises(UsageError, match="--gpu-layers takes a number"):
        bare_shell.run_line_magic("rocm_load", "smollm2-135m --gpu-layers many")
    assert magics(bare_shell).models == {}, "nothing was loaded"


@pytest.mark.unit
def test_help_documents_every_option() -> None:
    doc = RocmMagics.rocm_generate.__doc__ or ""
    for option in ["--max-tokens", "--temperature", "--system", "--chat", "--raw", "--seed", "--stop",
                   "--out", "--no-stream", "--json-schema", "--format", "-m"]:
        assert option in doc


@pytest.mark.server
def test_status_lists_the_server(shell: InteractiveShell, model: LocalModel) -> None:
    with capture_output() as out:
        shell.run_line_magic("rocm_status", "")
    text = out.outputs[0].data["text/plain"]
    assert str(model.pid) in text and "running" in text and "backend" in text


@pytest.mark.unit
def test_placeholders() -> None:
    assert fill_placeholders("{a} {{b}} {'k': 1}", {"a": 1}) == "1 {b} {'k': 1}"


@pytest.mark.server
def test_rocm_models_shows_the_library(shell: InteractiveShell, tmp_path: Path, model_path: str) -> None:
    tiny = tmp_path / "mine" / "tiny.gguf"
    write_gguf(tiny, "Tiny <one>")
    library = shell.run_line_magic("rocm_models", str(tiny.parent))
    assert isinstance(library, ModelLibrary)
    found = {e.name: e.path.resolve() for e in library}
    assert found["smollm2-135m"] == Path(model_path).resolve() and found[str(tiny)] == tiny
    shown, _ = shell.display_formatter.format(library)  # what a notebook receives for Out[n]
    assert shown["text/plain"] == str(library) and "smollm2-135m" in shown["text/plain"]
    assert shown["text/html"].startswith("<table>") and "<td>Q4_1</td>" in shown["text/html"]


def completed(shell: InteractiveShell, line: str) -> set[str]:
    """The lines that accepting each completion would give, through the API Jupyter uses."""
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        return {line[:c.start] + c.text + line[c.end:] for c in shell.Completer.completions(line, len(line))}


@pytest.mark.server
def test_load_tab_completes_library_names(shell: InteractiveShell, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = write_gguf(tmp_path / "src" / "tiny.Q8_0.gguf", "Tiny")[0]
    hf_snapshot(tmp_path / "hub", "acme/tiny-GGUF", "c" * 40, {"tiny.Q8_0.gguf": tiny})
    write_gguf(tmp_path / "mine" / "local-model.gguf", "Local")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ROCM_NB_MODEL_DIR", str(tmp_path / "mine"))

    assert completed(shell, "%rocm_load smol") == {"%rocm_load smollm2-135m", "%rocm_load smolvlm-256m"}
    mine = f"{tmp_path}/mine/"
    assert f"%rocm_load --ctx 4096 {mine}local-model.gguf" in completed(shell, f"%rocm_load --ctx 4096 {mine}lo")
    # IPython splits words at ':'; the completion still gives the whole hf: name
    assert "%rocm_load hf:acme/tiny-GGUF/tiny.Q8_0.gguf" in completed(shell, "%rocm_load hf:acme/ti")
    assert {"%rocm_load smollm2-135m", f"%rocm_load {mine}local-model.gguf",
            "%rocm_load hf:acme/tiny-GGUF/tiny.Q8_0.gguf"} <= completed(shell, "%rocm_load ")
    assert "%rocm_load --alias smollm2-135m" not in completed(shell, "%rocm_load --alias smol")  # not a model


@pytest.mark.server
def test_chat_panel_magic_takes_its_starting_options(shell: InteractiveShell) -> None:
    from rocm_nb.notebook.chat import ChatPanel

    panel = shell.run_line_magic("rocm_chat", 'small --temperature 0 --max-tokens 32 --seed 3 --system "Be brief."')
    assert isinstance(panel, ChatPanel)
    assert (panel.temperature.value, panel.max_tokens.value, panel.system.value) == (0.0, 32, "Be brief.")

    async def talk() -> None:
        await asyncio.wait_for(panel.send("Name one colour."), 60)

    asyncio.run(talk())
    assert panel.last is not None and panel.last.text.strip()
    assert panel.history[-1] == {"role": "assistant", "content": panel.last.text}
    with pytest.raises(UsageError):
        shell.run_line_magic("rocm_chat", "--temperature hot")


@pytest.mark.server
def test_the_user_sees_the_name_they_typed(shell: InteractiveShell, model: LocalModel) -> None:
    """The catalogue name leads the load line, the memory note, the status row and the repr; general.name follows."""
    with capture_output() as loaded:  # the session model's configuration: attaches to its server
        shell.run_line_magic("rocm_load", "smollm2-135m --ctx-size 4096 --parallel 2")
    try:
        said = str(loaded.outputs[-1].data["text/plain"])
        first, _, memory = said.partition("\n  memory: ")
        assert first.startswith("✓ smollm2-135m · llama · 135M params · Q4_1")
        assert f'GGUF name "{model.info.name}"' in first and model.info.name != "smollm2-135m"
        assert memory.startswith("smollm2-135m runs on the CPU")
        loaded_model = magics(shell).models["smollm2-135m"]
        assert isinstance(loaded_model, LocalModel)
        assert loaded_model.status().model == "smollm2-135m" and loaded_model.label.startswith("smollm2-135m · ")
        assert repr(loaded_model).startswith("<LocalModel smollm2-135m file=SmolLM2-135M-Instruct.Q4_1.gguf ")
        with capture_output() as status:
            shell.run_line_magic("rocm_status", "")
        assert "smollm2-135m" in str(status.outputs[0].data["text/plain"])
    finally:
        shell.run_line_magic("rocm_stop", "smollm2-135m")
    assert magics(shell).current == "small"
