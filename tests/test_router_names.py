"""A router serves exactly the models it was given, by the names it was given, or says why not (issue 21, item 9).

The pinned server's folder scan (``common/preset.cpp``, ``load_from_models_dir``)
removes every ``.gguf`` from a file's name, skips names holding ``mmproj`` or
starting with ``mtp-``, ``dspark-`` or ``dflash-``, and keeps one of two entries
with one name. Each of those was a model dropped, renamed or merged without a
word; now each is a ``ValueError`` naming the files, before anything is made
on disk, and a server that still lists something else fails its start and
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rocm_nb import LocalRouter
from rocm_nb._process import Child, launch, reap_stale_servers
from rocm_nb.binary import find_server
from rocm_nb.errors import InvalidModel, ModelNotFound, ServerStartError, ServerUnavailable, StreamProtocolError
from rocm_nb.router import RouterChild, _check_name, _scan
from rocm_nb.server import LlamaServer, ServerConfig
from rocm_nb.server._registry import ServerRegistry
from tests.support.processes import gone, llama_servers, wait_until


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder of the test's own: records and link folders land here, and nowhere else."""
    folder = tmp_path / "run"
    monkeypatch.setenv("ROCM_NB_RUNTIME_DIR", str(folder))
    return folder


def _leftovers(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.iterdir()) if runtime.exists() else []


# -- the names the server's folder scan would change ------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("name", "why"), [
    ("v1.gguf", "it would list this one as 'v1'"),
    ("a.gguf-b", "it would list this one as 'a-b'"),
    ("vision-mmproj", "for a projector or a draft"),
    ("mtp-small", "for a projector or a draft"),
    ("dflash-x", "for a projector or a draft"),
    (".hidden", "not first"),
    ("a/b", "use letters"),
    ("", "use letters"),
])
def test_names_the_server_would_change_or_skip_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match="cannot name a router model") as info:
        _check_name(name, "choose another name")
    assert why in str(info.value) and str(info.value).endswith("choose another name")
    assert _check_name("smol-a_2.q4", "") == "smol-a_2.q4"


@pytest.mark.unit
def test_a_folder_scan_refuses_two_entries_under_one_name_and_skips_companions(tmp_path: Path) -> None:
    (tmp_path / "z.gguf").touch()
    (tmp_path / "z.gguf.gguf").touch()  # the server lists both as "z", and keeps one
    with pytest.raises(ValueError, match=r"z\.gguf and z\.gguf\.gguf .* as one model, 'z'"):
        _scan(tmp_path)
    (tmp_path / "z.gguf.gguf").unlink()
    (tmp_path / "z").mkdir()  # a sub-folder named z is a model named z as well
    (tmp_path / "z" / "weights.gguf").touch()
    with pytest.raises(ValueError, match=r"z and z\.gguf .* as one model, 'z'"):
        _scan(tmp_path)
    (tmp_path / "z" / "weights.gguf").unlink()
    (tmp_path / "z" / "mmproj-z.gguf").touch()  # a sub-folder with a projector and no model: none
    (tmp_path / "mmproj-vision.gguf").touch()
    (tmp_path / "mtp-draft.gguf").touch()
    (tmp_path / "notes.txt").touch()
    assert {name: target.name for name, (target, _) in _scan(tmp_path).items()} == {"z": "z.gguf"}


@pytest.mark.unit
def test_a_sub_folder_with_two_models_is_refused_and_a_first_shard_is_the_model(tmp_path: Path) -> None:
    sub = tmp_path / "big"
    sub.mkdir()
    for name in ("big-00001-of-00002.gguf", "big-00002-of-00002.gguf", "mmproj-big.gguf"):
        (sub / name).touch()
    assert _scan(tmp_path)["big"] == (sub.resolve(), (sub / "big-00001-of-00002.gguf").resolve())
    for name in list(sub.iterdir()):
        name.unlink()
    (sub / "a.gguf").touch()
    (sub / "b.gguf").touch()
    with pytest.raises(ValueError, match=r"holds several models \(a\.gguf, b\.gguf\)"):
        _scan(tmp_path)


# -- the real server -----------------------------------------------------------------------------------


@pytest.mark.server
def test_names_that_would_be_dropped_renamed_or_merged_fail_before_anything_is_made(
    model_path: str, tmp_path: Path, runtime: Path
) -> None:
    same_stem = tmp_path / "other" / Path(model_path).name  # the same file name in another folder
    same_stem.parent.mkdir()
    same_stem.symlink_to(model_path)
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    cases: list[tuple[object, type[Exception], str]] = [
        ({"v1.gguf": model_path}, ValueError, "it would list this one as 'v1'"),
        ({"z": model_path, "z.gguf": model_path}, ValueError, "it would list this one as 'z'"),
        ({"vision-mmproj": model_path}, ValueError, "for a projector or a draft"),
        ([model_path, str(same_stem)], ValueError,
         rf"two models would be called '{Path(model_path).stem}': {model_path} and {same_stem}"),
        ({"notes": not_gguf}, InvalidModel, "notes.gguf"),
    ]
    for models, error, message in cases:
        with pytest.raises(error, match=message):
            LocalRouter(models, ctx_size=512, registry=ServerRegistry())  # type: ignore[arg-type]
    assert _leftovers(runtime) == []


@pytest.mark.server
def test_a_router_that_lists_other_models_fails_its_start_and_leaves_nothing(model_path: str, runtime: Path) -> None:
    """The last check: ``/v1/models`` against the links (here one the server skips, past the name check)."""
    folder = runtime / "router-test"
    config = ServerConfig(find_server().path, folder, ctx_size=512, models_dir=folder,
                          models_links=(("chat.gguf", Path(model_path)), ("mmproj-x.gguf", Path(model_path))))
    before = {p.pid for p in llama_servers()}
    server = LlamaServer(config)
    with pytest.raises(ServerStartError, match=r"lists other models than it was given \(left out: mmproj-x; "
                                               r"not asked for: none\)"):
        server.start()
    assert not folder.exists() and _leftovers(runtime) == []
    assert server.pid is not None and gone(server.pid)()
    assert {p.pid for p in llama_servers()} <= before


@pytest.mark.server
def test_the_links_go_with_the_server_and_a_folder_is_linked_not_read_directly(
    model_path: str, tmp_path: Path, runtime: Path
) -> None:
    mine = tmp_path / "models"
    (mine / "sub").mkdir(parents=True)
    (mine / "chat.gguf").symlink_to(model_path)
    (mine / "sub" / "weights.gguf").symlink_to(model_path)
    router = LocalRouter(mine, ctx_size=512, max_loaded=2, registry=ServerRegistry())
    assert router.folder == mine.resolve() and _leftovers(runtime) == []  # nothing on disk before the start
    with router:
        assert router.models() == ["chat", "sub"]
        links = router.config.models_dir
        assert links is not None and links.parent == runtime
        assert sorted(p.name for p in links.iterdir()) == ["chat.gguf", "sub"]
        (mine / "late.gguf").symlink_to(model_path)  # the server reads the links, made when it started
        assert router.models() == ["chat", "sub"]
    assert not links.exists() and sorted(p.name for p in mine.iterdir()) == ["chat.gguf", "late.gguf", "sub"]


# -- honest messages (item 13): an unknown model, a model unloaded under a stream ---------------------------


@pytest.fixture(scope="module")
def two(model_path: str) -> Iterator[LocalRouter]:
    with LocalRouter({"a": model_path, "b": model_path}, ctx_size=512, max_loaded=2,
                     registry=ServerRegistry()) as router:
        yield router


@pytest.mark.server
def test_an_unknown_model_is_named_with_the_models_the_router_serves(two: LocalRouter) -> None:
    for call in (two.load, two.unload, two):
        with pytest.raises(ModelNotFound, match=r"serves no model called 'unknown'; it serves a, b"):
            call("unknown")


@pytest.mark.server
def test_unloading_a_model_under_another_threads_stream_says_it_was_unloaded(two: LocalRouter) -> None:
    two.load("a")
    started, outcome = threading.Event(), {}

    def reader() -> None:
        pieces = []
        try:
            for piece in two("a").stream("Once upon a time", max_tokens=2000, temperature=0):
                pieces.append(piece)
                started.set()
        except Exception as exc:  # what the reader sees is what this test checks
            outcome["error"] = exc
        outcome["pieces"] = pieces
        started.set()

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait(60)
    two.unload("a")
    thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, ServerUnavailable), error
    assert str(error) == "the reply was cut off: this router unloaded a (router.unload) while it ran"
    assert error.partial and error.partial == "".join(outcome["pieces"])  # nothing streamed is lost
    assert "router.load('a')" in "\n".join(error.__notes__)
    two.load("a")  # loaded again: a later failure is not blamed on the old unload
    assert "a" not in two._unloaded


@pytest.mark.server
def test_an_unload_is_named_while_the_router_still_lists_its_child_without_a_process(
        two: LocalRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the test above meets about one run in two here: the child has exited, the router lists it."""
    two.load("b")
    (served,) = [c for c in two.loaded() if c.name == "b"]
    two.unload("b")
    cut = StreamProtocolError("the stream ended before the server finished (no finish_reason, no [DONE])")
    for pid in (None, served.pid):  # listed without a process, or still the same child: the unload cut it
        monkeypatch.setattr(two, "loaded", lambda pid=pid: [RouterChild("b", "loaded", pid, None, None, None)])
        assert isinstance(two._better_error(cut, "Once"), ServerUnavailable)
    monkeypatch.setattr(two, "loaded", lambda: [RouterChild("b", "loaded", 2**22 + 1, None, None, None)])
    assert two._better_error(cut, "Once") is None  # another child serves it now: not this unload's doing
    two.load("b")


@pytest.mark.server
def test_required_on_a_routed_model_whose_template_cannot_call_tools_is_refused(two: LocalRouter) -> None:
    """The router's own /props says nothing of its models' templates: the model's is asked (smollm2's cannot)."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    ask = [{"role": "user", "content": "The weather in Paris?"}]
    refused = r"tool_choice='required' needs a chat template that can call tools.*use run_tools"
    with pytest.raises(ValueError, match=refused):
        two("a").chat(ask, tools=tools, tool_choice="required", max_tokens=8)
    with pytest.raises(ValueError, match=refused):
        two.chat(ask, model="b", tools=tools, tool_choice="required", max_tokens=8)
    with pytest.raises(ValueError, match=refused):
        asyncio.run(two("a").achat(ask, tools=tools, tool_choice="required", max_tokens=8))
    assert two("a").chat(ask, tools=tools, tool_choice="auto", max_tokens=8).finish_reason in ("length", "stop")


_LEADER = ("import subprocess, sys, time\n"
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
           "print(flush=True); time.sleep(120)")
"""A group leader and one child in its group (as a router and a child it is loading), same executable."""


def _group(records: Path) -> tuple[Child, psutil.Process]:
    leader = launch([sys.executable, "-c", _LEADER], dict(os.environ), {"ROCM_NB_RUNTIME_DIR": str(records)}, 10)
    wait_until(lambda: bool(psutil.Process(leader.proc.pid).children()), timeout=30)
    (child,) = psutil.Process(leader.proc.pid).children()
    return leader, child


def _owner_gone(record: Path, **changes: object) -> None:
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "owner_pid": 2**22 + 1, **changes}))  # above pid_max: never ran


@pytest.mark.unit
def test_a_stale_group_is_reaped_when_its_leader_is_gone_and_only_then(tmp_path: Path) -> None:
    """Item 10 at the mechanism: what is left of a recorded group whose leader died with its owner is killed."""
    environ = {"ROCM_NB_RUNTIME_DIR": str(tmp_path)}
    leader, child = _group(tmp_path)
    try:
        _owner_gone(leader.record)
        os.kill(leader.proc.pid, signal.SIGKILL)  # the router, killed with its kernel; its child lives on
        leader.proc.wait(10)
        assert child.is_running() and os.getpgid(child.pid) == leader.proc.pid
        assert reap_stale_servers(environ) == [child.pid]
        wait_until(gone(child.pid), timeout=10)
        assert not leader.record.exists()
    finally:
        with contextlib.suppress(psutil.Error):
            child.kill()
        leader.stop()
    # a recorded pid that runs another process now (its start time differs): its group is left alone
    other, its_child = _group(tmp_path)
    try:
        _owner_gone(other.record, server_created=0.0)
        assert reap_stale_servers(environ) == [] and its_child.is_running() and other.proc.poll() is None
    finally:
        with contextlib.suppress(psutil.Error):
            its_child.kill()
        other.stop()
