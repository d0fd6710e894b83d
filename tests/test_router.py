"""Many models behind one llama-server: the real pinned llama-server in router mode, over two GGUFs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rocm_nb import AmbiguousModel, LocalRouter, ModelClosed, ModelState
from rocm_nb.server._registry import ServerRegistry
from tests.support.decoding import FRESH_PROMPT
from tests.support.processes import gone, wait_until

pytestmark = pytest.mark.server

HI = [{"role": "user", "content": "Say hi."}]
GREEDY = {"temperature": 0.0, "seed": 3, "max_tokens": 6}


@pytest.fixture(scope="module")
def router(model_path: str) -> Iterator[LocalRouter]:
    """The default model under two names (links in the router's private folder: the cache is never touched)."""
    with LocalRouter({"smol-a": model_path, "smol-b": model_path}, max_loaded=2, ctx_size=512,
                           registry=ServerRegistry()) as running:
        yield running


def test_a_request_without_a_model_names_both(router: LocalRouter) -> None:
    assert router.models() == ["smol-a", "smol-b"]
    with pytest.raises(AmbiguousModel, match=r"serves 2 models \(smol-a, smol-b\): say which with model=") as info:
        router.chat(HI, **GREEDY)
    assert info.value.models == ["smol-a", "smol-b"]


def test_both_models_route_on_every_path(router: LocalRouter) -> None:
    a = router.chat(HI, model="smol-a", **GREEDY, **FRESH_PROMPT)
    b = router("smol-b").chat(HI, **GREEDY, **FRESH_PROMPT)
    assert a.text and a.text == b.text  # the same weights under two names, greedy, each prompt computed afresh
    assert a.usage is not None and a.usage.completion_tokens > 0
    assert "".join(router("smol-b").stream("The sky is", **GREEDY))
    assert router("smol-a").tokenize("Hello") == router("smol-b").tokenize("Hello") != []
    results = router.map(["One", "Two"], model="smol-a", progress=False, **GREEDY)
    assert all(r.text for r in results if not isinstance(r, Exception)) and len(results) == 2
    loaded = {child.name: child for child in router.loaded()}
    assert set(loaded) == {"smol-a", "smol-b"}
    for child in loaded.values():
        assert child.pid is not None and child.rss_bytes and child.rss_bytes > 0
        assert psutil.Process(child.pid).ppid() == router.pid
    assert set(router.children_status()) == {"smol-a", "smol-b"}


def test_unload_frees_the_child_and_load_brings_it_back(router: LocalRouter) -> None:
    router.load("smol-a")
    child = next(c for c in router.loaded() if c.name == "smol-a")
    router.unload("smol-a")
    assert gone(child.pid)()
    assert "smol-a" not in {c.name for c in router.loaded()}
    router.load("smol-a")
    assert "smol-a" in {c.name for c in router.loaded()}


def test_closing_the_router_leaves_no_child(model_path: str) -> None:
    router = LocalRouter([model_path], ctx_size=512, registry=ServerRegistry())
    name = Path(model_path).stem
    reply = router.generate("2 + 2 =", **GREEDY)  # one model: no model= needed
    assert reply.timings is not None and reply.timings.predicted_tokens > 0 and reply.finish_reason
    pids = [router.pid, *[c.pid for c in router.loaded()]]
    assert len(pids) == 2 and all(pids)
    folder = router.folder
    router.close()
    for pid in pids:  # the router process goes in close(); its child exits once the router's pipe closes
        wait_until(gone(pid))
    assert not folder.exists() and Path(model_path).exists()
    with pytest.raises(ModelClosed):
        router(name)


def test_a_router_killed_outright_takes_its_children(model_path: str) -> None:
    """Orphan protection: the children watch a pipe from the router and exit when it closes."""
    router = LocalRouter({"x": model_path}, ctx_size=512, registry=ServerRegistry())
    try:
        router.load("x")
        child = router.loaded()[0].pid
        assert router.pid is not None and child is not None
        psutil.Process(router.pid).kill()
        wait_until(gone(child))  # left alone it would serve on for good
    finally:
        router.close()


def test_magics_load_a_router_and_status_shows_its_children(model_path: str, tmp_path: Path) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("smol-a", "smol-b"):  # links in a temporary folder: the cache is never touched
        (folder / f"{name}.gguf").symlink_to(model_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "rocm_nb")
    with capture_output() as out:
        shell.run_line_magic("rocm_load", f"{folder} --router --max-loaded 2 --ctx 512 --alias many")
        router = shell.magics_manager.registry["RocmMagics"].models["many"]  # type: ignore[attr-defined]
        assert isinstance(router, LocalRouter)
        router.load("smol-b")
        shell.run_line_magic("rocm_status", "")
    shown = "\n".join(o.data.get("text/plain", "") for o in out.outputs)
    assert "router over" in shown and "smol-a, smol-b" in shown
    assert "many › smol-b" in out.outputs[-1].data["text/plain"]
    child = router.loaded()[0].pid
    shell.run_line_magic("rocm_stop", "many")
    wait_until(gone(child))


async def test_async_with_starts_and_closes_a_router_as_a_local_model(model_path: str) -> None:
    """One lifecycle (OwnServer): `async with`, `aclose`, state and the folder of links, as for a LocalModel."""
    async with LocalRouter([model_path], ctx_size=512, registry=ServerRegistry()) as router:
        assert router.state is ModelState.RUNNING
        reply = await router.agenerate("2 + 2 =", **GREEDY)
        assert reply.timings is not None and reply.timings.predicted_tokens > 0
        pid, folder = router.pid, router.folder
        assert pid is not None and folder.exists()
    assert router.state is ModelState.CLOSED and not folder.exists()
    wait_until(gone(pid))
    with pytest.raises(ModelClosed, match=r"this router over .* was closed; create a new LocalRouter"):
        await router.achat(HI, **GREEDY)


def test_a_router_takes_backend_device_and_gpu_memory_as_a_model_does(model_path: str) -> None:
    with pytest.raises(ValueError, match=r"backend='rocm' was asked for, but this machine has no device for it"):
        LocalRouter([model_path], backend="rocm", ctx_size=512)
    with pytest.raises(ValueError, match=r"device=1, but the cpu backend has no GPUs"):
        LocalRouter([model_path], device=1, ctx_size=512)
    with pytest.warns(UserWarning, match=r"gpu_memory=1 MiB has no effect: .* is a CPU build") as caught:
        router = LocalRouter([model_path], gpu_memory="1MiB", ctx_size=512, registry=ServerRegistry())
    assert caught[0].filename == __file__  # at the line that made the router, as for a LocalModel
    assert router.backend == "cpu" and router.state is ModelState.NEW  # planned, not started
