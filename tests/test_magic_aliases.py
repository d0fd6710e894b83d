"""An alias names one model at a time, and what it named before stops (issue 21, item 6); bad load options are
one-line ``UsageError``s (item 13).

In an in-process IPython shell, as ``test_magics`` runs the magics, against the
real server; a replaced server is checked gone with psutil, not only absent
from the magics' table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb._options import MAX_PARALLEL, LoadOptions
from rocm_nb.model import running_servers
from rocm_nb.notebook.magics import RocmMagics
from tests.support.fake_engines import VLLM, serve
from tests.support.processes import gone, llama_servers, wait_until

HANG_GUARD_S = 30.0


@pytest.fixture
def shell(bare_shell: InteractiveShell) -> Iterator[InteractiveShell]:
    """The shared shell with no model loaded; what the test loads is stopped after it."""
    yield bare_shell
    with capture_output():
        if _magics(bare_shell).models:
            bare_shell.run_line_magic("rocm_stop", "--all")


def _magics(shell: InteractiveShell) -> RocmMagics:
    found = shell.magics_manager.registry["RocmMagics"]
    assert isinstance(found, RocmMagics)
    return found


def _serving(model_path: str, ctx: int) -> list[psutil.Process]:
    """This machine's llama-servers for ``model_path`` at context ``ctx`` (sizes no other test uses)."""
    found = []
    for process in llama_servers():
        try:
            argv = process.cmdline()
        except psutil.Error:
            continue
        if model_path in argv and f"-c {ctx}" in " ".join(argv):
            found.append(process)
    return found


@pytest.mark.server
def test_an_alias_taken_by_a_url_stops_the_local_server_it_named(shell: InteractiveShell, model_path: str) -> None:
    with capture_output():
        shell.run_line_magic("rocm_load", f"{model_path} --ctx-size 640 --alias a")
    pid = _magics(shell).models["a"].pid
    assert pid is not None and not gone(pid)()
    with serve(VLLM) as (url, _), capture_output() as out:
        shell.run_line_magic("rocm_load", f"--url {url} --alias a")
        wait_until(gone(pid), timeout=HANG_GUARD_S)  # it stopped: nobody else used it
        shell.run_line_magic("rocm_status", "")
    assert pid not in {server.pid for server in running_servers()}
    assert f"{pid}" not in "\n".join(str(o.data.get("text/plain", "")) for o in out.outputs)


@pytest.mark.server
def test_two_loads_of_one_alias_at_once_leave_one_server_and_stop_all_stops_it(
    shell: InteractiveShell, model_path: str
) -> None:
    errors: list[BaseException] = []

    def load(ctx: int) -> None:
        try:
            with capture_output():
                shell.run_line_magic("rocm_load", f"{model_path} --ctx-size {ctx} --alias a")
        except BaseException as exc:  # a failed load is this test's failure, reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(ctx,)) for ctx in (768, 896)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    held = _magics(shell).models["a"].pid
    wait_until(lambda: [p.pid for p in _serving(model_path, 768) + _serving(model_path, 896)] == [held],
               timeout=HANG_GUARD_S)  # the model the first load made was closed by the second
    with capture_output():
        shell.run_line_magic("rocm_stop", "--all")
    wait_until(gone(held), timeout=HANG_GUARD_S)


# -- item 13: load options out of range are UsageErrors, before any server starts ---------------------------


@pytest.mark.unit
def test_more_slots_than_llama_server_has_are_refused() -> None:
    assert LoadOptions(parallel=MAX_PARALLEL).parallel == 256
    with pytest.raises(ValueError, match=r"parallel=257 is more slots than llama-server has \(256, "
                                         r"llama.cpp's LLAMA_MAX_SEQ\)"):
        LoadOptions(parallel=MAX_PARALLEL + 1)


@pytest.mark.server
@pytest.mark.parametrize(("line", "said"), [
    ("smollm2-135m --ctx-size 0", "ctx_size must be an integer ≥ 1"),
    ("smollm2-135m --parallel 0", "parallel must be a positive integer, got 0"),
    ("smollm2-135m --ctx-size 1000000000", "ctx_size=1000000000 is beyond what smollm2-135m was trained for"),
    ("smollm2-135m --parallel 100000", "parallel=100000 is more slots than llama-server has (256"),
    ("{folder} --router --max-loaded 0", "max_loaded must be a positive integer, got 0"),
    ("{folder} --router --alias r", "as one model, 'z'"),
])
def test_load_options_out_of_range_are_usage_errors(shell: InteractiveShell, model_path: str, tmp_path: Path,
                                                    line: str, said: str) -> None:
    for name in ("z.gguf", "z.gguf.gguf"):  # the server would list both as "z", and serve one
        (tmp_path / name).symlink_to(model_path)
    before = list(running_servers())
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("rocm_load", line.format(folder=tmp_path))
    assert said in str(info.value)
    assert running_servers() == before and not _magics(shell).models
