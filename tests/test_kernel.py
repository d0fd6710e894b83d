"""rocm_nb in real Jupyter kernels (jupyter_client driving ipykernel).

What a notebook user relies on: shutting down, restarting or killing a kernel
leaves no llama-server behind, and "Interrupt" stops a streaming
``%%rocm_generate`` at once, on the server too, with the model still loaded.
How fast teardown and interrupt are is measured by ``make bench``
(benchmarks/bench.py, figure ``kernel``), not asserted here: these tests
check that they happen. The update rate is printed: read it with ``pytest -s``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from rocm_nb import Client, connect
from tests.support.decoding import assert_decoding_stopped
from tests.support.processes import gone, wait_until

pytestmark = pytest.mark.kernel

Message = dict[str, Any]

HANG_GUARD_S = 30.0
"""How long to wait for a process to go: a guard against a hang, not a measurement."""
DISPLAY_TYPES = ("display_data", "update_display_data")
LONG_STORY = (
    "Write a very long story about a lighthouse keeper, a storm and a lost ship, "
    "in many chapters, with a lot of detail."
)
SERVER_INFO = (
    "import json\n"
    "from rocm_nb.model import running_servers\n"
    "[_s] = running_servers()\n"
    "print(json.dumps({'pid': _s.pid, 'url': _s.base_url, 'key': _s.api_key}))"
)


@dataclass(frozen=True)
class Server:
    """The llama-server a kernel started, as the kernel reports it."""

    pid: int
    url: str
    key: str

    def client(self) -> Client:
        return connect(self.url, api_key=self.key)


def displays(messages: list[Message]) -> list[Message]:
    """The display and update-display messages among ``messages``."""
    return [m for m in messages if m["msg_type"] in DISPLAY_TYPES]


def idle(messages: list[Message]) -> bool:
    """True once the kernel has reported that the cell finished."""
    last = messages[-1] if messages else None
    return last is not None and last["msg_type"] == "status" and (
        last["content"]["execution_state"] == "idle"
    )


def stdout(messages: list[Message]) -> str:
    return "".join(
        m["content"]["text"] for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


class Kernel:
    """A running kernel and a blocking client on its channels."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc
        self.server_pids: list[int] = []
        self._iopub: dict[str, list[Message]] = {}

    @property
    def pid(self) -> int:
        process = self.km.provisioner.process  # type: ignore[union-attr]
        assert process is not None
        return int(process.pid)

    def execute(self, code: str) -> str:
        msg_id: str = self.kc.execute(code)
        self._iopub[msg_id] = []
        return msg_id

    def iopub(self, msg_id: str, until: Callable[[list[Message]], bool],
              timeout: float = 60.0) -> list[Message]:
        """Collect the iopub messages of cell ``msg_id`` until ``until(collected)``."""
        collected = self._iopub[msg_id]
        deadline = time.monotonic() + timeout
        while not until(collected):
            try:
                msg = self.kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"iopub: condition not met within {timeout} s; got {collected!r}"
                ) from None
            if msg["parent_header"].get("msg_id") == msg_id:
                collected.append(msg)
        return collected

    def reply(self, msg_id: str, timeout: float = 60.0) -> Message:
        """The execute_reply content of cell ``msg_id``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if msg["parent_header"].get("msg_id") == msg_id:
                content: Message = msg["content"]
                return content

    def run(self, code: str, timeout: float = 60.0) -> list[Message]:
        """Run a cell to the end; fail with the kernel's traceback if it raised."""
        msg_id = self.execute(code)
        reply = self.reply(msg_id, timeout)
        messages = self.iopub(msg_id, idle, timeout)
        assert reply["status"] == "ok", "\n".join(reply.get("traceback", [])) or reply
        return messages

    def server(self, code: str) -> Server:
        """Run ``code`` (which must print the SERVER_INFO line last) and note the server."""
        lines = stdout(self.run(code)).strip().splitlines()
        info = json.loads(lines[-1])
        server = Server(int(info["pid"]), info["url"], info["key"])
        self.server_pids.append(server.pid)
        return server


def _kill_leftover(pid: int) -> None:
    """Safety net for a failing test: kill a server the kernel left behind."""
    if not gone(pid)():
        try:
            proc = psutil.Process(pid)
            if proc.name() == "llama-server":
                proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    """A fresh kernel running this interpreter (``sys.executable -m ipykernel_launcher``)."""
    spec = tmp_path / "kernels" / "rocm-nb-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rocm_nb test",
        "language": "python",
    }))
    km = KernelManager(
        kernel_name="rocm-nb-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
    )
    km.start_kernel()
    kc = km.blocking_client()
    kc.start_channels()
    started = Kernel(km, kc)
    try:
        kc.wait_for_ready(timeout=60)
        yield started
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        for pid in started.server_pids:
            _kill_leftover(pid)


def start_local_model(kernel: Kernel) -> Server:
    """``LocalModel(...).start()`` in the kernel: the plain-Python way."""
    return kernel.server(
        "from rocm_nb import LocalModel\n"
        "m = LocalModel('smollm2-135m', ctx_size=512).start()\n" + SERVER_INFO
    )


def load_with_magic(kernel: Kernel) -> Server:
    """``%rocm_load`` in the kernel: the notebook way."""
    kernel.run("%load_ext rocm_nb\n%rocm_load smollm2-135m --ctx 2048")
    return kernel.server(SERVER_INFO)


# -- teardown -------------------------------------------------------------------------------


def _shutdown(kernel: Kernel) -> None:
    kernel.km.shutdown_kernel(now=False)


def _restart(kernel: Kernel) -> None:
    kernel.km.restart_kernel(now=False)


def _restart_now(kernel: Kernel) -> None:
    kernel.km.restart_kernel(now=True)


def _sigkill(kernel: Kernel) -> None:
    os.kill(kernel.pid, signal.SIGKILL)


TEARDOWNS: dict[str, Callable[[Kernel], None]] = {
    "shutdown": _shutdown,
    "restart": _restart,
    "restart-now": _restart_now,
    "sigkill": _sigkill,
}


@pytest.mark.parametrize("how", list(TEARDOWNS))
def test_kernel_teardown_leaves_no_llama_server(kernel: Kernel, how: str) -> None:
    server = start_local_model(kernel)
    process = psutil.Process(server.pid)
    assert process.name() == "llama-server" and not gone(server.pid)()
    assert server.client().health()
    kernel_pid = kernel.pid

    TEARDOWNS[how](kernel)
    wait_until(gone(server.pid), timeout=HANG_GUARD_S)  # how soon: `make bench`
    wait_until(gone(kernel_pid), timeout=HANG_GUARD_S)

    if how.startswith("restart"):  # the fresh kernel works and can load a model again
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.pid != kernel_pid
        fresh = start_local_model(kernel)
        assert fresh.pid != server.pid and not gone(fresh.pid)()


# -- streaming cells ------------------------------------------------------------------------


def test_interrupt_stops_the_generation_and_keeps_the_model(kernel: Kernel) -> None:
    server = load_with_magic(kernel)
    created = psutil.Process(server.pid).create_time()
    client = server.client()
    before = client.metrics()["llamacpp:tokens_predicted_total"]

    msg_id = kernel.execute(f"%%rocm_generate --max-tokens 3000 --temperature 0\n{LONG_STORY}")
    kernel.iopub(msg_id, lambda msgs: len(displays(msgs)) >= 5)  # tokens are streaming
    kernel.km.interrupt_kernel()
    reply = kernel.reply(msg_id, timeout=HANG_GUARD_S)  # the interrupt returns (how soon: `make bench`)
    shown = displays(kernel.iopub(msg_id, idle))

    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    traceback = "\n".join(reply["traceback"])
    assert "httpx" not in traceback and "another exception" not in traceback  # one short KeyboardInterrupt
    streamed = shown[-2]["content"]["data"]["text/plain"].rstrip("▌")
    final = shown[-1]
    assert final["msg_type"] == "update_display_data"
    assert final["content"]["transient"] == shown[0]["content"]["transient"]  # same display id
    text = final["content"]["data"]["text/plain"]
    assert streamed.strip() and text.startswith(streamed)
    assert "stopped after" in text and "stopped after" in final["content"]["data"]["text/html"]

    # SIGINT went to the kernel's process group only: the server lives on, cancelled
    assert psutil.Process(server.pid).create_time() == created and not gone(server.pid)()
    predicted = assert_decoding_stopped(client)  # counters, not a sleep
    print(f"interrupt: the server decoded {predicted - before:.0f} of 3000 tokens, then stopped")
    assert predicted - before < 3000
    client.close()

    after = displays(kernel.run("%%rocm_generate --max-tokens 8 --temperature 0\nSay hello."))
    assert "8 tokens" in after[-1]["content"]["data"]["text/html"]
    assert kernel.server(SERVER_INFO).pid == server.pid  # the same model served it


def test_stream_updates_are_coalesced(kernel: Kernel) -> None:
    load_with_magic(kernel)
    # 200 tokens: long enough to measure a rate, short enough for a machine kept busy (the timeout is a hang guard)
    shown = displays(kernel.run(f"%%rocm_generate --max-tokens 200 --temperature 0\n{LONG_STORY}", timeout=240))
    first, *updates = shown
    assert first["msg_type"] == "display_data"
    assert all(u["msg_type"] == "update_display_data" for u in updates)
    span = (shown[-1]["header"]["date"] - first["header"]["date"]).total_seconds()
    rate = len(shown) / span
    footer = shown[-1]["content"]["data"]["text/html"]
    match = re.search(r"(\d+) tokens · ([\d.]+) tok/s", footer)
    assert match, footer
    tokens, tps = int(match[1]), float(match[2])
    print(f"\nupdates/s: {rate:.1f} ({len(shown)} display messages in {span:.2f} s); "
          f"tokens/s: {tps:.1f} ({tokens} tokens)")
    assert span >= 0.5 and tokens >= 50  # a stream long enough to measure
    assert rate <= 30


def test_format_code_sends_a_set_next_input_payload(kernel: Kernel) -> None:
    load_with_magic(kernel)
    msg_id = kernel.execute("%%rocm_generate --format code --max-tokens 96 --temperature 0 --seed 1 --out r\n"
                            "Write a Python function that adds two numbers.")
    reply = kernel.reply(msg_id)
    kernel.iopub(msg_id, idle)
    assert reply["status"] == "ok", reply
    text = json.loads(stdout(kernel.run("import json; print(json.dumps(r.text))")))
    fenced = text.split("```", 2)[1].split("\n", 1)[1].rstrip("\n")  # the first fenced block's code
    assert "def " in fenced
    # the front-end opens a new cell below holding the code; nothing runs it
    assert reply["payload"] == [{"source": "set_next_input", "text": fenced, "replace": False}]


# -- an interrupted load --------------------------------------------------------------------


def test_interrupted_load_leaves_no_server(kernel: Kernel, tmp_path: Path) -> None:
    """Ctrl-C while ``%rocm_load`` waits for a slow server stops that server before the error shows.

    IPython keeps the traceback's frames (and so the half-started server) alive,
    so nothing may count on a finaliser: the load itself must stop the child.
    """
    from rocm_nb.binary import find_server

    real = find_server().path
    slow = tmp_path / "slow-llama-server"  # a load that takes a minute; --version and --list-devices answer at once
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" -m "*) sleep 120;; esac\nexec "{real}" "$@"\n')
    slow.chmod(0o755)
    kernel.run("%load_ext rocm_nb")
    kernel_process = psutil.Process(kernel.pid)

    def spawned() -> list[psutil.Process]:
        found = []
        for child in kernel_process.children(recursive=True):
            try:
                if str(slow) in " ".join(child.cmdline()) or child.name() == "llama-server":
                    found.append(child)
            except psutil.Error:
                pass
        return found

    msg_id = kernel.execute(f"%rocm_load smollm2-135m --ctx 2048 --server {slow}")
    kernel.iopub(msg_id, lambda msgs: len(displays(msgs)) >= 2, timeout=120)  # loading: progress shows
    assert spawned(), "the slow server should be loading"
    kernel.km.interrupt_kernel()
    reply = kernel.reply(msg_id, timeout=60)
    kernel.iopub(msg_id, idle)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

    # the traceback (and its frames) is still alive in the kernel, yet nothing is left
    wait_until(lambda: not spawned(), timeout=30)  # a hang guard, not a measurement
    assert "no servers" in stdout(kernel.run(
        "from rocm_nb.model import running_servers\n"
        "print('no servers' if not running_servers() else running_servers())"
    ))


def test_load_interrupted_just_after_ready_leaves_no_server(kernel: Kernel) -> None:
    """Ctrl-C landing between "ready" and the model holding its server (simulated: the client it makes raises)."""
    kernel.run(
        "%load_ext rocm_nb\n"
        "import rocm_nb._lease as _lease\n"
        "def _interrupted(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "_lease.Client = _interrupted"
    )
    msg_id = kernel.execute("%rocm_load smollm2-135m --ctx 2048")
    reply = kernel.reply(msg_id, timeout=120)
    kernel.iopub(msg_id, idle)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    kernel_process = psutil.Process(kernel.pid)
    wait_until(lambda: not [c for c in kernel_process.children() if c.name() == "llama-server"
                            and c.status() != psutil.STATUS_ZOMBIE], timeout=30)  # a hang guard
    assert "no servers" in stdout(kernel.run(
        "from rocm_nb.model import running_servers\n"
        "print('no servers' if not running_servers() else running_servers())"
    ))


def test_rocm_load_url_with_a_model_from_a_real_kernel(kernel: Kernel, model_path: str) -> None:
    """``%rocm_load MODEL --url …``: the /v1 form engines document, a remote model named, then the magics use it."""
    from rocm_nb import LocalModel

    with LocalModel(model_path, ctx_size=512) as served:
        name = served.models()[0]
        shown = json.dumps([m["content"]["data"] for m in displays(kernel.run(
            f"%load_ext rocm_nb\n%rocm_load {name} --url {served.base_url}/v1/ --api-key {served.api_key} "
            "--alias remote"))])
        assert "remote" in shown and "llama.cpp" in shown and f"using {name}" in shown
        reply = stdout(kernel.run(
            "magics = get_ipython().magics_manager.registry['RocmMagics']\n"
            "client = magics.models['remote']\n"
            "print(client.model, '|', client.chat([{'role': 'user', 'content': 'Hi'}], max_tokens=4, "
            "temperature=0.0).text)"))
        assert reply.startswith(f"{name} | ") and reply.split(" | ", 1)[1].strip()


# -- a router's children and links (issue 21, item 10) ----------------------------------------------


def _router_in(kernel: Kernel, runtime: Path, models: str) -> tuple[int, Path]:
    """Start ``LocalRouter(models)`` in the kernel, its run records in ``runtime``; its pid and link folder."""
    out = stdout(kernel.run(
        f"import json, os\nos.environ['ROCM_NB_RUNTIME_DIR'] = {str(runtime)!r}\n"
        f"from rocm_nb import LocalRouter\nrouter = LocalRouter({models}, ctx_size=512).start()\n"
        "print(json.dumps({'pid': router.pid, 'links': str(router.config.models_dir)}))"))
    info = json.loads(out.strip().splitlines()[-1])
    kernel.server_pids.append(int(info["pid"]))
    return int(info["pid"]), Path(info["links"])


def test_a_router_child_still_loading_goes_with_a_killed_kernel(kernel: Kernel, model_path: str,
                                                                tmp_path: Path) -> None:
    """SIGKILL while a child loads: the child outlives its router (it watches its pipe only once loaded),
    so the next start's reaper kills it from the router's stale record, and removes the link folder."""
    import shutil

    runtime, model = tmp_path / "run", tmp_path / "x.gguf"
    shutil.copy(model_path, model)
    router, links = _router_in(kernel, runtime, f"{{'x': {str(model)!r}}}")
    model.unlink()
    os.mkfifo(model)  # the child blocks opening it: a load that never ends (a big model on a GPU, made certain)
    kernel.run("router.load('x', wait=False)")
    wait_until(lambda: bool(psutil.Process(router).children()), timeout=HANG_GUARD_S)
    (child,) = psutil.Process(router).children()
    kernel.server_pids.append(child.pid)

    os.kill(kernel.pid, signal.SIGKILL)
    wait_until(gone(router), timeout=HANG_GUARD_S)  # the parent-death signal
    assert not gone(child.pid)() and links.is_dir()  # still loading, and its links still there

    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    kernel.server(f"import os\nos.environ['ROCM_NB_RUNTIME_DIR'] = {str(runtime)!r}\n"
                  "from rocm_nb import LocalModel\nm = LocalModel('smollm2-135m', ctx_size=512).start()\n"
                  + SERVER_INFO)
    wait_until(gone(child.pid), timeout=HANG_GUARD_S)
    assert not links.exists()


def test_a_restarted_kernel_leaves_no_router_link_folder(kernel: Kernel, model_path: str, tmp_path: Path) -> None:
    """A restart runs the finalisers: the one that stops the router also removes its folder of links."""
    router, links = _router_in(kernel, tmp_path / "run", f"{{'x': {model_path!r}}}")
    kernel.run("router.load('x')")
    (child,) = psutil.Process(router).children()
    assert links.is_dir()
    kernel.km.restart_kernel(now=False)
    for pid in (router, child.pid):
        wait_until(gone(pid), timeout=HANG_GUARD_S)
    assert not links.exists()


# -- warm after a restart (issue 23) ----------------------------------------------------------

WARM_PROMPT = " ".join(f"Entry {i}: the keeper of lighthouse {i} logged {i * 3} ships passing in the night."
                       for i in range(60))
"""About 1,100 tokens: long enough that reading it again would show, short enough for a test."""
WARM_REPLY = ("import json; print(json.dumps({'text': r.text, 'prompt': r.timings.prompt_tokens, "
              "'cached': r.timings.cached_tokens}))")


def test_the_first_answer_after_a_restart_reads_a_few_tokens(warm_folder: Path, kernel: Kernel) -> None:
    """A long prompt, Kernel → Restart, the same cell: the cache was saved on the way out, restored on the way in.

    Its text is compared with a warm run's (the same cell run again before the
    restart: one prompt token computed, then the reply), never with a cold
    run's, whose batch shapes differ.
    """
    load = "%load_ext rocm_nb\n%rocm_load smollm2-135m --ctx 4096"
    cell = f"%%rocm_generate --raw --max-tokens 16 --temperature 0 --seed 1 --no-stream --out r\n{WARM_PROMPT}"
    kernel.run(load, timeout=120)
    kernel.run(cell, timeout=300)  # cold: the whole prompt is read
    kernel.run(cell, timeout=120)
    warm = json.loads(stdout(kernel.run(WARM_REPLY)))
    assert warm["prompt"] == 1 and warm["cached"] > 1000, warm  # the prompt cache at work, in one server

    kernel.km.shutdown_wait_time = HANG_GUARD_S  # Jupyter's 5 s, as a hang guard: a busy machine must not kill it
    kernel.km.restart_kernel(now=False)  # Kernel → Restart: a normal shutdown, then a fresh kernel
    kernel.kc.wait_for_ready(timeout=60)
    loaded = displays(kernel.run(load, timeout=120))[-1]["content"]["data"]["text/plain"]
    assert re.search(r"\n  prompt cache: restored [\d,]+ cached tokens \(\d+ MiB\) in \d+\.\d\d s$", loaded), loaded
    kernel.run(cell, timeout=120)
    after = json.loads(stdout(kernel.run(WARM_REPLY)))
    assert after["prompt"] <= 2 and after["cached"] == warm["cached"], (warm, after)  # a few tokens, not all again
    assert after["text"] == warm["text"], (warm, after)
    status = displays(kernel.run("%rocm_status"))[0]["content"]["data"]["text/plain"]
    assert re.search(r" [\d,]+ tokens\n", status), status  # the restored tokens, in the status table
