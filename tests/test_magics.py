"""The %rocm_* magics in an in-process IPython shell against the real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import Completion, LocalModel
from rocm_nb.magics import RocmMagics, fill_placeholders


@pytest.fixture(scope="module")
def shell(model: LocalModel) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    with capture_output() as loaded:
        # the same config as the session fixture: attaches to its server
        ip.run_line_magic("rocm_load", f"{model.path} --ctx 4096 --parallel 2 --name small")
    assert "ready in" in str(loaded.outputs[-1].data["text/plain"])
    yield ip
    ip.run_line_magic("rocm_stop", "--all")


def magics(shell: InteractiveShell) -> RocmMagics:
    found = shell.magics_manager.registry["RocmMagics"]
    assert isinstance(found, RocmMagics)
    return found


def test_load_attaches_to_the_running_server(shell: InteractiveShell, model: LocalModel) -> None:
    assert magics(shell).current == "small"
    assert magics(shell).models["small"].pid == model.pid


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
    assert final["text/markdown"].startswith(reply.text)
    assert "tok/s" in final["text/markdown"]
    assert len(updates) <= 24 + 1


def test_raw_mode_no_stream_and_system(shell: InteractiveShell) -> None:
    with capture_output() as out:
        shell.run_cell_magic("rocm_generate", "--raw --max-tokens 8 --temperature 0 --no-stream --out r",
                             "Once upon a time")
    assert len(out.outputs) == 1
    assert out.outputs[0].data["text/plain"].startswith(shell.user_ns["r"].text)
    with pytest.raises(UsageError, match="--system needs chat mode"):
        shell.run_cell_magic("rocm_generate", "--raw --system x", "Hi")


def test_json_schema_option(shell: InteractiveShell) -> None:
    shell.user_ns["schema"] = {"type": "object", "properties": {"colour": {"type": "string"}},
                               "required": ["colour"]}
    with capture_output():
        shell.run_cell_magic("rocm_generate", "--json-schema schema --max-tokens 48 --temperature 0 --out j",
                             "Name a colour as JSON.")
    import json

    assert isinstance(json.loads(shell.user_ns["j"].text)["colour"], str)


def test_bad_input_is_a_one_line_usage_error(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments"):
        shell.run_cell_magic("rocm_generate", "--max-tokenz 3", "Hi")
    with pytest.raises(UsageError, match="no variable 'nowhere'"):
        shell.run_cell_magic("rocm_generate", "", "Tell me about {nowhere}")
    with pytest.raises(UsageError, match="no model called 'ghost'"):
        shell.run_cell_magic("rocm_generate", "-m ghost", "Hi")
    with pytest.raises(UsageError, match="--gpu-layers takes a number"):
        shell.run_line_magic("rocm_load", "smollm2-135m --gpu-layers many")


def test_help_documents_every_option() -> None:
    doc = RocmMagics.rocm_generate.__doc__ or ""
    for option in ["--max-tokens", "--temperature", "--system", "--chat", "--raw", "--seed", "--stop",
                   "--out", "--no-stream", "--json-schema", "-m"]:
        assert option in doc


def test_status_lists_the_server(shell: InteractiveShell, model: LocalModel) -> None:
    with capture_output() as out:
        shell.run_line_magic("rocm_status", "")
    text = out.outputs[0].data["text/plain"]
    assert str(model.pid) in text and "running" in text and "backend" in text


def test_placeholders() -> None:
    assert fill_placeholders("{a} {{b}} {'k': 1}", {"a": 1}) == "1 {b} {'k': 1}"
