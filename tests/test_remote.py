"""Past one machine: connect() to running servers, and llama.cpp RPC workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import GenerationError, LocalModel, connect, rpc_worker
from rocm_nb._exposure import free_port
from rocm_nb.notebook.chat import ChatPanel
from rocm_nb.server import LlamaServer
from tests.support.decoding import FRESH_PROMPT, REFERENCE, assert_greedy_agrees
from tests.support.processes import gone, wait_until

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0.0, "seed": 11}
PROMPT = "Once upon a time, in a faraway kingdom, there lived"


@pytest.fixture(scope="module")
def second_server(model: LocalModel) -> Iterator[LlamaServer]:
    """A llama-server started by the test itself, not through LocalModel."""
    with LlamaServer(replace(model.config, ctx_size=1536)) as server:
        yield server


def test_connect_gives_the_same_api_over_a_running_llama_server(
    second_server: LlamaServer, model: LocalModel
) -> None:
    with connect(second_server.base_url, api_key=second_server.api_key) as remote:
        # two servers of one configuration, each computing the prompt afresh: the same shapes, the same text
        assert remote.generate(PROMPT, max_tokens=16, **GREEDY, **FRESH_PROMPT).text == model.generate(
            PROMPT, max_tokens=16, **GREEDY, **FRESH_PROMPT
        ).text
        assert "".join(remote.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=8, **GREEDY))
        assert remote.tokenize("Hello world") == model.tokenize("Hello world")
        assert remote.models() and remote.status().state == "running"
    assert second_server.alive  # connect() never stops what it did not start


async def test_connect_async_and_panel(second_server: LlamaServer) -> None:
    remote = connect(second_server.base_url, api_key=second_server.api_key)
    reply = await remote.achat([{"role": "user", "content": "Say yes."}], max_tokens=6, **GREEDY)
    assert reply.text
    panel = ChatPanel(remote, temperature=0.0, max_tokens=8)
    await panel.send("Hello")
    assert panel.history[-1]["role"] == "assistant" and "tok/s" in panel.stats.value
    remote.close()


@pytest.fixture(scope="module")
def fake_openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fakellm (PyPI): an OpenAI-compatible server that is not llama.cpp, on 127.0.0.1."""
    config = tmp_path_factory.mktemp("fakellm") / "fakellm.yaml"
    config.write_text(textwrap.dedent("""\
        version: 1
        defaults:
          fallback: deterministic_echo
        rules:
          - name: capital
            when:
              messages_contain: "capital of france"
            respond:
              content: "The capital of France is Paris, on the Seine."
    """))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fakellm.server:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env={"FAKELLM_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), timeout=30, interval=0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/_fakellm/stats", timeout=1)
        return True
    except httpx.HTTPError:
        return False


async def test_connect_to_an_openai_compatible_server_that_is_not_llama_cpp(fake_openai: str) -> None:
    client = connect(fake_openai, api_key="not-used")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    expected = "The capital of France is Paris, on the Seine."
    assert client.chat(question, max_tokens=32).text == expected
    pieces = list(client.chat_stream(question, max_tokens=32))
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert (await client.achat(question)).text == expected
    panel = ChatPanel(client)
    await panel.send("What is the capital of France?")
    assert panel.history[-1] == {"role": "assistant", "content": expected}
    with pytest.raises(GenerationError) as info:  # no /v1/completions there: a clear error, not a hang
        client.generate("x", max_tokens=4)
    assert info.value.status_code == 404
    client.close()


def test_magics_with_url(second_server: LlamaServer, fake_openai: str) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "rocm_nb")
    with capture_output() as out:
        shell.run_line_magic("rocm_load", f"--url {second_server.base_url} --api-key {second_server.api_key} "
                                          "--alias box")
        shell.run_cell_magic("rocm_generate", "-a box --max-tokens 8 --temperature 0 --out remote_reply", "Hi")
        shell.run_line_magic("rocm_load", f"--url {fake_openai} --alias fake")
        shell.run_line_magic("rocm_status", "")
    assert any("(llama.cpp, offers" in o.data.get("text/plain", "") for o in out.outputs)
    assert shell.user_ns["remote_reply"].text
    status = out.outputs[-1].data["text/plain"]
    assert "box" in status and "fake" in status and "remote" in status
    shell.run_line_magic("rocm_stop", "--all")
    assert second_server.alive


def test_two_rpc_workers_give_the_single_process_output(model_path: str, model: LocalModel) -> None:
    single = model.generate(PROMPT, max_tokens=24, **GREEDY, **REFERENCE)
    with rpc_worker() as a, rpc_worker() as b:
        assert a.address != b.address and a.address.startswith("127.0.0.1:")
        before = [psutil.Process(w.pid).memory_info().rss for w in (a, b)]
        with LocalModel(model_path, ctx_size=1024, rpc=[a.address, b.address]) as split:
            assert ["--rpc", f"{a.address},{b.address}"] == split.config.argv(1)[-2:]
            assert split.config.gpu_layers == 31  # every layer goes to the workers
            # the workers run the same binary's backend as the single process, but the graph is split between
            # them and the attention may take another kernel: compared up to a near-tie (tests/support/decoding.py)
            assert_greedy_agrees([split.generate(PROMPT, max_tokens=24, **GREEDY).text], [single], model.backend,
                                 "2 RPC workers against one process")
            grown = [psutil.Process(w.pid).memory_info().rss - b0 for w, b0 in zip((a, b), before, strict=True)]
            assert all(g > 20 * 2**20 for g in grown)  # each worker holds part of the weights
            assert split.status().rpc == (a.address, b.address)
        pids = [a.pid, b.pid]
    assert all(gone(pid)() for pid in pids), "leaving the block stops both workers, and waits for them"


def test_rpc_worker_dies_with_its_owner() -> None:
    script = "from rocm_nb import rpc_worker; import time; w = rpc_worker(); print(w.pid, flush=True); time.sleep(600)"
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    began = time.monotonic()
    wait_until(gone(pid))  # the kernel kills it with its owner (PDEATHSIG); left alone it would serve on for good
    print(f"RPC worker gone {time.monotonic() - began:.3f} s after its owner was killed")


def test_rpc_worker_on_a_taken_port_says_so(tmp_path: Path) -> None:
    with rpc_worker() as first:
        from rocm_nb.errors import ServerStartError

        with pytest.raises(ServerStartError, match="RPC worker exited"):
            rpc_worker(port=first.port)
