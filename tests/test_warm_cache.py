"""The prompt cache outlives its server: saved on close, restored and proved on start (issue 23), real llama-server.

A module fixture reads a long prompt once, twice (the second time from the
cache: the "warm" run every restored run is compared with, since both
compute one prompt token and then decode, the same batch shapes) and closes
the model, which saves its slot. Each test copies that saved folder into its
own (``ROCM_NB_WARM_DIR``, see ``tests/conftest.py``) and starts a model on it.
The kernel restart itself is ``tests/test_kernel.py``; the timings are
``make bench`` (benchmarks/warm.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rocm_nb import LocalModel, LocalRouter, ModelState, connect
from rocm_nb.binary import find_server
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model
from rocm_nb.server import LlamaServer
from rocm_nb.server._warm_store import NOT_REUSABLE, QUARANTINE, WarmStore
from rocm_nb.server.rpc import rpc_worker
from rocm_nb.server.warm import MIN_TOKENS, SlotAPI
from tests.support.uids import NOBODY, as_nobody
from tests.support.warm import write_swa_gguf

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("warm_folder")]
as_root = pytest.mark.usefixtures("needs_root")  # fails, never skips, without root

GREEDY = {"temperature": 0.0, "seed": 1, "max_tokens": 12}
LONG = " ".join(f"Note {i}: the lighthouse keeper counted {i * 7} ships and wrote their names down." for i in range(40))
PREFIX = LONG[: LONG.index("Note 10:")]
"""LONG's first ten notes (about 200 tokens): a restored cache would serve all but one of them, a cold one none."""
SHORT = " ".join(f"Note {i}: the keeper counted {i} ships." for i in range(16))  # over MIN_TOKENS, quick to read
RESTORED = re.compile(r"^restored (\d[\d,]*) cached tokens \(\d+ MiB\) in \d+\.\d\d s$")


@dataclass(frozen=True)
class Saved:
    """A folder holding the saved slot of ``LocalModel(DEFAULT_MODEL, ctx_size=2048)`` after reading ``LONG`` twice."""

    folder: Path
    prompt_tokens: int
    warm_text: str
    slot_tokens: int


@pytest.fixture(scope="module")
def saved() -> Iterator[Saved]:
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-warm-saved-"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROCM_NB_WARM_DIR", str(base / "warm"))
        patch.delenv("ROCM_NB_WARM_BUDGET", raising=False)  # a module fixture: the session's budget of 0 is set
        with LocalModel(DEFAULT_MODEL, ctx_size=2048) as model:
            assert model.warm_start is not None and model.warm_start.note == ""  # nothing saved yet, nothing said
            cold = model.generate(LONG, **GREEDY)
            warm = model.generate(LONG, **GREEDY)
            assert warm.timings is not None and warm.timings.prompt_tokens == 1  # the cache at work, in one server
        [entry] = WarmStore(base / "warm").entries()
    assert cold.timings is not None and cold.timings.prompt_tokens > 500
    yield Saved(base / "warm", cold.timings.prompt_tokens, warm.text, entry.tokens)
    shutil.rmtree(base)


def copy_into(saved: Saved, folder: Path) -> WarmStore:
    """The saved cache, put in this test's folder (the files are named by their configuration, not their place)."""
    shutil.copytree(saved.folder, folder, dirs_exist_ok=True)
    return WarmStore(folder)


def test_the_same_prompt_after_a_restart_reads_one_token(saved: Saved, warm_folder: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    copy_into(saved, warm_folder)
    model, reports = LocalModel(DEFAULT_MODEL, ctx_size=2048), list[str]()
    with caplog.at_level(logging.INFO, logger="rocm_nb"):
        model.start(lambda _, line: reports.append(line))
    with model:
        start = model.warm_start
        assert start is not None and RESTORED.match(start.note), start.note
        assert reports[-1] == start.note  # the load line: the last progress report, and the logger's
        assert f"{model.path.name}: {start.note}" in [record.getMessage() for record in caplog.records]
        assert start.tokens == saved.slot_tokens and model.status().restored_tokens == saved.slot_tokens
        again = model.generate(LONG, **GREEDY)
    assert again.timings is not None and again.timings.prompt_tokens <= 2  # not the 600 of a cold start
    assert again.timings.cached_tokens == saved.prompt_tokens - 1
    assert again.text == saved.warm_text  # greedy, the same batch shapes as the warm run
    files = sorted(warm_folder.iterdir())
    assert oct(warm_folder.stat().st_mode & 0o777) == "0o700"
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {"0o600"}  # saved again on close: private


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return target


@pytest.mark.parametrize("change", ["ctx_size", "cache_type", "another_server"])
def test_another_configuration_is_not_restored_and_says_why(saved: Saved, warm_folder: Path, tmp_path: Path,
                                                            change: str) -> None:
    copy_into(saved, warm_folder)
    options: dict[str, object] = {
        "ctx_size": {"ctx_size": 1024},
        "cache_type": {"ctx_size": 2048, "cache_type_k": "q8_0"},
        "another_server": {"ctx_size": 2048, "server": _copy(find_server().path, tmp_path / "bin" / "llama-server")},
    }[change]
    said = {"ctx_size": "it was saved with context 2048 (this server: 1024)",
            "cache_type": "its K cache type was f16 (this server: q8_0)",
            "another_server": f"it was saved by another llama-server ({find_server().path})"}[change]
    with LocalModel(DEFAULT_MODEL, **options) as model:  # type: ignore[arg-type]
        assert model.warm_start is not None and model.warm_start.tokens == 0
        assert model.warm_start.note == f"saved prompt cache not restored: {said}"
        cold = model.generate(PREFIX, **GREEDY)
    assert cold.timings is not None and cold.timings.cached_tokens == 0  # nothing of it came from a cache


@pytest.mark.parametrize("replaced", ["server", "model"])
def test_a_rebuilt_server_or_a_replaced_model_file_is_not_restored(warm_folder: Path, tmp_path: Path,
                                                                   replaced: str) -> None:
    server = _copy(find_server().path, tmp_path / "bin" / "llama-server")
    path = _copy(resolve_model(DEFAULT_MODEL), tmp_path / "models" / "smol.gguf")
    with LocalModel(path, server=server, ctx_size=1024) as model:
        model.generate(SHORT, **GREEDY)
    assert len(WarmStore(warm_folder).entries()) == 1
    if replaced == "server":  # a rebuild at the same path: another inode, size or time
        server.write_bytes(server.read_bytes())
    else:  # replaced by the same bytes: only its inode and time tell
        path.unlink()
        shutil.copyfile(resolve_model(DEFAULT_MODEL), path)
    with LocalModel(path, server=server, ctx_size=1024) as model:
        assert model.warm_start is not None and model.warm_start.tokens == 0
        assert model.warm_start.note == "saved prompt cache not restored: " + (
            "llama-server has been rebuilt or replaced since" if replaced == "server"
            else "the model file has changed since")


def _damage(path: Path, how: str) -> None:
    """Damage a saved slot file the ways a disk, a crash or a careless hand would."""
    data = bytearray(path.read_bytes())
    head = 12 + 4 * struct.unpack_from("<I", data, 8)[0]  # magic, version, count, then the tokens
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "random_bytes":
        data = bytearray(os.urandom(len(data)))
    elif how == "random_cache":  # a true head, then noise where the KV cache was: llama-server refuses it
        data[head:] = os.urandom(len(data) - head)
    else:  # "one_position": every cell at one position, which llama-server takes, then cannot compute with
        cells = struct.unpack_from("<I", data, head + 4)[0]
        for i in range(cells):
            struct.pack_into("<i", data, head + 8 + 12 * i, 5)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "random_bytes", "random_cache", "one_position"])
def test_a_damaged_file_is_set_aside_and_the_server_keeps_working(saved: Saved, warm_folder: Path,
                                                                  how: str) -> None:
    [entry] = copy_into(saved, warm_folder).entries()
    _damage(entry.file, how)
    with LocalModel(DEFAULT_MODEL, ctx_size=2048) as model:
        start = model.warm_start
        assert start is not None and start.tokens == 0
        assert start.note.startswith("saved prompt cache of slot 0 "), start.note
        assert "\n" not in start.note
        reply = model.generate(PREFIX, **GREEDY)
    assert reply.timings is not None and reply.timings.cached_tokens == 0 and reply.text  # the server works, cold
    assert entry.file.name in {path.name for path in (warm_folder / QUARANTINE).iterdir()}


def test_a_server_that_crashes_on_a_file_starts_again_without_it(saved: Saved, warm_folder: Path) -> None:
    """The pinned llama-server refused every damaged file tried here (above) without crashing, so the crash is
    a real SIGSEGV sent to the real server the moment the restore is asked for."""
    [entry] = copy_into(saved, warm_folder).entries()
    crashed: list[int] = []

    class CrashingOnRestore(SlotAPI):
        def restore(self, slot: int, filename: str, *, timeout: float) -> dict[str, object]:
            os.kill(server.pid or 0, signal.SIGSEGV)
            crashed.append(server.pid or 0)
            return super().restore(slot, filename, timeout=timeout)

    model = LocalModel(DEFAULT_MODEL, ctx_size=2048)
    server = LlamaServer(model.config, slot_api=CrashingOnRestore)
    with server.start():
        assert crashed and server.pid not in crashed and server.alive
        assert server.warm_start is not None and server.warm_start.restart
        assert server.warm_start.note == ("llama-server crashed restoring the saved prompt cache of slot 0: the file "
                                          "was set aside and the server started again without it")
        quarantined = json.loads((warm_folder / QUARANTINE / f"{entry.file.name}.json").read_text())
        assert quarantined["why"].startswith("llama-server crashed restoring it")
        assert SlotAPI(server.base_url, server.api_key).slots(timeout=10)  # the fresh server answers


def test_a_restore_that_is_not_reused_is_said_and_no_cache_is_kept_for_that_model(warm_folder: Path,
                                                                                   tmp_path: Path,
                                                                                   caplog: pytest.LogCaptureFixture
                                                                                   ) -> None:
    """A real sliding-window model: llama-server restores its slot, then reads the whole prompt again."""
    path = write_swa_gguf(tmp_path / "tiny-swa.gguf", resolve_model(DEFAULT_MODEL))
    with LocalModel(path, ctx_size=2048) as model:
        model.generate(LONG, **GREEDY)
    assert len(WarmStore(warm_folder).entries()) == 1
    with LocalModel(path, ctx_size=2048) as model:
        start = model.warm_start
        assert start is not None and start.tokens == 0
        assert re.fullmatch(r"restored but not reusable with this model: llama-server read [\d,]+ of [\d,]+ tokens "
                            r"again; no prompt cache will be kept for it with this llama-server", start.note), start
        assert model.generate(LONG, **GREEDY).text  # the server keeps working
        with caplog.at_level(logging.DEBUG, logger="rocm_nb"):
            model.close()
    assert WarmStore(warm_folder).entries() == [] and (warm_folder / NOT_REUSABLE).is_file()
    assert any("prompt cache of tiny-swa.gguf not saved: a restored cache was not reused" in r.getMessage()
               for r in caplog.records)
    with LocalModel(path, ctx_size=2048) as model:
        assert model.warm_start is not None and model.warm_start.note.startswith(
            "no prompt cache is kept for this model with this llama-server: a restored cache was not reused")


def test_a_file_others_can_write_is_not_restored(saved: Saved, warm_folder: Path) -> None:
    [entry] = copy_into(saved, warm_folder).entries()
    entry.file.chmod(0o666)
    with LocalModel(DEFAULT_MODEL, ctx_size=2048) as model:
        assert model.warm_start is not None and model.warm_start.tokens == 0
        assert model.warm_start.note == (f"saved prompt cache of slot 0 not restored: {entry.file.name} can be "
                                         "written by other users (mode 666)")
        assert oct(entry.file.stat().st_mode & 0o777) == "0o666"  # left where it is, not set aside
        reply = model.generate(PREFIX, **GREEDY)
    assert reply.timings is not None and reply.timings.cached_tokens == 0


@as_root
def test_a_file_another_user_planted_is_not_restored(saved: Saved) -> None:
    """``nobody`` puts a genuine saved slot (a copy) into a folder it can write: it is not this user's, so no."""
    base = Path(tempfile.mkdtemp(prefix="rocm_nb-warm-"))  # under /tmp, which nobody can traverse
    try:
        base.chmod(0o755)
        folder = base / "warm"
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)  # a folder anyone can write, as a careless setup would leave it
        contents = {path.name: path.read_bytes() for path in saved.folder.iterdir()}

        def plant() -> None:
            for name, data in contents.items():
                (folder / name).write_bytes(data)
                (folder / name).chmod(0o600)

        as_nobody(plant)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ROCM_NB_WARM_DIR", str(folder))
            with LocalModel(DEFAULT_MODEL, ctx_size=2048) as model:
                note = model.warm_start.note if model.warm_start else ""
                reply = model.generate(PREFIX, **GREEDY)
        manifest = next(name for name in contents if name.endswith(".json"))
        assert note == (f"saved prompt cache of slot 0 not restored: {manifest} belongs to uid {NOBODY.pw_uid}, "
                        "not to you")
        assert reply.timings is not None and reply.timings.cached_tokens == 0
    finally:
        shutil.rmtree(base)


def test_a_save_that_would_not_fit_the_teardown_is_skipped(saved: Saved, warm_folder: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    [entry] = copy_into(saved, warm_folder).entries()
    entry.manifest.write_text(json.dumps({**entry.data, "save_seconds": 1000.0}))  # the last save took 1000 s
    with LocalModel(DEFAULT_MODEL, ctx_size=2048) as model:
        model.generate(LONG, **GREEDY)
        with caplog.at_level(logging.DEBUG, logger="rocm_nb"):
            model.close()
    said = [r.getMessage() for r in caplog.records if "would take about" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"slot 0 not saved: {saved.slot_tokens} tokens would take about")
    assert [e.data["saved_at"] for e in WarmStore(warm_folder).entries()] == [entry.data["saved_at"]]  # the old one


def test_a_short_cache_is_not_saved_and_warm_cache_false_keeps_nothing(warm_folder: Path) -> None:
    with LocalModel(DEFAULT_MODEL, ctx_size=1024) as model:
        reply = model.generate("Hi", **GREEDY)
    assert reply.timings is not None and reply.timings.prompt_tokens + reply.timings.predicted_tokens < MIN_TOKENS
    assert WarmStore(warm_folder).entries() == []
    with LocalModel(DEFAULT_MODEL, ctx_size=1024, warm_cache=False) as model:
        assert model.config.slot_save_path is None and "--slot-save-path" not in model.config.argv(1)
        assert model.warm_start is None
        model.generate(SHORT, **GREEDY)
    assert WarmStore(warm_folder).entries() == []


def test_embedding_servers_and_routers_keep_no_cache(tmp_path: Path) -> None:
    assert LocalModel("minilm", embedding=True).config.slot_save_path is None
    assert LocalModel("minilm", reranking=True).config.slot_save_path is None
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "smol.gguf").symlink_to(resolve_model(DEFAULT_MODEL))
    router = LocalRouter(folder)
    assert router.config.slot_save_path is None and "--slot-save-path" not in router.config.argv(1)
    router.close()


def test_a_connected_client_restores_and_saves_nothing(saved: Saved, warm_folder: Path) -> None:
    """connect() is for servers rocm_nb does not own: its client restores nothing and its close saves nothing.

    Here it talks to a server a LocalModel owns (another context than the
    saved cache's): only the owner's close saves.
    """
    [entry] = copy_into(saved, warm_folder).entries()
    with LocalModel(DEFAULT_MODEL, ctx_size=1024) as owner:
        with connect(owner.base_url, owner.api_key) as client:
            assert not hasattr(client, "warm_start")
            reply = client.generate(PREFIX, **GREEDY)
        assert reply.timings is not None and reply.timings.cached_tokens == 0
        assert owner.state is ModelState.RUNNING
        assert WarmStore(warm_folder).entries() == [entry]  # the client's close saved nothing
    assert sorted(e.data["fingerprint"]["ctx_size"] for e in WarmStore(warm_folder).entries()) == [1024, 2048]


@pytest.mark.parametrize("with_", ["ngram", "draft", "rpc"])
def test_speculation_and_rpc_workers(warm_folder: Path, with_: str) -> None:
    """What happens, measured: the main model's cache is restored and reused in each case.

    Through RPC workers the restored run is the warm run, token for token. With
    speculation the batches the model verifies depend on the drafts, so the
    text is not compared (docs/speculative.md); a draft model's own cache is
    not saved by llama-server, so it starts from nothing.
    """
    options: dict[str, object] = {"ctx_size": 1024}
    worker = None
    if with_ == "rpc":
        worker = rpc_worker()
        options["rpc"] = [worker.address]
    else:
        options["speculative"] = "ngram" if with_ == "ngram" else DEFAULT_MODEL
    try:
        with LocalModel(DEFAULT_MODEL, **options) as model:  # type: ignore[arg-type]
            model.generate(SHORT, **GREEDY)
            warm = model.generate(SHORT, **GREEDY)
        with LocalModel(DEFAULT_MODEL, **options) as model:  # type: ignore[arg-type]
            start = model.warm_start
            restored = model.generate(SHORT, **GREEDY)
    finally:
        if worker is not None:
            worker.close()
    assert start is not None and RESTORED.match(start.note), start.note
    assert restored.timings is not None and restored.timings.prompt_tokens <= 2 and restored.text
    if with_ == "rpc":
        assert restored.text == warm.text
